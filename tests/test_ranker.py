"""The learned reranker: its shipped weights, and what it does to a person's own conversation."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from memory import ConfigError, MemorySystem
from memory.ranker import EXACT, FEATURES, MODEL_FEATURES, WEIGHTS_FILE, is_only_question, load_model
from memory.records import ScoredMemory

ROOT = Path(__file__).resolve().parent.parent

FACTS = {
    "allergy": "I'm allergic to peanuts",
    "sister": "My sister Ana lives in Lisbon",
    "dog": "I have a dog named Rex",
}
QUESTIONS = {
    "allergy": "Do you remember my allergy?",
    "sister": "Where does my sister live?",
    "dog": "What is my dog called?",
}


def test_the_shipped_weights_load_without_training_tools_or_network() -> None:
    code = (
        "import sys\n"
        "from memory.ranker import load_model, MODEL_FEATURES\n"
        "m = load_model()\n"
        "assert m.names == MODEL_FEATURES, m.names\n"
        "heavy = sorted(n for n in ('sklearn', 'torch', 'sentence_transformers') if n in sys.modules)\n"
        "print(len(m.weights), heavy)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_PROXY": "*", "http_proxy": "http://127.0.0.1:9"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [str(len(MODEL_FEATURES)), "[]"]


def test_scores_are_deterministic_probabilities() -> None:
    model = load_model()
    again = load_model.__wrapped__(WEIGHTS_FILE)  # a fresh read of the file, not the cached object
    rows = np.random.default_rng(7).normal(size=(60, len(FEATURES)))
    first, second = model.scores(rows), again.scores(rows)
    assert np.array_equal(first, second)
    assert first.shape == (60,) and ((first > 0) & (first < 1)).all()
    assert len(set(first.round(12))) > 50  # the features matter: not one constant score
    assert np.isfinite(model.weights).all() and (model.scale > 0).all()


def test_the_weights_file_is_package_data() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert WEIGHTS_FILE.name in project["tool"]["setuptools"]["package-data"]["memory"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"cannot read the reranker's weights .*broken\.json"),
        (
            '{"format": 1, "features": ["fused"], "mean": [0], "scale": [1], "weights": [1], "bias": 0}',
            r"do not match this version's features",
        ),
    ],
)
def test_a_damaged_or_stale_weights_file_says_what_to_do(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as caught:
        load_model.__wrapped__(path)
    assert "retrieval.reranker = false" in str(caught.value)


async def _conversation(ms: MemorySystem) -> None:
    """Facts told, then questions asked about them: every message an exchange memory."""
    for fact in FACTS.values():
        await ms.update_context("ana", fact, "Noted! Tell me more!", display_name="Ana")
    for question in QUESTIONS.values():
        await ms.update_context("ana", question, "Good question! I'm a simple offline bot.")


def _position(results: list[ScoredMemory], text: str) -> int:
    return next(i for i, r in enumerate(results) if r.memory.text.startswith(f"Ana: {text}"))


@pytest.mark.parametrize("topic", sorted(FACTS))
async def test_a_question_never_outranks_the_statement_it_asks_about(ms: MemorySystem, topic: str) -> None:
    await _conversation(ms)
    results = await ms.retrieve_memory("ana", QUESTIONS[topic], k=10)
    assert all("reranker" in r.rankers for r in results)
    asked = [i for i, r in enumerate(results) if is_only_question(r.memory)]
    assert len(asked) == len(QUESTIONS)  # the questions are there, and found as questions
    assert _position(results, FACTS[topic]) < min(asked)
    assert asked == list(range(len(FACTS), len(results)))  # every statement before every question


async def test_the_bots_reply_is_not_indexed(ms: MemorySystem) -> None:
    await _conversation(ms)
    results = await ms.retrieve_memory("ana", "tell me more, noted", k=10)
    assert len(results) == len(FACTS) + len(QUESTIONS)
    assert all(r.lexical_score is None for r in results)  # only the bot said those words


async def test_a_note_is_not_indexed_with_the_turn_before_it(ms: MemorySystem) -> None:
    await ms.update_context("ana", QUESTIONS["allergy"], "Good question!", display_name="Ana")
    note = await ms.save_memory("ana", "Rex's vet is Dr. Olsen", kind="note")
    await ms.update_context("ana", "Thanks for listening", "Any time!")
    results = {r.memory.id: r for r in await ms.retrieve_memory("ana", "allergy", k=5)}
    assert results[note.id].lexical_score is None  # the question before it lends it no words
    after = next(r for r in results.values() if "Thanks" in r.memory.text)
    assert after.lexical_score is None  # nor does the note lend its own to the turn after it
    vet = await ms.retrieve_memory("ana", "vet", k=1)
    assert vet[0].memory.id == note.id and vet[0].lexical_score is not None


async def test_the_fusion_alone_stays_reachable(make_system: Callable[..., MemorySystem]) -> None:
    async with make_system(retrieval={"reranker": False}) as ms:
        await _conversation(ms)
        results = await ms.retrieve_memory("ana", QUESTIONS["dog"], k=3)
    assert results and all("reranker" not in r.rankers for r in results)


async def test_the_exact_text_comes_before_its_near_twins(ms: MemorySystem) -> None:
    # 16 writers' "round r worker w item n": the model alone ranked the very text 10th.
    for r in range(1, 4):
        for w in range(10):
            for n in range(1, 6):
                await ms.save_memory(f"user-{w % 8}", f"round {r} worker {w} item {n}")
    text = "round 1 worker 1 item 3"
    found = await ms.retrieve_memory("user-1", text, k=10)
    exact = [r.memory.text for r in found if (r.dense_score or 0.0) >= EXACT]
    assert text in exact and exact == [r.memory.text for r in found[: len(exact)]]
