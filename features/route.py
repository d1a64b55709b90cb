"""Route, terms and money for shipments; the lease-specific features.

Red flags (FACTS.md): 5 (payment from a third party or third country; cash; crypto),
7 (forwarder or logistics company as consignee), 8 (abnormal route, transit through
HK/Macau, destination a hub), 10 (cloud: D:5 owners, bare metal, capacity beyond size).
"""

from __future__ import annotations

import polars as pl

from features.parties import LOGISTICS_NAME_WORDS
from features.refview import RefView
from features.stats import MARKET_LEASE_MONTHS

UNUSUAL_PAYMENT_METHODS = ("cash", "crypto", "third_party")


def route_columns(ref: RefView) -> list[pl.Expr]:
    dest = pl.col("destination_country")
    transit = pl.col("transit_countries")
    return [
        dest.is_in(ref.licence_required).alias("destination_licence_required"),
        dest.is_in(ref.d5_or_macau).alias("destination_d5_or_macau"),
        dest.is_in(ref.hubs_confirmed).alias("destination_is_hub"),
        dest.is_in(ref.hubs_unconfirmed).alias("destination_unconfirmed_hub"),
        (pl.col("consignee_country") != dest).alias("consignee_destination_mismatch"),
        # no transit declared counts as no transit through HK / Macau
        transit.list.eval(pl.element().is_in(ref.hk_mo)).list.any().fill_null(False)
        .alias("transit_via_hk_or_mo"),
        transit.list.len().fill_null(0).cast(pl.Int64).alias("transit_country_count"),
        pl.col("intermediate_consignee_name").is_not_null().alias("intermediate_consignee_present"),
        ((pl.col("consignee_industry") == "logistics").fill_null(False)
         | pl.col("consignee_name").str.contains(LOGISTICS_NAME_WORDS).fill_null(False))
        .alias("consignee_is_logistics"),
        pl.col("routed_export").alias("routed_export"),
        (pl.col("incoterm").str.to_uppercase().str.strip_chars() == "EXW").alias("incoterm_exw"),
    ]


def money_columns(ref: RefView, counterparty_country: str) -> list[pl.Expr]:
    """Payer features; shared by shipments (consignee) and leases (lessee)."""
    payer = pl.col("payer_country")
    return [
        (payer != pl.col(counterparty_country)).alias("payer_country_mismatch"),
        payer.is_in(ref.d5_hk_mo).alias("payer_in_d5_hk_or_mo"),
        payer.is_in(ref.china_sphere).alias("payer_in_china_sphere"),  # a rule input
    ]


def payment_columns() -> list[pl.Expr]:
    method = pl.col("payment_method")
    return [
        method.is_in(UNUSUAL_PAYMENT_METHODS).alias("unusual_payment_method"),
        ((pl.col("payer_name").is_not_null())
         & (pl.col("__payer_norm") != pl.col("__consignee_norm"))
         & (pl.col("__payer_norm") != pl.col("__party_name_norm")).fill_null(True))
        .alias("payer_is_other_party"),
    ]


def lease_columns(ref: RefView, stats) -> list[pl.Expr]:
    months = pl.when(pl.col("term_months") > 0).then(pl.col("term_months").cast(pl.Float64))
    gpus = pl.when(pl.col("gpu_count") > 0).then(pl.col("gpu_count").cast(pl.Float64))
    price = pl.col("value_usd") / (gpus * months)
    market_catalogue = pl.col("ref_price_low_per_gpu") / MARKET_LEASE_MONTHS
    learned = pl.col("chip_model").replace_strict(
        stats.median_price_per_gpu_month_by_model, default=None, return_dtype=pl.Float64)
    employees = pl.when(pl.col("lessee_employees") >= 0).then(pl.col("lessee_employees"))
    return [
        (pl.col("access_type") == "bare_metal").alias("bare_metal_access"),
        pl.col("datacenter_country").is_in(ref.hubs_confirmed).alias("datacenter_in_hub"),
        pl.col("lessee_country").is_in(ref.d5_or_macau).alias("lessee_in_d5_or_macau"),
        (pl.col("lessee_country") != pl.col("datacenter_country")).alias("lessee_abroad_from_datacenter"),
        price.alias("price_per_gpu_month_usd"),
        # Learned median when fitted for the model, else the catalogue's rough reference.
        (price / pl.coalesce(learned, market_catalogue)).alias("lease_price_to_market"),
        (pl.col("gpu_count") / pl.when(employees >= 1).then(employees).otherwise(
            pl.when(employees == 0).then(1))).alias("gpus_per_lessee_employee"),
    ]
