"""The rule layer: red flags as transparent, documented points over the feature frame.

Each rule is a boolean condition over feature-frame columns (a null anywhere in the
condition counts as "not hit"), a number of points and a plain-language reason: the
reason of the registry feature the rule tests (features/registry.py), so a rule and a
feature never word one red flag twice, and thresholds the registry also uses to state a
value as a red flag (`FLAGGED_WHEN`) come from there. Points
follow the weight the sources give a flag: a listed-party match, a D:5 parent and a
misdeclared classification are strong on their own (30-40); route, money and
behaviour flags are supporting evidence (5-20) that matters in combination.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from features.registry import FEATURES, FLAGGED_WHEN, fill_template


@dataclass(frozen=True)
class Rule:
    """A red-flag rule. Its reason is the registry feature's (``feature``) unless the rule
    states something the feature does not (``reason``)."""

    name: str
    description: str
    condition: pl.Expr  # boolean over feature-frame columns, null -> False
    points: float
    feature: str | None = None  # registry feature whose reason template the rule states
    reason: str | None = None  # template like Feature.reason, for rules without a feature

    @property
    def template(self) -> str:
        return self.reason if self.reason is not None else FEATURES[self.feature].reason


c = pl.col
flag = FLAGGED_WHEN  # thresholds shared with the reasons (features/registry.py)
# A strong screening match (the registry flags weaker resemblance, >= 80, as a reason).
SCREENING_MATCH_SCORE = 90

RULES: list[Rule] = [
    Rule("screening_match", "name or address resembles a screening-list entry (score >= 90)",
         c("screening_match_score") >= SCREENING_MATCH_SCORE, 40.0, "screening_match_score"),
    Rule("d5_ultimate_parent", "ultimate parent headquartered in D:5 or Macau (§744.23(a)(3))",
         c("ultimate_parent_in_d5_or_macau") & (c("ownership_depth") >= 1), 35.0,
         "ultimate_parent_in_d5_or_macau"),
    Rule("misdeclared_classification",
         "item needing a licence declared EAR99/5A992 or 'no licence required'",
         c("misdeclared_to_licence_destination"), 35.0, "misdeclared_to_licence_destination"),
    Rule("controlled_under_low_eccn", "3A090/4A090 model declared under EAR99/5A992",
         c("controlled_declared_low_eccn"), 20.0, "controlled_declared_low_eccn"),
    Rule("gpu_as_parts", "controlled or GPU-priced line declared as 8473.30 parts",
         c("parts_hs_for_gpu_priced_item"), 20.0, "parts_hs_for_gpu_priced_item"),
    Rule("undervalued", "declared unit value below half the catalogue's low market price",
         flag["unit_value_to_market_low"], 20.0, "unit_value_to_market_low"),
    Rule("new_company_controlled", "consignee under one year old buying controlled items",
         flag["consignee_age_days"] & c("chip_controlled"), 15.0, "consignee_age_days"),
    Rule("new_lessee", "lessee under one year old leasing controlled GPUs",
         flag["lessee_age_days"] & c("chip_controlled"), 10.0, "lessee_age_days"),
    Rule("china_payer", "payer in China, Hong Kong or Macau for a party elsewhere",
         c("payer_in_china_sphere") & c("payer_country_mismatch"), 20.0,
         "payer_country_mismatch"),
    Rule("unusual_payment", "payment by cash, crypto or a third party",
         c("unusual_payment_method"), 10.0, "unusual_payment_method"),
    Rule("logistics_consignee", "freight forwarder or logistics company as consignee",
         c("consignee_is_logistics"), 10.0, "consignee_is_logistics"),
    Rule("transit_hk_mo", "goods routed through Hong Kong or Macau", c("transit_via_hk_or_mo"),
         10.0, "transit_via_hk_or_mo"),
    Rule("later_reexport", "consignee later exported controlled goods to D:5/HK/MO",
         c("later_reexported_to_d5_hk_mo") & (c("days_until_reexport") <= 180), 30.0,
         "later_reexported_to_d5_hk_mo"),
    Rule("splitting", "three or more sub-threshold GPU shipments to linked consignees in 14 days",
         flag["linked_small_shipments_14d"], 15.0, "linked_small_shipments_14d"),
    Rule("bare_metal_d5_lessee", "bare-metal lease to a lessee in or owned from D:5 / Macau",
         c("bare_metal_access") & (c("ultimate_parent_in_d5_or_macau") | c("lessee_in_d5_or_macau")
                                   | c("payer_in_d5_hk_or_mo")), 30.0,
         reason="bare-metal GPUs for a lessee tied to {ultimate_parent_country}"),
    Rule("capacity_beyond_size", "more than 10 GPUs leased per lessee employee",
         flag["gpus_per_lessee_employee"], 15.0, "gpus_per_lessee_employee"),
    Rule("vague_description", "GPU-ish or 'parts/adapters' description with no model named",
         c("vague_description") & (c("unit_value_usd") >= 1000), 15.0,
         reason="vague description for ${unit_value_usd:,.0f} per unit"),
    Rule("industry_misfit", "consignee's line of business does not fit controlled chips",
         c("consignee_industry_misfit") & c("chip_controlled"), 10.0,
         "consignee_industry_misfit"),
    Rule("shared_address", "three or more other companies at the consignee's address",
         flag["consignee_address_shared_by"], 10.0, "consignee_address_shared_by"),
    Rule("first_large_order", "first shipment to a consignee worth $1M or more",
         c("first_shipment_to_consignee") & (c("value_usd") >= 1_000_000), 5.0,
         reason="first shipment to this consignee, ${value_usd:,.0f}"),
    Rule("hub_destination_controlled", "controlled item to a diversion hub",
         c("destination_is_hub") & c("chip_controlled"), 5.0, "destination_is_hub"),
    Rule("no_licence_stated", "item needing a licence shipped without a licence",
         c("no_licence_for_licence_destination"), 10.0, "no_licence_for_licence_destination"),
]


def rule_mask() -> pl.Expr:
    """The rules a feature-frame row hits, packed into one integer (bit i = RULES[i])."""
    return pl.sum_horizontal([rule.condition.fill_null(False).cast(pl.Int64) * (1 << i)
                              for i, rule in enumerate(RULES)]).alias("rule_mask")


def rule_hits_by_mask(masks: pl.Series) -> pl.DataFrame:
    """rule_mask, rule_hits (the names) for each distinct mask in ``masks``."""
    distinct = masks.unique().sort().to_list()
    return pl.DataFrame(
        {"rule_mask": distinct,
         "rule_hits": [[r.name for i, r in enumerate(RULES) if m >> i & 1] for m in distinct]},
        schema={"rule_mask": pl.Int64, "rule_hits": pl.List(pl.String)})


def rule_points(frame: pl.DataFrame) -> pl.DataFrame:
    """record_kind, record_id, rule_points (sum of points hit), rule_hits (names hit).

    Rows keep ``frame``'s order. The hits are first packed into one integer per row;
    the few hundred distinct combinations are then turned into name lists once, which
    is far cheaper on millions of rows than building a list per row.
    """
    flagged = frame.select(
        "record_kind", "record_id",
        pl.sum_horizontal([rule.condition.fill_null(False).cast(pl.Float64) * rule.points
                           for rule in RULES]).alias("rule_points"),
        rule_mask(),
    )
    return flagged.join(rule_hits_by_mask(flagged["rule_mask"]), on="rule_mask", how="left",
                        maintain_order="left") \
        .select("record_kind", "record_id", "rule_points", "rule_hits")


def render_rule_reason(rule_name: str, row: dict) -> str | None:
    """A rule's reason filled from a feature-frame row; falls back to its description."""
    rule = next((r for r in RULES if r.name == rule_name), None)
    if rule is None:
        return None
    return fill_template(rule.template, row) or rule.description
