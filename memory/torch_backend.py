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

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from memory.model_layout import ModelLayout, pool, read_layout

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TorchModel:
    """A loaded model and the tokenizer one thread uses with it."""

    path: str
    tokenizer: Any
    model: Any
    layout: ModelLayout
    dim: int
    precision: str

    def pooled(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """One padded batch through the transformer, pooled (float32; the caller normalises)."""
        import torch

        batch = self.tokenizer(
            self.layout.prepare(texts),
            padding=True,
            truncation="longest_first",
            max_length=self.layout.max_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state.float().numpy()
        return pool(hidden, batch["attention_mask"].numpy(), self.layout.pooling)

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
    return TorchModel(path, tokenizer, model, layout, dim, precision)
