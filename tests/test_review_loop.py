"""Pieces of the review loop outside the page (issue #14): the report shows the queue's
explore rows, and the simulator can hold a scheme back until a given month."""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest
from report_fixtures import MODEL_INFO, make_dataset

from detector.errors import UsageError
from detector.report import build_report
from detector.simulation import simulate


def test_report_review_list_is_the_queue_with_its_explore_rows(tmp_path):
    dataset, scores = make_dataset(tmp_path)
    dates = pl.concat([
        dataset.shipments.select(pl.col("shipment_id").alias("record_id"),
                                 pl.col("export_date").alias("d")),
        dataset.leases.select(pl.col("lease_id").alias("record_id"),
                              pl.col("start_date").alias("d"))])
    june = scores.join(dates, on="record_id").filter(pl.col("d").dt.month() == 6) \
        .sort(["risk_score", "record_kind", "record_id"], descending=[True, False, False])
    by_risk = june.head(5)["record_id"].to_list()
    explored = june["record_id"][-1]  # the lowest-scored record of the month
    queue = pl.DataFrame({"record_id": [*by_risk, explored],
                          "queue_reason": ["risk"] * 5 + ["explore"]})
    marked = scores.join(queue, on="record_id", how="left")
    html = build_report(dataset, marked, model_info=MODEL_INFO, period="2024-06",
                        capacity="6")
    assert "Review list (6)" in html
    assert html.count(">explore</span>") == 1
    assert f"case-{june.filter(pl.col('record_id') == explored)['record_kind'][0]}-{explored}" \
        in html
    threshold = june.filter(pl.col("record_id") == by_risk[-1])["risk_score"][0]
    assert f"review threshold <strong>{threshold:.3f}</strong>" in html
    assert "except 1 chosen for learning" in html


def test_simulator_holds_a_late_scheme_back(tmp_path):
    simulate(tmp_path, seed=2, shipments=4000, start=date(2024, 1, 1), months=12,
             late_scheme="shell_company", late_from_month=7)
    truth = pl.read_parquet(tmp_path / "truth.parquet")
    shipments = pl.read_csv(tmp_path / "shipments.csv", columns=["shipment_id", "export_date"],
                            try_parse_dates=True)
    late = truth.filter(pl.col("typology") == "shell_company").join(
        shipments, left_on="record_id", right_on="shipment_id")
    assert late.height > 0
    assert late["export_date"].min() >= date(2024, 7, 1)
    others = truth.filter((pl.col("label") == 1) & (pl.col("typology") != "shell_company")) \
        .join(shipments, left_on="record_id", right_on="shipment_id")
    assert others["export_date"].min() < date(2024, 7, 1)
    with pytest.raises(UsageError, match="late-scheme"):
        simulate(tmp_path / "x", shipments=100, late_scheme="teleportation")
    with pytest.raises(UsageError, match="late-from-month"):
        simulate(tmp_path / "y", shipments=100, months=6, late_scheme="splitting",
                 late_from_month=9)


def test_a_stored_decision_reaches_the_case_memory_at_scoring(tmp_path, monkeypatch):
    """A diversion confirmed on the review page (the decision store) counts for the later
    records of the same consignee when the batch is scored again, before any
    retraining; never for its own record, nor for records dated before the decision."""
    from detector.batch import feature_frame, load_batch
    from detector.decisions import DecisionStore, make_decision

    monkeypatch.setenv("DETECTOR_HOME", str(tmp_path / "home"))
    world = tmp_path / "world"
    simulate(world, seed=5, shipments=1500, start=date(2024, 1, 1), months=6)
    before = feature_frame(load_batch(world))
    ships = before.filter((pl.col("record_kind") == "shipment")
                          & pl.col("consignee_party").is_not_null()) \
        .select("record_id", "record_date", "consignee_party").sort("record_date")
    # a consignee with records on at least three different dates
    party = ships.group_by("consignee_party").agg(pl.col("record_date").n_unique().alias("n")) \
        .filter(pl.col("n") >= 3).sort("consignee_party")["consignee_party"][0]
    own = ships.filter(pl.col("consignee_party") == party)
    dates = own["record_date"].unique().sort()
    decided, middle, last = own.filter(pl.col("record_date") == dates[0])["record_id"][0], \
        dates[1], dates[-1]

    def memory(frame: pl.DataFrame) -> dict[str, int]:
        return dict(frame.filter(pl.col("record_kind") == "shipment")
                    .select("record_id", "consignee_confirmed_before").iter_rows())

    # decided on the second date: the records of that date and before do not see it
    DecisionStore().add([make_decision("shipment", decided, "confirm", "tester",
                                       typology="transshipment", decided_on=middle)])
    after = memory(feature_frame(load_batch(world)))
    was = memory(before)
    for record_id, record_date in own.select("record_id", "record_date").iter_rows():
        gained = after[record_id] - was[record_id]
        assert gained == (1 if record_date > middle else 0), (record_id, record_date)
    assert own.filter(pl.col("record_date") == last).height >= 1
    # records of other parties are untouched
    others = ships.filter(pl.col("consignee_party") != party)["record_id"].to_list()
    assert all(after[r] == was[r] for r in others)
