"""The embedder under load: the real model served by onnxruntime alone (the torch fallback through
transformers alone), an urgent lane past the backlog, and a close that leaves the backlog to the
next start."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from memory import EncoderError, HashingEncoder, MemorySystem, load_settings
from memory.encoder import PACKAGED_MODEL, Vectors, build_encoder, encode_urgent, resolve_model_path
from memory.model_layout import read_layout
from memory.onnx_export import ensure_export
from tests.conftest import PYTHON, ROOT, test_settings

TEXTS = [
    "I adopted a puppy named Rex",
    "  What is my dog called?  ",
    "hi",
    "x " * 300,  # past the model's 256 tokens: truncated the same way
    "Ünïcode café, naïve résumé",
]

ENCODE_AND_LIST_MODULES = """
import asyncio, json, sys
from memory import load_settings
from memory.encoder import build_encoder
async def main():
    encoder = await build_encoder(load_settings(environ={}).encoder)
    vectors = await encoder.encode(["a real encode of a real sentence"])
    await encoder.close()
    print("RESULT=" + json.dumps([vectors.shape[1], sorted(sys.modules)]))
asyncio.run(main())
"""


@pytest.mark.slow
async def test_the_transformers_loader_gives_sentence_transformers_vectors() -> None:
    from sentence_transformers import SentenceTransformer

    overrides = {"encoder": {"backend": "torch", "precision": "float32"}}
    encoder = await build_encoder(load_settings(environ={}, overrides=overrides).encoder)
    try:
        ours = np.vstack([await encoder.encode(TEXTS), await encoder.encode(TEXTS[:1])])
    finally:
        await encoder.close()
    reference = SentenceTransformer(resolve_model_path(PACKAGED_MODEL), device="cpu").encode(
        [*TEXTS, TEXTS[0]], normalize_embeddings=True
    )
    cosine = np.sum(ours * reference, axis=1)
    assert float(np.max(1.0 - cosine)) <= 1e-5, cosine
    assert np.allclose(ours, reference, atol=1e-5)


@pytest.mark.slow
def test_a_real_encode_imports_neither_torch_nor_transformers() -> None:
    # The default backend runs the export `make install` made (made here if it is missing).
    ensure_export(Path(resolve_model_path(PACKAGED_MODEL)))
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    argv = [PYTHON, "-c", ENCODE_AND_LIST_MODULES]
    run = subprocess.run(argv, check=True, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT="))
    dim, modules = json.loads(line.removeprefix("RESULT="))
    assert dim == 384
    assert "onnxruntime" in modules and "tokenizers" in modules  # a real model ran
    for heavy in ("torch", "transformers", "sentence_transformers", "sklearn", "scipy"):
        assert not [m for m in modules if m == heavy or m.startswith(heavy + ".")], heavy


@pytest.mark.slow
async def test_an_urgent_text_is_not_queued_behind_the_background_batch_in_flight() -> None:
    encoder = await build_encoder(load_settings(environ={}).encoder)
    try:
        sentence = "background memory number {}, a long sentence about topic {} "
        backlog = [sentence.format(i, i % 13) * 3 for i in range(64)]
        background = asyncio.ensure_future(encoder.encode(backlog))
        while encoder.stats()["encoder_queue"]:  # until the batcher has handed it to the model
            await asyncio.sleep(0)
        urgent = await encode_urgent(encoder, ["what is my dog called?"])
        assert not background.done(), "the urgent text waited for the background batch"
        vectors = await background
        alone = await encoder.encode(["what is my dog called?"])
        assert float(urgent[0] @ alone[0]) > 0.999  # the same weights answer in either lane
        assert vectors.shape == (64, 384)
        assert encoder.stats()["encoder_urgent_batches"] == 1
    finally:
        await encoder.close()


def test_a_model_with_layers_this_loader_does_not_run_is_refused(tmp_path: Path) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    ]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(EncoderError, match=r"does not run \(sentence_transformers.models.Dense\)"):
        read_layout(tmp_path, 512)


def test_the_packaged_models_layout_is_read_from_its_folder() -> None:
    layout = read_layout(Path(resolve_model_path(PACKAGED_MODEL)), 512)
    assert (layout.max_length, layout.lower_case, layout.pooling) == (256, False, "mean")


class TimedEncoder(HashingEncoder):
    """Hashing vectors at a model's pace: each call takes ``seconds_per_call`` (``sleep``
    stands in for the model's time on its thread); ``all_seen`` is set once ``expect(n)``
    texts have been embedded."""

    def __init__(self, seconds_per_call: float = 0.0) -> None:
        super().__init__()
        self._seconds = seconds_per_call
        self.texts = 0
        self._expected: int | None = None
        self.all_seen = asyncio.Event()

    def expect(self, texts: int) -> None:
        self._expected = texts
        self._check()

    def _check(self) -> None:
        if self._expected is not None and self.texts >= self._expected:
            self.all_seen.set()

    async def encode(self, texts: Sequence[str]) -> Vectors:
        if self._seconds:
            await asyncio.sleep(self._seconds)
        vectors = await super().encode(texts)
        self.texts += len(texts)
        self._check()
        return vectors


async def test_close_stops_after_the_batch_in_flight_and_the_next_start_embeds_the_backlog(
    tmp_path: Path,
) -> None:
    data, users, count = tmp_path / "data", 5, 5_000
    slow = TimedEncoder(seconds_per_call=0.5)  # 64 texts per 0.5 s: the backlog takes ~30 s
    first = MemorySystem(data, settings=test_settings(), encoder=slow)
    async with asyncio.timeout(60):
        await first.start()
        assert await first.wait_ready()

        async def writer(n: int) -> None:
            for i in range(n, count, 50):
                await first.save_memory(f"user{i % users}", f"backlog note number {i} about topic {i % 97}")

        await asyncio.gather(*(writer(n) for n in range(50)))
        before = await first.stats()
        assert before["pending_embeddings"] > 2_000
        calls = slow.calls
        started = time.perf_counter()
        await first.close()
        closed_in = time.perf_counter() - started
    assert slow.calls <= calls + 2, "close() went on embedding the backlog"
    assert closed_in < 5.0  # draining would take over 15 s at this pace
    fast = TimedEncoder()
    async with asyncio.timeout(60), MemorySystem(data, settings=test_settings(), encoder=fast) as again:
        assert again.report is not None and await again.wait_ready()  # the backlog is read
        left = again.report.embeddings_pending
        # Durable, not lost at close: all that was pending but the batches in flight.
        assert before["pending_embeddings"] - 2 * 64 <= left <= before["pending_embeddings"]
        fast.expect(left)
        await fast.all_seen.wait()
        for u in range(users):  # each waits for its own memories in the batch in flight
            await again.retrieve_memory(f"user{u}", "backlog note", k=1)
        stats = await again.stats()
        assert stats["pending_embeddings"] == 0
        assert stats["embedded_since_start"] == left
        assert stats["index_vectors"] == count
