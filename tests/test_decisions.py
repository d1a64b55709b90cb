"""The decision store (issue #14): append-only history, the latest decision counts,
concurrent writers lose nothing, export/import round trip, and training picks stored
decisions up with the documented precedence."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import date

import polars as pl
import pytest
from pipeline_fixtures import cli, copy_world

from detector.decisions import (
    DecisionStore,
    export_labels,
    import_labels,
    make_decision,
    merge_labels,
)
from detector.errors import InputError, UsageError


def _decide(store, record_id, decision, *, typology=None, decided_on=None, kind="shipment",
            note=None, analyst="ana"):
    store.add([make_decision(kind, record_id, decision, analyst, typology=typology,
                             note=note, decided_on=decided_on)])


def test_validation_refuses_bad_decisions():
    with pytest.raises(InputError, match="needs a scheme"):
        make_decision("shipment", "S1", "confirm", "ana")
    with pytest.raises(InputError, match="decision: expected"):
        make_decision("shipment", "S1", "escalate", "ana")
    with pytest.raises(InputError, match="record kind"):
        make_decision("container", "S1", "clear", "ana")
    with pytest.raises(UsageError, match="analyst"):
        make_decision("shipment", "S1", "clear", "  ")
    with pytest.raises(InputError, match="score at decision"):
        make_decision("shipment", "S1", "clear", "ana", risk_score=1.5)
    # a scheme only describes a confirmed diversion
    assert make_decision("shipment", "S1", "clear", "ana", typology="x").typology is None


def test_store_is_append_only_and_latest_counts(tmp_path):
    store = DecisionStore(tmp_path / "d.sqlite")
    _decide(store, "S1", "confirm", typology="transshipment", note="first")
    _decide(store, "S1", "clear", note="second look")
    _decide(store, "S2", "confirm", typology="shell_company")
    _decide(store, "S2", "needs_info")
    _decide(store, "L1", "confirm", typology="cloud_lease", kind="lease")

    history = store.history()
    assert history.height == 5  # nothing overwritten
    latest = store.latest()
    assert dict(zip(latest["record_id"], latest["decision"])) == {
        "S1": "clear", "S2": "needs_info", "L1": "confirm"}
    labels = store.labels()
    # needs_info carries no label: S2 is unlabelled again
    assert labels.select("record_kind", "record_id", "label").rows() == [
        ("lease", "L1", 1), ("shipment", "S1", 0)]
    with sqlite3.connect(store.path) as conn:
        for sql in ("UPDATE decisions SET label = 1", "DELETE FROM decisions"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(sql)
    assert store.history().height == 5


def test_a_later_decided_on_wins_over_a_later_insert(tmp_path):
    store = DecisionStore(tmp_path / "d.sqlite")
    _decide(store, "S1", "confirm", typology="splitting", decided_on=date(2024, 5, 1))
    _decide(store, "S1", "clear", decided_on=date(2024, 4, 1))  # stored later, decided earlier
    assert store.labels()["label"].to_list() == [1]


def test_reading_a_missing_store_creates_nothing(tmp_path):
    """Scoring only reads the store: with none, a read makes no folder, file or lock."""
    home = tmp_path / "home"
    store = DecisionStore(home / "decisions.sqlite")
    assert store.history().height == 0
    assert store.latest().height == 0
    assert store.labels().height == 0
    assert not home.exists()
    home.mkdir()
    assert store.labels().height == 0 and store.history("shipment", "S1").height == 0
    assert list(home.iterdir()) == []  # no file, no .lock, no -wal or -shm


def test_reading_an_existing_store_is_read_only(tmp_path):
    """A store read takes no lock and leaves the journal alone (a read-only connection):
    here a store in SQLite's default rollback journal, made without `DecisionStore`."""
    from detector.decisions import _SCHEMA

    path = tmp_path / "decisions.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(_SCHEMA)
        conn.execute("INSERT INTO decisions (record_kind, record_id, decision, label, "
                     "typology, analyst, decided_on, decided_at, source) VALUES ('shipment',"
                     " 'S1', 'confirm', 1, 'splitting', 'ana', '2024-05-01', 'x', 'cli')")
    conn.close()
    store = DecisionStore(path)
    assert store.labels().select("record_id", "label", "typology").rows() == [
        ("S1", 1, "splitting")]
    assert store.history("shipment", "S1").height == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decisions.sqlite"]  # no lock
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()
    # a writer still prepares the store as before: WAL, under its lock
    _decide(store, "S2", "clear")
    assert {p.name for p in tmp_path.iterdir()} >= {"decisions.sqlite",
                                                     "decisions.sqlite.lock"}
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert DecisionStore(path).history().height == 2


def test_an_unreadable_store_names_its_path(tmp_path):
    from detector.errors import EnvironmentFailure

    path = tmp_path / "decisions.sqlite"
    path.write_text("not a database, " * 100)
    with pytest.raises(EnvironmentFailure, match=f"decision store {path}"):
        DecisionStore(path).labels()


_WRITER = """
import sys
from detector.decisions import DecisionStore, make_decision
store = DecisionStore(sys.argv[1])
for i in range(int(sys.argv[3])):
    store.add([make_decision("shipment", f"{sys.argv[2]}-{i}", "clear", sys.argv[2])])
"""


def test_two_processes_deciding_at_once_lose_nothing(tmp_path):
    path = tmp_path / "d.sqlite"
    DecisionStore(path).history()  # no file yet: nothing to read
    n = 150
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), who, str(n)],
                              stderr=subprocess.PIPE, text=True) for who in ("ana", "ben")]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    history = DecisionStore(path).history()
    assert history.height == 2 * n
    assert history.group_by("analyst").len().sort("analyst").rows() == [("ana", n), ("ben", n)]
    assert history["id"].n_unique() == 2 * n


def test_export_import_round_trip(tmp_path):
    first = DecisionStore(tmp_path / "a.sqlite")
    _decide(first, "S1", "confirm", typology="transshipment", note="=HYPERLINK(\"x\")",
            decided_on=date(2024, 3, 1))
    _decide(first, "S2", "clear", decided_on=date(2024, 3, 2))
    _decide(first, "L7", "confirm", typology="free text, with comma", kind="lease")
    _decide(first, "S3", "needs_info")  # no label: not exported
    out, rows = export_labels(tmp_path / "labels.csv", first)
    assert rows == 3
    written = pl.read_csv(out)
    assert written.columns[:5] == ["record_kind", "record_id", "label", "typology",
                                   "decided_on"]

    second = DecisionStore(tmp_path / "b.sqlite")
    result = import_labels(out, store=second)
    assert (result.stored, result.rows, result.skipped_same) == (3, 3, 0)
    columns = ["record_kind", "record_id", "label", "typology", "decided_on", "analyst"]
    assert second.labels().select(columns).equals(first.labels().select(columns))
    assert second.history()["source"].unique().to_list() == ["import"]
    again = import_labels(out, store=second)  # the same file twice adds nothing
    assert (again.stored, again.skipped_same) == (0, 3)
    assert second.history().height == 3


def test_import_refuses_a_bad_file_whole(tmp_path):
    store = DecisionStore(tmp_path / "d.sqlite")
    bad = tmp_path / "bad.csv"
    bad.write_text("record_kind,record_id,label\nshipment,S1,1\nshipment,S2,7\n")
    with pytest.raises(InputError, match="label"):
        import_labels(bad, store=store)
    missing = tmp_path / "missing.csv"
    missing.write_text("record_kind,label\nshipment,1\n")
    with pytest.raises(InputError, match="record_id"):
        import_labels(missing, store=store)
    assert store.history().height == 0


def test_merge_labels_latest_decided_on_wins_and_counts():
    dataset = pl.DataFrame({
        "record_kind": ["shipment"] * 3, "record_id": ["A", "B", "C"], "label": [0, 1, 0],
        "typology": [None, "splitting", None],
        "decided_on": [date(2024, 1, 1), date(2024, 6, 1), date(2024, 2, 1)]})
    stored = pl.DataFrame({
        "record_kind": ["shipment"] * 4, "record_id": ["A", "B", "C", "D"],
        "label": [1, 0, 1, 1], "typology": ["transshipment", None, "shell_company", "x"],
        "decided_on": [date(2024, 3, 1), date(2024, 5, 1), date(2024, 2, 1), date(2024, 1, 1)]})
    records = pl.DataFrame({"record_kind": ["shipment"] * 4, "record_id": ["A", "B", "C", "E"]})
    merged, counts = merge_labels(dataset, stored, records)
    assert dict(zip(merged["record_id"], merged["label"])) == {"A": 1, "B": 1, "C": 1}
    # A: stored is newer; B: dataset is newer; C: same date, the stored decision wins
    assert counts.dataset == 3 and counts.stored == 3 and counts.stored_used == 2
    assert counts.stored_overriding == 2 and counts.stored_elsewhere == 1
    assert counts.final == 3


def test_adjudicate_and_export_through_the_cli(tmp_path):
    home = tmp_path / "home"
    result = cli(["adjudicate", "SHP-1", "--label", "1", "--typology", "transshipment",
                  "--note", "re-export seen", "--analyst", "ana"], home)
    assert result.exit_code == 0, result.output
    assert "confirmed diversion (transshipment) by ana" in result.stdout
    result = cli(["adjudicate", "SHP-2", "--label", "1", "--analyst", "ana"], home)
    assert result.exit_code == 1 and "needs a scheme" in result.output
    result = cli(["adjudicate", "SHP-2", "--label", "3", "--analyst", "ana"], home)
    assert result.exit_code == 2
    out = tmp_path / "labels.csv"
    result = cli(["decisions", "export", "--out", out], home)
    assert result.exit_code == 0 and "wrote 1 labels" in result.stdout
    row = pl.read_csv(out).row(0, named=True)
    assert (row["record_id"], row["label"], row["typology"], row["analyst"]) == (
        "SHP-1", 1, "transshipment", "ana")
    other = tmp_path / "other"
    result = cli(["decisions", "import", out], other)
    assert result.exit_code == 0 and "stored 1 decisions" in result.stdout
    assert DecisionStore(other / "decisions.sqlite").labels()["record_id"].to_list() == ["SHP-1"]


def test_train_picks_up_stored_decisions(world, tmp_path):
    """A record confirmed in the store is a positive in the next training run; one cleared
    in the store after the dataset confirmed it is a negative; the counts are logged."""
    from mlflow.tracking import MlflowClient
    from pipeline_fixtures import detector_env

    from detector import tracking

    data = copy_world(world, tmp_path / "world")
    labels = pl.read_csv(data / "labels.csv")
    shipments = pl.read_csv(data / "shipments.csv", columns=["shipment_id"])
    unlabelled = shipments.filter(~pl.col("shipment_id").is_in(
        labels["record_id"].implode()))["shipment_id"][0]
    confirmed = labels.filter((pl.col("label") == 1) & (pl.col("record_kind") == "shipment"))
    overridden = confirmed["record_id"][0]
    home = tmp_path / "home"
    store = DecisionStore(home / "decisions.sqlite")
    store.add([make_decision("shipment", unlabelled, "confirm", "ana", typology="transshipment",
                             decided_on=date(2030, 1, 1)),
               make_decision("shipment", overridden, "clear", "ana",
                             decided_on=date(2030, 1, 1))])

    from detector.batch import load_batch
    from detector.training import stored_labels

    with detector_env(home):
        batch = load_batch(data)
        merged, counts = stored_labels(batch)
    label_of = dict(zip(merged["record_id"], merged["label"]))
    assert label_of[unlabelled] == 1 and label_of[overridden] == 0
    assert batch.dataset.labels is merged  # what reads the batch's labels sees them

    result = cli(["train", data], home)
    assert result.exit_code == 0, result.output
    with detector_env(home):
        uri = tracking.tracking_uri()
    client = MlflowClient(uri, uri)
    run = client.search_runs([client.get_experiment_by_name("chip-diversion").experiment_id])[0]
    params = run.data.params
    dataset_labels = pl.read_csv(data / "labels.csv").unique(["record_kind", "record_id"]).height
    assert params["labels.stored_used"] == "2"
    assert params["labels.stored_overriding"] == "1"
    assert int(params["labels.final"]) == dataset_labels + 1 == counts.final
