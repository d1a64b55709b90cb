"""The supervised layer: LightGBM on the labelled rows, calibrated on a later slice.

Inputs are the model features plus the unsupervised and rule scores (the XGBOD idea:
anomaly scores as extra features). Class imbalance is handled with
``scale_pos_weight``, which distorts probabilities, so the raw margin is mapped to a
probability by Platt scaling fitted on a later time slice than the trees.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from detector.config import TrainingConfig
from detector.models.base import RiskModel, feature_matrix
from detector.models.trees import CachedTrees

# What is not a training setting: the objective, bagging, threads, determinism.
FIXED_PARAMS = {
    "objective": "binary",
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "num_threads": 2,
    "verbosity": -1,
    "deterministic": True,
}
_DEFAULTS = TrainingConfig()  # the tunable defaults live in detector.config, once
DEFAULT_PARAMS = {**FIXED_PARAMS, **_DEFAULTS.lightgbm_params()}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -35, 35)))


def scheme_weights(labels: np.ndarray, typologies: list, balance: float) -> np.ndarray | None:
    """Row weights that balance the schemes (typologies) among the confirmed diversions.

    A scheme with few confirmed cases is otherwise outvoted by the schemes with hundreds:
    the first confirmations of a new channel barely move the trees, and the queue keeps
    missing its next cases. Each confirmed case of scheme t weighs (P / (S * n_t)) ** balance
    (P confirmed cases, S schemes among them, n_t of scheme t; as the scheme model weighs
    its classes), rescaled so the confirmed cases keep their total weight: the class
    balance (``scale_pos_weight``) is unchanged. A confirmation without a scheme counts as
    scheme "unspecified". Cleared records weigh 1. ``balance`` 0 gives None (no weights).
    """
    if balance <= 0:
        return None
    y = np.asarray(labels) == 1
    weight = np.ones(len(y), dtype=np.float64)
    if not y.any():
        return weight
    schemes = np.array([t if t else "unspecified" for t in typologies], dtype=object)[y]
    names, index, counts = np.unique(schemes, return_inverse=True, return_counts=True)
    per_case = (y.sum() / (len(names) * counts))[index] ** balance
    weight[y] = per_case * y.sum() / per_case.sum()
    return weight


class SupervisedModel(CachedTrees, RiskModel):
    """LightGBM booster + Platt calibration; ``decision_function`` is a probability."""

    def __init__(self, features: list[str], params: dict | None = None,
                 num_boost_round: int = _DEFAULTS.lightgbm.num_boost_round,
                 early_stopping_rounds: int = _DEFAULTS.lightgbm.early_stopping_rounds,
                 max_pos_weight: float = 50.0):
        self.features = features
        self.params = params
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.max_pos_weight = max_pos_weight

    def fit(self, frame: pl.DataFrame, labels: np.ndarray | None = None, *,
            valid_frame: pl.DataFrame | None = None, valid_labels: np.ndarray | None = None,
            sample_weight: np.ndarray | None = None):
        """``sample_weight``: a weight per row of ``frame`` (e.g. scheme_weights), on top
        of the class weighting."""
        import lightgbm as lgb

        if labels is None or len(np.unique(labels)) < 2:
            raise ValueError("the supervised model needs labels 0 and 1 in its training slice")
        y = np.asarray(labels, dtype=np.float64)
        params = self.training_params(y)
        train_set = lgb.Dataset(feature_matrix(frame, self.features), y,
                                weight=sample_weight, feature_name=self.features,
                                free_raw_data=True)
        callbacks = [lgb.log_evaluation(0)]
        valid_sets = []
        can_stop = (valid_frame is not None and valid_labels is not None
                    and len(np.unique(valid_labels)) == 2)
        if can_stop:
            xv = feature_matrix(valid_frame, self.features)
            valid_sets = [lgb.Dataset(xv, np.asarray(valid_labels, np.float64),
                                      reference=train_set)]
            callbacks.append(lgb.early_stopping(self.early_stopping_rounds, verbose=False))
            params.setdefault("metric", "average_precision")
        self.booster_ = lgb.train(params, train_set, num_boost_round=self.num_boost_round,
                                  valid_sets=valid_sets, callbacks=callbacks)
        self.best_iteration_ = int(self.booster_.best_iteration or self.booster_.current_iteration())
        self.calibration_ = (1.0, 0.0)
        self.calibrated_ = False
        if can_stop:
            self.calibrate(valid_frame, np.asarray(valid_labels))
        return self

    def training_params(self, y: np.ndarray) -> dict:
        """LightGBM parameters for labels ``y``: defaults, settings, class-imbalance weight."""
        params = {**DEFAULT_PARAMS, **(self.params or {})}
        if "scale_pos_weight" not in params:  # not set by the config: rebalance the classes
            pos = max(float(y.sum()), 1.0)
            params["scale_pos_weight"] = float(min((len(y) - pos) / pos, self.max_pos_weight))
        return params

    def calibrate(self, frame: pl.DataFrame, labels: np.ndarray) -> None:
        """Platt scaling of the booster margin on a later, held-out slice.

        Uses Platt's smoothed targets ((N+ + 1) / (N+ + 2) and 1 / (N- + 2)) so that a
        slice the trees happen to separate perfectly does not give an infinite slope:
        that would saturate every score at exactly 0 or 1 and destroy the ranking.
        """
        from sklearn.linear_model import LogisticRegression

        y = labels.astype(int)
        n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
        target = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
        margin = self.margin(frame).reshape(-1, 1)
        # Soft targets as two weighted copies of each row: label 1 with weight t, 0 with 1-t.
        lr = LogisticRegression(C=1e4).fit(
            np.vstack([margin, margin]), np.r_[np.ones(len(y)), np.zeros(len(y))],
            sample_weight=np.r_[target, 1 - target])
        slope, intercept = float(lr.coef_[0, 0]), float(lr.intercept_[0])
        if slope <= 0:  # margin does not rank the later slice: keep the raw sigmoid
            return
        self.calibration_ = (slope, intercept)
        self.calibrated_ = True

    def margin(self, frame: pl.DataFrame) -> np.ndarray:
        """The booster's raw score (its first ``best_iteration_`` iterations), as
        ``booster_.predict(..., raw_score=True)`` gives it, bit for bit, at a third of
        the cost (detector.models.trees)."""
        if frame.height == 0:
            return np.zeros(0)
        return self._trees(self.best_iteration_).predict(frame, self.features, raw_score=True)

    def decision_function(self, frame: pl.DataFrame) -> np.ndarray:
        a, b = self.calibration_
        return _sigmoid(a * self.margin(frame) + b)

    def contributions(self, frame: pl.DataFrame) -> np.ndarray:
        """Per-feature SHAP contributions to the margin (last column: the bias).

        About 200x the cost of a plain predict: call it for the rows shown to a person.
        """
        if frame.height == 0:
            return np.zeros((0, len(self.features) + 1))
        return self.booster_.predict(feature_matrix(frame, self.features), pred_contrib=True,
                                     num_iteration=self.best_iteration_)

    def feature_importance(self) -> pl.DataFrame:
        return pl.DataFrame({
            "feature": self.features,
            "gain": self.booster_.feature_importance("gain", iteration=self.best_iteration_),
            "splits": self.booster_.feature_importance("split", iteration=self.best_iteration_),
        }).sort("gain", descending=True)

    # -- persistence: the booster as LightGBM's own text format, parameters as JSON
    def to_state(self) -> tuple[dict, str]:
        state = {
            "features": self.features, "params": self.params,
            "num_boost_round": self.num_boost_round,
            "early_stopping_rounds": self.early_stopping_rounds,
            "max_pos_weight": self.max_pos_weight,
            "best_iteration": self.best_iteration_, "calibration": list(self.calibration_),
            "calibrated": self.calibrated_,
        }
        return state, self.booster_.model_to_string()

    @classmethod
    def from_state(cls, state: dict, booster_text: str) -> "SupervisedModel":
        import lightgbm as lgb

        model = cls(state["features"], state["params"], state["num_boost_round"],
                    state["early_stopping_rounds"], state["max_pos_weight"])
        model.booster_ = lgb.Booster(model_str=booster_text)
        model.best_iteration_ = state["best_iteration"]
        model.calibration_ = tuple(state["calibration"])
        model.calibrated_ = state["calibrated"]
        return model
