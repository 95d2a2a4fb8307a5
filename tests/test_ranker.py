"""The learned reranker: its shipped weights, and what it does to a person's own conversation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from memory import ConfigError, MemorySystem
from memory.context import FrozenMap
from memory.ranker import (
    EXACT,
    FAR,
    FEATURES,
    MODEL_FEATURES,
    WEIGHTS_FILE,
    is_only_question,
    load_model,
    session_features,
    sessions,
)
from memory.ranker_trees import Forest
from memory.records import Memory, ScoredMemory

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
        "import numpy as np\n"
        "from memory.ranker import load_model, FEATURES, MODEL_FEATURES\n"
        "m = load_model()\n"
        "assert m.names == MODEL_FEATURES, m.names\n"
        "heavy = ('sklearn', 'torch', 'sentence_transformers', 'lightgbm')\n"
        "heavy = sorted(n for n in heavy if n in sys.modules)\n"
        "assert m.trees is not None and m.scores(np.zeros((5, len(FEATURES)))).shape == (5,)\n"
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


def _memory(mid: int, minute: float, scope: str = "dm") -> Memory:
    when = datetime(2026, 5, 1, 12, tzinfo=UTC) + timedelta(minutes=minute)
    return Memory(mid, "ana", f"Ana: turn {mid}", "exchange", when, FrozenMap({}), scope=scope)


def test_sessions_follow_the_session_gap_and_never_join_two_scopes() -> None:
    # pool order: a hit of the second conversation first; 200 is said in another scope
    pool = [_memory(12, 300), _memory(1, 0), _memory(2, 20), _memory(13, 310), _memory(200, 21, "guild:1")]
    assert sessions(pool, 30).tolist() == [0, 1, 1, 0, 2]
    assert sessions(pool, 0).tolist() == [0, 1, 2, 3, 4]  # no sessions at all: each stands alone


def test_session_features_read_the_mates_and_the_distance_to_the_best() -> None:
    # two conversations: 12, 14 and 40 (the pool's best is 12), then 1 and 2
    pool = [_memory(12, 300), _memory(1, 0), _memory(14, 300), _memory(2, 0), _memory(40, 300)]
    fused = np.array([1.0, 0.8, 0.5, 0.4, 0.1])
    dense = np.array([0.9, 1.0, 0.2, 0.3, 0.0])
    lexical = np.array([0.0, 0.5, 1.0, 0.7, 0.2])
    out = session_features(pool, fused, dense, lexical, 30.0)
    column = {name: out[:, i] for i, name in enumerate(FEATURES[35:48])}
    assert column["session_mate_fused"].tolist() == [0.5, 0.4, 1.0, 0.8, 1.0]
    assert column["session_mate_dense"].tolist() == [0.2, 0.3, 0.9, 1.0, 0.9]
    assert column["session_mate_lexical"].tolist() == [1.0, 0.7, 0.2, 0.5, 1.0]
    assert np.allclose(column["session_size_log"], np.log1p([3, 2, 3, 2, 3]))
    assert np.allclose(column["session_rank_log"], np.log1p([0, 1, 0, 1, 0]))
    assert np.allclose(column["session_fused_sum"], [1.6, 1.2, 1.6, 1.2, 1.6])
    assert column["session_of_best"].tolist() == [1, 0, 1, 0, 1]
    assert np.allclose(column["turns_to_best_log"], np.log1p([0, FAR, 2, FAR, 28]))
    assert column["near2_count"].tolist() == [1, 1, 1, 1, 0]
    assert column["near2_fused"].tolist() == [0.5, 0.4, 1.0, 0.8, 0.0]


# A LightGBM ``dump_model()`` tree, by hand: x0 <= 0.5 (NaN read as 0) then x1 <= 2 (NaN: left).
DUMP = {
    "tree_info": [
        {
            "tree_structure": {
                "split_feature": 0,
                "threshold": 0.5,
                "decision_type": "<=",
                "default_left": False,
                "missing_type": "None",
                "left_child": {"leaf_value": -1.0},
                "right_child": {
                    "split_feature": 1,
                    "threshold": 2.0,
                    "decision_type": "<=",
                    "default_left": True,
                    "missing_type": "NaN",
                    "left_child": {"leaf_value": 0.25},
                    "right_child": {"leaf_value": 2.0},
                },
            }
        },
        {"tree_structure": {"leaf_value": 0.5}},  # a stump: a constant
    ]
}


def test_the_numpy_trees_follow_lightgbms_split_and_missing_value_rules() -> None:
    forest = Forest.from_json(json.loads(json.dumps(Forest.from_lightgbm(DUMP).to_json())))
    x = np.array([[0.5, 9.0], [np.nan, 9.0], [0.6, 2.0], [0.6, np.nan], [0.6, 2.01]])
    assert forest.depth == 2
    assert forest.predict(x).tolist() == [-0.5, -0.5, 0.75, 0.75, 2.5]


def test_a_damaged_tree_in_the_weights_file_says_what_to_do(tmp_path: Path) -> None:
    data = json.loads(WEIGHTS_FILE.read_text())
    assert data["kind"] == "logistic+lambdamart"
    data["trees"]["left"][0][0] = 10_000  # a child outside its tree
    path = tmp_path / "damaged.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="a tree's child index lies outside the tree"):
        load_model.__wrapped__(path)


def test_the_shipped_trees_give_the_trainers_lightgbm_predictions() -> None:
    data = json.loads(WEIGHTS_FILE.read_text())
    model = load_model()
    assert model.trees is not None and model.kind == data["kind"]
    x = np.asarray(data["check"]["x"], dtype=np.float64)
    assert x.shape[1] == len(FEATURES) and len(x) >= 8
    assert np.abs(model.trees.predict(x) - np.asarray(data["check"]["trees"])).max() <= 1e-6
    assert np.ptp(model.trees.predict(x)) > 0.1  # the trees do something on real rows
    a, b, c = model.combine
    assert np.allclose(model.logits(x), a * model.linear(x) + b * model.trees.predict(x) + c)


def test_the_tree_evaluator_equals_lightgbm_on_a_fixed_input() -> None:
    lgb = pytest.importorskip("lightgbm")  # a training-time tool: the check above needs none
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1200, 6))
    x[rng.random(x.shape) < 0.05] = 0.0
    x[rng.random(x.shape) < 0.05] = np.nan
    y = (np.nan_to_num(x[:, 0]) + x[:, 1] * x[:, 2] > 0.2).astype(int)
    for zero_as_missing in (False, True):
        params = {"objective": "lambdarank", "num_leaves": 7, "seed": 0, "verbose": -1}
        params |= {"deterministic": True, "num_threads": 1, "zero_as_missing": zero_as_missing}
        booster = lgb.train(params, lgb.Dataset(x, y, group=[60] * 20), num_boost_round=40)
        forest = Forest.from_json(
            json.loads(json.dumps(Forest.from_lightgbm(booster.dump_model()).to_json()))
        )
        assert np.abs(forest.predict(x) - booster.predict(x)).max() <= 1e-6
