"""`detector explain` scores only what one record needs (issue #12): the features built
from the record's neighbourhood equal the batch's, the record scores the same, and the
output leads with the short list of features that drive it, never a null one."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from pipeline_fixtures import cli, detector_env

from features.registry import FEATURES, model_feature_names


@pytest.fixture(scope="module")
def batch_and_model(world, trained):
    from detector.batch import load_batch
    from detector.scoring import load_model, score_batch

    with detector_env(trained.home):
        batch = load_batch(world)
        model = load_model(None)
        scored = score_batch(batch, model, top=0)
    return batch, model, scored


def _sample(scored: pl.DataFrame, truth: pl.DataFrame) -> list[tuple[str, str]]:
    """Records with many neighbours: diversions of each typology (re-exports, bursts,
    linked consignees), the riskiest, leases, and ordinary ones."""
    joined = scored.join(truth, on=["record_kind", "record_id"])
    picks = []
    for typology in joined["typology"].drop_nulls().unique().sort():
        picks += joined.filter(pl.col("typology") == typology).head(3).select(
            "record_kind", "record_id").rows()
    picks += scored.head(5).select("record_kind", "record_id").rows()
    picks += scored.filter(pl.col("record_kind") == "shipment").sample(
        15, seed=1).select("record_kind", "record_id").rows()
    picks += scored.filter(pl.col("record_kind") == "lease").head(2).select(
        "record_kind", "record_id").rows()
    return list(dict.fromkeys(picks))


def test_a_records_neighbourhood_gives_the_batchs_features_and_score(batch_and_model, truth):
    from detector.scoring import record_frame

    batch, model, scored = batch_and_model
    columns = [*model_feature_names(), "rule_points", "risk_score", "likely_scheme",
               "scheme_confidence"]
    columns = [c for c in columns if c in scored.frame.columns]
    picks = _sample(scored.frame, truth)
    assert len(picks) >= 30
    for kind, record_id in picks:
        one = record_frame(batch, model, kind, record_id)
        full = scored.frame.filter((pl.col("record_kind") == kind)
                                   & (pl.col("record_id") == record_id))
        assert one.height == 1
        for column in columns:
            a, b = one[column][0], full[column][0]
            if isinstance(b, float):
                assert a == pytest.approx(b, rel=1e-9, abs=1e-12, nan_ok=True), \
                    (kind, record_id, column, a, b)
            else:
                assert a == b, (kind, record_id, column, a, b)


def test_the_neighbourhood_is_small(batch_and_model):
    from features.neighbourhood import shipments_around

    batch, _, scored = batch_and_model
    ids = scored.frame.filter(pl.col("record_kind") == "shipment")["record_id"].head(20)
    sizes = [shipments_around(batch.shipments, batch.parties, i).height for i in ids]
    assert max(sizes) < batch.shipments.height / 10, sizes


def test_explain_lists_the_drivers_and_never_a_null_one(world, trained, scores_csv):
    out, _ = scores_csv
    scores = pl.read_csv(out)
    for row in scores.head(8).iter_rows(named=True):
        result = cli(["explain", world, row["record_id"], "--kind", row["record_kind"],
                      "--json", "--scores", out], trained.home)
        assert result.exit_code == 0, result.output
        e = json.loads(result.stdout)
        assert e["rank"] == row["rank"] and e["of_records"] == scores.height
        assert e["likely_scheme"] == row["likely_scheme"]
        assert e["risk_score"] == pytest.approx(row["risk_score"])
        assert 0 < len(e["drivers"]) <= 8
        for f in e["drivers"]:
            assert f["value"] is not None, f
            feature = FEATURES.get(f["feature"])
            assert feature is None or e["record_kind"] in feature.kinds, f
        contributions = [abs(f["contribution"]) for f in e["drivers"]]
        assert contributions == sorted(contributions, reverse=True)
        assert len(e["features"]) > 60  # the JSON keeps every feature


def test_explain_text_is_short_and_all_shows_everything(world, trained, scores_csv):
    out, _ = scores_csv
    top = pl.read_csv(out).row(0, named=True)
    short = cli(["explain", world, top["record_id"]], trained.home)
    assert short.exit_code == 0, short.output
    assert "Likely scheme: " in short.stdout and "--scores" in short.stdout
    full = cli(["explain", world, top["record_id"], "--all"], trained.home)
    assert full.exit_code == 0, full.output
    lines = lambda text: [line for line in text.splitlines() if line.startswith("  ")]  # noqa: E731
    assert len(lines(full.stdout)) > len(lines(short.stdout)) + 40
    assert " n/a " in full.stdout
    body = short.stdout.split("What drives the score")[1].split("Context:")[0]
    assert " n/a " not in body
    assert np.isfinite(top["risk_score"])


def test_a_batch_waiting_on_disk_explains_the_same(batch_and_model, world, truth, tmp_path):
    """A batch of more than one part is read with its shipments spilled (Spill, as
    `explain` reads one): the index reads back only the neighbourhood, and each record's
    frame equals the in-memory batch's."""
    from polars.testing import assert_frame_equal

    from detector.batch import load_batch
    from detector.scoring import record_frame
    from detector.tables import Spill

    batch, model, scored = batch_and_model
    spilled = load_batch(world, spill=Spill(tmp_path, over_rows=1000))
    assert isinstance(spilled.dataset.shipments, pl.LazyFrame)
    for kind, record_id in _sample(scored.frame, truth)[:12]:
        assert_frame_equal(record_frame(spilled, model, kind, record_id),
                           record_frame(batch, model, kind, record_id))
