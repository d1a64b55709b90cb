"""Property test over the feature builder: real values (zero, negative, missing, huge
value, weight and quantity) never give a model input of ±inf or NaN, and a model input
is null only where the registry documents when it is (`Feature.null_when`) or where the
feature does not apply to the record's kind.

The known crash this guards: `value_to_consignee_history_mean` divided by a consignee's
earlier total value, 0 for real filers that declared 0 → inf → pyod's check_array.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl
from feature_fixtures import FakeReference, lease, leases, parties, shipment, shipments
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.build import build_features, fit_feature_stats
from features.registry import FEATURES, model_feature_names

REF = FakeReference()

money = st.one_of(st.none(), st.just(0.0), st.just(-0.0),
                  st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
                  st.floats(min_value=1e300, max_value=1.7e308), st.just(5e-324))
counts = st.one_of(st.none(), st.integers(min_value=-5, max_value=5),
                   st.integers(min_value=2**40, max_value=2**62))
descriptions = st.sampled_from(["NVIDIA H100 SXM5 80GB", "HGX H100 8-GPU server", "computer parts",
                                "HS 847330", "RTX 4090", ""])


@st.composite
def shipment_rows(draw):
    n = draw(st.integers(min_value=1, max_value=12))
    rows = []
    for i in range(n):
        rows.append(shipment(
            f"S{i}",
            export_date=date(2024, 1, 1) + timedelta(days=draw(st.integers(0, 60))),
            consignee_name=draw(st.sampled_from(["A Ltd", "B Ltd", "C Ltd"])),
            exporter_name=draw(st.sampled_from(["X Inc", "Y Inc"])),
            forwarder_name=draw(st.sampled_from([None, "Fwd 1", "Fwd 2"])),
            hs_code=draw(st.sampled_from(["854231", "847330", "847150", "010121"])),
            description=draw(descriptions) or None,
            quantity=draw(counts),
            value_usd=draw(money),
            gross_weight_kg=draw(money),
        ))
    return rows


def _allowed_null(name: str, kinds: pl.Series) -> pl.Series:
    feature = FEATURES.get(name)
    if feature is not None and feature.null_when:
        return pl.Series([True] * len(kinds))
    applies = feature.kinds if feature is not None else ("shipment", "lease")
    return ~kinds.is_in(list(applies))


def check_model_inputs(frame: pl.DataFrame, inputs: list[str]) -> None:
    for name in inputs:
        column = frame[name]
        if column.dtype.is_float():
            values = column.drop_nulls().to_numpy()
            assert np.isfinite(values).all(), (name, values[~np.isfinite(values)][:5])
        nulls = column.is_null()
        undocumented = nulls & ~_allowed_null(name, frame["record_kind"])
        assert not undocumented.any(), (
            f"{name} is null in {int(undocumented.sum())} row(s) but the registry documents no "
            f"null for it (Feature.null_when)")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=shipment_rows(), lease_value=money, gpus=counts, term=counts)
def test_no_model_input_is_ever_infinite_or_undocumented_null(rows, lease_value, gpus, term):
    ship = shipments(*rows)
    lease_rows = leases(lease("L1", value_usd=lease_value, gpu_count=gpus, term_months=term))
    # statistics learned from the same hostile values, as training would
    stats = fit_feature_stats(ship, lease_rows, parties(), REF)
    frame = build_features(ship, lease_rows, parties(), None, REF, stats)
    check_model_inputs(frame, model_feature_names())


def test_zero_valued_history_does_not_divide_by_zero():
    # the reported crash: a consignee whose earlier lines were declared at 0
    ship = shipments(shipment("S1", export_date=date(2024, 1, 1), value_usd=0.0),
                     shipment("S2", export_date=date(2024, 1, 5), value_usd=100.0))
    frame = build_features(ship, leases(), parties(), None, REF, None)
    row = frame.filter(pl.col("record_id") == "S2").row(0, named=True)
    assert row["value_to_consignee_history_mean"] is None
    assert row["consignee_prior_shipments"] == 1
