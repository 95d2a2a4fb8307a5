"""The torch backend: a sentence-transformers model folder run with transformers alone.

``AutoTokenizer`` + ``AutoModel`` + the folder's pooling (the encoder L2-normalises) give the vectors
sentence-transformers gives (a test holds them to 1e-5), without importing it: its import
pulls in scikit-learn and scipy.stats, which this project never uses (measured in
benchmarks/bench_loader.py). The folder's ``modules.json`` must hold only a Transformer, a
Pooling and a Normalize module, which is what all-MiniLM-L6-v2 and its kin are.

A ``TorchModel`` is used from one thread at a time: its tokenizer keeps per-call state
(truncation, padding), so a second thread gets its own through ``with_own_tokenizer``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from memory.errors import EncoderError

log = logging.getLogger(__name__)
SUPPORTED_MODULES = {
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Normalize",
}
POOLING_MODES = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}


@dataclass(frozen=True, slots=True)
class ModelLayout:
    """What sentence-transformers reads from a model folder beside the transformer itself."""

    max_length: int
    lower_case: bool
    pooling: str


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EncoderError(f"cannot read {path}: {exc}; reinstall the model package") from exc


def _pooling(folder: Path, settings: dict[str, Any]) -> str:
    chosen = [mode for key, mode in POOLING_MODES.items() if settings.get(key)]
    modes = [k for k, on in settings.items() if k.startswith("pooling_mode") and on]
    unknown = [k for k in modes if k not in POOLING_MODES]
    if len(chosen) != 1 or unknown:
        raise EncoderError(
            f"the model in {folder} pools with {settings}; only one of mean, cls or max pooling is supported"
        )
    return chosen[0]


def read_layout(folder: Path, tokenizer_max: int) -> ModelLayout:
    """The folder's sequence limit, casing and pooling; a plain transformer gets mean pooling."""
    default_max = min(tokenizer_max, 512)
    modules_file = folder / "modules.json"
    if not modules_file.exists():
        return ModelLayout(default_max, False, "mean")
    modules: list[dict[str, Any]] = _read_json(modules_file)
    if unsupported := {str(m.get("type")) for m in modules} - SUPPORTED_MODULES:
        raise EncoderError(
            f"the model in {folder} uses modules this loader does not run "
            f"({', '.join(sorted(unsupported))}); choose one made of Transformer, Pooling and Normalize"
        )
    pooling = "mean"
    for entry in modules:
        if entry.get("type") == "sentence_transformers.models.Pooling":
            pooling = _pooling(folder, _read_json(folder / str(entry["path"]) / "config.json"))
    config_file = folder / "sentence_bert_config.json"
    config = _read_json(config_file) if config_file.exists() else {}
    max_length = int(config.get("max_seq_length") or default_max)
    return ModelLayout(max_length, bool(config.get("do_lower_case", False)), pooling)


@dataclass(frozen=True, slots=True)
class TorchModel:
    """A loaded model and the tokenizer one thread uses with it."""

    path: str
    tokenizer: Any
    model: Any
    layout: ModelLayout
    dim: int

    def pooled(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """One padded batch through the transformer, pooled (float32; the caller normalises)."""
        import torch

        cleaned = [t.strip() for t in texts]
        if self.layout.lower_case:
            cleaned = [t.lower() for t in cleaned]
        batch = self.tokenizer(
            cleaned,
            padding=True,
            truncation="longest_first",
            max_length=self.layout.max_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            tokens = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            if self.layout.pooling == "cls":
                pooled = tokens[:, 0]
            elif self.layout.pooling == "max":
                pooled = tokens.masked_fill(mask == 0, -1e9).max(dim=1).values
            else:
                pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            out: npt.NDArray[np.float32] = np.ascontiguousarray(pooled.numpy(), dtype=np.float32)
            return out

    def with_own_tokenizer(self) -> TorchModel:
        """The same weights with a tokenizer of its own, for use from another thread."""
        from transformers import AutoTokenizer

        return replace(self, tokenizer=AutoTokenizer.from_pretrained(self.path, local_files_only=True))


def load_torch_model(path: str, precision: str, threads: int) -> TorchModel:
    """Load the folder offline with transformers; ``precision`` is float32 or bfloat16."""
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if threads:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    layout = read_layout(Path(path), int(getattr(tokenizer, "model_max_length", 512) or 512))
    model = AutoModel.from_pretrained(path, local_files_only=True)
    model.eval()
    if precision == "bfloat16":
        model = model.to(torch.bfloat16)
    dim = int(model.config.hidden_size)
    log.debug("model %s: %s pooling, %d tokens at most", path, layout.pooling, layout.max_length)
    return TorchModel(path, tokenizer, model, layout, dim)
