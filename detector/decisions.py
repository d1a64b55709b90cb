"""The analyst decision store: an append-only SQLite table under ``$DETECTOR_HOME``.

Every decision is one new row (confirm diversion, clear, needs more information); rows
are never updated or deleted (triggers refuse it), so the history of a case is kept.
The latest decision per record counts: latest ``decided_on``, then latest
``decided_at`` (the moment it was stored), then the later row. ``needs_info`` carries no
label: a record whose latest decision is "needs more information" is unlabelled again.

Two analysts (two processes, or two requests of the review page) deciding at once lose
nothing: each decision is one short ``BEGIN IMMEDIATE`` transaction in WAL mode, and a
writer that finds the store busy waits (``busy_timeout``) instead of failing.
Readers (every scoring path, training, the export) open it read-only: no folder,
file, lock or journal change, so scoring runs with a read-only ``$DETECTOR_HOME``
and a missing store reads as no decisions.

The store is the source of stored labels for training (`merge_labels`): the dataset's
labels and the store's, one per record, the latest ``decided_on`` winning; on equal
dates the stored decision wins (it is the analyst's word on this detector's queue).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import quote

import polars as pl

from detector.errors import EnvironmentFailure, InputError, UsageError

STORE_FILE = "decisions.sqlite"
CONFIRM, CLEAR, NEEDS_INFO = "confirm", "clear", "needs_info"
DECISIONS = {CONFIRM: 1, CLEAR: 0, NEEDS_INFO: None}  # decision -> label
DECISION_TEXT = {CONFIRM: "confirmed diversion", CLEAR: "cleared",
                 NEEDS_INFO: "needs more information"}
RECORD_KINDS = ("shipment", "lease")
# The known schemes an analyst picks from (the simulator's and docs/typologies.md's);
# free text is accepted too.
KNOWN_SCHEMES = ("transshipment", "shell_company", "restricted_parent", "cloud_lease",
                 "misdeclaration", "splitting", "screening_evasion")
MAX_NOTE = 4000
MAX_TEXT = 200
BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    record_kind TEXT NOT NULL CHECK (record_kind IN ('shipment', 'lease')),
    record_id   TEXT NOT NULL,
    decision    TEXT NOT NULL CHECK (decision IN ('confirm', 'clear', 'needs_info')),
    label       INTEGER CHECK (label IN (0, 1)),
    typology    TEXT,
    note        TEXT,
    analyst     TEXT NOT NULL,
    decided_on  TEXT,
    decided_at  TEXT NOT NULL,
    model       TEXT,
    risk_score  REAL,
    source      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_record ON decisions (record_kind, record_id);
CREATE TRIGGER IF NOT EXISTS decisions_no_update BEFORE UPDATE ON decisions
BEGIN SELECT RAISE(ABORT, 'the decision store is append-only'); END;
CREATE TRIGGER IF NOT EXISTS decisions_no_delete BEFORE DELETE ON decisions
BEGIN SELECT RAISE(ABORT, 'the decision store is append-only'); END;
"""

COLUMNS = ("id", "record_kind", "record_id", "decision", "label", "typology", "note",
           "analyst", "decided_on", "decided_at", "model", "risk_score", "source")
SCHEMA = {"id": pl.Int64, "record_kind": pl.String, "record_id": pl.String,
          "decision": pl.String, "label": pl.Int64, "typology": pl.String, "note": pl.String,
          "analyst": pl.String, "decided_on": pl.Date, "decided_at": pl.String,
          "model": pl.String, "risk_score": pl.Float64, "source": pl.String}
# The labels table (DATA_CONTRACT.md) and, after it, where each decision came from.
EXPORT_EXTRA = ("note", "analyst", "decided_at", "model", "risk_score", "source")


def store_path() -> Path:
    """``$DETECTOR_HOME/decisions.sqlite`` (the same home as the MLflow store)."""
    home = Path(os.environ.get("DETECTOR_HOME", ".detector")).expanduser().resolve()
    return home / STORE_FILE


def default_analyst() -> str | None:
    return os.environ.get("DETECTOR_ANALYST") or None


@dataclass(frozen=True)
class Decision:
    """One validated decision, ready to store."""

    record_kind: str
    record_id: str
    decision: str
    analyst: str
    typology: str | None = None
    note: str | None = None
    decided_on: date | None = None
    decided_at: str | None = None
    model: str | None = None
    risk_score: float | None = None
    source: str = "cli"

    @property
    def label(self) -> int | None:
        return DECISIONS[self.decision]


def _clean(text: str | None, limit: int, what: str) -> str | None:
    if text is None:
        return None
    text = str(text).strip()
    if len(text) > limit:
        raise InputError(f"{what}: at most {limit} characters, got {len(text)}")
    if any(ord(c) < 32 and c not in "\n\t" for c in text):
        raise InputError(f"{what}: control characters are not allowed")
    return text or None


def make_decision(record_kind: str, record_id: str, decision: str, analyst: str | None, *,
                  typology: str | None = None, note: str | None = None,
                  decided_on: date | None = None, model: str | None = None,
                  risk_score: float | None = None, source: str = "cli") -> Decision:
    """Validate one decision (the page and the CLI both come through here)."""
    if record_kind not in RECORD_KINDS:
        raise InputError(f"record kind: expected shipment or lease, got {record_kind!r}")
    record_id = _clean(record_id, MAX_TEXT, "record id")
    if not record_id:
        raise InputError("record id: empty")
    if decision not in DECISIONS:
        raise InputError(f"decision: expected one of {', '.join(DECISIONS)}, got {decision!r}")
    analyst = _clean(analyst, MAX_TEXT, "analyst")
    if not analyst:
        raise UsageError("no analyst name: pass --analyst NAME or set DETECTOR_ANALYST")
    typology = _clean(typology, MAX_TEXT, "scheme")
    if decision == CONFIRM and not typology:
        raise InputError("a confirmed diversion needs a scheme (one of "
                         f"{', '.join(KNOWN_SCHEMES)}, or free text)")
    if decision != CONFIRM:
        typology = None  # a scheme only describes a confirmed diversion
    note = _clean(note, MAX_NOTE, "note")
    if risk_score is not None and not (0.0 <= float(risk_score) <= 1.0):
        raise InputError(f"score at decision: expected 0..1, got {risk_score}")
    return Decision(record_kind, record_id, decision, analyst, typology, note, decided_on,
                    None, _clean(model, MAX_TEXT, "model"),
                    None if risk_score is None else float(risk_score), source)


class DecisionStore:
    """The append-only decision table in one SQLite file."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else store_path()
        self._prepared = False

    def _connect(self) -> sqlite3.Connection:
        try:
            if not self._prepared:
                self._prepare()
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                   isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            return conn
        except (sqlite3.Error, OSError) as exc:
            raise EnvironmentFailure(f"decision store {self.path}: {exc}") from exc

    def _prepare(self) -> None:
        """Create the table and switch to WAL once, under a file lock: SQLite answers
        'database is locked' at once, without waiting out the busy timeout, when two
        processes switch a new file's journal mode together."""
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path) + ".lock", timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            with lock:
                conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                       isolation_level=None)
                try:
                    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                        conn.execute("PRAGMA journal_mode = WAL")
                    conn.executescript(_SCHEMA)
                finally:
                    conn.close()
        except Timeout as exc:
            raise EnvironmentFailure(f"decision store {self.path}: another process holds "
                                     f"{lock.lock_file} for over {BUSY_TIMEOUT_MS // 1000} s"
                                     ) from exc
        self._prepared = True

    def add(self, decisions: list[Decision]) -> int:
        """Append decisions in one transaction; returns how many were stored."""
        now = datetime.now(UTC).isoformat(timespec="microseconds")
        rows = [(d.record_kind, d.record_id, d.decision, d.label, d.typology, d.note,
                 d.analyst, (d.decided_on or date.fromisoformat(now[:10])).isoformat(),
                 d.decided_at or now, d.model, d.risk_score, d.source) for d in decisions]
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO decisions (record_kind, record_id, decision, label, typology, "
                "note, analyst, decided_on, decided_at, model, risk_score, source) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise EnvironmentFailure(f"decision store {self.path}: {exc}") from exc
        finally:
            conn.close()
        return len(rows)

    def _read(self, query: str, args: tuple = ()) -> list[tuple]:
        """The rows of one query, read through a read-only connection: a read creates no
        folder, file, lock or journal change (scoring only reads, and may run with a
        read-only ``$DETECTOR_HOME``). No store file, or no table yet: no rows."""
        if not self.path.exists():
            return []
        try:
            conn = _open_read_only(self.path)
            try:
                if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                "AND name = 'decisions'").fetchone() is None:
                    return []  # a writer is creating the store (`_prepare`)
                return conn.execute(query, args).fetchall()
            finally:
                conn.close()
        except (sqlite3.Error, OSError) as exc:
            raise EnvironmentFailure(f"decision store {self.path}: {exc}") from exc

    def history(self, record_kind: str | None = None, record_id: str | None = None
                ) -> pl.DataFrame:
        """Every stored decision (of one record, if given), oldest first."""
        where, args = "", ()
        if record_id is not None:
            where, args = " WHERE record_kind = ? AND record_id = ?", (record_kind, record_id)
        rows = self._read(f"SELECT {', '.join(COLUMNS)} FROM decisions{where} ORDER BY id",
                          args)
        if not rows:
            return pl.DataFrame(schema=SCHEMA)
        frame = pl.DataFrame(rows, schema={k: (pl.String if v == pl.Date else v)
                                           for k, v in SCHEMA.items()}, orient="row")
        return frame.with_columns(pl.col("decided_on").str.to_date("%Y-%m-%d", strict=False))

    def latest(self) -> pl.DataFrame:
        """The decision that counts for each record (see the module's docstring)."""
        return latest_per_record(self.history())

    def labels(self) -> pl.DataFrame:
        """The store as the contract's labels table (records whose latest decision has a
        label), with where each came from after the contract's columns."""
        latest = self.latest().filter(pl.col("label").is_not_null())
        return latest.select("record_kind", "record_id", "label", "typology", "decided_on",
                             *EXPORT_EXTRA).sort(["record_kind", "record_id"])


def _open_read_only(path: Path) -> sqlite3.Connection:
    """``path`` opened read-only (sqlite URI ``mode=ro``).

    A WAL store whose folder cannot be written, and which has no ``-shm`` file, cannot
    be opened so (SQLite must create that file: SQLITE_READONLY_DIRECTORY); it is then
    read as immutable: nobody can be writing it either, since a writer needs that folder.
    """
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                           isolation_level=None)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError as exc:
        conn.close()
        if getattr(exc, "sqlite_errorname", "") != "SQLITE_READONLY_DIRECTORY":
            raise
        conn = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None)
    return conn


def latest_per_record(history: pl.DataFrame) -> pl.DataFrame:
    key = ["record_kind", "record_id"]
    return (history.sort(["decided_on", "decided_at", "id"], nulls_last=False)
            .group_by(key, maintain_order=True).last().sort(key))


# --------------------------------------------------------------------------- commands


def adjudicate(record_id: str, label: int, *, record_kind: str | None = None,
               typology: str | None = None, note: str | None = None,
               analyst: str | None = None, store: DecisionStore | None = None) -> Decision:
    """`detector adjudicate`: one decision from the command line, stored like the page's."""
    if label not in (0, 1):
        raise UsageError(f"--label {label}: expected 0 (cleared) or 1 (confirmed diversion)")
    store = store or DecisionStore()
    if record_kind is None:
        known = store.history().filter(pl.col("record_id") == record_id)["record_kind"].unique()
        if known.len() > 1:
            raise UsageError(f"{record_id!r} is both a shipment and a lease id in the store: "
                             "add --kind")
        record_kind = known[0] if known.len() == 1 else "shipment"
    decision = make_decision(record_kind, record_id, CONFIRM if label == 1 else CLEAR,
                             analyst or default_analyst() or _login_name(), typology=typology,
                             note=note, source="cli")
    store.add([decision])
    return decision


def _login_name() -> str | None:
    try:
        import getpass

        return getpass.getuser()
    except (OSError, KeyError):  # no login name here: the caller asks for --analyst
        return None


def export_labels(out: str | Path, store: DecisionStore | None = None) -> tuple[Path, int]:
    """`detector decisions export`: the store as a labels table (CSV or Parquet)."""
    from detector.tables import write_table

    table = (store or DecisionStore()).labels()
    return write_table(table, out), table.height


@dataclass
class ImportResult:
    stored: int
    skipped_same: int
    rows: int


def import_labels(path: str | Path, *, analyst: str | None = None,
                  store: DecisionStore | None = None) -> ImportResult:
    """`detector decisions import`: decisions made elsewhere, as a labels table.

    The file is read and checked like a dataset's labels table (DATA_CONTRACT.md); any
    error refuses the whole file and stores nothing. Optional ``analyst``, ``note``,
    ``model``, ``risk_score`` and ``decided_at`` columns (as `export` writes them) are
    kept. A row identical to the latest stored decision of its record is not stored
    again, so importing the same file twice adds nothing.
    """
    from detector.contract import LABELS
    from detector.tables import ValidationReport, read_table

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.suffix.lower() not in (".csv", ".parquet"):
        raise UsageError(f"{path}: expected a .csv or .parquet labels table")
    report = ValidationReport()
    read = read_table(path, LABELS, report)
    if not read.readable or report.errors:
        raise InputError(f"{path}: not a valid labels table:\n{report.text()}")
    bad = read.data.filter(~pl.col("label").is_in([0, 1]))
    if bad.height:
        raise InputError(f"{path}, column 'label': expected 0 or 1 ({bad.height} rows); "
                         f"values: {bad['label'].unique().head(5).to_list()}")
    extra = _extra_columns(path, read.data.height)
    store = store or DecisionStore()
    latest = {(r["record_kind"], r["record_id"]): r for r in store.latest().to_dicts()}
    fallback_analyst = analyst or default_analyst() or _login_name() or "import"
    decisions, skipped = [], 0
    for i, row in enumerate(read.data.to_dicts()):
        x = {k: v[i] for k, v in extra.items()}
        decision = make_decision(
            row["record_kind"], row["record_id"], CONFIRM if row["label"] == 1 else CLEAR,
            x.get("analyst") or fallback_analyst,
            typology=row["typology"] or ("unspecified" if row["label"] == 1 else None),
            note=x.get("note"), decided_on=row["decided_on"], model=x.get("model"),
            risk_score=x.get("risk_score"), source="import")
        if x.get("decided_at"):
            decision = Decision(**{**decision.__dict__, "decided_at": str(x["decided_at"])})
        before = latest.get((decision.record_kind, decision.record_id))
        if before is not None and _same(before, decision):
            skipped += 1
            continue
        decisions.append(decision)
    if decisions:
        store.add(decisions)
    return ImportResult(len(decisions), skipped, read.data.height)


def _extra_columns(path: Path, rows: int) -> dict[str, list]:
    """The export's optional provenance columns, when the file has them."""
    frame = (pl.read_parquet(path) if path.suffix.lower() == ".parquet"
             else pl.read_csv(path, infer_schema=False))
    out = {}
    for name in ("analyst", "note", "model", "decided_at"):
        if name in frame.columns:
            out[name] = [None if v is None or str(v).strip() == "" else str(v)
                         for v in frame[name].cast(pl.String).to_list()]
    if "risk_score" in frame.columns:
        out["risk_score"] = frame["risk_score"].cast(pl.Float64, strict=False).to_list()
    assert all(len(v) == rows for v in out.values())
    return out


def _same(stored: dict, decision: Decision) -> bool:
    return (stored["label"] == decision.label and stored["typology"] == decision.typology
            and stored["decided_on"] == decision.decided_on
            and (stored["note"] or None) == decision.note)


# --------------------------------------------------------------------------- training


@dataclass
class LabelCounts:
    dataset: int  # label rows the dataset holds (resolved, for its records)
    stored: int  # stored decisions with a label for the dataset's records
    stored_used: int  # of those, the ones that count (newer than, or no, dataset label)
    stored_overriding: int  # stored decisions that replace a different dataset label
    stored_elsewhere: int  # stored labels for records not in this dataset (not used)
    final: int

    def as_metrics(self) -> dict[str, float]:
        return {f"labels_{k}": float(v) for k, v in self.__dict__.items()}


def merge_labels(dataset_labels: pl.DataFrame, stored: pl.DataFrame,
                 records: pl.DataFrame) -> tuple[pl.DataFrame, LabelCounts]:
    """The dataset's labels plus the stored decisions, one label per record.

    ``records``: (record_kind, record_id) of the dataset. Precedence: the latest
    ``decided_on`` wins (a missing date is older than any date); on equal dates the
    stored decision wins. Stored labels for records outside ``records`` are counted and
    left out.
    """
    key = ["record_kind", "record_id"]
    columns = ["record_kind", "record_id", "label", "typology", "decided_on"]
    base = dataset_labels.select(columns).with_columns(
        pl.col("label").cast(pl.Int64), __from_store=pl.lit(False))
    mine = stored.select(columns).with_columns(pl.col("label").cast(pl.Int64),
                                               __from_store=pl.lit(True))
    inside = mine.join(records.select(key), on=key, how="semi")
    both = pl.concat([base, inside], how="vertical_relaxed")
    merged = (both.sort([*key, "decided_on", "__from_store"], nulls_last=False)
              .group_by(key, maintain_order=True).last())
    used = merged.filter(pl.col("__from_store"))
    overriding = used.join(base.select(*key, pl.col("label").alias("__before")), on=key,
                           how="inner").filter(pl.col("__before") != pl.col("label"))
    counts = LabelCounts(dataset=base.height, stored=inside.height, stored_used=used.height,
                         stored_overriding=overriding.height,
                         stored_elsewhere=mine.height - inside.height, final=merged.height)
    return merged.drop("__from_store").sort(key), counts
