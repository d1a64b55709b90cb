"""What the report page shows, computed from the scores: the period and its review list,
the headline figures, the series behind the charts, "what changed" and the review list
as CSV. No HTML here (render.py) and no drawing (charts.py)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import polars as pl

from detector.errors import InputError, UsageError
from detector.report.charts import money
from features import names as features_names

if TYPE_CHECKING:
    from detector.tables import Dataset

FALLBACK_MODEL = "rules+unsupervised"
# Hubs named in real diversion cases, then those reported by the press (FACTS.md).
NO_HUB = "no hub"
TOP_GROUPS = 5  # small multiples per grouping: the top groups, then 'other'
TOP_PARTIES = 10
# metrics that count things (MLflow stores every metric as a float): shown as integers
COUNT_METRICS = frozenset({"records", "positives", "best_iteration"})

METRIC_LABELS = {
    "pr_auc": "PR-AUC",
    "precision_at_1pct": "precision at 1%",
    "recall_at_5pct": "recall at 5%",
    "brier": "Brier score (lower is better)",
    "records": "labelled records in the held-out slice",
    "positives": "confirmed diversions among them",
    "best_iteration": "boosting rounds kept (best iteration)",
}
_AT_CAPACITY = re.compile(r"(precision|recall)_at_(\d+(?:\.\d+)?)pct(?:_(.+))?")
CEILING = ".ceiling"


def metric_label(key: str) -> str:
    """A logged metric's name in words: ``recall_at_5pct.ceiling`` reads "recall at 5%:
    the most the held-out slice allows", ``recall_at_5pct_transshipment`` "recall at 5%,
    transshipment"."""
    if key.endswith(CEILING):
        return f"{metric_label(key[:-len(CEILING)])}: the most the held-out slice allows"
    if key in METRIC_LABELS:
        return METRIC_LABELS[key]
    match = _AT_CAPACITY.fullmatch(key)
    if match:
        what, share, scheme = match.groups()
        return f"{what} at {share}%" + (f", {scheme.replace('_', ' ')}" if scheme else "")
    return key.replace("_", " ")


def metric_order(key: str) -> tuple:
    """The labelled metrics first, in `METRIC_LABELS`' order; each ceiling right after
    its metric."""
    base = key.removesuffix(CEILING)
    known = list(METRIC_LABELS)
    return (known.index(base) if base in known else len(known), base, key.endswith(CEILING))

def hub_countries() -> tuple[str, ...]:
    """The hubs the report groups by, from data/country_groups.csv: those named in real
    diversion cases, Macau (a group of its own there), then those reported by the press;
    each in the file's order."""
    from detector.reference import load_reference

    groups = load_reference().country_groups
    hubs = groups.filter(pl.col("group") == "HUB")
    ordered = [*hubs.filter(pl.col("confirmed"))["country"],
               *groups.filter(pl.col("group") == "MACAU")["country"],
               *hubs.filter(~pl.col("confirmed"))["country"]]
    return tuple(dict.fromkeys(ordered))


def _normalised(values: list[str | None], normaliser) -> list[str]:
    """Names or addresses in the comparable form the feature builders use ('' for none)."""
    frame = pl.DataFrame({"v": values}, schema={"v": pl.String})
    return frame.select(normaliser(pl.col("v")).fill_null(""))["v"].to_list()


def normalise_name(name: str | None) -> str:
    """'Acme Pte. Ltd.' -> 'acme', exactly as features.names matches names."""
    return _normalised([name], features_names.normalise_name)[0] or (name or "").casefold()


def normalise_address(address: str | None) -> str:
    return _normalised([address], features_names.normalise_address)[0]


# ----------------------------------------------------------------------------- periods

_PERIOD_RE = re.compile(r"^(\d{4})-(\d{2})$")


def parse_period(text: str) -> tuple[int, int]:
    match = _PERIOD_RE.match(text.strip())
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise UsageError(f"--period: expected a month as YYYY-MM (e.g. 2024-06), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def previous_month(period: str) -> str:
    year, month = parse_period(period)
    return f"{year - 1}-12" if month == 1 else f"{year}-{month - 1:02d}"


def month_range(first: str, last: str) -> list[str]:
    months, (year, month) = [], parse_period(first)
    while f"{year}-{month:02d}" <= last:
        months.append(f"{year}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


# ----------------------------------------------------------------------------- records

def _shipment_records(shipments: pl.DataFrame) -> pl.DataFrame:
    """Shipments in the report's common shape (one row per record)."""
    hub = pl.lit(None, pl.String)
    # The first hub on the declared route: intermediate consignee, transit countries in
    # order, the consignee's country, the declared destination.
    route = pl.concat_list(
        pl.col("intermediate_consignee_country"),
        pl.col("transit_countries").fill_null(pl.lit([], pl.List(pl.String))),
        pl.col("consignee_country"), pl.col("destination_country"))
    hub = route.list.eval(pl.element().filter(pl.element().is_in(hub_countries()))).list.first()
    return shipments.select(
        pl.lit("shipment").alias("record_kind"),
        pl.col("shipment_id").alias("record_id"),
        pl.col("export_date").alias("record_date"),
        pl.col("consignee_name").alias("party_name"),
        pl.col("consignee_country").alias("party_country"),
        pl.col("destination_country").alias("destination"),
        hub.fill_null(NO_HUB).alias("hub"),
        pl.col("forwarder_name"),
        pl.col("value_usd"),
    )


def _lease_records(leases: pl.DataFrame) -> pl.DataFrame:
    """Leases in the common shape: the lessee's country is where the compute is used,
    the data centre's country is the hub the hardware sits in."""
    return leases.select(
        pl.lit("lease").alias("record_kind"),
        pl.col("lease_id").alias("record_id"),
        pl.col("start_date").alias("record_date"),
        pl.col("lessee_name").alias("party_name"),
        pl.col("lessee_country").alias("party_country"),
        pl.col("lessee_country").alias("destination"),
        pl.col("datacenter_country").alias("hub"),
        pl.lit(None, pl.String).alias("forwarder_name"),
        pl.col("value_usd"),
    )


def report_months(dataset: Dataset) -> pl.DataFrame:
    """The months (``month``: ``YYYY-MM``) the records are dated in, once each; read from
    the records' dates alone, streaming (a large batch's records are not held)."""
    return _record_keys(dataset).select(pl.col("month").unique()) \
        .collect(engine="streaming")


def period_keys(dataset: Dataset, period: str) -> pl.DataFrame:
    """The keys (record_kind, record_id) of the records dated in ``period`` (``YYYY-MM``),
    in the order `_record_keys` gives them."""
    return _record_keys(dataset).filter(pl.col("month") == period) \
        .select("record_kind", "record_id").collect()


def report_period(months: pl.DataFrame, period: str | None, directory) -> str:
    """The report's month (``YYYY-MM``): ``period``, checked against the months the
    records (``months``: a ``month`` column) are dated in, or the latest of them."""
    present = months["month"].drop_nulls().unique().sort().to_list()
    if not present:
        raise InputError(f"{directory}: no shipments or leases to report on")
    if period is None:
        return present[-1]
    period = "{}-{:02d}".format(*parse_period(period))
    if period not in present:
        raise InputError(f"--period {period}: the dataset has no shipments or leases dated in "
                         f"that month; it covers {present[0]} to {present[-1]}")
    return period


def _dated_in(frame: pl.DataFrame | pl.LazyFrame, date_column: str,
              months: Sequence[str] | None) -> pl.LazyFrame:
    """``frame``'s rows dated in ``months`` (all of them for None), filtered on the table's
    own column, so a spilled batch's scan reads only those rows."""
    frame = frame.lazy()
    if months is None:
        return frame
    return frame.filter(pl.col(date_column).dt.strftime("%Y-%m").is_in(list(months)))


def _with_ids(frame: pl.LazyFrame, id_column: str, ids: pl.Series | None) -> pl.LazyFrame:
    return frame if ids is None else frame.filter(pl.col(id_column).is_in(ids.implode()))


def report_records(dataset: Dataset, months: Sequence[str] | None = None,
                   keys: pl.DataFrame | None = None) -> pl.DataFrame:
    """The records in the report's common shape, with their ``month``: those dated in
    ``months`` and among ``keys`` (record_kind, record_id) where given, selected before
    the columns are built (a large batch's shipments may wait on disk as a scan,
    detector.tables.Spill)."""
    def ids(kind: str) -> pl.Series | None:
        return None if keys is None else keys.filter(pl.col("record_kind") == kind)["record_id"]

    shipments = _with_ids(_dated_in(dataset.shipments, "export_date", months), "shipment_id",
                          ids("shipment"))
    leases = _with_ids(_dated_in(dataset.leases, "start_date", months), "lease_id", ids("lease"))
    return pl.concat([_shipment_records(shipments), _lease_records(leases)],
                     how="vertical_relaxed").with_columns(
        pl.col("record_date").dt.strftime("%Y-%m").alias("month")).collect()


def among(keys: pl.DataFrame) -> pl.Expr:
    """True for the rows whose (record_kind, record_id) is one of ``keys``' (a filter: a
    large table is not joined, so not copied)."""
    kinds = keys.partition_by("record_kind", as_dict=True, include_key=False)
    return pl.any_horizontal(
        pl.lit(False),
        *((pl.col("record_kind") == kind) & pl.col("record_id").is_in(ids["record_id"].implode())
          for (kind,), ids in kinds.items()))


def _key_hash() -> pl.Expr:
    """A record's (record_kind, record_id) as one 64-bit hash: equal keys, equal hashes."""
    return pl.struct("record_kind", "record_id").hash()


def _repeated(hashes: pl.Series) -> pl.Series:
    """The values that occur more than once in ``hashes`` (found by sorting 8-byte values,
    not by hashing a large table's texts)."""
    ordered = hashes.sort()
    return ordered.filter(ordered == ordered.shift(1)).unique()


def checked_scores(scores: pl.DataFrame) -> pl.DataFrame:
    """A scores table in the columns and types the report reads; one row per record."""
    from detector.contract import SCORES

    required = [c.name for c in SCORES.columns if c.required]
    missing_columns = [c for c in required if c not in scores.columns]
    if missing_columns:
        raise InputError(f"scores: expected the contract's columns {required}; "
                         f"missing {missing_columns}")
    scores = scores.select(
        pl.col("record_kind").cast(pl.String), pl.col("record_id").cast(pl.String),
        pl.col("risk_score").cast(pl.Float64), pl.col("reasons").cast(pl.String),
        pl.col("model").cast(pl.String),
        *[(pl.col(c) if c in scores.columns else pl.lit(None)).cast(SCORES.schema[c]).alias(c)
          for c in ("likely_scheme", "scheme_confidence", "queue_reason")])
    # Rows with a repeated key have a repeated hash: only those are grouped by their key.
    hashes = scores.select(_key_hash()).to_series()
    repeated = _repeated(hashes)
    candidates = scores.filter(hashes.is_in(repeated.implode())) if repeated.len() else \
        scores.clear()
    duplicated = candidates.filter(pl.len().over("record_kind", "record_id") > 1)
    if duplicated.height:
        raise InputError(f"scores: {duplicated.height} rows repeat a (record_kind, record_id); "
                         f"e.g. {duplicated['record_id'].head(5).to_list()}")
    return scores


def _record_keys(dataset: Dataset) -> pl.LazyFrame:
    """Each record's key (record_kind, record_id) and ``month`` (``YYYY-MM``), as
    `report_records` gives them, without its other columns (a large batch's routes);
    lazy: read from a spilled batch's scan only when collected."""
    def keyed(frame, kind: str, id_column: str, date_column: str) -> pl.LazyFrame:
        return frame.lazy().select(pl.lit(kind).alias("record_kind"),
                                   pl.col(id_column).alias("record_id"),
                                   pl.col(date_column).dt.strftime("%Y-%m").alias("month"))

    return pl.concat([keyed(dataset.shipments, "shipment", "shipment_id", "export_date"),
                      keyed(dataset.leases, "lease", "lease_id", "start_date")],
                     how="vertical_relaxed")


def scored_overview(dataset: Dataset, scores: pl.DataFrame) -> tuple[list[str], list]:
    """The months the records are dated in and the models that scored them (each sorted),
    after checking that every record has a score (``scores``: `checked_scores`); from
    the records' keys only, never the whole of a large batch's columns.

    Each record's key is looked up among the scores' by its hash (sorted 8-byte values),
    then compared: a large scores table is neither joined nor hashed by its texts. Scores
    of several models (or keys whose hashes collide) are joined to the records instead."""
    import numpy as np

    models = scores["model"].unique()
    hashes = scores.select(_key_hash()).to_series()
    order = hashes.arg_sort()
    ordered = hashes.gather(order)
    if models.len() != 1 or not scores.height or _repeated(ordered).len():
        return _joined_overview(dataset, scores)
    ordered, order = ordered.to_numpy(), order.to_numpy()
    keys = scores.select("record_kind", "record_id")
    records = unscored = 0
    months = []  # each batch's months, once each: the keys are read in this one pass
    for batch in _record_keys(dataset).collect_batches(chunk_size=1_000_000):
        months.append(batch["month"].unique())
        wanted = batch.select(_key_hash()).to_series().to_numpy()
        at = np.minimum(np.searchsorted(ordered, wanted), len(ordered) - 1)
        found = keys[order[at]]
        scored = (pl.Series(ordered[at] == wanted) & (batch["record_kind"] == found["record_kind"])
                  & (batch["record_id"] == found["record_id"]))
        records += batch.height
        unscored += batch.height - int(scored.sum())
    if unscored:
        return _joined_overview(dataset, scores)  # raises, naming the records
    months = pl.concat(months).unique() if months else pl.Series("month", [], pl.String)
    return months.sort().to_list(), models.to_list() if records else []


def _joined_overview(dataset: Dataset, scores: pl.DataFrame) -> tuple[list[str], list]:
    """`scored_overview` by a streaming join of the records' keys to the scores."""
    joined = _record_keys(dataset).join(
        scores.lazy().select("record_kind", "record_id", "risk_score", "model"),
        on=["record_kind", "record_id"], how="left", maintain_order="left")
    unscored = joined.filter(pl.col("risk_score").is_null())
    count = unscored.select(pl.len()).collect(engine="streaming").item()
    if count:
        examples = [f"{kind} {rid}" for kind, rid in unscored.select(
            "record_kind", "record_id").head(5).collect().iter_rows()]
        raise InputError(
            f"scores: expected a risk_score for every shipment and lease of "
            f"{dataset.directory}; {count} have none, e.g. {examples}")
    months = joined.select(pl.col("month").unique()).collect(engine="streaming")["month"]
    models = joined.select(pl.col("model").unique()).collect(engine="streaming")["model"]
    return months.sort().to_list(), models.sort().to_list()


def scored_records(dataset: Dataset, scores: pl.DataFrame, months: Sequence[str] | None = None,
                   keys: pl.DataFrame | None = None) -> pl.DataFrame:
    """The records (`report_records`: those dated in ``months``, among ``keys``, where
    given) with their scores (``scores``: `checked_scores`), highest risk first; ties by
    record_kind then record_id, as in the scores table."""
    records = report_records(dataset, months, keys)
    # the scores of these records only, found by a filter: the whole table is not joined
    records = records.join(scores.filter(among(records.select("record_kind", "record_id"))),
                           on=["record_kind", "record_id"], how="left")
    return records.sort(["risk_score", "record_kind", "record_id"],
                        descending=[True, False, False])


# ----------------------------------------------------------------------------- figures

def headline(current: dict, previous: dict | None, key: str, kind: str,
              signals_risk: bool = True) -> dict:
    value = current[key]
    out = {"value": value, "text": _format(value, kind), "delta": None, "direction": ""}
    if previous is not None and previous.get(key) is not None:
        before = previous[key]
        change = value - before
        pct = f" ({change / before:+.0%})" if before else ""
        out["delta"] = f"{_format(change, kind, signed=True)}{pct}"
        out["previous"] = _format(before, kind)
        # Colour only where a rise means more risk; more records scored is just volume.
        out["direction"] = ("same" if not signals_risk or change == 0
                            else "up" if change > 0 else "down")
    return out


def _format(value: float, kind: str, signed: bool = False) -> str:
    if kind == "money":
        text = money(abs(value))
        return ("+" if value >= 0 else "−") + text if signed else text
    return f"{value:+,}" if signed else f"{value:,}"


def figures(records: pl.DataFrame, threshold: float) -> dict:
    flagged = records.filter(pl.col("risk_score") >= threshold)
    return {"scored": records.height, "flagged": flagged.height,
            "value_at_risk": float(flagged["value_usd"].fill_null(0.0).sum())}


def over_time(scored: pl.DataFrame, threshold: float, column: str,
               months: list[str]) -> dict[str, list[int]]:
    flagged = scored.filter(pl.col("risk_score") >= threshold)
    totals = (flagged.group_by(column).len().sort(["len", column], descending=[True, False]))
    top = totals[column].head(TOP_GROUPS).to_list()
    grouped = (flagged.with_columns(
        pl.when(pl.col(column).is_in(top)).then(pl.col(column)).otherwise(pl.lit("other"))
        .alias("group"))
        .group_by("group", "month").len())
    counts = {(g, m): n for g, m, n in grouped.iter_rows()}
    groups = top + (["other"] if any(g == "other" for g, _ in counts) else [])
    return {g: [counts.get((g, m), 0) for m in months] for g in groups}


def ranked_parties(period_records: pl.DataFrame, column: str, threshold: float,
                    country_column: str | None = None) -> list[tuple[str, float, int]]:
    """Parties ranked by their highest-risk record in the period, then by how many of
    their records are at or above the threshold (a sum of scores would rank a busy,
    clean party above one with a single alarming record).

    Spellings of one party ('Acme Pte. Ltd.', 'ACME PTE LTD') are counted together under
    its most frequent spelling; with ``country_column`` the same name in two countries
    stays two parties.
    """
    frame = period_records.filter(pl.col(column).is_not_null())
    names = frame[column].unique().sort()
    lookup = pl.DataFrame({column: names,
                           "norm": [normalise_name(n) for n in names.to_list()]})
    keys = ["norm", *([country_column] if country_column else [])]
    table = (frame.join(lookup, on=column, how="left")
             .group_by(keys)
             .agg(pl.col(column).mode().sort().first().alias("display"),
                  pl.col("risk_score").max().alias("risk"),
                  (pl.col("risk_score") >= threshold).sum().alias("flagged"))
             .sort(["risk", "flagged", *keys], descending=[True, True] + [False] * len(keys))
             .head(TOP_PARTIES))
    rows = []
    for row in table.iter_rows(named=True):
        label = row["display"] + (f" ({row[country_column]})" if country_column else "")
        rows.append((label, float(row["risk"]), int(row["flagged"])))
    return rows


def typology_counts(dataset: Dataset, history: Sequence[Dataset], period_ids: pl.DataFrame
                ) -> list[tuple[str, int, int]]:
    labels = pl.concat([d.labels.select("record_kind", "record_id", "label", "typology")
                        for d in [dataset, *history]], how="vertical_relaxed")
    labels = labels.unique(["record_kind", "record_id"], keep="first", maintain_order=True)
    positives = labels.filter(pl.col("label") == 1).with_columns(
        pl.col("typology").fill_null("unspecified"))
    if positives.height == 0:
        return []
    in_period = positives.join(period_ids, on=["record_kind", "record_id"], how="semi")
    counts = positives.group_by("typology").len().join(
        in_period.group_by("typology").len().rename({"len": "in_period"}), on="typology",
        how="left").sort(["len", "typology"], descending=[True, False])
    return [(t, int(n), int(p or 0)) for t, n, p in counts.iter_rows()]

SHOWN_INPUTS = 10  # model inputs listed by PSI in "what changed"; the rest summed up


LISTED_INPUT_ALERTS = 3  # input alerts told one by one; more are named in one sentence


def _alert_sentences(alerts: list, plain: Callable) -> list[str]:
    """Never-seen categories and the risk scores first (what an analyst acts on), then
    the model inputs: one sentence each, or one naming them all when there are many (a
    shifted value moves every input computed from it)."""
    order = {"unseen": 0, "risk": 1, "input": 2}
    alerts = sorted(alerts, key=lambda f: (order[f.kind], -f.value, f.name))
    inputs = [f for f in alerts if f.kind == "input"]
    sentences = [plain(f) for f in alerts if f.kind != "input"]
    if len(inputs) <= LISTED_INPUT_ALERTS:
        return sentences + [plain(f) for f in inputs]
    names = ", ".join(f.name for f in inputs)
    return sentences + [
        f"{len(inputs)} model inputs are distributed differently from training (PSI above "
        f"{inputs[0].threshold:.2f}, largest {inputs[0].value:.2f}), largest shift first: "
        f"{names}."]


def what_changed(drift) -> dict | None:
    """The "what changed" section from a `detector.drift.DriftReport`: alerts as
    sentences, the risk distribution, never-seen categories, the inputs that moved most."""
    if drift is None:
        return None
    from detector.drift import ACCUMULATING, UNSEEN_LABELS, band, input_label, plain

    def shown(value: float) -> str:
        return "—" if value != value else f"{value:.2f}"

    inputs = sorted((f for f in drift.figures if f.kind == "input"),
                    key=lambda f: (-(f.value if f.value == f.value else -1), f.name))
    risk = next((f for f in drift.figures if f.kind == "risk"), None)
    rest = inputs[SHOWN_INPUTS:]
    return {
        "records": drift.records,
        "note": drift.note,
        "alerts": _alert_sentences(drift.alerts, plain),
        "alert_count": len(drift.alerts),
        "risk": None if risk is None else {
            "psi": shown(risk.value), "band": band(risk.value), "detail": risk.detail,
            "alert": risk.alert, "threshold": shown(risk.threshold)},
        "unseen": [{"what": UNSEEN_LABELS[f.name], "share": f"{f.value:.1%}"
                    if f.value == f.value else "—",
                    "threshold": f"{f.threshold:.0%}" if f.threshold != float("inf")
                    else "not alerted", "examples": f.detail, "alert": f.alert}
                   for f in drift.figures if f.kind == "unseen"],
        "inputs": [{"name": f.name, "label": input_label(f.name), "psi": shown(f.value),
                    "band": band(f.value), "alert": f.alert,
                    "accumulating": f.name in ACCUMULATING}
                   for f in inputs[:SHOWN_INPUTS]],
        "inputs_rest": len(rest),
        "inputs_rest_max": shown(max((f.value for f in rest if f.value == f.value),
                                     default=float("nan"))),
    }


def review_csv(cards: list[dict]) -> str:
    """The review list as CSV, base64 for a data: link in the page (opens in a
    spreadsheet; text cells neutralised against formula injection as in every CSV the
    detector writes)."""
    import base64

    from detector.tables import neutralise_text

    rows = [{
        "position": c["position"], "record_kind": c["record_kind"], "record_id": c["record_id"],
        "record_date": str(c["record_date"]), "risk_score": c["risk_score"],
        "likely_scheme": c.get("likely_scheme"), "scheme_confidence": c.get("scheme_confidence"),
        "counterparty": c["party_name"], "counterparty_country": c["party_country"],
        "destination": c["destination"], "goods": c["goods"],
        "classification": c["classification"], "value_usd": c["value_usd"],
        "reasons": c["reasons"],
    } for c in cards]
    frame = pl.DataFrame(rows, schema_overrides={"likely_scheme": pl.String,
                                                 "scheme_confidence": pl.Float64,
                                                 "reasons": pl.String})
    text = [n for n, t in frame.schema.items() if t == pl.String]
    frame = frame.with_columns(neutralise_text(pl.col(n)).alias(n) for n in text)
    return base64.b64encode(frame.write_csv().encode("utf-8")).decode("ascii")

