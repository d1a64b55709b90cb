"""The decision store feeds the case memory at scoring (issue #14): a decision made on
the review page (or imported) counts for the later records of the same party, linked
parties, route and product at the next `detector score`, never for records dated on or
before it, and `detector explain` counts the same decisions as the whole batch's
scoring."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from pipeline_fixtures import cli, detector_env

from detector.decisions import DecisionStore, make_decision

KEY = ["record_kind", "record_id"]


@pytest.fixture(scope="module")
def bundle(trained) -> Path:
    """The session champion's bundle as a local directory, so a test home holds only its
    own decision store (the trained home's store stays empty for the other tests)."""
    (found,) = trained.home.rglob("bundle.json")
    return found.parent


def _unlabelled_party(world: Path, table: str, id_column: str, party_column: str,
                      date_column: str) -> pl.DataFrame:
    """The records of one party none of whose records (either kind) is labelled, with at
    least three distinct dates, oldest first (chosen deterministically)."""
    records = pl.read_csv(world / f"{table}.csv", try_parse_dates=True)
    labelled = set(pl.read_csv(world / "labels.csv")["record_id"])
    touched = set()
    for other, oid, pcol in (("shipments", "shipment_id", "consignee_party_id"),
                             ("leases", "lease_id", "lessee_party_id")):
        frame = pl.read_csv(world / f"{other}.csv", columns=[oid, pcol])
        touched |= set(frame.filter(pl.col(oid).is_in(list(labelled)))[pcol].drop_nulls())
    chosen = (records.filter(pl.col(party_column).is_not_null()
                             & ~pl.col(party_column).is_in(list(touched)))
              .group_by(party_column).agg(pl.col(date_column).n_unique().alias("dates"))
              .filter(pl.col("dates") >= 3).sort(["dates", party_column]))[party_column][0]
    return records.filter(pl.col(party_column) == chosen).sort([date_column, id_column]) \
        .select(pl.col(id_column).alias("record_id"), pl.col(date_column).alias("record_date"))


def _features(world: Path, bundle: Path, home: Path) -> pl.DataFrame:
    """Every record's features and risk, scored as `detector score` scores (the batch's
    records through the one engine), with ``home``'s decision store."""
    from detector.batch import load_batch
    from detector.scoring import load_model, score_batch

    with detector_env(home):
        return score_batch(load_batch(world), load_model(str(bundle)), top=0).frame


def _row(frame: pl.DataFrame, kind: str, record_id: str) -> dict:
    return frame.filter((pl.col("record_kind") == kind)
                        & (pl.col("record_id") == record_id)).row(0, named=True)


def _explained(world: Path, bundle: Path, home: Path, kind: str, record_id: str) -> dict:
    result = cli(["explain", world, record_id, "--kind", kind, "--model", bundle, "--json"],
                 home)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_stored_confirmation_counts_for_the_consignees_later_records_only(
        world, bundle, empty_home, tmp_path):
    rows = _unlabelled_party(world, "shipments", "shipment_id", "consignee_party_id",
                             "export_date")
    confirmed, same_day = rows.row(0, named=True), rows.row(1, named=True)
    decided_on = same_day["record_date"]  # the decision's day: it counts from the next day
    later = rows.filter(pl.col("record_date") > decided_on)
    assert later.height and confirmed["record_date"] < decided_on
    home = tmp_path / "home"
    DecisionStore(home / "decisions.sqlite").add([make_decision(
        "shipment", confirmed["record_id"], "confirm", "ana", typology="transshipment",
        decided_on=decided_on)])

    # detector score: the stored decision is counted and said so; rows dated on or
    # before the decision are exactly as without a store
    before_out, after_out = tmp_path / "before.csv", tmp_path / "after.csv"
    result = cli(["score", world, "--out", before_out, "--model", bundle, "--top", "0"],
                 empty_home)
    assert result.exit_code == 0, result.output
    assert "case memory" not in result.output  # no store: nothing said, nothing changed
    result = cli(["score", world, "--out", after_out, "--model", bundle, "--top", "0"], home)
    assert result.exit_code == 0, result.output
    assert "case memory: 1 of 1 stored decisions about this batch" in result.stderr
    provenance = json.loads((tmp_path / "after.csv.provenance.json").read_text())
    assert provenance["case_memory_stored_decisions"]["stored_used"] == 1
    before = pl.read_csv(before_out, try_parse_dates=True)
    after = pl.read_csv(after_out, try_parse_dates=True)
    changed = before.join(after, on=KEY, suffix="_after").filter(pl.any_horizontal(
        pl.col(c).ne_missing(pl.col(f"{c}_after")) for c in before.columns if c not in KEY))
    assert changed.height > 0  # the decision reaches the scores file...
    assert changed["record_date"].min() > decided_on  # ...only after its date

    # the features: the later records of the consignee read the confirmation; the
    # confirmed record itself and the one dated on the decision's day do not
    base = _features(world, bundle, empty_home)
    with_store = _features(world, bundle, home)
    for record in later["record_id"]:
        assert _row(base, "shipment", record)["consignee_confirmed_before"] == 0
        assert _row(with_store, "shipment", record)["consignee_confirmed_before"] == 1
    for record in (confirmed["record_id"], same_day["record_id"]):
        assert _row(with_store, "shipment", record) == _row(base, "shipment", record)

    # explain counts the same decision as the whole batch's scoring
    last = later["record_id"][-1]
    explained = _explained(world, bundle, home, "shipment", last)
    values = {f["feature"]: f["value"] for f in explained["features"]}
    scored = _row(with_store, "shipment", last)
    assert values["consignee_confirmed_before"] == 1
    assert values["consignee_confirmed_rate"] == pytest.approx(scored["consignee_confirmed_rate"])
    written = _row(after, "shipment", last)
    assert explained["risk_score"] == pytest.approx(written["risk_score"], abs=1e-12)
    assert explained["likely_scheme"] == written["likely_scheme"]
    assert explained["scheme_confidence"] == pytest.approx(written["scheme_confidence"])


def test_a_stored_lease_confirmation_counts_for_the_lessees_later_leases(
        world, bundle, empty_home, tmp_path):
    rows = _unlabelled_party(world, "leases", "lease_id", "lessee_party_id", "start_date")
    confirmed = rows.row(0, named=True)
    later = rows.filter(pl.col("record_date") > confirmed["record_date"])
    home = tmp_path / "home"
    DecisionStore(home / "decisions.sqlite").add([make_decision(
        "lease", confirmed["record_id"], "confirm", "ana", typology="cloud_lease",
        decided_on=confirmed["record_date"])])
    base = _features(world, bundle, empty_home)
    with_store = _features(world, bundle, home)
    for record in later["record_id"]:
        assert _row(with_store, "lease", record)["consignee_confirmed_before"] == \
            _row(base, "lease", record)["consignee_confirmed_before"] + 1
    assert _row(with_store, "lease", confirmed["record_id"]) == \
        _row(base, "lease", confirmed["record_id"])
    last = later["record_id"][-1]
    explained = _explained(world, bundle, home, "lease", last)
    values = {f["feature"]: f["value"] for f in explained["features"]}
    assert values["consignee_confirmed_before"] == \
        _row(with_store, "lease", last)["consignee_confirmed_before"]
    assert explained["risk_score"] == pytest.approx(_row(with_store, "lease", last)["risk_score"],
                                                    abs=1e-12)


def test_a_later_history_label_wins_over_an_older_stored_decision(world, tmp_path):
    """Precedence at scoring, as in training: the latest decided_on wins; the counts
    say how many stored decisions counted."""
    from detector.batch import load_batch

    data = tmp_path / "batch"
    history = tmp_path / "history"
    for d in (data, history):
        d.mkdir()
    shipments = pl.read_csv(world / "shipments.csv", infer_schema=False)
    late = shipments["export_date"] >= "2024-10-01"
    for name in ("parties", "screening_list"):
        (data / f"{name}.csv").write_bytes((world / f"{name}.csv").read_bytes())
        (history / f"{name}.csv").write_bytes((world / f"{name}.csv").read_bytes())
    shipments.filter(late).write_csv(data / "shipments.csv")
    shipments.filter(~late).write_csv(history / "shipments.csv")
    first, second, third = shipments.filter(~late)["shipment_id"][:3]
    pl.DataFrame({"record_kind": ["shipment"] * 2, "record_id": [first, second],
                  "label": [0, 0], "typology": [None, None],
                  "decided_on": ["2024-12-01", "2024-12-01"]}).write_csv(
        history / "labels.csv")
    home = tmp_path / "home"
    DecisionStore(home / "decisions.sqlite").add([
        make_decision("shipment", first, "confirm", "ana", typology="x",
                      decided_on=date(2024, 11, 1)),   # older than the history's label
        make_decision("shipment", second, "confirm", "ana", typology="x",
                      decided_on=date(2024, 12, 1)),   # same day: the stored one wins
        make_decision("shipment", third, "confirm", "ana", typology="x",
                      decided_on=date(2024, 12, 2)),   # no history label
        make_decision("shipment", "SHP-NOT-HERE", "confirm", "ana", typology="x")])
    said = []
    with detector_env(home):
        batch = load_batch(data, [history], log=said.append)
        labels = batch.scoring_labels
        assert batch.scoring_labels is labels  # read once per batch
        assert "scoring_labels" in vars(batch)  # the cached property's value, nothing else
    label_of = dict(zip(labels["record_id"], labels["label"]))
    assert label_of == {first: 0, second: 1, third: 1}
    assert batch.provenance["case_memory_stored_decisions"] == {
        "history_labels": 2, "stored": 3, "stored_used": 2, "stored_overriding": 1,
        "stored_elsewhere": 1}
    assert len(said) == 1 and said[0].startswith("case memory: 2 of 3 stored decisions")


def test_the_review_page_scores_with_the_store_it_was_given(world, bundle, tmp_path):
    """`open_review(store=...)`: the store the page writes to is the one its scoring's
    case memory reads, not the default store under $DETECTOR_HOME (left uncreated)."""
    from detector.review.session import open_review

    rows = _unlabelled_party(world, "shipments", "shipment_id", "consignee_party_id",
                             "export_date")
    confirmed = rows.row(0, named=True)
    later = rows.filter(pl.col("record_date") > confirmed["record_date"])["record_id"]
    store = DecisionStore(tmp_path / "elsewhere" / "decisions.sqlite")
    store.add([make_decision("shipment", confirmed["record_id"], "confirm", "ana",
                             typology="transshipment", decided_on=confirmed["record_date"])])
    home = tmp_path / "home"
    home.mkdir()
    with detector_env(home):
        session = open_review(world, model_uri=str(bundle), store=store)
        frame = session.scored().frame
    assert session.batch.scoring_labels.select("record_id", "label").rows() == [
        (confirmed["record_id"], 1)]
    assert session.batch.provenance["case_memory_stored_decisions"]["stored_used"] == 1
    for record in later:
        assert _row(frame, "shipment", record)["consignee_confirmed_before"] == 1
    assert not (home / "decisions.sqlite").exists()
    assert session.batch.decisions is store and session.store is store
