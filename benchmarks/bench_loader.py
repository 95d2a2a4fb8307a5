"""Import + load of the shipped model, and its query CPU, for each way of running it: sentence-
transformers (the old loader), transformers' AutoModel + mean pooling (memory/torch_backend.py),
and the ONNX export on onnxruntime (memory/onnx_backend.py, float32 and int8), each in a fresh
interpreter.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_loader.py [--quick] [--out FILE]``

Each round times, from the parent's clock before spawning, a child that imports its loader,
loads the packaged all-MiniLM-L6-v2 and embeds one text, then the CPU time of 30 one-text
queries; the loaders alternate so a busy machine slows all alike (3 rounds, 1 with --quick;
medians). The children also report which heavy libraries they imported, and the parent checks
the vectors against sentence-transformers'. The ONNX export must exist (``make install``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import log, met, run_benchmark

ROOT = Path(__file__).resolve().parents[1]
LOADERS = ("old", "torch", "onnx", "onnx-int8")

PROBE = """
import json, sys, time
t0 = float(sys.argv[2])
from memory.encoder import PACKAGED_MODEL, quiet_model_libraries, resolve_model_path
quiet_model_libraries()
path = resolve_model_path(PACKAGED_MODEL)
QUERY = "where does my sister live?"
if sys.argv[1] == "old":
    from sentence_transformers import SentenceTransformer
    imported = time.time() - t0
    model = SentenceTransformer(path, device="cpu", local_files_only=True)
    def embed(text):
        return model.encode([text], normalize_embeddings=True)[0]
else:
    from memory.encoder import run_model
    if sys.argv[1] == "torch":
        import torch
        from transformers import AutoModel, AutoTokenizer
        from memory.torch_backend import load_torch_model
        imported = time.time() - t0
        model = load_torch_model(path, "float32", 1)
    else:
        import onnxruntime, tokenizers
        from memory.onnx_backend import load_onnx_model
        imported = time.time() - t0
        model = load_onnx_model(path, sys.argv[1] == "onnx-int8", 1)
    def embed(text):
        return run_model(model, [text])[0]
vector = embed(QUERY)
loaded = time.time() - t0
for i in range(5):
    embed(QUERY + str(i))
cpu = time.thread_time()
for i in range(30):
    embed(f"what did I tell you about topic {i} last week?")
query_cpu_ms = (time.thread_time() - cpu) / 30 * 1000
names = ("torch", "transformers", "sklearn", "scipy", "sentence_transformers")
heavy = sorted(m for m in names if m in sys.modules)
print("RESULT=" + json.dumps({"imported_s": imported, "loaded_s": loaded, "query_cpu_ms": query_cpu_ms,
                              "heavy": heavy, "vector": [float(x) for x in vector]}), flush=True)
"""


def probe(loader: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", PROBE, loader, repr(time.time())],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT="))
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT="))
    return result


async def run(quick: bool, seed: int) -> dict[str, Any]:
    rounds = 1 if quick else 3
    samples: dict[str, list[dict[str, Any]]] = {loader: [] for loader in LOADERS}
    for n in range(rounds):
        for loader in LOADERS:
            log(f"round {n + 1}/{rounds}: {loader}")
            samples[loader].append(probe(loader))
    reference = samples["old"][0]["vector"]
    result: dict[str, Any] = {"command": "benchmarks/bench_loader.py" + (" --quick" if quick else "")}
    for loader, runs in samples.items():
        vector = runs[0]["vector"]
        result[loader] = {
            "import_s": round(statistics.median(r["imported_s"] for r in runs), 2),
            "import_and_load_s": round(statistics.median(r["loaded_s"] for r in runs), 2),
            "all_import_and_load_s": [round(r["loaded_s"], 2) for r in runs],
            "query_cpu_ms": round(statistics.median(r["query_cpu_ms"] for r in runs), 2),
            "cosine_to_sentence_transformers": round(
                sum(a * b for a, b in zip(reference, vector, strict=True)), 7
            ),
            "heavy_modules": runs[0]["heavy"],
        }
    torch = result["torch"]
    result["ratios"] = {
        f"{key}_{loader}_over_torch": round(result[loader][key] / torch[key], 3)
        for loader in LOADERS
        if loader != "torch"
        for key in ("import_and_load_s", "query_cpu_ms")
    }
    return result


def finish(result: dict[str, Any], quick: bool) -> dict[str, Any]:
    return {
        "targets": {
            "torch and onnx float32 give the same vectors: 1 - cosine <= 1e-5": met(
                round(1 - min(result[x]["cosine_to_sentence_transformers"] for x in ("torch", "onnx")), 7),
                1e-5,
            ),
            "onnx imports no torch / transformers / scipy": {
                "value": result["onnx"]["heavy_modules"],
                "met": not result["onnx"]["heavy_modules"],
            },
        }
    }


if __name__ == "__main__":
    run_benchmark("loader", __doc__ or "", run, finish)
