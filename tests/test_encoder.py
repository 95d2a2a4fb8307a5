"""Encoders: the real all-MiniLM-L6-v2 (offline), micro-batching, and the hashing test encoder."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from memory import EncoderError, HashingEncoder, load_settings
from memory.cpu import has_native_bfloat16, int8_instruction_set
from memory.encoder import PACKAGED_MODEL, build_encoder, resolve_model_path, torch_precision


def test_hashing_encoder_is_deterministic_and_normalised() -> None:
    encoder = HashingEncoder(64)
    a = encoder.encode_now(["the cat sat", "the cat sat", ""])
    assert a.shape == (3, 64) and a.dtype == np.float32
    assert np.allclose(a[0], a[1])
    assert np.isclose(np.linalg.norm(a[0]), 1.0)
    assert np.allclose(a[2], 0.0)
    assert np.allclose(HashingEncoder(64).encode_now(["the cat sat"]), a[:1])


@pytest.mark.slow
async def test_real_model_loads_offline_and_embeds_meaningfully() -> None:
    encoder = await build_encoder(load_settings(environ={}).encoder)
    try:
        assert encoder.dim == 384
        vectors = await encoder.encode(
            ["I adopted a puppy named Rex", "What is my dog called?", "The stock market fell today"]
        )
        assert vectors.shape == (3, 384)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        related, unrelated = float(vectors[0] @ vectors[1]), float(vectors[2] @ vectors[1])
        assert related > unrelated + 0.2
    finally:
        await encoder.close()


@pytest.mark.slow
async def test_concurrent_single_texts_are_micro_batched_and_fanned_back_out() -> None:
    # The default waits 0 ms: texts that queue while the model is busy make the next batch.
    encoder = await build_encoder(load_settings(environ={}).encoder)
    try:
        texts = [f"memory number {i} about topic {i % 7}" for i in range(64)]
        before = encoder.stats()["encoder_batches"]
        singles = await asyncio.gather(*(encoder.encode([t]) for t in texts))
        calls = encoder.stats()["encoder_batches"] - before
        assert calls <= 2, f"64 concurrent texts took {calls} model calls"
        # Only single texts have been encoded yet: a batch this large is theirs, put together.
        assert encoder.stats()["encoder_largest_batch"] >= 64 // calls
        batched = await encoder.encode(texts)
        assert np.allclose(np.vstack(singles), batched, atol=1e-5)
        mark = encoder.stats()["encoder_batches"]
        lone = await encoder.encode([texts[5]])  # and a lone text is answered on its own
        assert encoder.stats()["encoder_batches"] == mark + 1
        assert float(lone[0] @ batched[5]) > 0.999
    finally:
        await encoder.close()


@pytest.mark.slow
async def test_bfloat16_weights_give_the_float32_vectors_and_float32_gives_encode_exactly() -> None:
    from sentence_transformers import SentenceTransformer

    texts = ["I adopted a puppy named Rex", "What is my dog called?", "hi", "x " * 300]
    encoders = {}
    for precision in ("float32", "bfloat16"):
        overrides = {"encoder": {"backend": "torch", "precision": precision}}
        encoders[precision] = await build_encoder(load_settings(environ={}, overrides=overrides).encoder)
    try:
        assert [e.stats()["encoder_precision"] for e in encoders.values()] == ["float32", "bfloat16"]
        full = await encoders["float32"].encode(texts)
        half = await encoders["bfloat16"].encode(texts)
        reference = SentenceTransformer(resolve_model_path(PACKAGED_MODEL), device="cpu").encode(
            texts, normalize_embeddings=True
        )
        assert np.allclose(full, reference, atol=1e-5)  # the direct forward pass is encode's
        assert float(np.min(np.sum(full * half, axis=1))) > 0.99
    finally:
        for encoder in encoders.values():
            await encoder.close()


def test_auto_precision_follows_the_cpu_and_int8_targets_its_instructions() -> None:
    zen4 = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"})
    skylake = frozenset({"avx2", "avx512f"})
    assert has_native_bfloat16(zen4) and not has_native_bfloat16(skylake)
    assert not has_native_bfloat16(frozenset())
    assert int8_instruction_set(zen4) == "avx512_vnni"
    assert int8_instruction_set(skylake) == "avx512"
    assert int8_instruction_set(frozenset({"avx2"})) == "avx2"
    assert int8_instruction_set(frozenset({"fp", "asimd"})) == "arm64"
    assert torch_precision("float32") == "float32"
    assert torch_precision("auto") == ("bfloat16" if has_native_bfloat16() else "float32")


async def test_a_model_that_is_not_there_fails_with_a_clear_error(tmp_path: object) -> None:
    settings = load_settings(environ={}, overrides={"encoder": {"model": "/nonexistent/model/folder"}})
    with pytest.raises(EncoderError, match="could not load the embedding model"):
        await build_encoder(settings.encoder)
