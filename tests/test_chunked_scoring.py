"""Issue #7: scoring in parts (bounded memory) gives the single-pass results.

Reading validates long files slice by slice, features are built part by part around
cross-record features computed once, and the model layers run per part; every test
compares against the one-pass path on the same world with parts far smaller than it.
"""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest
from pipeline_fixtures import cli, detector_env
from polars.testing import assert_frame_equal

KEY = ["record_kind", "record_id"]


def _corrupt_shipments(world, to, fmt: str):
    """The world's shipments with problems spread over the file (and a duplicate id pair
    far apart), written as CSV or Parquet."""
    ship = pl.read_csv(world / "shipments.csv", infer_schema=False)
    n = ship.height
    bad_rows = [3, n // 3, n // 2, n - 2]
    ship = ship.with_row_index("__i").with_columns(
        export_date=pl.when(pl.col("__i").is_in(bad_rows[:2])).then(pl.lit("2024-13-45"))
        .otherwise(pl.col("export_date")),
        consignee_country=pl.when(pl.col("__i").is_in(bad_rows[1:])).then(pl.lit("XX"))
        .otherwise(pl.col("consignee_country")),
        transport_mode=pl.when(pl.col("__i") % 997 == 5).then(pl.lit("teleport"))
        .otherwise(pl.col("transport_mode")),
        shipment_id=pl.when(pl.col("__i") == n - 10).then(pl.lit(ship["shipment_id"][7]))
        .otherwise(pl.col("shipment_id")),
    ).drop("__i")
    to.mkdir()
    if fmt == "csv":
        ship.write_csv(to / "shipments.csv")
    else:
        ship.write_parquet(to / "shipments.parquet", row_group_size=1000)
    return to / f"shipments.{fmt}"


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_reading_in_slices_reports_and_quarantines_as_one_pass(world, tmp_path, fmt):
    from detector.contract import SHIPMENTS
    from detector.tables import Spill, ValidationReport, read_table

    path = _corrupt_shipments(world, tmp_path / "ds", fmt)
    one_report, sliced_report = ValidationReport(), ValidationReport()
    one = read_table(path, SHIPMENTS, one_report)
    sliced = read_table(path, SHIPMENTS, sliced_report, chunk_rows=1500)
    assert one_report.text() == sliced_report.text()
    assert [i.column for i in one_report.errors] == ["export_date", "consignee_country",
                                                     "shipment_id"]
    assert "'teleport'" in one_report.text()  # the unknown enum value is a warning
    assert_frame_equal(one.data, sliced.data)
    assert_frame_equal(one.quarantined, sliced.quarantined)
    assert one.quarantined.height == 6  # 4 bad rows + both copies of the duplicate id
    assert one.data.height + one.quarantined.height == pl.scan_csv(
        world / "shipments.csv").select(pl.len()).collect().item()
    # spilled (detector.tables.Spill): the passed rows wait on disk, slice by slice, and
    # come back the same; the report and quarantine are unchanged
    spilled_report = ValidationReport()
    spilled = read_table(path, SHIPMENTS, spilled_report, chunk_rows=1500,
                         spill=Spill(tmp_path, over_rows=2000))
    assert isinstance(spilled.data, pl.LazyFrame)
    rows = one.data.height + one.quarantined.height
    assert len(list(tmp_path.glob("shipments-*/*.parquet"))) == -(-rows // 1500)
    assert spilled_report.text() == one_report.text()
    assert_frame_equal(one.data, spilled.data.collect())
    assert_frame_equal(one.quarantined, spilled.quarantined)
    # a table no longer than over_rows stays in memory
    kept = read_table(path, SHIPMENTS, ValidationReport(), spill=Spill(tmp_path, 10 ** 9))
    assert isinstance(kept.data, pl.DataFrame)


def test_features_built_in_parts_equal_build_features(world):
    from detector.batch import load_batch
    from detector.reference import load_reference
    from features.build import FeatureBuilder, build_features

    batch = load_batch(world)
    ship = batch.shipments
    whole = build_features(ship, batch.leases, batch.parties, batch.screening_list,
                           load_reference())
    # uneven cuts, and the parts in another order than the file's
    cuts = [0, 1700, 2000, 5555, 8000, ship.height]
    parts = [ship.slice(a, b - a) for a, b in zip(cuts, cuts[1:])][::-1]
    builder = FeatureBuilder(parts, batch.leases, batch.parties, batch.screening_list,
                             load_reference())
    pieces = [builder.shipment_features(i) for i in range(len(parts))]
    assert all(p.height for p in pieces)
    parted = pl.concat([builder.lease_features(), *pieces], how="vertical_relaxed").sort(KEY)
    assert_frame_equal(whole, parted, check_dtypes=False)
    # the cross-record columns are really exercised, not all null or zero
    shipments = parted.filter(pl.col("record_kind") == "shipment")
    assert shipments["later_reexported_to_d5_hk_mo"].sum() > 0
    assert (shipments["consignee_prior_shipments"] > 0).sum() > 100
    assert (shipments["linked_small_shipments_14d"] > 1).sum() > 0


def test_cross_record_frame_held_on_disk_gives_the_same_features(world, tmp_path):
    """`detector score` keeps a batch's cross-record frame on disk while its parts are
    built (`scoring.spill_context`); each part reads its slice back: the same features
    as the frame held in memory, for parts cut unevenly and out of file order."""
    from detector.batch import load_batch
    from detector.reference import load_reference
    from detector.scoring import spill_context
    from features.build import FeatureBuilder

    batch = load_batch(world)
    ship = batch.shipments
    cuts = [0, 1700, 2000, 5555, 8000, ship.height]
    parts = [ship.slice(a, b - a) for a, b in itertools.pairwise(cuts)][::-1]
    args = (parts, batch.leases, batch.parties, batch.screening_list, load_reference())
    in_memory = FeatureBuilder(*args)
    on_disk = FeatureBuilder(*args, hold=spill_context(tmp_path))
    assert (tmp_path / "cross-record.parquet").is_file()
    for i in range(len(parts)):
        assert_frame_equal(in_memory.shipment_features(i), on_disk.shipment_features(i))


def test_windows_look_backward_and_linkage_forward_across_parts(world):
    """A part holding only early shipments still sees later re-exports; a part holding
    only late shipments still counts the earlier ones as prior history."""
    from detector.batch import load_batch
    from detector.reference import load_reference
    from features.build import FeatureBuilder

    batch = load_batch(world)
    ship = batch.shipments.sort("export_date")
    half = ship.height // 2
    builder = FeatureBuilder([ship[:half], ship[half:]], batch.leases, batch.parties,
                             batch.screening_list, load_reference())
    early, late = builder.shipment_features(0), builder.shipment_features(1)
    assert early["later_reexported_to_d5_hk_mo"].sum() > 0
    assert (late["consignee_prior_shipments"] > 0).sum() > late.height // 4
    # backward only: the earliest day's shipments have no prior history at all
    first_day = early.filter(pl.col("record_date") == early["record_date"].min())
    assert (first_day["consignee_prior_shipments"] == 0).all()


def _compare(single: pl.DataFrame, chunked: pl.DataFrame, top: int) -> None:
    single, chunked = single.sort("rank"), chunked.sort("rank")
    assert chunked.height == single.height
    assert chunked[KEY].equals(single[KEY])  # same ranks
    np.testing.assert_allclose(chunked["risk_score"].to_numpy(),
                               single["risk_score"].to_numpy(), rtol=1e-9, atol=1e-12)
    assert chunked["reasons"].to_list() == single["reasons"].to_list()
    assert chunked["model"].to_list() == single["model"].to_list()
    assert all(chunked["reasons"].head(top).str.len_chars() > 0)


@pytest.mark.parametrize("chunk_rows", [1500, 100_000])
def test_chunked_scores_equal_single_pass_with_trained_model(world, trained, chunk_rows):
    from detector.batch import feature_frame, load_batch
    from detector.scoring import load_model, score_frame, score_records
    from features.stats import FeatureStats

    with detector_env(trained.home):
        model = load_model(None)
    assert not model.fallback
    batch = load_batch(world)
    single = score_frame(feature_frame(batch, FeatureStats.from_dict(
        model.bundle.feature_stats)), model, top=25)
    chunked = score_records(batch, model, top=25, chunk_rows=chunk_rows).frame
    _compare(single, chunked, 25)


def test_chunked_fallback_fits_on_the_same_rows(world, empty_home, monkeypatch):
    """Without a model the detectors are fitted on the batch: the parts gather exactly
    the sample the one-pass fit draws (a small max_fit_rows forces the sampling)."""
    from detector.batch import feature_frame, load_batch
    from detector.models.unsupervised import DETECTORS, UnsupervisedEnsemble
    from detector.scoring import load_model, score_frame, score_records

    monkeypatch.setattr(UnsupervisedEnsemble.__init__, "__defaults__", (DETECTORS, 3000, 0))
    with detector_env(empty_home):
        model = load_model(None)
    assert model.fallback
    batch = load_batch(world)
    single = score_frame(feature_frame(batch), model, top=10)
    chunked = score_records(batch, model, top=10, chunk_rows=2500).frame
    _compare(single, chunked, 10)


def test_cli_score_chunk_rows_gives_the_same_scores(world, trained, scores_csv, tmp_path):
    out = tmp_path / "chunked.csv"
    result = cli(["score", world, "--out", out, "--top", "5", "--chunk-rows", "3000"],
                 trained.home)
    assert result.exit_code == 0, result.output
    single = pl.read_csv(scores_csv[0])
    chunked = pl.read_csv(out)
    _compare(single, chunked, 5)
    assert result.stdout == scores_csv[1]
    bad = cli(["score", world, "--out", tmp_path / "x.csv", "--chunk-rows", "0"], trained.home)
    assert bad.exit_code == 2


def test_report_on_a_batch_waiting_on_disk_is_the_same(world, trained, tmp_path, monkeypatch):
    """`detector report` on a batch of several parts: the shipments wait on disk once
    validated (detector.tables.Spill) and so do the parts' rows for the ranking; the page
    is the one a single in-memory part gives."""
    import detector.batch as batch_module
    from detector import scoring
    from detector.report import generate_report

    with detector_env(trained.home):
        one = generate_report(world, tmp_path / "one.html", capacity="1%",
                              explore=0.1).read_text()
        monkeypatch.setattr("detector.settings.DEFAULT_CHUNK_ROWS", 3000)
        monkeypatch.setattr("detector.batch.DEFAULT_CHUNK_ROWS", 3000)
        seen = []
        load, hold = batch_module.load_batch, scoring.spill_rows

        def spied_load(*args, **kwargs):
            batch = load(*args, **kwargs)
            seen.append(type(batch.dataset.shipments))
            return batch

        monkeypatch.setattr(batch_module, "load_batch", spied_load)
        monkeypatch.setattr(scoring, "spill_rows",
                            lambda directory: seen.append("held") or hold(directory))
        parts = generate_report(world, tmp_path / "parts.html", capacity="1%",
                                explore=0.1).read_text()
    assert seen == [pl.LazyFrame, "held"]
    assert parts == one
