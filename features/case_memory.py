"""Case memory: earlier adjudications of a record's parties, route and product.

The one feature family allowed to read labels (DEVELOPERS.md). Pure functions fed a
labels frame; no I/O.

For each record and each entity — its consignee, exporter, forwarder, linked parties
(same ultimate owner, or same registered address), HS-4 heading and route (exporter
country → destination) — the confirmed (label 1) and cleared (label 0) decisions about
records of that entity, counted only from decisions dated strictly before the record's
own date, and a smoothed confirmed rate::

    rate = (confirmed + PRIOR_WEIGHT * prior) / (confirmed + cleared + PRIOR_WEIGHT)

where ``prior`` is the confirmed share of all the decisions known (so an entity with no
history reads as the base rate, and two confirmations out of two do not read as 100%).

A lease has the same memory, its entities read as a shipment's (`lease_keys`): the
lessee is its consignee (the same key, so a party's shipments and leases count
together), the lessee's owner group or registered address its linked parties, the
provider its exporter, and the data-centre country → lessee country its route; it has no
forwarder or HS-4 heading. Decisions on both kinds count for both: a confirmed lease of a
lessee counts for its later shipments, and a confirmed shipment to a restricted parent's
subsidiary counts for a later lease by another subsidiary of that parent.

A decision is dated by ``decided_on``; a decision without a date, or dated before its own
record, is dated at its record (a decision cannot precede what it decides), so a record
never sees its own label nor any label decided on or after its date. In training this is
the out-of-fold rule: every row's case memory comes only from labels decided before it.
At scoring the decisions are those stored in the bundle (every training label, with
their cut-off date) plus those handed in: the labels of the `--history` datasets and
the analysts' decision store (`detector.batch.Batch.scoring_labels`), one per record,
the latest decision winning (`latest_events`). The same date rule holds: a decision made
today about a record of the batch counts for the later records of its party, linked
parties, route and product, never for that record itself.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from features.behaviour import cumulative_at

PRIOR_WEIGHT = 10.0
RECENT_DAYS = 365
# entity -> the key column(s) of the record naming it (several: the largest history wins)
ENTITIES: dict[str, tuple[str, ...]] = {
    "consignee": ("consignee_key",),
    "exporter": ("exporter_key",),
    "forwarder": ("__forwarder_key",),
    "linked": ("group_key", "address_key"),
    "hs4": ("__hs4",),
    "route": ("__route",),
}
KEY_COLUMNS = tuple(dict.fromkeys(k for keys in ENTITIES.values() for k in keys))
RECENT_ENTITIES = ("consignee", "exporter")
EVENT_COLUMNS = ("record_kind", "record_id", "event_date", "label", *KEY_COLUMNS)
KINDS = ("shipment", "lease")


def feature_names() -> list[str]:
    names = []
    for entity in ENTITIES:
        names += [f"{entity}_confirmed_before", f"{entity}_cleared_before",
                  f"{entity}_confirmed_rate"]
    names += [f"{e}_confirmed_12m" for e in RECENT_ENTITIES]
    return names


def empty_events() -> pl.DataFrame:
    return pl.DataFrame(schema={"record_kind": pl.String, "record_id": pl.String,
                                "event_date": pl.Date,
                                "label": pl.Int64, **{k: pl.String for k in KEY_COLUMNS}})


def lease_keys() -> list[pl.Expr]:
    """The case memory's `KEY_COLUMNS` of a lease (module docstring), from a lease frame
    with the lessee resolved (``__lessee_norm``, ``__party_id``, ``ultimate_parent_id``,
    ``__p_address_norm``) and the contract's lease columns. The consignee key is built as
    a shipment's, so the same party has the same key in both kinds."""
    lessee = pl.coalesce(pl.col("__party_id"), pl.concat_str(
        "__lessee_norm", "lessee_country", separator="|"))
    return [
        lessee.alias("consignee_key"),
        pl.concat_str(pl.col("provider_name").str.to_uppercase()
                      .str.replace_all(r"\s+", " ").str.strip_chars(),
                      "datacenter_country", separator="|").alias("exporter_key"),
        pl.lit(None, pl.String).alias("__forwarder_key"),
        pl.coalesce(pl.col("ultimate_parent_id"), lessee).alias("group_key"),
        pl.when(pl.col("__p_address_norm").str.len_chars() > 0)
        .then(pl.concat_str("__p_address_norm", "lessee_country", separator="|"))
        .alias("address_key"),
        pl.lit(None, pl.String).alias("__hs4"),
        pl.concat_str(pl.lit("lease:"), "datacenter_country", pl.lit(">"), "lessee_country")
        .alias("__route"),
    ]


def case_events(records: pl.LazyFrame, labels: pl.LazyFrame,
                kind: str = "shipment") -> pl.DataFrame:
    """One event per label of a ``kind`` record: the record's keys, the label and its date.

    ``records``: record_id (the contract id), record_date and the `KEY_COLUMNS` of
    records of ``kind``; ``labels``: the contract's labels table (record_kind, record_id,
    label, decided_on).
    """
    decided = labels.filter((pl.col("record_kind") == kind)
                            & pl.col("label").is_in([0, 1])) \
        .select("record_id", pl.col("label").cast(pl.Int64), "decided_on")
    return (
        records.select("record_id", "record_date",
                       *[pl.col(k).cast(pl.String) for k in KEY_COLUMNS])
        .join(decided, on="record_id", how="inner")
        .select(pl.lit(kind).alias("record_kind"), "record_id",
                pl.max_horizontal(pl.col("decided_on").fill_null(pl.col("record_date")),
                                  pl.col("record_date")).alias("event_date"),
                "label", *KEY_COLUMNS)
        .collect()
    )


def merge_events(first: pl.DataFrame, *others: pl.DataFrame) -> pl.DataFrame:
    """Events of several sources, one per record (the first source's wins)."""
    frames = [f.select(EVENT_COLUMNS) for f in (first, *others) if f.height]
    if not frames:
        return empty_events()
    return pl.concat(frames).unique(["record_kind", "record_id"], keep="first",
                                    maintain_order=True)


def latest_events(given: pl.DataFrame, stored: pl.DataFrame) -> pl.DataFrame:
    """The events of decisions handed in at scoring (``given``: --history labels and the
    decision store's) and of those stored with the model (``stored``), one per record:
    the later event date wins (the latest decision, as training merges its labels); on
    equal dates ``given``'s, the newer word."""
    if not given.height or not stored.height:
        return merge_events(given, stored)
    key = ["record_kind", "record_id"]
    both = pl.concat([stored.select(EVENT_COLUMNS), merge_events(given)]) \
        .with_row_index("__order")
    return (both.sort("event_date", "__order")
            .unique(key, keep="last", maintain_order=True).drop("__order"))


def prior_rate(events: pl.DataFrame) -> float | None:
    return float(events["label"].mean()) if events.height else None


def case_memory(base: pl.LazyFrame, events: pl.DataFrame, prior: float | None, *,
                sorted_by_date: bool = False,
                entities: tuple[str, ...] | None = None) -> pl.LazyFrame:
    """Case-memory features for every record of ``base`` (record_id, record_date and the
    `KEY_COLUMNS`), from ``events`` (`case_events`) dated strictly before each record.
    The result's rows are ``base``'s, in its order (``sorted_by_date``: ``base`` is in
    record_date order, which spares a sort per key). ``entities``: only these entities'
    features (default all, in `ENTITIES` order); each entity's are computed from its own
    keys alone, so a large batch can take them one entity at a time (the counts of
    every key of every entity, held at once over 10M shipments, were ~3 GB)."""
    chosen = {e: k for e, k in ENTITIES.items() if entities is None or e in entities}
    if entities is not None and len(chosen) != len(set(entities)):
        raise ValueError(f"entities {entities}: expected names among {list(ENTITIES)}")
    ev = events.lazy().with_columns(pl.col("label").cast(pl.Float64).alias("confirmed"),
                                    (1 - pl.col("label")).cast(pl.Float64).alias("cleared"),
                                    pl.col("event_date").alias("__event_date"))
    # Only records whose key has a decision look one up (in a batch most keys have none):
    # each key's counts are computed for those records and put at their rows (`scatter`,
    # no join); the others read 0 (filled below). Keys as ``base`` has them (categorical
    # keys: the same equality, cheaper to group).
    frame = base.select("record_id", "record_date",
                        *dict.fromkeys(k for keys in chosen.values() for k in keys)).collect()
    rows = frame.with_row_index("__pos").lazy()
    types = frame.schema
    columns = [frame["record_id"]]
    for entity, keys in chosen.items():
        for key in keys:
            decided_keys = ev.select(pl.col(key).drop_nulls().unique()).collect()[key]
            records = rows.select(pl.col("__pos").alias("record_id"), "record_date", key) \
                .filter(pl.col(key).is_in(decided_keys.implode()))
            offsets = {"before": -1}
            if entity in RECENT_ENTITIES:
                offsets["year"] = -1 - RECENT_DAYS
            cum = cumulative_at(records, ev.select(pl.col(key).cast(types[key]), "__event_date",
                                                   "confirmed", "cleared")
                                .filter(pl.col(key).is_not_null()), key,
                                ["confirmed", "cleared"], offsets,
                                sorted_by_date=sorted_by_date)
            cols = [pl.col("before_confirmed").alias(f"__c_{key}"),
                    pl.col("before_cleared").alias(f"__k_{key}")]
            if entity in RECENT_ENTITIES:
                cols.append((pl.col("before_confirmed") - pl.col("year_confirmed"))
                            .alias(f"__y_{key}"))
            piece = cum.select("record_id", *cols).collect()
            for name in piece.columns[1:]:
                columns.append(pl.repeat(None, frame.height, dtype=pl.Float64, eager=True)
                               .scatter(piece["record_id"], piece[name]).alias(name))
            del piece
    counts = pl.DataFrame(columns).lazy()
    out = []
    for entity, keys in chosen.items():
        # several linkages: the one with the most decisions speaks
        decisions = [pl.col(f"__c_{k}").fill_null(0) + pl.col(f"__k_{k}").fill_null(0)
                     for k in keys]
        if len(keys) == 1:
            confirmed = pl.col(f"__c_{keys[0]}").fill_null(0.0)
            cleared = pl.col(f"__k_{keys[0]}").fill_null(0.0)
        else:
            best = pl.when(decisions[0] >= decisions[1])
            confirmed = best.then(pl.col(f"__c_{keys[0]}")).otherwise(
                pl.col(f"__c_{keys[1]}")).fill_null(0.0)
            cleared = best.then(pl.col(f"__k_{keys[0]}")).otherwise(
                pl.col(f"__k_{keys[1]}")).fill_null(0.0)
        known = pl.lit(prior is not None)
        rate = pl.when(known).then((confirmed + PRIOR_WEIGHT * (prior or 0.0))
                                   / (confirmed + cleared + PRIOR_WEIGHT))
        out += [confirmed.cast(pl.Int64).alias(f"{entity}_confirmed_before"),
                cleared.cast(pl.Int64).alias(f"{entity}_cleared_before"),
                rate.alias(f"{entity}_confirmed_rate")]
        if entity in RECENT_ENTITIES:
            out.append(pl.col(f"__y_{keys[0]}").fill_null(0.0).cast(pl.Int64)
                       .alias(f"{entity}_confirmed_12m"))
    return counts.select("record_id", *out)


def events_to_dict(events: pl.DataFrame, prior: float | None) -> dict:
    """JSON-able form stored in the bundle's feature statistics, with the cut-off date
    (the latest decision) and the prior rate."""
    cutoff = events["event_date"].max() if events.height else None
    return {
        "cutoff": cutoff.isoformat() if isinstance(cutoff, date) else None,
        "prior": prior,
        "decisions": int(events.height),
        "confirmed": int(events["label"].sum()) if events.height else 0,
        "events": {c: [v.isoformat() if isinstance(v, date) else v
                       for v in events[c].to_list()] for c in EVENT_COLUMNS},
    }


def events_from_dict(data: dict | None) -> tuple[pl.DataFrame, float | None]:
    if not data or not data.get("events"):
        return empty_events(), None
    columns = dict(data["events"])
    if "record_kind" not in columns:  # stored before leases had a case memory
        columns["record_kind"] = ["shipment"] * len(columns.get("record_id", []))
    frame = pl.DataFrame({c: columns.get(c, []) for c in EVENT_COLUMNS},
                         schema={**empty_events().schema, "event_date": pl.String})
    return frame.with_columns(pl.col("event_date").str.to_date()), data.get("prior")
