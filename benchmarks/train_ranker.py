"""Train the reranker (memory/ranker.py) on locomo-dev and write the model's weights file.

The candidates and features are those the running system computes: the conversations are
stored through ``MemorySystem`` (one exchange memory per turn, the session time as its time,
as bench_recall.py does), and every question's pool and feature rows come from the shipped
``Retriever`` over that database. A logistic regression is fitted on the feature rows (label:
the turn is evidence for the question), chosen and measured leave-one-conversation-out: fit
on four conversations, rank the fifth, average over the five folds. The weights written are
fitted on all five (so the in-sample figure is an optimistic one; LOCO is the honest one).

Then LambdaMART trees (LightGBM, one query group per pool) are fitted the same way, and the
stack of both (their logits weighed equally after scaling each by its spread, then one
calibration on the out-of-fold logits) ships when it measures better leave-one-conversation-
out (``--kind``). A table of Recall@10 (overall, per category, category 5 apart, and the
shipped model in-sample) and the ranker's CPU per query go to stderr, the JSON to stdout.

scikit-learn and LightGBM are needed here only (dev tools: scikit-learn comes with
sentence-transformers, LightGBM is ``lightgbm==4.7.0``); the running system reads the JSON
with numpy, trees included (``Booster.dump_model()`` turned into arrays). The built database
and the query vectors are cached under /tmp (``--cache``), never in the repository: embedding
the set is slow on a busy machine.

The second stage learns from the first stage's scores, so each embedding model has its own
weights (memory/models.py names the file): ``--model all-mpnet-base-v2`` trains on mpnet's
dense scores and writes memory/ranker_weights_mpnet.json.

The cache is keyed by the encoder's model, backend and number format: an int8 ONNX export's
vectors differ a little from torch's, so ``MEMORY_BOT_ENCODER_BACKEND=onnx`` builds and trains
on its own (and writes the same weights file: retrain for the backend you ship).

    .venv/bin/python benchmarks/train_ranker.py [--model NAME] [--kind auto|logistic|stacked]
        [--data DIR] [--cache DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from bench_recall import DEFAULT_DATA, Question, build, load, recall_table

from memory import load_settings, models
from memory.encoder import effective_precision  # internal: the number format in use
from memory.index import PerUserIndex
from memory.inspector import Inspector, open_encoder
from memory.ranker import (
    FEATURES,
    MODEL_FEATURES,
    POOL_SIZE,
    PRINCIPAL_COLUMNS,
    Pool,
    RankerModel,
    expand,
    final_order,
    weights_path,
)
from memory.ranker_basis import Basis, principal_features
from memory.ranker_trees import Forest
from memory.records import Memory
from memory.retrieval import Retriever

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)


@dataclass
class Sample:
    """One question's pool: feature rows, labels, and the dia ids in fusion order."""

    question: Question
    x: np.ndarray
    ids: list[str]
    memories: tuple[Memory, ...]
    pool: Pool


async def _inline(fn: Any, *args: Any) -> Any:
    return fn(*args)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def encoder_key(settings: Any) -> str:
    """What the vectors depend on: the model, the backend and its number format.

    An int8 ONNX export's vectors differ from torch's (cosine about 0.99), and the ranker
    learns from their scores: each gets its own cached database, query vectors and weights
    (``MEMORY_BOT_ENCODER_BACKEND=onnx benchmarks/train_ranker.py``).
    """
    enc = settings.encoder
    return f"{enc.model}|{enc.backend}|{effective_precision(enc)}"


async def cached_database(data: Path, cache: Path, settings: Any) -> Path:
    """The locomo-dev conversations stored through MemorySystem, built once per encoder."""
    turns, _ = load(data, None)
    slug = hashlib.sha256(f"{data}|{encoder_key(settings)}|v2".encode()).hexdigest()[:12]
    folder = cache / f"db-{slug}"
    done = folder / "BUILT"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        _log(f"building {sum(map(len, turns.values()))} memories in {folder} (once) ...")
        seconds = await build(folder, settings, turns)
        done.write_text(f"{seconds:.1f}\n")
    return folder


def _settings(model: str | None) -> Any:
    """The settings of stage 1 (``model``: encoder.model; the environment's backend applies)."""
    encoder = {"model": model} if model else {}
    return load_settings(overrides={"encoder": encoder, "retrieval": {"reranker": False}})


async def query_vectors(texts: Sequence[str], cache: Path, settings: Any, model: str | None) -> np.ndarray:
    key = hashlib.sha256("\n".join([encoder_key(settings), *texts]).encode()).hexdigest()[:12]
    path = cache / f"queries-{key}.npy"
    if path.exists():
        cached: np.ndarray = np.load(path)
        return cached
    _log(f"embedding {len(texts)} questions (once) ...")
    encoder = await open_encoder(settings, model)
    try:
        vectors = np.vstack([await encoder.encode(list(texts[i : i + 64])) for i in range(0, len(texts), 64)])
    finally:
        await encoder.close()
    np.save(path, vectors)
    return vectors


async def pools(
    data: Path, cache: Path, model: str | None = None
) -> tuple[list[Sample], float, dict[str, np.ndarray]]:
    """Every question's candidate pool and features (principal columns 0: ``Folds`` fills them),
    the CPU milliseconds per query of computing the features (``model``: encoder.model), and
    every conversation's memory vectors (one row per memory) for the basis."""
    settings = _settings(model)
    folder = await cached_database(data, cache, settings)
    _, questions = load(data, None)
    questions = [q for q in questions if q.evidence]
    samples: list[Sample] = []
    features_cpu = 0.0
    async with Inspector(folder, settings) as inspector:
        store = inspector.store
        model = await inspector.stored_model()
        vectors = await query_vectors([q.text for q in questions], cache, settings, model)
        retriever = Retriever(store, settings.retrieval, _inline)
        indexes: dict[str, PerUserIndex] = {}
        matrices: dict[str, np.ndarray] = {}
        for q, vector in zip(questions, vectors, strict=True):
            if q.user not in indexes:
                rows = await store.embeddings_for(await store.memory_ids(q.user))
                index = PerUserIndex(vectors.shape[1], settings.encoder.model)
                matrix = np.vstack([np.frombuffer(r[2], np.float32) for r in rows])
                index.add(q.user, [r[0] for r in rows], matrix)
                indexes[q.user] = index
                matrices[q.user] = matrix

            async def embed(v: np.ndarray = vector) -> np.ndarray:
                return v

            pool = await retriever.pool(indexes[q.user], q.user, q.text, embed, None)
            ids = [str(m.metadata.get("dia_id")) for m in pool.memories]
            cpu = time.process_time()
            x = pool.features()
            features_cpu += time.process_time() - cpu
            samples.append(Sample(q, x, ids, pool.memories, pool))
    return samples, 1000 * features_cpu / max(1, len(samples)), matrices


@dataclass(frozen=True)
class Folds:
    """The conversations' pools, and the basis each fold is allowed to see.

    The principal columns depend on a basis fitted on memory vectors (memory/ranker_basis.py):
    leave-one-conversation-out, each fold fits its basis on the four training conversations'
    vectors only, and fills every pool's columns from it; the shipped model's basis is fitted
    on all five.
    """

    samples: list[Sample]
    vectors: dict[str, np.ndarray]
    model: str  # encoder.model of stage 1

    def users(self) -> list[str]:
        return sorted({s.question.user for s in self.samples})

    def projected(self, users: Sequence[str]) -> tuple[Basis, list[Sample]]:
        """The basis of these conversations' vectors, and every pool with its columns from it."""
        basis = Basis.fit(self.model, np.vstack([self.vectors[u] for u in users]))
        filled = []
        for s in self.samples:
            x = s.x.copy()
            x[:, PRINCIPAL_COLUMNS] = principal_features(basis, s.pool.vectors, len(s.ids))
            filled.append(replace(s, x=x))
        return basis, filled

    def split(self) -> Iterator[tuple[str, list[Sample], list[int], list[Sample]]]:
        """Per held-out conversation: its name, the training pools, the held-out positions, and
        every pool as that fold sees it (positions index ``samples``)."""
        users = self.users()
        for user in users:
            _, seen = self.projected([u for u in users if u != user])
            train = [s for s in seen if s.question.user != user]
            test = [i for i, s in enumerate(seen) if s.question.user == user]
            yield user, train, test, seen

    def whole(self) -> tuple[Basis, list[Sample]]:
        """The shipped model's basis (every conversation) and the pools under it."""
        return self.projected(self.users())


def fit(samples: Sequence[Sample], c: float) -> RankerModel:
    """A logistic regression on standardised features (scikit-learn, at training time only)."""
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

    x = expand(np.vstack([s.x for s in samples]))
    y = _labels(samples)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    lr = LogisticRegression(C=c, max_iter=5000)
    lr.fit((x - mean) / scale, y)
    return RankerModel(MODEL_FEATURES, mean, scale, lr.coef_[0].copy(), float(lr.intercept_[0]))


def rerank(model: RankerModel, samples: Sequence[Sample]) -> list[list[str]]:
    """Each pool in the order the running system returns (``final_order``)."""
    return [[s.ids[i] for i in final_order(s.memories, s.x, model.scores(s.x))] for s in samples]


def loco(folds: Folds, c: float) -> list[list[str]]:
    """Leave-one-conversation-out orders: every conversation ranked by a model fitted on the others."""
    orders: dict[int, list[str]] = {}
    for _, train, test, seen in folds.split():
        model = fit(train, c)
        for i, order in zip(test, rerank(model, [seen[i] for i in test]), strict=True):
            orders[i] = order
    return [orders[i] for i in range(len(folds.samples))]


# LambdaMART (LightGBM, at training time only): small trees, many of them, bagged; chosen
# leave-one-conversation-out among a few settings (15 leaves / 200 rounds: 0.820-0.826).
LAMBDAMART: dict[str, Any] = {
    "objective": "lambdarank",
    "metric": "ndcg",
    "learning_rate": 0.05,
    "num_leaves": 7,
    "min_data_in_leaf": 40,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "lambdarank_truncation_level": 20,
    "seed": 0,
    "deterministic": True,
    "num_threads": 2,
    "verbose": -1,
}
LAMBDAMART_ROUNDS = 300


def _labels(samples: Sequence[Sample]) -> np.ndarray:
    return np.concatenate([[i in s.question.evidence for i in s.ids] for s in samples]).astype(int)


def fit_trees(samples: Sequence[Sample], seed: int = 0) -> Forest:
    """LambdaMART over ``FEATURES`` (one query group per pool), as numpy-evaluable trees
    (``seed``: LightGBM's, which draws the bagged rows and features)."""
    try:
        import lightgbm as lgb  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        sys.exit(
            "train_ranker: the trees need LightGBM (pip install lightgbm==4.7.0); or pass --kind logistic"
        )
    data = lgb.Dataset(
        np.vstack([s.x for s in samples]), _labels(samples), group=[len(s.ids) for s in samples]
    )
    booster = lgb.train({**LAMBDAMART, "seed": seed}, data, num_boost_round=LAMBDAMART_ROUNDS)
    return Forest.from_lightgbm(booster.dump_model())


def stacked(linear: RankerModel, trees: Forest, samples: Sequence[Sample]) -> RankerModel:
    """The two parts weighed equally after scaling each by its spread over ``samples`` (its
    training rows); calibrated later (``calibrate``)."""
    x = np.vstack([s.x for s in samples])
    spread = float(linear.linear(x).std()) or 1.0, float(trees.predict(x).std()) or 1.0
    return replace(linear, trees=trees, combine=(1 / spread[0], 1 / spread[1], 0.0))


def calibrate(model: RankerModel, logits: np.ndarray, labels: np.ndarray) -> RankerModel:
    """One scale and bias on the stacked logit, fitted on out-of-fold logits: the order is
    kept, the score becomes a probability again (what the responder's floor reads)."""
    from sklearn.linear_model import LogisticRegression

    platt = LogisticRegression(C=1e6, max_iter=1000).fit(logits[:, None], labels)
    a, b, _ = model.combine
    k, c = float(platt.coef_[0, 0]), float(platt.intercept_[0])
    return replace(model, combine=(k * a, k * b, c))


def loco_stacked(folds: Folds, c: float, seed: int = 0) -> tuple[dict[str, list[list[str]]], np.ndarray]:
    """Leave-one-conversation-out orders of the trees alone and of the stack, and the stack's
    out-of-fold logits (every row, in sample order)."""
    orders: dict[str, dict[int, list[str]]] = {"lambdamart": {}, "stacked": {}}
    logits: dict[int, np.ndarray] = {}
    for user, train, test, seen in folds.split():
        _log(f"  trees without {user} ...")
        model = stacked(fit(train, c), fit_trees(train, seed), train)
        assert model.trees is not None
        for i in test:
            s = seen[i]
            logits[i] = model.logits(s.x)
            orders["stacked"][i] = [s.ids[j] for j in final_order(s.memories, s.x, logits[i])]
            raw = model.trees.predict(s.x)
            orders["lambdamart"][i] = [s.ids[j] for j in final_order(s.memories, s.x, raw)]
    count = len(folds.samples)
    found = {name: [got[i] for i in range(count)] for name, got in orders.items()}
    return found, np.concatenate([logits[i] for i in range(count)])


def loco_with_gbm(folds: Folds, c: float) -> dict[str, list[list[str]]]:
    """Leave-one-conversation-out orders of a gradient-boosted model and of the mean of its
    probability and the logistic regression's (the issue's ensemble; measured, not shipped)."""
    from sklearn.ensemble import HistGradientBoostingClassifier  # type: ignore[import-untyped]

    orders: dict[str, dict[int, list[str]]] = {"gbm": {}, "mean_lr_gbm": {}}
    for _, train, test, seen in folds.split():
        y = np.concatenate([[i in s.question.evidence for i in s.ids] for s in train]).astype(int)
        gbm = HistGradientBoostingClassifier(
            max_iter=300,
            learning_rate=0.05,
            max_leaf_nodes=15,
            min_samples_leaf=40,
            l2_regularization=1.0,
            random_state=0,
        ).fit(np.vstack([s.x for s in train]), y)
        lr = fit(train, c)
        for i in test:
            s = seen[i]
            p_gbm = gbm.predict_proba(s.x)[:, 1]
            for name, scores in (("gbm", p_gbm), ("mean_lr_gbm", (p_gbm + lr.scores(s.x)) / 2)):
                orders[name][i] = [s.ids[j] for j in final_order(s.memories, s.x, scores)]
    return {name: [found[i] for i in range(len(folds.samples))] for name, found in orders.items()}


def _table(samples: Sequence[Sample], orders: Sequence[list[str]]) -> dict[str, dict[str, Any]]:
    return recall_table((s.question, order) for s, order in zip(samples, orders, strict=True))


def ranker_cost(model: RankerModel, samples: Sequence[Sample]) -> dict[str, float]:
    """CPU milliseconds per query of the ranker as the running system calls it: the features
    of the pool (their text analysis cached, as for memories that recur across queries), the
    scores, the final order; each the median of three passes over every query."""

    def per_query(step: Any) -> float:
        runs = []
        for _ in range(3):
            started = time.process_time()
            for s in samples:
                step(s)
            runs.append(1000 * (time.process_time() - started) / max(1, len(samples)))
        return round(sorted(runs)[1], 3)

    cost = {
        "features": per_query(lambda s: s.pool.features(model.basis)),
        "scores": per_query(lambda s: model.scores(s.x)),
        "order": per_query(lambda s: final_order(s.memories, s.x, model.scores(s.x))),
    }
    cost["order"] = round(max(cost["order"] - cost["scores"], 0.0), 3)
    cost["total"] = round(cost["features"] + cost["scores"] + cost["order"], 3)
    return cost


async def measure(
    data: Path,
    cache: Path,
    encoder_model: str | None = None,
    *,
    ensemble: bool = False,
    kind: str = "auto",
    seeds: int = 1,
) -> tuple[RankerModel, dict[str, Any], np.ndarray]:
    """The model fitted on every conversation, the figures (fusion, LOCO, in-sample), and a
    few feature rows for the weights file's tree check.

    ``kind``: "logistic", "stacked" (with LambdaMART trees), or "auto": the stack when its
    LOCO Recall@10 beats the logistic regression's and category 5 stays within 0.01 of it.
    """
    started = time.perf_counter()
    pooled, features_ms, vectors = await pools(data, cache, encoder_model)
    _log(f"{len(pooled)} pools in {time.perf_counter() - started:.1f} s")
    stage1 = encoder_model or load_settings().encoder.model
    folds = Folds(pooled, vectors, stage1)
    by_c = {c: _table(pooled, loco(folds, c)) for c in C_GRID}
    best_c = max(C_GRID, key=lambda c: by_c[c]["overall"]["recall@10"])
    basis, samples = folds.whole()
    model = replace(fit(samples, best_c), basis=basis)
    loco_tables = {"logistic": by_c[best_c]}
    if kind != "logistic":
        orders, logits = loco_stacked(folds, best_c)
        loco_tables |= {name: _table(samples, found) for name, found in orders.items()}
        wins = (
            _r10(loco_tables["stacked"]) > _r10(loco_tables["logistic"])
            and _cat5(loco_tables["stacked"]) >= _cat5(loco_tables["logistic"]) - 0.01
        )
        if kind == "stacked" or wins:
            model = calibrate(stacked(model, fit_trees(samples), samples), logits, _labels(samples))
    shipped = "logistic" if model.trees is None else "stacked"
    report = {
        "dataset": str(data),
        "model": stage1,
        "questions": len(samples),
        "pool": POOL_SIZE,
        "features": len(FEATURES),
        "model_inputs": len(MODEL_FEATURES),
        "kind": model.kind,
        "loco_recall@10_by_C": {str(c): t["overall"]["recall@10"] for c, t in by_c.items()},
        "C": best_c,
        "features_ms_first_sight": round(features_ms, 3),
        "ranker_ms_per_query": ranker_cost(model, samples),
        "fusion": _table(samples, [s.ids for s in samples]),
        "reranked_loco": loco_tables[shipped],
        "reranked_in_sample": _table(samples, rerank(model, samples)),
        **{f"{name}_loco": table for name, table in loco_tables.items()},
    }
    if seeds > 1 and model.trees is not None:
        report["stacked_loco_by_seed"] = seed_spread(folds, best_c, seeds, _r10(loco_tables["stacked"]))
    if ensemble:
        for name, found in loco_with_gbm(folds, best_c).items():
            report[f"{name}_loco"] = _table(samples, found)
    check = np.vstack([s.x[:4] for s in samples[:: max(1, len(samples) // 8)]])
    return model, report, check


def seed_spread(folds: Folds, c: float, seeds: int, first: float) -> dict[str, Any]:
    """The stack's LOCO Recall@10 with LightGBM seeds 0..seeds-1 (``first``: seed 0's, measured
    already). The bagged trees move it by several thousandths from seed to seed: the spread
    says how much of a difference between two settings is noise."""
    found = [first]
    for seed in range(1, seeds):
        _log(f" seed {seed} ...")
        found.append(_r10(_table(folds.samples, loco_stacked(folds, c, seed)[0]["stacked"])))
    return {"recall@10": found, "mean": round(float(np.mean(found)), 4), "min": min(found), "max": max(found)}


def _r10(table: dict[str, Any]) -> float:
    return float(table["overall"]["recall@10"])


def _cat5(table: dict[str, Any]) -> float:
    return float(table.get("category_5_adversarial", {}).get("recall@10", 0.0))


COLUMNS: tuple[tuple[str, str], ...] = (
    ("overall", "overall"),
    ("1", "multi-hop"),
    ("2", "temporal"),
    ("3", "open-domain"),
    ("4", "single-hop"),
    ("category_5_adversarial", "cat. 5"),
)


def loco_table(report: dict[str, Any]) -> str:
    """Recall@10 per setting: fusion, every LOCO model measured, and the shipped in-sample."""
    rows = [("fusion", report["fusion"])]
    loco = [(key.removesuffix("_loco"), t) for key, t in report.items() if key.endswith("_loco")]
    rows += [(f"{name} (LOCO)", t) for name, t in loco if name != "reranked"]
    rows += [(f"shipped: {report['kind']} (in-sample)", report["reranked_in_sample"])]
    lines = ["| Recall@10 | " + " | ".join(name for _, name in COLUMNS) + " |"]
    lines.append("|---" * (len(COLUMNS) + 1) + "|")
    for label, table in rows:
        cells = [f"{table[key]['recall@10']:.3f}" if key in table else "-" for key, _ in COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if spread := report.get("stacked_loco_by_seed"):
        lines.append(
            f"stacked (LOCO) over {len(spread['recall@10'])} LightGBM seeds: mean {spread['mean']:.3f},"
            f" {spread['min']:.3f}-{spread['max']:.3f}"
        )
    cost = report["ranker_ms_per_query"]
    lines.append(
        f"ranker CPU per query ({report['questions']} queries): features {cost['features']:.2f} ms"
        f" + scores {cost['scores']:.2f} + order {cost['order']:.2f} = {cost['total']:.2f} ms"
        f" (features on first sight of the memories: {report['features_ms_first_sight']:.2f} ms)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the locomo-dev folder")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/memory-bot-ranker"), help="cache folder")
    parser.add_argument("--model", help="encoder.model of stage 1 (default: the configured model)")
    parser.add_argument(
        "--weights", type=Path, help="the weights file to write (default: the model's, memory/models.py)"
    )
    parser.add_argument("--no-write", action="store_true", help="measure only; keep the weights file")
    parser.add_argument(
        "--ensemble", action="store_true", help="also measure GBM and the mean of LR and GBM (LOCO; slow)"
    )
    parser.add_argument(
        "--kind",
        choices=("auto", "logistic", "stacked"),
        default="auto",
        help="the model to ship (auto: the stack with LambdaMART when it measures better LOCO)",
    )
    parser.add_argument(
        "--seeds", type=int, default=1, help="also measure the stack's LOCO with this many LightGBM seeds"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"train_ranker: no dataset at {args.data}; pass --data")
    model, report, check = asyncio.run(
        measure(args.data, args.cache, args.model, ensemble=args.ensemble, kind=args.kind, seeds=args.seeds)
    )
    if not args.no_write:
        loco_r10 = report["reranked_loco"]["overall"]["recall@10"]
        target = args.weights or weights_path(report["model"])
        spec = models.find(report["model"])
        stage1 = spec.name if spec else report["model"]
        info = {"C": report["C"], "loco_recall@10": loco_r10, "trained_on": "locomo-dev"}
        info |= {"stage1_model": stage1, "stage1_encoder": encoder_key(_settings(args.model))}
        if model.trees is not None:
            info["lambdamart"] = {**LAMBDAMART, "rounds": LAMBDAMART_ROUNDS}
        model.save(target, info, check)
        _log(f"wrote {target}")
    _log(loco_table(report))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
