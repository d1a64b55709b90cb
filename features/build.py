"""The one entry point: a validated dataset in, one feature frame out.

`build_features` returns one row per shipment and per lease, keyed by
(record_kind, record_id), with `record_date` and every feature of
`features.registry.FEATURES` (a feature that does not apply to a kind is null there),
then the registry's `RULE_INPUTS`.

How the work is split: name matching (resolving consignees to parties, screening-list
matches) runs first over the *distinct* normalised names with rapidfuzz, which needs
materialised strings, and party-level lookups (ownership chains) are materialised
too. Per-record work is lazy: the record-level shipment frame (chip recognition,
joins, product/route/money features) is collected once, then the time windows and
re-export linkage over it and the lease features are one more lazy plan collected
once (a shared lazy subplan read three times was re-planned by polars, 10x slower).
No I/O happens here: the caller passes every table, the screening list and the
reference data.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from detector.contract import LEASES, PARTIES, SCREENING_LIST, SHIPMENTS
from features import behaviour, case_memory, learned, product, route
from features import parties as party_features
from features.names import normalise_address, normalise_name
from features.refview import RefView, view
from features.registry import FEATURES, RULE_INPUTS
from features.stats import UNKNOWN_CODE, FeatureStats, default_category_maps

KEY = ["record_kind", "record_id"]
COUNTRY_COLUMNS = {
    "shipments": ("exporter_country", "consignee_country", "intermediate_consignee_country",
                  "destination_country", "payer_country"),
    "leases": ("datacenter_country", "lessee_country", "payer_country"),
    "parties": ("country",),
}


def _frame(data, table) -> pl.DataFrame:
    """The table as a DataFrame with every contract column (absent ones as nulls)."""
    if data is None:
        return pl.DataFrame(schema=table.schema)
    df = data.collect() if isinstance(data, pl.LazyFrame) else data
    missing = [pl.lit(None, dtype).alias(name) for name, dtype in table.schema.items()
               if name not in df.columns]
    df = df.with_columns(missing) if missing else df
    countries = [c for c in COUNTRY_COLUMNS.get(table.name, ()) if c in df.columns]
    casts = [pl.col(n).cast(t) for n, t in table.schema.items() if df.schema[n] != t]
    df = df.with_columns(*casts) if casts else df
    if countries:
        df = df.with_columns(pl.col(c).str.to_uppercase() for c in countries)
    if table.name == "shipments":
        df = df.with_columns(pl.col("transit_countries").list.eval(pl.element().str.to_uppercase()))
    return df


def _text_map(values: list[pl.Series], normaliser, name: str) -> pl.DataFrame:
    """Distinct raw text -> normalised text (normalising each distinct string once)."""
    raw = pl.concat([v.cast(pl.String).rename("raw") for v in values]).drop_nulls().unique()
    return pl.DataFrame({"raw": raw}).with_columns(normaliser(pl.col("raw")).alias(name))


def _join_text(lf: pl.LazyFrame, mapping: pl.DataFrame, column: str, name: str) -> pl.LazyFrame:
    return lf.join(mapping.lazy().rename({"raw": column}), on=column, how="left")


def _by_value(lf: pl.LazyFrame, values: pl.Series, exprs: list[pl.Expr]) -> pl.LazyFrame:
    """``exprs``, functions of the column ``values`` alone, evaluated once per distinct
    value and joined on (null included): the values a row-by-row evaluation gives."""
    table = values.unique().to_frame().with_columns(exprs)
    return lf.join(table.lazy(), on=values.name, how="left", nulls_equal=True)


def _code(expr: pl.Expr, mapping: dict[str, int]) -> pl.Expr:
    return expr.replace_strict(mapping, default=UNKNOWN_CODE, return_dtype=pl.Int64) \
        .fill_null(UNKNOWN_CODE)


def _text_inputs(shipments: pl.DataFrame, leases: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The distinct raw texts name matching needs from these records (one part of them)."""
    return {
        "names": pl.concat([v.cast(pl.String).rename("raw") for v in (
            shipments["consignee_name"], shipments["exporter_name"], shipments["payer_name"],
            leases["lessee_name"])]).drop_nulls().unique().to_frame(),
        "addresses": shipments["consignee_address"].cast(pl.String).rename("raw")
        .drop_nulls().unique().to_frame(),
        "keys": pl.concat([
            shipments.select(pl.col("consignee_name").alias("raw"),
                             pl.col("consignee_country").alias("country")),
            shipments.select(pl.col("exporter_name").alias("raw"),
                             pl.col("exporter_country").alias("country")),
            leases.select(pl.col("lessee_name").alias("raw"),
                          pl.col("lessee_country").alias("country")),
        ]).unique(),
    }


def _merge_text_inputs(parts: list[dict[str, pl.DataFrame]]) -> dict[str, pl.DataFrame]:
    return {k: pl.concat([p[k] for p in parts]).unique() for k in parts[0]}


class _Context:
    """Everything both record kinds share: reference view, stats, name lookups.

    Built from the *distinct* names, addresses and (name, country) keys of every record
    (``texts``, see `_text_inputs`), so the records themselves need not be in memory.
    ``screened``: the texts of the records whose features will be built, when fewer
    (one record explained among its neighbours): only those are screened against the
    list, the costliest lookup; the others' screening columns are never read.
    """

    def __init__(self, texts: dict[str, pl.DataFrame], parties, screening_list, reference,
                 stats, screened: dict[str, pl.DataFrame] | None = None):
        self.ref: RefView = view(reference)
        self.stats = stats or FeatureStats.default()
        self.maps = {**default_category_maps(), **self.stats.category_maps}
        self.parties = party_features.unique_parties(parties)
        self.screening_list = screening_list if screening_list is not None \
            and screening_list.height else None
        self.names = _text_map([texts["names"]["raw"]], normalise_name, "name_norm")
        self.addresses = _text_map([texts["addresses"]["raw"]], normalise_address,
                                   "address_norm")
        keys = texts["keys"].join(self.names, on="raw", how="left").select("name_norm",
                                                                           "country")
        self.resolution = party_features.resolve_names(keys, self.parties)
        # party-sized lookups are materialised once, like the name matches
        self.attributes = party_features.party_attributes(
            self.parties, self.ref.d5_or_macau).collect().lazy()
        self.party_ids = self.parties["party_id"].drop_nulls().unique()
        names, addresses = party_features.screening_choices(self.screening_list)
        queries, query_addresses = keys["name_norm"], self.addresses["address_norm"]
        if screened is not None:
            queries = screened["keys"].join(self.names, on="raw", how="left")["name_norm"]
            query_addresses = screened["addresses"].join(self.addresses, on="raw",
                                                         how="left")["address_norm"]
        self.name_hits = party_features.screen(queries, names)
        self.address_hits = party_features.screen(query_addresses, addresses)

    def resolve(self, lf: pl.LazyFrame, norm: str, country: str, given: str, prefix: str,
                *, age: bool = True) -> pl.LazyFrame:
        """Attach the resolved party (given id if known, else by name) and its attributes;
        ``age=False``: without ``<prefix>_age_days`` (`_age_days`, added per record)."""
        resolution = self.resolution.lazy().rename(
            {"name_norm": norm, "country": country, "resolved_party_id": "__resolved",
             "resolution_score": f"{prefix}_resolution_score"})
        known_given = pl.col(given).is_in(self.party_ids.implode())
        attrs = self.attributes.rename({"party_id": "__party_id"})
        attrs = attrs.rename({c: f"__p_{c}" for c in attrs.collect_schema().names()
                              if c not in ("__party_id", "ultimate_parent_id",
                                           "ultimate_parent_name", "ultimate_parent_country",
                                           "ownership_depth", "ultimate_parent_in_d5_or_macau")})
        return (
            lf.join(resolution, on=[norm, country], how="left")
            .with_columns(
                pl.when(known_given).then(pl.col(given)).otherwise(pl.col("__resolved"))
                .alias("__party_id"),
                pl.when(known_given).then(100.0).otherwise(pl.col(f"{prefix}_resolution_score"))
                .alias(f"{prefix}_resolution_score"))
            .join(attrs, on="__party_id", how="left")
            .with_columns(pl.col("__party_id").is_not_null().alias(f"{prefix}_resolved"),
                          pl.col("__party_id").alias(f"{prefix}_party"),
                          *([_age_days(prefix)] if age else []),
                          pl.col("__p_employees").cast(pl.Float64).alias(f"{prefix}_employees"))
        )

    def screening(self, lf: pl.LazyFrame, norm: str, address: str | None) -> pl.LazyFrame:
        return party_features.join_screening(lf, norm, address, self.name_hits,
                                             self.address_hits, self.screening_list) \
            .with_columns(party_features.screening_columns(norm, address or ""))


def _shipment_records(ctx: _Context, shipments: pl.DataFrame, first_row: int) -> pl.LazyFrame:
    """Record-level shipment features (everything but the cross-record windows), with
    ``__row``: the record's position among all shipments (``first_row`` for the first)."""
    ref, stats, maps = ctx.ref, ctx.stats, ctx.maps
    lf = shipments.lazy().with_row_index("__row", offset=first_row).with_columns(
        pl.lit("shipment").alias("record_kind"),
        pl.col("shipment_id").alias("record_id"),
        pl.col("export_date").alias("record_date"),
        pl.col("consignee_name").alias("counterparty_name"),
        pl.col("description").alias("goods"),
        pl.col("quantity").alias("declared_quantity"))
    lf = _join_text(lf, ctx.names.rename({"name_norm": "__payer_norm"}), "payer_name", "")
    # the consignee and its address, worked out once per distinct value (`_consignees`)
    consignees, addresses = _consignees(ctx, shipments)
    lf = (lf.join(consignees, on=CONSIGNEE_COLUMNS, how="left", nulls_equal=True)
          .join(addresses, on=ADDRESS_COLUMNS, how="left", nulls_equal=True))
    # other registered parties at the consignee's address (its own registration excluded)
    declared = pl.col("__address_norm")
    lf = lf.with_columns(
        _age_days("consignee"),
        party_features.shared_address_key(declared, pl.col("__p_address_norm")).alias("__addr"),
        # the count at that address: the declared one's, else the registered one's
        pl.when(declared.str.len_chars() > 0).then(pl.col("__n_declared"))
        .otherwise(pl.col("__n_registered")).alias("__n_addr"),
    ).with_columns(
        (pl.col("__n_addr").fill_null(0)
         - (pl.col("__p_address_norm") == pl.col("__addr")).fill_null(False).cast(pl.UInt32))
        .cast(pl.Int64).alias("consignee_address_shared_by"))
    lf = product.recognise_chips(lf, "description", ref)
    # functions of one low-cardinality text column (32 HS codes, 800 forwarders in 1M
    # lines): computed once per distinct value (regexes, peer look-ups), joined on
    hs6_digits = learned.hs_digits(pl.col("hs_code"), 6)
    hs4_digits = learned.hs_digits(pl.col("hs_code"), 4)
    lf = _by_value(lf, shipments["hs_code"], [
        hs6_digits.alias("__hs6_digits"),
        pl.when(hs4_digits.str.len_chars() == 4).then(hs4_digits).alias("__hs4"),
        pl.when(hs6_digits.str.len_chars() == 6).then(hs6_digits).alias("__hs6"),
        *learned.peer_lookups(stats.unit_value_peers)])
    lf = _by_value(lf, shipments["forwarder_name"], [
        pl.col("forwarder_name").str.to_uppercase().str.replace_all(r"\s+", " ")
        .str.strip_chars().alias("__forwarder_key")])
    lf = lf.with_columns(product.product_columns(ref, stats, pl.col("__hs6_digits")))
    lf = lf.with_columns(
        *route.route_columns(ref),
        *route.money_columns(ref, "consignee_country"),
        pl.col("payment_method").is_in(route.UNUSUAL_PAYMENT_METHODS).alias("unusual_payment_method"),
        (pl.col("payer_name").is_not_null()
         & (pl.col("__payer_norm") != pl.col("__consignee_norm"))
         & (pl.col("__payer_norm") != pl.col("__p_name_norm")).fill_null(True))
        .alias("payer_is_other_party"),
        _code(pl.col("payment_method"), maps["payment_method"]).alias("payment_method_code"),
        _code(pl.col("destination_country"), maps["country"]).alias("destination_country_code"),
        _code(pl.col("consignee_country"), maps["country"]).alias("consignee_country_code"),
        _code(pl.col("payer_country"), maps["country"]).alias("payer_country_code"),
        pl.col("ref_order").cast(pl.Int64).fill_null(UNKNOWN_CODE).alias("chip_model_code"),
        *party_features.screening_columns("__consignee_norm", "__address_norm"),
    )
    lf = _exporter_profile(ctx, lf, shipments)
    lf = lf.with_columns(
        ((pl.col("chip_model").is_not_null() | pl.col("vague_description"))
         & (pl.col("value_usd") < stats.small_shipment_value_usd)).alias("is_small"),
        pl.coalesce(pl.col("chip_units"), pl.col("quantity").cast(pl.Float64))
        .alias("__units_or_quantity"),
        # keys of the learned inputs and the case memory (__forwarder_key, __hs4, __hs6:
        # joined on above)
        pl.col("exporter_country").alias("__origin"),
        pl.col("__hs6").alias("hs_heading"),
        pl.concat_str("exporter_country", "destination_country", separator=">")
        .alias("__route"),
        learned.log_unit_value_per_kg().alias("__luv_kg"),
        *learned.peer_columns(),
        *learned.input_columns(stats.inputs or {}),
    )
    return lf


def _age_days(prefix: str) -> pl.Expr:
    """Days from the resolved party's incorporation to the record (`_Context.resolve`)."""
    return (pl.col("record_date") - pl.col("__p_incorporation_date")).dt.total_days() \
        .alias(f"{prefix}_age_days")


CONSIGNEE_COLUMNS = ["consignee_name", "consignee_country", "consignee_party_id"]
ADDRESS_COLUMNS = ["consignee_address", "consignee_country"]


def _consignees(ctx: _Context, shipments: pl.DataFrame) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """What the shipment features know of the consignee, per distinct value: by
    `CONSIGNEE_COLUMNS`, its normalised name, resolved party and that party's attributes,
    line of business, registered address's count of parties, closest screening-list
    name and the behaviour keys (consignee, name, owner group); by `ADDRESS_COLUMNS`, the
    normalised address, its closest list address, count of registered parties and the
    address key. Each is a function of those columns alone (1M lines: about 163,000 and
    56,000 distinct), so it is joined on once instead of worked out line by line."""
    maps = ctx.maps
    at_address = party_features.registered_addresses(ctx.parties).group_by(
        pl.col("address_norm").alias("__addr")).agg(pl.len().alias("__n_addr"))
    lf = _join_text(shipments.select(CONSIGNEE_COLUMNS).unique().lazy(),
                    ctx.names.rename({"name_norm": "__consignee_norm"}), "consignee_name", "")
    lf = ctx.resolve(lf, "__consignee_norm", "consignee_country", "consignee_party_id",
                     "consignee", age=False)
    industry = pl.col("__p_industry")
    name_key = behaviour.name_key(pl.col("__consignee_norm"), pl.col("consignee_country"))
    lf = lf.with_columns(
        industry.alias("consignee_industry"),
        pl.when(industry.is_in(party_features.INDUSTRIES_THAT_FIT)).then(False)
        .when(industry.is_in(party_features.INDUSTRIES_THAT_DO_NOT_FIT)).then(True)
        .alias("consignee_industry_misfit"),
        _code(industry, maps["industry"]).alias("consignee_industry_code"),
        # keys for behaviour windows and linkage, categorical as `_window_columns` reads
        # them (cast here, once per distinct value)
        pl.coalesce(pl.col("__party_id"), name_key).alias("__consignee_key"),
        name_key.cast(pl.Categorical).alias("__consignee_name_key"),
    ).with_columns(
        pl.coalesce(pl.col("ultimate_parent_id"), pl.col("__consignee_key"))
        .cast(pl.Categorical).alias("group_key"),
        pl.col("__consignee_key").cast(pl.Categorical).alias("consignee_key"),
    ).drop("__consignee_key")
    lf = lf.join(at_address.rename({"__addr": "__p_address_norm", "__n_addr": "__n_registered"}),
                 on="__p_address_norm", how="left")
    lf = lf.join(party_features.screening_hits(ctx.name_hits, ctx.screening_list, "__sn"),
                 left_on="__consignee_norm", right_on="__sn_text", how="left")
    addresses = _join_text(shipments.select(ADDRESS_COLUMNS).unique().lazy(),
                           ctx.addresses.rename({"address_norm": "__address_norm"}),
                           "consignee_address", "")
    addresses = (
        addresses.join(at_address.rename({"__addr": "__address_norm",
                                          "__n_addr": "__n_declared"}),
                       on="__address_norm", how="left")
        .join(party_features.screening_hits(ctx.address_hits, ctx.screening_list, "__sa"),
              left_on="__address_norm", right_on="__sa_text", how="left")
        .with_columns(pl.when(pl.col("__address_norm").str.len_chars() > 0)
                      .then(pl.concat_str("__address_norm", "consignee_country", separator="|"))
                      .cast(pl.Categorical).alias("address_key")))
    return lf, addresses


def _exporter_profile(ctx: _Context, lf: pl.LazyFrame, shipments: pl.DataFrame
                      ) -> pl.LazyFrame:
    """The exporter as a registered party and its closest screening-list name. On an
    onward leg the exporter is the hub company that received the goods (the consignee of
    the earlier leg): its own profile (newly formed, a handful of staff, an address shared
    with other companies, a parent in China, a name like a listed one) is what the scheme
    it fronts looks like. Context for the reasons and the likely scheme; no risk model
    reads these. Also the exporter's normalised name and `exporter_key`.

    Everything but the age is a function of (exporter_name, exporter_country) alone, so
    it is worked out once per distinct pair of ``shipments`` (1M lines: about 13,000
    pairs) and joined on, instead of four joins of every line."""
    resolution = ctx.resolution.lazy().select(
        pl.col("name_norm").alias("__exporter_norm"), pl.col("country").alias("exporter_country"),
        pl.col("resolved_party_id").alias("exporter_party"))
    attributes = ctx.attributes.select(
        pl.col("party_id").alias("exporter_party"),
        pl.col("incorporation_date").alias("__x_incorporated"),
        pl.col("employees").cast(pl.Float64).alias("exporter_employees"),
        pl.col("industry").alias("exporter_industry"),
        # other registered parties at its registered address (itself excluded)
        pl.when(pl.col("address_norm").str.len_chars() > 0)
        .then(pl.col("__parties_at_address") - 1).otherwise(0).cast(pl.Int64)
        .alias("exporter_address_shared_by"),
        pl.col("ultimate_parent_name").alias("exporter_parent_name"),
        pl.col("ultimate_parent_country").alias("exporter_parent_country"),
        pl.col("ownership_depth").alias("exporter_ownership_depth"),
        pl.col("ultimate_parent_in_d5_or_macau").alias("exporter_parent_in_d5_or_macau"))
    if ctx.screening_list is None:
        entries = pl.DataFrame(schema={"entry": pl.UInt32, "name": pl.String,
                                       "list_name": pl.String})
    else:
        entries = ctx.screening_list.with_row_index("entry").select("entry", "name", "list_name")
    hits = ctx.name_hits.join(entries, on="entry", how="left").lazy().select(
        pl.col("text").alias("__exporter_norm"),
        pl.col("score").alias("exporter_screening_score"),
        pl.col("name").alias("exporter_screening_name"),
        pl.col("list_name").alias("exporter_screening_list"))
    pair = ["exporter_name", "exporter_country"]
    exporters = _join_text(shipments.select(pair).unique().lazy(),
                           ctx.names.rename({"name_norm": "__exporter_norm"}), "exporter_name", "")
    exporters = (exporters.join(resolution, on=["__exporter_norm", "exporter_country"], how="left")
                 .join(attributes, on="exporter_party", how="left")
                 .join(hits, on="__exporter_norm", how="left")
                 .with_columns(behaviour.name_key(pl.col("__exporter_norm"),
                                                  pl.col("exporter_country"))
                               .cast(pl.Categorical).alias("exporter_key")))
    return (lf.join(exporters, on=pair, how="left", nulls_equal=True)
            .with_columns((pl.col("record_date") - pl.col("__x_incorporated")).dt.total_days()
                          .alias("exporter_age_days")))


# Columns the cross-record features read, per shipment. String keys become categoricals
# (same equality, 4 bytes a row) so this frame stays small for every record at once.
_KEY_COLUMNS = ("consignee_key", "group_key", "address_key", "__consignee_name_key",
                "exporter_key", "destination_country", "__forwarder_key", "__hs4", "__hs6",
                "__origin", "__route")


def _window_columns(ref: RefView) -> list[pl.Expr]:
    return [
        pl.col("__row").alias("record_id"), pl.col("shipment_id"), pl.col("record_date"),
        pl.col("value_usd"), pl.col("is_small"), pl.col("__luv_kg"),
        pl.col("__units_or_quantity").alias("chip_units"),
        *[pl.col(c).cast(pl.Categorical) for c in _KEY_COLUMNS],
        behaviour.reexport_event(ref.d5_hk_mo).alias("__reexport_event"),
    ]


def _window_inputs(records: pl.LazyFrame, ref: RefView) -> pl.LazyFrame:
    """The narrow per-shipment frame the behaviour windows and re-export linkage need."""
    return records.select(_window_columns(ref))


def _cross_record(inputs: pl.DataFrame, events: pl.DataFrame | None = None,
                  prior: float | None = None) -> tuple[pl.DataFrame, list[str]]:
    """Behaviour windows, splitting and re-export linkage for every shipment at once,
    with the Int64 columns stored as Int32 where every value fits (`_narrow_counts`,
    piece by piece, so the wide Int64 frame is never held whole), and their names.

    ``inputs``: `_window_inputs` of every shipment (dataset and history), keyed by the
    shipment's row number in column `record_id` (0 to n - 1: every row once). The
    result does not depend on how the records were cut into parts, since it is
    computed over all of them together. Its rows are in row-number order (column
    ``__row``), so a part's rows are a slice of it (`FeatureBuilder.shipment_lazy`).
    The pieces run in record_date order (``inputs`` arrives in it from
    `FeatureBuilder`) and each piece's columns are put in row order as it is added.
    """
    # one sort by date serves every window: each piece's rows are then these rows, in
    # this order, and are put side by side (no sort or join back per window)
    date, row = pl.col("record_date"), pl.col("record_id")
    if not inputs.select(((date.diff() > 0) | ((date.diff() == 0) & (row.diff() > 0)))
                         .fill_null(True).all()).item():
        inputs = inputs.sort("record_date", "record_id")
    lf = inputs.lazy().drop("shipment_id", strict=False)
    base = lf.select("record_id", "record_date", "consignee_key", "group_key", "address_key",
                     "value_usd", "is_small", "chip_units", "__consignee_name_key")
    reexports = lf.filter(pl.col("__reexport_event")).select(
        "exporter_key", pl.col("record_date").alias("__event_date"),
        pl.col("destination_country").cast(pl.String), "chip_units")
    # categorical keys: the same equality as the text, cheaper to group, sort and join
    memory_events = case_memory.empty_events() if events is None else events
    # collected one at a time: one plan over every shipment held all three at its peak;
    # the case memory one entity at a time (its counts of every key at once were the
    # pass's peak)
    pieces = [
        lambda: behaviour.consignee_history(base),
        lambda: behaviour.splitting(base),
        lambda: behaviour.reexport(
            base.drop("consignee_key").rename({"__consignee_name_key": "consignee_key"}),
            reexports.with_columns(pl.col("exporter_key").cast(pl.Categorical))),
        lambda: learned.own_history(lf.select("record_id", "record_date", "__luv_kg",
                                              "exporter_key", "consignee_key")),
        lambda: learned.novelty(lf),
        *[lambda entity=entity: case_memory.case_memory(
            lf, memory_events, prior, sorted_by_date=True, entities=(entity,))
          for entity in case_memory.ENTITIES]]
    dated, order, out, narrowed = None, None, None, []
    for piece in pieces:
        frame = piece().collect(engine="in-memory")
        if dated is None:
            dated = frame["record_id"]
            order = dated.arg_sort()  # date order -> row-number order
            rows = dated.gather(order)
            if rows.len() and (rows[0] != 0 or rows[-1] != rows.len() - 1
                               or not rows.diff().drop_nulls().eq(1).all()):
                raise AssertionError("cross-record inputs: expected row numbers 0 to n - 1")
            out = rows.rename("__row").to_frame()
        elif not frame["record_id"].equals(dated):  # each piece keeps the rows
            raise AssertionError("a cross-record piece changed the row order")
        values, fits = _narrow_counts(frame.drop("record_id"))
        del frame
        out = out.hstack([column.gather(order) for column in values.get_columns()])
        narrowed += fits
        del values
    rows, fits = _narrow_counts(out.select("__row"))
    return out.replace_column(0, rows.to_series()), [*fits, *narrowed]


def _narrow_counts(frame: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """``frame`` with its Int64 columns stored as Int32 where every value fits (the
    same values, half the memory), and the names of those columns."""
    ints = [n for n, t in frame.schema.items() if t == pl.Int64]
    if not ints or frame.height == 0:
        return frame, []
    low, high = -(2 ** 31), 2 ** 31 - 1
    bounds = frame.select(*[pl.col(n).min().alias(f"{n}|min") for n in ints],
                          *[pl.col(n).max().alias(f"{n}|max") for n in ints]).row(0, named=True)
    fits = [n for n in ints
            if (bounds[f"{n}|min"] is None or bounds[f"{n}|min"] >= low)
            and (bounds[f"{n}|max"] is None or bounds[f"{n}|max"] <= high)]
    return frame.with_columns(pl.col(fits).cast(pl.Int32)), fits


def _lease_parties(ctx: _Context, leases: pl.DataFrame) -> pl.LazyFrame:
    """Leases with the lessee resolved and the case memory's keys (``__lrow``: the lease's
    row number, the key of its case memory)."""
    lf = leases.lazy().with_row_index("__lrow").with_columns(
        pl.lit("lease").alias("record_kind"),
        pl.col("lease_id").alias("record_id"),
        pl.col("start_date").alias("record_date"),
        pl.col("lessee_name").alias("counterparty_name"),
        pl.col("gpu_model").alias("goods"),
        pl.col("gpu_count").alias("declared_quantity"))
    lf = _join_text(lf, ctx.names.rename({"name_norm": "__lessee_norm"}), "lessee_name", "")
    lf = ctx.resolve(lf, "__lessee_norm", "lessee_country", "lessee_party_id", "lessee")
    return lf.with_columns(case_memory.lease_keys())


def _lease_frame(ctx: _Context, leases: pl.DataFrame,
                 memory: pl.DataFrame | None = None) -> pl.LazyFrame:
    """``memory``: the leases' case memory by ``__lrow`` (`FeatureBuilder`)."""
    ref, stats, maps = ctx.ref, ctx.stats, ctx.maps
    lf = _lease_parties(ctx, leases)
    if memory is not None:
        lf = lf.join(memory.lazy(), on="__lrow", how="left")
    lf = product.recognise_chips(lf, "gpu_model", ref)
    lf = lf.with_columns(
        pl.col("gpu_count").cast(pl.Float64).alias("chip_units"),
        pl.col("ref_tpp_per_gpu").alias("chip_tpp"),
        (pl.col("ref_tpp_per_gpu") * pl.col("gpu_count")).alias("total_tpp"),
        pl.col("ref_controlled").alias("chip_controlled"),
        pl.col("ref_eccn").alias("chip_eccn"),
        pl.col("lessee_employees").alias("lessee_employees"),
    )
    lf = lf.with_columns(
        *route.lease_columns(ref, stats),
        *route.money_columns(ref, "lessee_country"),
        _code(pl.col("datacenter_country"), maps["country"]).alias("destination_country_code"),
        _code(pl.col("payer_country"), maps["country"]).alias("payer_country_code"),
        pl.col("ref_order").cast(pl.Int64).fill_null(UNKNOWN_CODE).alias("chip_model_code"),
    )
    return ctx.screening(lf, "__lessee_norm", None)


def _select(lf: pl.LazyFrame, carry: list[str], inputs: list[str] = ()) -> pl.LazyFrame:
    """The registry's columns (nulls for features of the other kind), in registry order,
    then its rule inputs, then the configured inputs (`features.learned`)."""
    have = set(lf.collect_schema().names())
    cols = [pl.col(n) if n in have else pl.lit(None).alias(n)
            for n in [*FEATURES, *RULE_INPUTS, *inputs]]
    extra = [pl.col(c) if c in have else pl.lit(None).alias(c) for c in carry]
    return lf.select(*KEY, "record_date", *cols, *extra)


class FeatureBuilder:
    """`build_features` in parts, for batches too large for one feature frame (issue #7).

    The shipments arrive as a list of parts (slices of one table, in any cut). Cross-
    record work runs once over all of them: the name lookups over the distinct names of
    every part, then the behaviour windows and re-export linkage over a narrow frame
    of every shipment (`_window_inputs`). The wide per-record features are then built
    one part at a time (`shipment_features(i)`, `lease_features()`), so memory holds one
    part's feature frame, not the batch's; each row equals what `build_features` gives
    for it, however the shipments were cut.
    """

    def __init__(self, shipment_parts: list, leases, parties,
                 screening_list: pl.DataFrame | None, reference,
                 stats: FeatureStats | None = None, labels: pl.DataFrame | None = None,
                 built_parts: int | None = None,
                 hold: Callable[[pl.DataFrame], Callable[[], pl.LazyFrame]] | None = None):
        """``built_parts``: when only the first this many shipment parts (and the
        leases) will have their features built, the other parts are context for the
        cross-record features only, and their names are not screened (`_Context`).
        ``hold(cross)`` keeps the cross-record frame while the parts are built and
        returns a function that gives it back, lazily (each part reads its slice); by
        default it stays in memory (`detector score` puts a large batch's on disk: 10M
        shipments, ~1.9 GiB)."""
        self.parts = shipment_parts or [pl.DataFrame(schema=SHIPMENTS.schema)]
        self.leases = _frame(leases, LEASES)
        party = _frame(parties, PARTIES)
        screen = None if screening_list is None else _frame(screening_list, SCREENING_LIST)
        # one part is prepared once here (several: each when needed, one in memory at once)
        only = self._part(0) if len(self.parts) == 1 else None

        def part_frame(i: int) -> pl.DataFrame:
            return only if only is not None else self._part(i)

        part_texts = [_text_inputs(part_frame(i), self.leases) for i in range(len(self.parts))]
        texts = _merge_text_inputs(part_texts)
        screened = None if built_parts is None or built_parts >= len(self.parts) else \
            _merge_text_inputs(part_texts[:max(built_parts, 1)])
        self.ctx = _Context(texts, party, screen, reference, stats, screened)
        inputs_config = self.ctx.stats.inputs or {}
        self.input_names = learned.input_names(inputs_config)
        for i in range(len(self.parts)):
            learned.check_inputs(self._part_columns(i),
                                 list(inputs_config.get("categorical", {})),
                                 inputs_config.get("numeric", []), "the shipments")
        self.first_rows = []
        # One part (every batch up to DEFAULT_CHUNK_ROWS shipments): its record-level frame
        # is collected once and serves both the window inputs and its features, instead of
        # planning and running the same joins twice. Several parts: rebuilt per part, so
        # memory holds one part's frame at a time.
        self._records: dict[int, pl.DataFrame] = {}
        inputs, row = [], 0
        for i in range(len(self.parts)):
            part = part_frame(i)
            self.first_rows.append(row)
            records = _shipment_records(self.ctx, part, row)
            if len(self.parts) == 1:
                # only the columns its features and the window inputs read are built
                wanted = {"__row", *KEY, "record_date", *FEATURES, *RULE_INPUTS,
                          *self.input_names}
                window = {n for e in _window_columns(self.ctx.ref) for n in e.meta.root_names()}
                records = records.select(c for c in records.collect_schema().names()
                                         if c in wanted or c in window)
                collected = records.collect(engine="in-memory")
                records = collected.lazy()
                # kept: what its feature frame reads (`shipment_lazy`)
                self._records[i] = collected.select(c for c in collected.columns
                                                    if c in wanted)
                del collected
            inputs.append(_window_inputs(records, self.ctx.ref).collect(engine="in-memory"))
            del records
            row += part.height
            del part
        del only
        inputs = pl.concat(inputs)
        # case memory: the decisions stored with the model and those of ``labels``, the
        # latest per record, on shipments and leases alike (features.case_memory)
        lease_keys = _lease_parties(self.ctx, self.leases).select(
            "__lrow", "record_id", "record_date", *case_memory.KEY_COLUMNS) \
            .collect(engine="in-memory")
        stored, stored_prior = case_memory.events_from_dict(self.ctx.stats.case_memory)
        if labels is None or labels.height == 0:
            given = case_memory.empty_events()
        else:
            given = case_memory.merge_events(
                case_memory.case_events(inputs.lazy().drop("record_id")
                                        .rename({"shipment_id": "record_id"}), labels.lazy()),
                case_memory.case_events(lease_keys.lazy(), labels.lazy(), "lease"))
        self.events = case_memory.latest_events(given, stored)
        # the smoothing prior is learned: the model's, from its training decisions; those
        # handed in at scoring add counts, never a new prior, so no decision moves the
        # rate of a record dated before it. None stored (training, the fallback): the
        # confirmed share of the decisions given.
        self.prior = stored_prior if stored_prior is not None \
            else case_memory.prior_rate(self.events)
        # in date order, the order every cross-record piece keeps (`_cross_record`); the
        # unsorted frame is let go before the pieces run (at 10M shipments it is ~1 GB)
        inputs = inputs.drop("shipment_id").sort("record_date", "record_id")
        # held while every part is scored (10M shipments: 2.6 GiB), so its counts are kept
        # as Int32 where every value fits and read back as Int64 (`shipment_lazy`)
        cross, self._cross_int64 = _cross_record(inputs, self.events, self.prior)
        del inputs
        self._cross = (hold or (lambda frame: frame.lazy))(cross)
        del cross
        self.lease_memory = case_memory.case_memory(
            lease_keys.lazy().drop("record_id").rename({"__lrow": "record_id"}),
            self.events, self.prior).rename({"record_id": "__lrow"}) \
            .collect(engine="in-memory")
        # the entities a lease has (no forwarder, no HS-4 heading: those stay null)
        self.lease_memory = self.lease_memory.select(
            "__lrow", *[c for c in self.lease_memory.columns
                        if c in FEATURES and "lease" in FEATURES[c].kinds])
        self._schema = None

    def _part(self, i: int) -> pl.DataFrame:
        return _frame(self.parts[i], SHIPMENTS)

    def _part_columns(self, i: int) -> list[str]:
        """The columns `_part(i)` has (its own and the contract's), without reading it."""
        part = self.parts[i]
        names = part.collect_schema().names() if isinstance(part, pl.LazyFrame) \
            else part.columns
        return [*names, *[n for n in SHIPMENTS.schema if n not in names]]

    def shipment_lazy(self, i: int, carry: list[str] = ()) -> pl.LazyFrame:
        if i in self._records and all(c in self._records[i].columns for c in carry):
            records = self._records[i].lazy()
            height = self._records[i].height
        else:
            part = self._part(i)
            records = _shipment_records(self.ctx, part, self.first_rows[i])
            height = part.height
        # rows in row-number order, every row once (`_cross_record`): the part's slice
        cross = self._cross().slice(self.first_rows[i], height) \
            .with_columns(pl.col(self._cross_int64).cast(pl.Int64))
        return _select(records.join(cross, on="__row", how="left"), list(carry),
                       self.input_names)

    def lease_lazy(self, carry: list[str] = ()) -> pl.LazyFrame:
        return _select(_lease_frame(self.ctx, self.leases, self.lease_memory), list(carry),
                       self.input_names)

    def case_memory_state(self) -> dict:
        """The decisions this builder's case memory used, JSON-able (stored in a bundle)."""
        return case_memory.events_to_dict(self.events, self.prior)

    def schema(self) -> dict[str, pl.DataType]:
        """The column types of `build_features`' frame (both kinds together), so every
        part has them whichever kinds and values it holds."""
        if self._schema is None:
            both = pl.concat([self.shipment_lazy(0).clear(), self.lease_lazy().clear()],
                             how="vertical_relaxed").collect()
            self._schema = {**dict(both.schema), **_output_types(both)}
        return self._schema

    def _typed(self, frame: pl.DataFrame) -> pl.DataFrame:
        schema = self.schema()
        return _finite(frame.cast({n: t for n, t in schema.items() if frame.schema[n] != t}))

    def shipment_features(self, i: int) -> pl.DataFrame:
        """The feature frame of part ``i``'s shipments, sorted by record_id."""
        frame = self.shipment_lazy(i).collect(engine="in-memory")
        self._records.pop(i, None)  # built: its record-level frame is no longer needed
        return self._typed(_sorted(frame))

    def lease_features(self) -> pl.DataFrame:
        return self._typed(self.lease_lazy().sort(KEY).collect(engine="in-memory"))


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` sorted by `KEY` (one kind, ids unique). Records usually arrive in id
    order (the wide frame is then not gathered again)."""
    ids = frame["record_id"]
    if frame["record_kind"].n_unique() <= 1 and ids.is_sorted() and ids.null_count() == 0:
        return frame
    return frame.sort(KEY)


def _finite(frame: pl.DataFrame) -> pl.DataFrame:
    """Float model inputs with ±inf or NaN (an overflowing sum of huge declared values)
    become null, the documented "missing": no detector ever sees a non-finite input."""
    floats = [n for n, t in frame.schema.items() if t.is_float()
              and (n not in FEATURES or FEATURES[n].model_input)]
    return frame.with_columns(pl.when(pl.col(n).is_finite()).then(pl.col(n)).alias(n)
                              for n in floats) if floats else frame


def _finish(frame: pl.DataFrame) -> pl.DataFrame:
    return _finite(frame.cast({n: dt for n, dt in _output_types(frame).items()}))


def build_features(shipments, leases, parties, screening_list: pl.DataFrame | None, reference,
                   stats: FeatureStats | None = None, *, scored: pl.Expr | None = None,
                   labels: pl.DataFrame | None = None, memory_out: dict | None = None
                   ) -> pl.DataFrame:
    """One feature frame for every shipment and lease, sorted by (record_kind, record_id).

    ``stats=None`` uses the neutral defaults of `features.stats`. ``scored``, when given,
    is a boolean expression over the output columns (or over input columns of the
    shipments/leases tables, which are carried for the test and then dropped): only the
    rows where it is true are returned, while every row still informs the time windows
    and re-export linkage of the others. ``labels`` (the contract's labels table) feed
    the case memory besides the decisions stored in ``stats``; ``memory_out``, when
    given, receives the case memory's state under "case_memory" (for the bundle).
    """
    builder = FeatureBuilder([shipments], leases, parties, screening_list, reference, stats,
                             labels)
    if memory_out is not None:
        memory_out["case_memory"] = builder.case_memory_state()
    carry: list[str] = []
    if scored is not None:
        inputs = set(builder._part(0).columns) | set(builder.leases.columns)
        carry = [n for n in scored.meta.root_names()
                 if n not in FEATURES and n not in (*KEY, "record_date") and n in inputs]
    frame = pl.concat([builder.shipment_lazy(0, carry), builder.lease_lazy(carry)],
                      how="vertical_relaxed")
    if scored is not None:
        frame = frame.filter(scored.fill_null(False)).drop(carry)
    return _finish(frame.sort(KEY).collect(engine="in-memory"))


def _output_types(frame: pl.DataFrame) -> dict[str, pl.DataType]:
    """Null-only columns (a kind absent, or a feature of the other kind) get a real type."""
    out = {}
    for name, dtype in frame.schema.items():
        if dtype == pl.Null:
            feature = FEATURES.get(name)
            model_input = (feature is not None and feature.model_input) or name.startswith(
                learned.INPUT_PREFIX)
            out[name] = pl.Float64 if model_input else pl.String
    return out


def fit_feature_stats(shipments, leases, parties, reference, *,
                      categorical: list[str] = (), numeric: list[str] = ()) -> FeatureStats:
    """Learn the statistics that scoring applies as literals (see `features.stats`).

    Medians: per chip model, the declared value per GPU over shipment lines with a
    positive quantity and value, and the price per GPU-month over leases. Category map:
    countries seen in training (destination, consignee, payer, data centre, lessee), in
    alphabetical order; a country unseen in training gets code -1. Unit-value peers: the
    median and spread of the log value per kg and per unit by HS-6/4/2
    (`features.learned`). ``categorical`` / ``numeric``: shipment columns taken as model
    inputs (the training config's ``[inputs]``), categorical ones coded by the values seen.
    """
    ref = view(reference)
    ship = _frame(shipments, SHIPMENTS)
    lease = _frame(leases, LEASES)
    per_gpu = (
        product.recognise_chips(ship.lazy(), "description", ref)
        .filter(pl.col("chip_model").is_not_null() & (pl.col("quantity") > 0)
                & (pl.col("value_usd") > 0))
        .group_by("chip_model")
        .agg((pl.col("value_usd") / (pl.col("quantity") * pl.col("gpus_per_declared_unit")))
             .median().alias("median"))
        .sort("chip_model").collect()
    )
    per_month = (
        product.recognise_chips(lease.lazy(), "gpu_model", ref)
        .filter(pl.col("chip_model").is_not_null() & (pl.col("gpu_count") > 0)
                & (pl.col("term_months") > 0) & (pl.col("value_usd") > 0))
        .group_by("chip_model")
        .agg((pl.col("value_usd") / (pl.col("gpu_count") * pl.col("term_months")))
             .median().alias("median"))
        .sort("chip_model").collect()
    )
    seen = pl.concat([
        ship.select(pl.concat([pl.col(c) for c in ("destination_country", "consignee_country",
                                                   "payer_country")]).alias("c")),
        lease.select(pl.concat([pl.col(c) for c in ("datacenter_country", "lessee_country",
                                                    "payer_country")]).alias("c")),
    ])["c"].drop_nulls().unique().sort().to_list()
    maps = default_category_maps()
    maps["country"] = {c: i for i, c in enumerate(seen)}
    return FeatureStats(
        median_value_per_gpu_by_model=dict(zip(per_gpu["chip_model"], per_gpu["median"])),
        median_price_per_gpu_month_by_model=dict(zip(per_month["chip_model"],
                                                     per_month["median"])),
        category_maps=maps,
        fitted_rows=ship.height + lease.height,
        unit_value_peers=learned.fit_unit_value_peers(ship.lazy()),
        inputs=learned.fit_inputs(ship, list(categorical), list(numeric))
        if (categorical or numeric) else {},
    )
