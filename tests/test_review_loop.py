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
