"""Regression trees of a LightGBM model, evaluated in numpy over a whole pool at once.

Why: the reranker's LambdaMART part (benchmarks/train_ranker.py) is trained with LightGBM, but
the running system must not need LightGBM (nor pay a per-call model overhead). The trainer
turns the public ``Booster.dump_model()`` into flat arrays (``Forest.from_lightgbm``), stored in
the ranker's JSON.

Small trees (at most ``LOOKUP_SPLITS`` splits each, the shipped ones have 6) are evaluated
without walking them: every split of every tree is decided at once for every row, each
tree's decisions form a bit code, and a table built at load time maps the code to the leaf's
value (a pool of 60 through 300 trees: a handful of array operations, well under a
millisecond; walking them level by level cost 5 ms). Larger trees are walked in lock step,
one depth level per numpy step.

Only numerical splits (``decision_type`` "<=") are supported, with LightGBM's rules for
missing values: ``None`` reads NaN as 0, ``Zero`` sends 0 and NaN the default way, ``NaN``
sends NaN the default way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MISSING = ("None", "Zero", "NaN")
LOOKUP_SPLITS = 10  # a table of 2**10 leaf values per tree at most
ZERO = 1e-35  # LightGBM's kZeroThreshold: what counts as 0 for ``Zero`` missing values


@dataclass(frozen=True, slots=True)
class Forest:
    """Trees as (trees, nodes) arrays; a leaf has feature -1 and its output in ``value``.

    Node 0 is each tree's root; ``left`` / ``right`` index nodes of the same tree.
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    default_left: np.ndarray
    missing: np.ndarray
    depth: int
    lookup: _Lookup | None

    @classmethod
    def from_lightgbm(cls, dump: Mapping[str, Any]) -> Forest:
        """From ``Booster.dump_model()`` (its ``tree_info``)."""
        trees = []
        for info in dump["tree_info"]:
            nodes: list[dict[str, Any]] = []
            _flatten(info["tree_structure"], nodes)
            trees.append(nodes)
        return cls.from_nodes(trees)

    @classmethod
    def from_nodes(cls, trees: Sequence[Sequence[Mapping[str, Any]]]) -> Forest:
        width = max((len(t) for t in trees), default=1)
        shape = (len(trees), width)
        feature = np.full(shape, -1, dtype=np.int64)
        threshold = np.zeros(shape)
        left = np.zeros(shape, dtype=np.int64)
        right = np.zeros(shape, dtype=np.int64)
        value = np.zeros(shape)
        default_left = np.zeros(shape, dtype=bool)
        missing = np.zeros(shape, dtype=np.int64)
        for t, nodes in enumerate(trees):
            for i, node in enumerate(nodes):
                feature[t, i] = node["feature"]
                threshold[t, i] = node["threshold"]
                left[t, i], right[t, i] = node["left"], node["right"]
                value[t, i] = node["value"]
                default_left[t, i] = node["default_left"]
                missing[t, i] = node["missing"]
        return _forest(feature, threshold, left, right, value, default_left, missing)

    def to_json(self) -> dict[str, Any]:
        """Plain lists for the weights file (thresholds and values at full precision)."""
        return {
            "feature": self.feature.tolist(),
            "threshold": [[float(v) for v in row] for row in self.threshold],
            "left": self.left.tolist(),
            "right": self.right.tolist(),
            "value": [[float(v) for v in row] for row in self.value],
            "default_left": self.default_left.astype(int).tolist(),
            "missing": self.missing.tolist(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Forest:
        """The inverse of ``to_json``; a ValueError / KeyError / TypeError when malformed."""
        feature = np.asarray(data["feature"], dtype=np.int64)
        threshold = np.asarray(data["threshold"], dtype=np.float64)
        left = np.asarray(data["left"], dtype=np.int64)
        right = np.asarray(data["right"], dtype=np.int64)
        value = np.asarray(data["value"], dtype=np.float64)
        default_left = np.asarray(data["default_left"], dtype=bool)
        missing = np.asarray(data["missing"], dtype=np.int64)
        arrays = (threshold, left, right, value, default_left, missing)
        if feature.ndim != 2 or any(a.shape != feature.shape for a in arrays):
            raise ValueError("the trees' arrays differ in shape")
        children = np.concatenate([left[feature >= 0], right[feature >= 0]])
        if ((children <= 0) | (children >= feature.shape[1])).any():
            raise ValueError("a tree's child index lies outside the tree")
        if ((missing < 0) | (missing >= len(MISSING))).any():
            raise ValueError("unknown missing-value rule in a tree")
        return _forest(feature, threshold, left, right, value, default_left, missing)

    @property
    def features_used(self) -> int:
        """One more than the highest feature index a split reads (0 for stumps only)."""
        return int(self.feature.max()) + 1 if self.feature.size else 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The sum of the trees' leaf values per row of ``x`` (LightGBM's raw score)."""
        n, trees = len(x), self.feature.shape[0]
        if n == 0 or trees == 0:
            return np.zeros(n)
        if self.lookup is not None:
            return self.lookup.predict(x)
        tree = np.arange(trees)[None, :]
        row = np.arange(n)[:, None]
        node = np.zeros((n, trees), dtype=np.int64)
        for _ in range(self.depth):
            feature = self.feature[tree, node]
            inner = feature >= 0
            v = x[row, np.maximum(feature, 0)]
            split = (self.threshold[tree, node], self.default_left[tree, node], self.missing[tree, node])
            go_left = _goes_left(v, *split)
            step = np.where(go_left, self.left[tree, node], self.right[tree, node])
            node = np.where(inner, step, node)
        return np.asarray(self.value[tree, node].sum(axis=1))


@dataclass(frozen=True, slots=True)
class _Lookup:
    """Every tree's splits, split-major (row j * trees + t: split j of tree t), and its leaf
    value per bit code (bit j: split j went left).

    Why split-major: the features are read as one contiguous row per feature (the pool's
    columns) and every split's row is copied whole; gathering the same values one element at
    a time from (rows, trees, splits) cost a third more of the trees' time.
    """

    feature: np.ndarray  # (splits * trees,)
    threshold: np.ndarray  # (splits * trees, 1), likewise default_left and missing
    default_left: np.ndarray
    missing: np.ndarray
    table: np.ndarray
    bits: np.ndarray  # (splits,)
    offsets: np.ndarray  # (trees, 1): each tree's first entry in ``table``
    plain: bool  # no split treats 0 as missing

    def predict(self, x: np.ndarray) -> np.ndarray:
        v = np.ascontiguousarray(x.T)[self.feature]  # (splits * trees, rows)
        if self.plain and not np.isnan(x).any():
            go_left = v <= self.threshold  # no missing values to route: the common case
        else:
            go_left = _goes_left(v, self.threshold, self.default_left, self.missing)
        by_split = go_left.reshape(len(self.bits), -1).astype(np.float32)
        codes = (self.bits @ by_split).astype(np.int64)  # exact below 2**24
        codes = codes.reshape(len(self.offsets), -1) + self.offsets  # (trees, rows)
        return np.asarray(np.take(self.table, codes).sum(axis=0))


def _goes_left(
    v: np.ndarray, threshold: np.ndarray, default_left: np.ndarray, missing: np.ndarray
) -> np.ndarray:
    """LightGBM's decision of a numerical split (``missing``: an index of ``MISSING``)."""
    nan = np.isnan(v)
    if not nan.any() and not (missing == 1).any():
        return np.asarray(v <= threshold)
    absent = ((missing == 2) & nan) | ((missing == 1) & (nan | (np.abs(v) <= ZERO)))
    v = np.where((missing == 0) & nan, 0.0, v)
    return np.asarray(np.where(absent, default_left, v <= threshold))


def _forest(
    feature: np.ndarray,
    threshold: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    value: np.ndarray,
    default_left: np.ndarray,
    missing: np.ndarray,
) -> Forest:
    depth = _depth(feature, left, right)
    splits = (feature >= 0).sum(axis=1)
    widest = int(splits.max()) if splits.size else 0
    if widest > LOOKUP_SPLITS:
        return Forest(feature, threshold, left, right, value, default_left, missing, depth, None)
    trees = feature.shape[0]
    shape = (trees, max(widest, 1))
    at = np.zeros(shape, dtype=np.int64)  # node of split j; padding: a split never read
    threshold_of = np.full(shape, np.inf)
    table = np.zeros((trees, 2 ** shape[1]))
    codes = np.arange(2 ** shape[1])
    for t in range(trees):
        inner = np.flatnonzero(feature[t] >= 0)
        at[t, : len(inner)] = inner
        threshold_of[t, : len(inner)] = threshold[t, inner]
        bit_of = {int(node): j for j, node in enumerate(inner)}
        node = np.zeros(len(codes), dtype=np.int64)
        for _ in range(depth):  # every code walks its tree once, here and not per query
            bit = np.array([bit_of.get(int(n), 0) for n in node])
            went_left = (codes >> bit) & 1 == 1
            step = np.where(went_left, left[t, node], right[t, node])
            node = np.where(feature[t, node] >= 0, step, node)
        table[t] = value[t, node]
    rows = np.arange(trees)[:, None]
    missing_of = np.where(feature[rows, at] >= 0, missing[rows, at], 0)

    def split_major(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a.T).reshape(-1, 1)

    lookup = _Lookup(
        split_major(np.where(feature[rows, at] >= 0, feature[rows, at], 0)).ravel(),
        split_major(threshold_of),
        split_major(default_left[rows, at]),
        split_major(missing_of),
        table.ravel(),
        (1 << np.arange(shape[1])).astype(np.float32),
        (np.arange(trees, dtype=np.int64) * table.shape[1])[:, None],
        not (missing_of == 1).any(),
    )
    return Forest(feature, threshold, left, right, value, default_left, missing, depth, lookup)


def _flatten(node: Mapping[str, Any], out: list[dict[str, Any]]) -> int:
    """Append ``node`` and its subtree to ``out`` (pre-order); its index."""
    at = len(out)
    if "leaf_value" in node:
        leaf = {"feature": -1, "threshold": 0.0, "left": 0, "right": 0, "value": float(node["leaf_value"])}
        out.append({**leaf, "default_left": False, "missing": 0})
        return at
    if node.get("decision_type", "<=") != "<=":
        raise ValueError(f"only numerical splits are supported, not {node['decision_type']!r}")
    out.append({})
    left = _flatten(node["left_child"], out)
    right = _flatten(node["right_child"], out)
    out[at] = {
        "feature": int(node["split_feature"]),
        "threshold": float(node["threshold"]),
        "left": left,
        "right": right,
        "value": 0.0,
        "default_left": bool(node["default_left"]),
        "missing": MISSING.index(node.get("missing_type", "None")),
    }
    return at


def _depth(feature: np.ndarray, left: np.ndarray, right: np.ndarray) -> int:
    """The longest root-to-leaf path, in splits (a malformed, cyclic tree is refused)."""
    deepest = 0
    for t in range(feature.shape[0]):
        stack = [(0, 0)]
        while stack:
            node, d = stack.pop()
            if d > feature.shape[1]:
                raise ValueError("a tree has a cycle")
            if feature[t, node] < 0:
                deepest = max(deepest, d)
            else:
                stack += [(int(left[t, node]), d + 1), (int(right[t, node]), d + 1)]
    return deepest
