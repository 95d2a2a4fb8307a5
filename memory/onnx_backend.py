"""The ONNX backend: the model exported once into the data folder, then run by onnxruntime.

Measured on 2 cores, one thread, through this project's encoder: fp32 ONNX gives the torch
vectors (cosine 1.000000) at 5.5 ms per query against 11 ms for torch float32; the int8 export
(``encoder.onnx_quantized``, the default) at 2.1 ms when quantised for AVX-512 VNNI (an AVX2
build ran 5.5 ms in a study), cosine 0.989 to torch and Recall@10 on locomo-dev 0.752 against
0.755, so the export targets the instructions this CPU has.
onnxruntime's threads spin-wait by default, which on 2 cores doubles CPU use and makes
latency erratic: it is off. Needs the ``onnx`` extra (``make install-onnx``), which pins an
older sentence-transformers.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from memory.cpu import int8_instruction_set
from memory.errors import EncoderError
from memory.settings import EncoderSettings

log = logging.getLogger(__name__)
EXPORT_FOLDER = "onnx"
FP32_FILE = "onnx/model.onnx"


def int8_suffix() -> str:
    return f"int8_{int8_instruction_set()}"


def export_folder(model_path: str, cache_dir: Path | None) -> Path:
    base = cache_dir if cache_dir is not None else Path(model_path)
    return base / EXPORT_FOLDER / Path(model_path).name


def load_onnx_model(model_path: str, settings: EncoderSettings, cache_dir: Path | None) -> Any:
    """Export on first use (atomically: a half-written export is never reused), then load."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # else onnxruntime writes to ~/.cache
    try:
        import onnxruntime as ort
        from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model
    except ImportError as exc:
        raise EncoderError(
            f"encoder.backend = 'onnx' needs the onnx extra ({exc}); run `make install-onnx` "
            "or set encoder.backend = 'torch'"
        ) from exc
    target = export_folder(model_path, cache_dir)
    file_name = f"onnx/model_{int8_suffix()}.onnx" if settings.onnx_quantized else FP32_FILE
    if not (target / file_name).exists():
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        log.info("exporting %s to ONNX in %s (once)", model_path, target)
        model = SentenceTransformer(model_path, backend="onnx", device="cpu", local_files_only=True)
        model.save(str(staging))
        if settings.onnx_quantized:
            export_dynamic_quantized_onnx_model(
                model, int8_instruction_set(), str(staging), file_suffix=int8_suffix()
            )
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.threads or 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return SentenceTransformer(
        str(target),
        backend="onnx",
        device="cpu",
        local_files_only=True,
        model_kwargs={
            "file_name": file_name,
            "provider": "CPUExecutionProvider",
            "session_options": options,
        },
    )
