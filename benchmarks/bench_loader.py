"""Import + load of the shipped model: sentence-transformers (the old loader) against transformers'
AutoModel + mean pooling (memory/torch_backend.py), each in a fresh interpreter.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_loader.py [--quick] [--out FILE]``

Each round times, from the parent's clock before spawning, a child that imports its loader,
loads the packaged all-MiniLM-L6-v2 in float32 and embeds one text; old and new alternate so
a busy machine slows both alike (3 rounds, 1 with --quick; medians). The children also report
which of scikit-learn, scipy.stats and sentence-transformers they imported, and the parent
checks that both loaders give the same vectors.
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

PROBE = """
import json, sys, time
t0 = float(sys.argv[2])
from memory.encoder import PACKAGED_MODEL, quiet_model_libraries, resolve_model_path
quiet_model_libraries()
path = resolve_model_path(PACKAGED_MODEL)
if sys.argv[1] == "old":
    from sentence_transformers import SentenceTransformer
    imported = time.time() - t0
    model = SentenceTransformer(path, device="cpu", local_files_only=True)
    vector = model.encode(["where does my sister live?"], normalize_embeddings=True)[0]
else:
    import torch
    from transformers import AutoModel, AutoTokenizer
    from memory.torch_backend import load_torch_model
    from memory.encoder import run_model
    imported = time.time() - t0
    model = load_torch_model(path, "float32", 1)
    vector = run_model(model, ["where does my sister live?"])[0]
heavy = sorted(m for m in ("sklearn", "scipy.stats", "sentence_transformers") if m in sys.modules)
print("RESULT=" + json.dumps({"imported_s": imported, "loaded_s": time.time() - t0,
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
    samples: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    for n in range(rounds):
        for loader in ("old", "new"):
            log(f"round {n + 1}/{rounds}: {loader} loader")
            samples[loader].append(probe(loader))
    old_vector = samples["old"][0]["vector"]
    new_vector = samples["new"][0]["vector"]
    cosine = sum(a * b for a, b in zip(old_vector, new_vector, strict=True))
    result: dict[str, Any] = {"command": "benchmarks/bench_loader.py" + (" --quick" if quick else "")}
    for loader, runs in samples.items():
        result[loader] = {
            "import_s": round(statistics.median(r["imported_s"] for r in runs), 2),
            "import_and_load_s": round(statistics.median(r["loaded_s"] for r in runs), 2),
            "all_import_and_load_s": [round(r["loaded_s"], 2) for r in runs],
            "heavy_modules": runs[0]["heavy"],
        }
    result["cosine_old_new"] = round(cosine, 7)
    result["ratios"] = {
        "import_and_load_old_over_new": round(
            result["old"]["import_and_load_s"] / result["new"]["import_and_load_s"], 2
        ),
        "import_old_over_new": round(result["old"]["import_s"] / result["new"]["import_s"], 2),
    }
    return result


def finish(result: dict[str, Any], quick: bool) -> dict[str, Any]:
    return {
        "targets": {
            "same vectors: 1 - cosine <= 1e-5": met(round(1 - result["cosine_old_new"], 7), 1e-5),
            "new loader imports no sklearn / scipy.stats / sentence_transformers": {
                "value": result["new"]["heavy_modules"],
                "met": not result["new"]["heavy_modules"],
            },
        }
    }


if __name__ == "__main__":
    run_benchmark("loader", __doc__ or "", run, finish)
