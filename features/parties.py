"""Parties: who the consignee (or lessee) is, how old, how big, what line of business,
who owns it, who else sits at its address, and how close it is to a listed party.

Red flags (FACTS.md): 1 (resembles a listed party), 3 (product does not fit the line of
business), 6 (newly formed), 7 (forwarder / logistics company as consignee), 10/11
(owners in D:5 / Macau; §744.23(a)(3) headquarters rule).
"""

from __future__ import annotations

import polars as pl

from features.names import best_matches, normalise_address, normalise_name

# Resolving a free-text consignee to a registered party needs a close match.
RESOLVE_SCORE_CUTOFF = 90
MAX_OWNERSHIP_LEVELS = 6
# Lines of business that buy data-centre accelerators in the ordinary course.
INDUSTRIES_THAT_FIT = ("cloud_provider", "data_center", "oem", "distributor", "reseller",
                       "university", "research", "manufacturer", "government")
INDUSTRIES_THAT_DO_NOT_FIT = ("logistics", "trading", "other")
LOGISTICS_NAME_WORDS = (r"(?i)\b(logistics?|freight|forwarding|forwarders?|express|shipping|"
                        r"cargo|courier|supply\s*chain|transport(ation)?)\b")


def unique_parties(parties: pl.DataFrame) -> pl.DataFrame:
    """One row per party_id (the first row wins, as the contract's 'scored dataset wins')."""
    return parties.unique(subset="party_id", keep="first", maintain_order=True)


def party_attributes(parties: pl.DataFrame, d5_or_macau: tuple[str, ...]) -> pl.LazyFrame:
    """Per party: ownership chain to the ultimate parent, address sharing, basic facts."""
    p = parties.lazy().select(
        "party_id", "parent_party_id", "name", pl.col("country").str.to_uppercase(),
        "incorporation_date", "employees", "industry",
        normalise_address(pl.col("address")).alias("address_norm"),
        normalise_name(pl.col("name")).alias("name_norm"))
    step = p.select(pl.col("party_id").alias("__next_id"),
                    pl.col("parent_party_id").alias("__next_parent"),
                    pl.lit(True).alias("__found"))
    chain = p.select("party_id", pl.col("party_id").alias("ultimate_parent_id"),
                     pl.col("parent_party_id").alias("__next"),
                     pl.lit(0, pl.Int64).alias("ownership_depth"))
    for _ in range(MAX_OWNERSHIP_LEVELS):
        # A parent that is not in `parties` ends the chain; a cycle is cut at the limit.
        chain = (
            chain.join(step, left_on="__next", right_on="__next_id", how="left")
            .with_columns(
                (pl.col("__found").fill_null(False)
                 & (pl.col("__next") != pl.col("party_id"))).alias("__ok"))
            .select(
                "party_id",
                pl.when("__ok").then(pl.col("__next")).otherwise(pl.col("ultimate_parent_id"))
                .alias("ultimate_parent_id"),
                pl.when("__ok").then(pl.col("__next_parent")).alias("__next"),
                (pl.col("ownership_depth") + pl.col("__ok").cast(pl.Int64)).alias("ownership_depth"),
            )
        )
    tops = p.select(pl.col("party_id").alias("ultimate_parent_id"),
                    pl.col("name").alias("ultimate_parent_name"),
                    pl.col("country").alias("ultimate_parent_country"))
    at_address = (p.filter(pl.col("address_norm").str.len_chars() > 0)
                  .group_by("address_norm").agg(pl.len().alias("__parties_at_address")))
    return (
        p.join(chain.drop("__next"), on="party_id", how="left")
        .join(tops, on="ultimate_parent_id", how="left")
        .join(at_address, on="address_norm", how="left")
        .with_columns(pl.col("ultimate_parent_country").is_in(d5_or_macau)
                      .alias("ultimate_parent_in_d5_or_macau"))
    )


def registered_addresses(parties: pl.DataFrame) -> pl.LazyFrame:
    """(address_norm, party_id) of every party with an address: who is registered where,
    as the shared-address counts count them and the case cards list them."""
    return (parties.lazy()
            .select(normalise_address(pl.col("address")).alias("address_norm"), "party_id")
            .filter(pl.col("address_norm").str.len_chars() > 0))


def shared_address_key(declared: pl.Expr, registered: pl.Expr) -> pl.Expr:
    """The (normalised) address whose other registrations count as shared with a
    consignee: the declared one when there is one, else its party's registered one."""
    return pl.when(declared.str.len_chars() > 0).then(declared).otherwise(registered)


def resolve_names(keys: pl.DataFrame, parties: pl.DataFrame) -> pl.DataFrame:
    """Map (name_norm, country) to a party: exact normalised name or alias, else fuzzy.

    Fuzzy matching is blocked by country (a name is only compared with parties of the
    same country) and needs token_sort_ratio >= RESOLVE_SCORE_CUTOFF. Ties and
    duplicate names go to the smallest party_id, so the result does not depend on order.
    Returns name_norm, country, resolved_party_id, resolution_score.
    """
    out_schema = {"name_norm": pl.String, "country": pl.String,
                  "resolved_party_id": pl.String, "resolution_score": pl.Float64}
    keys = keys.filter(pl.col("name_norm").is_not_null() & (pl.col("name_norm") != "")).unique()
    if keys.height == 0 or parties.height == 0:
        return pl.DataFrame(schema=out_schema)
    choices = (
        parties.select("party_id", pl.col("country").str.to_uppercase(),
                       pl.concat_list(pl.col("name"), pl.col("aliases").fill_null([]))
                       .alias("__names"))
        .explode("__names")
        .select("party_id", "country", normalise_name(pl.col("__names")).alias("name_norm"))
        .filter(pl.col("name_norm").is_not_null() & (pl.col("name_norm") != ""))
        .group_by("name_norm", "country").agg(pl.col("party_id").min())
        .sort("country", "name_norm")
    )
    exact = keys.join(choices, on=["name_norm", "country"], how="inner").select(
        "name_norm", "country", pl.col("party_id").alias("resolved_party_id"),
        pl.lit(100.0).alias("resolution_score"))
    rest = keys.join(exact, on=["name_norm", "country"], how="anti").sort("country", "name_norm")
    fuzzy_parts = []
    for (country,), block in rest.group_by("country", maintain_order=True):
        candidates = choices.filter(pl.col("country") == country)
        if candidates.height == 0:
            continue
        names = block["name_norm"].to_list()
        scores, index = best_matches(names, candidates["name_norm"].to_list(),
                                     score_cutoff=RESOLVE_SCORE_CUTOFF)
        ids = candidates["party_id"]
        found = index >= 0
        if not found.any():
            continue
        fuzzy_parts.append(pl.DataFrame({
            "name_norm": [n for n, f in zip(names, found) if f],
            "country": [country] * int(found.sum()),
            "resolved_party_id": ids.gather(index[found]).to_list(),
            "resolution_score": scores[found],
        }, schema=out_schema))
    return pl.concat([exact.cast(out_schema), *fuzzy_parts])


def screening_choices(screening_list: pl.DataFrame | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(names, addresses) of the list, normalised, each row pointing to its entry."""
    if screening_list is None or screening_list.height == 0:
        empty = pl.DataFrame(schema={"text": pl.String, "entry": pl.UInt32})
        return empty, empty
    entries = screening_list.with_row_index("entry")
    names = (
        entries.select("entry", pl.concat_list(pl.col("name"), pl.col("alt_names").fill_null([]))
                       .alias("text"))
        .explode("text")
        .select(normalise_name(pl.col("text")).alias("text"), "entry")
        .filter(pl.col("text").str.len_chars() > 0)
        .unique(subset="text", keep="first", maintain_order=True)
    )
    addresses = (
        entries.select(normalise_address(pl.col("address")).alias("text"), "entry")
        .filter(pl.col("text").str.len_chars() > 0)
        .unique(subset="text", keep="first", maintain_order=True)
    )
    return names, addresses


def screen(queries: pl.Series, choices: pl.DataFrame) -> pl.DataFrame:
    """Best token_sort_ratio of each distinct query against ``choices``: text, score, entry."""
    texts = queries.drop_nulls().unique().sort()
    texts = texts.filter(texts.str.len_chars() > 0).to_list()
    scores, index = best_matches(texts, choices["text"].to_list())
    entries = choices["entry"].to_numpy()
    return pl.DataFrame({
        "text": texts,
        # no list at all: the score is unknown (null), not zero
        "score": scores if choices.height else [None] * len(texts),
        "entry": [int(entries[i]) if i >= 0 else None for i in index],
    }, schema={"text": pl.String, "score": pl.Float64, "entry": pl.UInt32})


def screening_columns(name_norm: str, address_norm: str) -> list[pl.Expr]:
    """Combine name and address scores joined as __sn_*/__sa_* into the screening features."""
    name_score = pl.col("__sn_score")
    address_score = pl.col("__sa_score")
    use_address = address_score.fill_null(-1) > name_score.fill_null(-1)
    return [
        name_score.alias("screening_name_score"),
        address_score.alias("screening_address_score"),
        pl.max_horizontal(name_score, address_score).alias("screening_match_score"),
        pl.when(use_address).then(pl.col("__sa_list_entry")).otherwise(pl.col("__sn_list_entry"))
        .alias("screening_match_name"),
        pl.when(use_address).then(pl.col("__sa_list_name")).otherwise(pl.col("__sn_list_name"))
        .alias("screening_match_list"),
    ]


def screening_hits(hits: pl.DataFrame, screening_list: pl.DataFrame | None,
                   prefix: str) -> pl.LazyFrame:
    """`screen`'s hits with their list entry's name and list: ``<prefix>_text``,
    ``_score``, ``_list_entry``, ``_list_name``."""
    if screening_list is None or screening_list.height == 0:
        entries = pl.DataFrame(schema={"entry": pl.UInt32, "name": pl.String,
                                       "list_name": pl.String})
    else:
        entries = screening_list.with_row_index("entry").select("entry", "name", "list_name")
    return (hits.join(entries, on="entry", how="left").lazy()
            .select(pl.col("text").alias(f"{prefix}_text"),
                    pl.col("score").alias(f"{prefix}_score"),
                    pl.col("name").alias(f"{prefix}_list_entry"),
                    pl.col("list_name").alias(f"{prefix}_list_name")))


def join_screening(lf: pl.LazyFrame, name_col: str, address_col: str | None,
                   name_hits: pl.DataFrame, address_hits: pl.DataFrame,
                   screening_list: pl.DataFrame | None) -> pl.LazyFrame:
    """Attach the best list match for a record's normalised name (and address)."""
    lf = lf.join(screening_hits(name_hits, screening_list, "__sn"), left_on=name_col,
                 right_on="__sn_text", how="left")
    if address_col is not None:
        lf = lf.join(screening_hits(address_hits, screening_list, "__sa"),
                     left_on=address_col, right_on="__sa_text", how="left")
    else:
        lf = lf.with_columns(pl.lit(None, pl.Float64).alias("__sa_score"),
                             pl.lit(None, pl.String).alias("__sa_list_entry"),
                             pl.lit(None, pl.String).alias("__sa_list_name"))
    return lf
