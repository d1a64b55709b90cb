"""The rule layer: red flags as transparent, documented points (features/rules.py)."""

from __future__ import annotations

import numpy as np
import polars as pl

from detector.models.base import RiskModel
from features.rules import RULES, rule_points


class RuleModel(RiskModel):
    """Sum of the points of the red-flag rules a record hits. Nothing is learned."""

    def fit(self, frame: pl.DataFrame, labels: np.ndarray | None = None) -> "RuleModel":
        self.rule_names_ = [r.name for r in RULES]
        return self

    def hits(self, frame: pl.DataFrame) -> pl.DataFrame:
        """record_kind, record_id, rule_points, rule_hits — in ``frame``'s row order."""
        return rule_points(frame)

    def decision_function(self, frame: pl.DataFrame) -> np.ndarray:
        return self.hits(frame)["rule_points"].to_numpy().astype(np.float64)
