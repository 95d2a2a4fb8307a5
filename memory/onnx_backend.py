"""The ONNX backend, the default: the exported model (memory/onnx_export.py) run by onnxruntime,
the texts tokenised by ``tokenizers``; neither torch nor transformers is imported.

Measured on 2 cores with AVX2 (no VNNI), one thread, all-MiniLM-L6-v2, one query of about ten
words: torch 16.3 CPU-ms, this backend's float32 graph 8.2, its int8 graph 4.6; the float32
vectors equal torch's (cosine 1.000000), the int8 ones agree to cosine 0.99 (per-channel
weights; per-tensor ones measured 0.95). onnxruntime's threads spin-wait by default, which on
2 cores doubles the CPU used and makes latency erratic: spinning is off.

An ``OnnxModel`` may be called from several threads: onnxruntime sessions are safe to run
concurrently, and each lane gets a tokenizer of its own.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from memory.errors import EncoderError
from memory.model_layout import ModelLayout, pool, read_layout

log = logging.getLogger(__name__)


def _tokenizer(folder: Path, max_length: int) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()  # padded per group of similar lengths, below
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def _pad_id(folder: Path, tokenizer: Any) -> int:
    """The pad token's id, as the tokenizer's config names it (0 when it names none)."""
    import json

    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return 0
    token = config.get("pad_token")
    if isinstance(token, dict):
        token = token.get("content")
    found = tokenizer.token_to_id(token) if isinstance(token, str) else None
    return int(found) if found is not None else 0


@dataclass(frozen=True, slots=True)
class OnnxModel:
    """An onnxruntime session over the exported graph, and the tokenizer one lane uses."""

    folder: Path
    session: Any
    tokenizer: Any
    layout: ModelLayout
    inputs: tuple[str, ...]
    pad_id: int
    dim: int
    precision: str

    def pooled(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """One padded batch through the graph, pooled (float32; the caller normalises)."""
        encodings = self.tokenizer.encode_batch(self.layout.prepare(texts))
        longest = max(len(e.ids) for e in encodings)
        feed = {
            "input_ids": np.full((len(texts), longest), self.pad_id, dtype=np.int64),
            "attention_mask": np.zeros((len(texts), longest), dtype=np.int64),
            "token_type_ids": np.zeros((len(texts), longest), dtype=np.int64),
        }
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            feed["input_ids"][row, :n] = encoding.ids
            feed["attention_mask"][row, :n] = 1
            feed["token_type_ids"][row, :n] = encoding.type_ids
        hidden = self.session.run(None, {name: feed[name] for name in self.inputs})[0]
        return pool(hidden, feed["attention_mask"], self.layout.pooling)

    def with_own_tokenizer(self) -> OnnxModel:
        """The same session with a tokenizer of its own, for use from another thread."""
        return replace(self, tokenizer=_tokenizer(self.folder, self.layout.max_length))


def load_onnx_model(model_path: str, quantized: bool, threads: int, root: Path | None = None) -> OnnxModel:
    """The model's export (made first if there is none), in an onnxruntime session."""
    # Imported here: `python -m memory.onnx_export` must not find it imported by the package.
    from memory.onnx_export import FLOAT32_FILE, INT8_FILE, ensure_export

    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise EncoderError(f"encoder.backend = 'onnx' needs onnxruntime ({exc}); run `make install`") from exc
    folder = Path(model_path)
    export = ensure_export(folder, root)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: its warnings are about graph rewrites
    graph = export / (INT8_FILE if quantized else FLOAT32_FILE)
    try:
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    except (RuntimeError, ValueError) as exc:  # onnxruntime's own errors derive from RuntimeError
        raise EncoderError(
            f"onnxruntime could not load {graph}: {exc}; delete {export} to export again"
        ) from exc
    tokenizer = _tokenizer(folder, 512)
    layout = read_layout(folder, 512)
    tokenizer.enable_truncation(max_length=layout.max_length)
    dim = int(session.get_outputs()[0].shape[-1])
    inputs = tuple(i.name for i in session.get_inputs())
    if unknown := set(inputs) - {"input_ids", "attention_mask", "token_type_ids"}:
        raise EncoderError(f"the export {graph} wants inputs {sorted(unknown)} this backend does not make")
    model = OnnxModel(
        folder,
        session,
        tokenizer,
        layout,
        inputs,
        _pad_id(folder, tokenizer),
        dim,
        "int8" if quantized else "float32",
    )
    log.debug("ONNX model %s: %s, %s pooling", graph, model.precision, layout.pooling)
    return model
