"""The scheme model: which typology a diversion follows, learned from labelled typologies.

A multiclass LightGBM model over the model features, fitted on confirmed diversions
(label 1) whose typology maps to one or more canonical schemes (detector.schemes); a
row whose typology names several schemes is a training example of each. Stored as
LightGBM's own text format plus JSON, never pickled.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from detector.models.base import feature_matrix
from detector.models.trees import CachedTrees

PARAMS = {
    "objective": "multiclass",
    "learning_rate": 0.1,
    "num_leaves": 7,
    "min_data_in_leaf": 3,
    "feature_fraction": 0.8,
    "lambda_l2": 1.0,
    "num_threads": 2,
    "verbosity": -1,
    "seed": 0,
    "deterministic": True,
}
# A scheme needs this many labelled examples to be a class of its own.
MIN_EXAMPLES_PER_SCHEME = 3


class SchemeModel(CachedTrees):
    """fit(frame, schemes per row) + predict_proba(frame) over ``classes_``."""

    # 20 rounds (140 trees for 7 classes): on simulated worlds (seeds 4-6, a few dozen
    # labelled diversions each) as accurate in the blend as 80, and a quarter of the
    # work to score a batch
    def __init__(self, features: list[str], num_boost_round: int = 20, balance: float = 0.5):
        self.features = features
        self.num_boost_round = num_boost_round
        self.balance = balance

    @staticmethod
    def trainable(schemes_per_row: list[list[str]]) -> bool:
        """Whether the labelled typologies hold at least two schemes to tell apart."""
        counts: dict[str, int] = {}
        for schemes in schemes_per_row:
            for s in schemes:
                counts[s] = counts.get(s, 0) + 1
        return sum(n >= MIN_EXAMPLES_PER_SCHEME for n in counts.values()) >= 2

    def fit(self, frame: pl.DataFrame, schemes_per_row: list[list[str]]) -> SchemeModel:
        import lightgbm as lgb

        if len(schemes_per_row) != frame.height:
            raise ValueError(f"scheme model: {frame.height} rows but {len(schemes_per_row)} "
                             "scheme lists")
        counts: dict[str, int] = {}
        for schemes in schemes_per_row:
            for s in schemes:
                counts[s] = counts.get(s, 0) + 1
        self.classes_ = sorted(s for s, n in counts.items() if n >= MIN_EXAMPLES_PER_SCHEME)
        if len(self.classes_) < 2:
            raise ValueError(f"scheme model: needs two schemes with at least "
                             f"{MIN_EXAMPLES_PER_SCHEME} labelled examples each; got {counts}")
        index = {s: i for i, s in enumerate(self.classes_)}
        rows, targets = [], []
        for i, schemes in enumerate(schemes_per_row):
            for s in schemes:
                if s in index:
                    rows.append(i)
                    targets.append(index[s])
        x = feature_matrix(frame, self.features)[np.asarray(rows)]
        y = np.asarray(targets, dtype=np.float64)
        # rare schemes weighted up (``balance`` 1: every class the same total weight, 0: none)
        # so a common scheme does not drown them; half-way measured best on simulated worlds
        freq = np.bincount(y.astype(int), minlength=len(self.classes_)).astype(np.float64)
        weight = (len(y) / (len(self.classes_) * freq))[y.astype(int)] ** self.balance
        params = {**PARAMS, "num_class": len(self.classes_)}
        self.booster_ = lgb.train(params, lgb.Dataset(x, y, weight=weight,
                                                      feature_name=self.features),
                                  num_boost_round=self.num_boost_round)
        self.class_counts_ = {s: counts[s] for s in self.classes_}
        return self

    def predict_proba(self, frame: pl.DataFrame) -> np.ndarray:
        if frame.height == 0:
            return np.zeros((0, len(self.classes_)))
        # the booster's class probabilities bit for bit, without a matrix (models.trees)
        out = self._trees().predict(frame, self.features)
        return np.asarray(out).reshape(frame.height, len(self.classes_))

    # -- persistence: LightGBM text + JSON-able state
    def to_state(self) -> tuple[dict, str]:
        return ({"features": self.features, "num_boost_round": self.num_boost_round,
                 "balance": self.balance, "classes": list(self.classes_),
                 "class_counts": self.class_counts_},
                self.booster_.model_to_string())

    @classmethod
    def from_state(cls, state: dict, booster_text: str) -> SchemeModel:
        import lightgbm as lgb

        model = cls(state["features"], state["num_boost_round"], state.get("balance", 0.5))
        model.classes_ = list(state["classes"])
        model.class_counts_ = dict(state.get("class_counts", {}))
        model.booster_ = lgb.Booster(model_str=booster_text)
        return model
