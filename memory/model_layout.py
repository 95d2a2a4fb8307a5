"""What a sentence-transformers model folder says beside the transformer: pooling, length, casing.

Both backends (memory/torch_backend.py and memory/onnx_backend.py) read it, so both pool and
truncate as sentence-transformers would, without importing it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from memory.errors import EncoderError

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

    def prepare(self, texts: list[str]) -> list[str]:
        """The texts as sentence-transformers hands them to the tokenizer."""
        cleaned = [t.strip() for t in texts]
        return [t.lower() for t in cleaned] if self.lower_case else cleaned


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


def pool(hidden: npt.NDArray[np.float32], mask: npt.NDArray[np.int64], mode: str) -> npt.NDArray[np.float32]:
    """The sentence vectors (not normalised) of one padded batch: ``hidden`` is (rows, tokens,
    dim), ``mask`` (rows, tokens) is 1 on real tokens. Padding never counts."""
    if mode == "cls":
        out = hidden[:, 0]
    elif mode == "max":
        out = np.where(mask[:, :, None] > 0, hidden, np.float32(-1e9)).max(axis=1)
    else:
        weights = mask[:, :, None].astype(np.float32)
        out = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), np.float32(1e-9))
    result: npt.NDArray[np.float32] = np.ascontiguousarray(out, dtype=np.float32)
    return result
