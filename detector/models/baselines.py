"""Simple baselines the detector must beat (evaluation benchmark, issue 5).

(a) ``ChecklistBaseline``: one point per classic red flag, from the raw records.
(b) ``RawIsolationForest``: IsolationForest on value, quantity, value per unit, weight.
(c) ``RawLightGBM``: LightGBM on the raw contract columns only (numerics plus integer
    codes of the categorical columns), trained on the same labels.
All three take the frame from :func:`raw_frame`.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from detector.models.base import RiskModel, feature_matrix

FORWARDER_WORDS = r"(?i)\b(logistics|freight|forwarding|forwarder|shipping|express|cargo)\b"
RAW_NUMERIC = ["value_usd", "quantity", "value_per_unit", "gross_weight_kg"]
RAW_CATEGORICAL = ["destination_country", "consignee_country", "exporter_country",
                   "payer_country", "hs_code", "eccn", "incoterm", "license_type",
                   "payment_method", "transport_mode", "consignee_type", "access_type"]


def raw_frame(shipments: pl.DataFrame, leases: pl.DataFrame, parties: pl.DataFrame,
              reference) -> pl.DataFrame:
    """Shipments and leases as one frame of raw columns plus the checklist's inputs."""
    from detector.reference import chip_model_expr

    controlled = reference.chips.filter(pl.col("controlled"))
    party = parties.select(pl.col("party_id"), pl.col("incorporation_date"),
                           pl.col("industry"))
    s = shipments.join(party, left_on="consignee_party_id", right_on="party_id", how="left")
    s = s.select(
        pl.lit("shipment").alias("record_kind"),
        pl.col("shipment_id").alias("record_id"),
        pl.col("export_date").alias("record_date"),
        "value_usd", pl.col("quantity").cast(pl.Float64),
        (pl.col("value_usd") / pl.col("quantity").clip(1)).alias("value_per_unit"),
        "gross_weight_kg", "destination_country", "consignee_country", "exporter_country",
        "payer_country", "hs_code", "eccn", "incoterm", "license_type", "payment_method",
        "transport_mode", "consignee_type", pl.lit(None, pl.String).alias("access_type"),
        chip_model_expr(pl.col("description"), controlled).is_not_null()
        .alias("names_controlled_product"),
        ((pl.col("export_date") - pl.col("incorporation_date")).dt.total_days() < 365)
        .alias("young_party"),
        (pl.col("routed_export").fill_null(False)
         | (pl.col("incoterm").str.to_uppercase() == "EXW")).alias("routed_or_exw"),
        ((pl.col("industry") == "logistics")
         | pl.col("consignee_name").str.contains(FORWARDER_WORDS)).alias("forwarder_consignee"),
    )
    l = leases.join(party, left_on="lessee_party_id", right_on="party_id", how="left")
    l = l.select(
        pl.lit("lease").alias("record_kind"),
        pl.col("lease_id").alias("record_id"),
        pl.col("start_date").alias("record_date"),
        "value_usd", pl.col("gpu_count").cast(pl.Float64).alias("quantity"),
        (pl.col("value_usd") / pl.col("gpu_count").clip(1)).alias("value_per_unit"),
        pl.lit(None, pl.Float64).alias("gross_weight_kg"),
        pl.col("datacenter_country").alias("destination_country"),
        pl.col("lessee_country").alias("consignee_country"),
        pl.col("datacenter_country").alias("exporter_country"),
        "payer_country",
        *[pl.lit(None, pl.String).alias(c) for c in
          ("hs_code", "eccn", "incoterm", "license_type", "payment_method", "transport_mode",
           "consignee_type")],
        "access_type",
        chip_model_expr(pl.col("gpu_model"), controlled).is_not_null()
        .alias("names_controlled_product"),
        ((pl.col("start_date") - pl.col("incorporation_date")).dt.total_days() < 365)
        .alias("young_party"),
        pl.lit(False).alias("routed_or_exw"),
        (pl.col("industry") == "logistics").alias("forwarder_consignee"),
    )
    return pl.concat([s, l], how="diagonal_relaxed").sort(["record_kind", "record_id"])


class ChecklistBaseline(RiskModel):
    """One point each for six classic red flags."""

    def fit(self, frame: pl.DataFrame, labels: np.ndarray | None = None):
        from detector.reference import load_reference

        ref = load_reference()
        self.watch_countries_ = sorted(set(ref.countries("HUB")) | set(ref.countries("D:1"))
                                       | set(ref.countries("D:4")) | set(ref.countries("D:5")))
        return self

    def decision_function(self, frame: pl.DataFrame) -> np.ndarray:
        points = (
            pl.col("names_controlled_product").fill_null(False).cast(pl.Int32)
            + pl.col("destination_country").is_in(self.watch_countries_).fill_null(False)
            .cast(pl.Int32)
            + pl.col("young_party").fill_null(False).cast(pl.Int32)
            + (pl.col("payer_country") != pl.col("consignee_country")).fill_null(False)
            .cast(pl.Int32)
            + pl.col("routed_or_exw").fill_null(False).cast(pl.Int32)
            + pl.col("forwarder_consignee").fill_null(False).cast(pl.Int32)
        )
        return frame.select(points.alias("p"))["p"].to_numpy().astype(np.float64)


class RawIsolationForest(RiskModel):
    def __init__(self, random_state: int = 0):
        self.random_state = random_state

    def _x(self, frame: pl.DataFrame) -> np.ndarray:
        x = np.log1p(np.abs(np.nan_to_num(feature_matrix(frame, RAW_NUMERIC), nan=0.0)))
        return x

    def fit(self, frame: pl.DataFrame, labels: np.ndarray | None = None):
        from pyod.models.iforest import IForest

        self.model_ = IForest(n_estimators=100, max_samples=256,
                              random_state=self.random_state).fit(self._x(frame))
        return self

    def decision_function(self, frame: pl.DataFrame) -> np.ndarray:
        return self.model_.decision_function(self._x(frame))


class RawLightGBM(RiskModel):
    """LightGBM on raw columns; category codes learned at fit time (unknown → missing)."""

    def __init__(self, random_state: int = 0, num_boost_round: int = 300):
        self.random_state = random_state
        self.num_boost_round = num_boost_round

    def _x(self, frame: pl.DataFrame) -> np.ndarray:
        coded = frame.select(
            *[pl.col(c).cast(pl.Float64) for c in RAW_NUMERIC],
            *[pl.col(c).replace_strict(self.codes_[c], default=None, return_dtype=pl.Int32)
              .cast(pl.Float64) for c in RAW_CATEGORICAL],
        )
        return coded.to_numpy()

    def fit(self, frame: pl.DataFrame, labels: np.ndarray | None = None):
        import lightgbm as lgb

        self.codes_ = {c: {v: i for i, v in enumerate(sorted(
            frame[c].drop_nulls().unique().to_list()))} for c in RAW_CATEGORICAL}
        y = np.asarray(labels, dtype=np.float64)
        pos = max(y.sum(), 1.0)
        params = {"objective": "binary", "learning_rate": 0.05, "num_leaves": 15,
                  "min_data_in_leaf": 10, "verbosity": -1, "seed": self.random_state,
                  "num_threads": 2, "scale_pos_weight": min((len(y) - pos) / pos, 50.0),
                  "deterministic": True}
        n_num = len(RAW_NUMERIC)
        cats = list(range(n_num, n_num + len(RAW_CATEGORICAL)))
        data = lgb.Dataset(self._x(frame), y, categorical_feature=cats, free_raw_data=True)
        self.booster_ = lgb.train(params, data, num_boost_round=self.num_boost_round)
        return self

    def decision_function(self, frame: pl.DataFrame) -> np.ndarray:
        return self.booster_.predict(self._x(frame))
