"""The registry: every column of the feature frame, named, described and tied to the
red flag (FACTS.md "Red flags", numbered 1-11) or case typology it encodes.

`detector explain` shows these names and values to an analyst, and `reason` templates
turn a row into plain language. Context columns (model_input=False) are kept for
reasons only: names, countries, the matched list entry.
"""

from __future__ import annotations

import dataclasses
import math
import string
from dataclasses import dataclass

import polars as pl

S = ("shipment",)
L = ("lease",)
B = ("shipment", "lease")


@dataclass(frozen=True)
class Feature:
    name: str
    description: str
    red_flag: str  # which red flag / case it encodes
    kinds: tuple[str, ...]  # ("shipment",), ("lease",) or both
    model_input: bool = True  # False for context columns (names, list entry, chip model text)
    reason: str | None = None  # template with {column} placeholders using format-spec
    # When a model input is null (missing) for a record of a kind it applies to; None: never.
    # The property test (tests/test_features_property.py) holds the builder to it.
    null_when: str | None = None
    # the reason for a lease, where the shipment's wording names the wrong party
    lease_reason: str | None = None


_F = Feature
_ALL: list[Feature] = [
    # ---- context (reasons only)
    _F("chip_model", "catalogue model recognised in the description / contracted GPU model",
       "product identification", B, False),
    _F("chip_eccn", "ECCN the catalogue gives the recognised model (3A090.a, 4A090.a, ...)",
       "control status", B, False),
    _F("chip_price_low_usd", "catalogue low market price for one declared unit",
       "misdeclaration (value)", S, False),
    _F("chip_price_high_usd", "catalogue high market price for one declared unit",
       "misdeclaration (value)", S, False),
    _F("consignee_industry", "industry of the resolved consignee party", "3 line of business",
       S, False),
    _F("consignee_party", "registered party the consignee resolved to (its declared id if "
       "known, else by exact or fuzzy name and country)", "party resolution", S, False),
    _F("lessee_party", "registered party the lessee resolved to (as for the consignee)",
       "party resolution", L, False),
    _F("ultimate_parent_name", "name of the top of the ownership chain", "11 ownership", B,
       False),
    _F("ultimate_parent_country", "country of the top of the ownership chain", "11 ownership",
       B, False),
    # the exporter as a party: on an onward leg, the hub company re-exporting the goods
    _F("exporter_name", "exporter as declared", "context", S, False),
    _F("exporter_party", "registered party the exporter resolved to (exact or fuzzy name and "
       "country)", "party resolution", S, False),
    _F("exporter_age_days", "days from the exporter's incorporation to the shipment",
       "6 newly formed (onward leg)", S, False),
    _F("exporter_employees", "registered employees of the exporter", "4 stated capacity", S,
       False),
    _F("exporter_industry", "industry of the resolved exporter party", "3 line of business", S,
       False),
    _F("exporter_address_shared_by", "other registered parties at the exporter's registered "
       "address", "6 shell companies / shared addresses", S, False),
    _F("exporter_parent_name", "top of the exporter's ownership chain", "11 ownership", S,
       False),
    _F("exporter_parent_country", "country of the top of the exporter's ownership chain",
       "11 ownership", S, False),
    _F("exporter_ownership_depth", "levels from the exporter to its ultimate parent",
       "11 ownership", S, False),
    _F("exporter_parent_in_d5_or_macau", "top of the exporter's ownership chain headquartered "
       "in D:5 or Macau", "§744.23(a)(3); 11 ownership", S, False),
    _F("exporter_screening_score", "best similarity (0-100) of the exporter's name to a "
       "screening-list name or alias", "1 listed party", S, False),
    _F("exporter_screening_name", "screening-list entry closest to the exporter's name",
       "1 listed party", S, False),
    _F("exporter_screening_list", "list of that entry", "1 listed party", S, False),
    _F("screening_match_name", "screening-list entry closest to the party's name or address",
       "1 listed party", B, False),
    _F("screening_match_list", "list of that entry (Entity List, MEU, UVL, SDN...)",
       "1 listed party", B, False),
    _F("reexport_destination", "destination of the consignee's first later export to D:5/HK/MO",
       "transshipment", S, False),
    _F("consignee_country", "consignee's declared country", "context", S, False),
    _F("hs_heading", "HS-6 heading of the line (digits)", "context", S, False),
    _F("destination_country", "declared country of ultimate destination", "context", S, False),
    _F("payer_country", "country of the payer", "context", B, False),
    _F("payment_method", "payment method as declared", "context", S, False),
    _F("lessee_country", "lessee's declared country", "context", L, False),
    _F("datacenter_country", "where the leased hardware runs", "context", L, False),
    _F("transit_countries", "countries passed through, in order", "context", S, False),
    _F("exporter_country", "country the goods left (a hub's code for a re-export)", "context",
       S, False),
    _F("counterparty_name", "consignee (shipment) or lessee (lease) as declared", "context", B,
       False),
    _F("goods", "commodity description as filed (shipment) or GPU model as contracted (lease)",
       "context", B, False),
    _F("declared_quantity", "units declared on the line (shipment) or GPUs leased (lease)",
       "context", B, False),
    _F("reexported_units_90d", "units the consignee re-exported to D:5/HK/MO within 90 days",
       "transshipment", S, False),
    # ---- product and control
    _F("chip_units", "GPUs on the line (servers count their GPUs) or GPUs leased",
       "scale", B),
    _F("chip_tpp", "total processing performance of one GPU of the recognised model",
       "control parameter (3A090)", B),
    _F("total_tpp", "TPP of one GPU times the GPUs on the record", "scale", B),
    _F("chip_controlled", "recognised model is a 3A090/4A090 item", "control status", B,
       reason="{chip_model} is a controlled item ({chip_eccn})"),
    _F("licence_required_for_item", "the item needs a licence to this destination on this date",
       "licence requirement (§744.23, Apr 2025 H20/MI308 rule)", S,
       reason="{chip_model} needs a licence to {destination_country}"),
    _F("controlled_declared_low_eccn", "controlled model declared EAR99, 5A992 or similar",
       "misdeclaration (classification)", S,
       reason="{chip_model} ({chip_eccn}) declared under a lower ECCN"),
    _F("misdeclared_to_licence_destination",
       "item needing a licence declared EAR99/5A992 or 'no licence required'",
       "misdeclaration (classification)", S,
       reason="{chip_model} declared uncontrolled / no licence required to {destination_country}"),
    _F("no_licence_for_licence_destination",
       "item needing a licence shipped without licence_type 'license'", "licence requirement",
       S, reason="no licence stated for {chip_model} to {destination_country}"),
    _F("parts_hs_for_gpu_priced_item", "HS 8473.30 'parts' for a controlled or GPU-priced line",
       "misdeclaration (HS code)", S,
       reason="GPU-priced line (${unit_value_usd:,.0f} per unit) declared as parts under 8473.30"),
    _F("hs_code_typical_for_gpus", "HS code is one GPUs and servers are filed under",
       "product identification", S),
    _F("unit_value_usd", "declared value per declared unit", "5 value", S),
    _F("unit_value_to_market_low", "unit value divided by the catalogue's low market price",
       "misdeclaration (value) / 5 paying above market", S,
       reason="declared ${unit_value_usd:,.0f} per unit; {chip_model} market range "
              "${chip_price_low_usd:,.0f}–{chip_price_high_usd:,.0f}"),
    _F("unit_value_to_learned_median", "unit value divided by the training median for the model",
       "misdeclaration (value)", S,
       reason="declared value is {unit_value_to_learned_median:.0%} of the usual for {chip_model}"),
    _F("weight_per_unit_kg", "gross weight per declared unit", "dummy servers / misdeclaration",
       S),
    _F("weight_to_catalogue", "weight per unit divided by the catalogue weight",
       "dummy servers / misdeclaration", S,
       reason="weight per unit {weight_per_unit_kg:,.1f} kg is {weight_to_catalogue:.0%} of a "
              "{chip_model}"),
    _F("vague_description", "no model recognised but GPU-ish or 'parts/adapters' wording or "
       "GPU HS code", "misdeclaration (description); 2 vague", S,
       reason="vague description: no chip model named"),
    _F("end_use_vague_or_missing", "declared end use missing or boilerplate", "2 vague end use",
       S, reason="end use not stated"),
    _F("value_usd", "declared line value / total contract value", "scale", B),
    _F("chip_model_code", "catalogue row of the recognised model (-1 none)", "product", B),
    # ---- parties
    _F("consignee_resolved", "consignee matched to a registered party (id, name or fuzzy)",
       "6 no business history", S),
    _F("consignee_resolution_score", "name match score of that resolution (100 exact/id)",
       "6 no business history", S),
    _F("consignee_age_days", "days from the consignee's incorporation to the shipment",
       "6 newly formed", S,
       reason="consignee incorporated {consignee_age_days:,.0f|day} before the shipment"),
    _F("consignee_employees", "registered employees of the consignee", "4 stated capacity", S,
       reason="consignee has {consignee_employees:,.0f|employee}"),
    _F("consignee_industry_misfit", "consignee's industry (logistics, trading, other) does not "
       "buy data-centre chips in the ordinary course", "3 line of business", S,
       reason="consignee's line of business ({consignee_industry}) does not fit the goods"),
    _F("consignee_industry_code", "industry as a code (contract enum order; -1 unknown)",
       "3 line of business", S),
    _F("consignee_address_shared_by", "other registered parties at the consignee's address",
       "6 shell companies / shared addresses", S,
       reason="{consignee_address_shared_by:,.0f|other company|other companies} registered at "
              "the consignee's address"),
    _F("lessee_resolved", "lessee matched to a registered party", "6 no business history", L),
    _F("lessee_resolution_score", "name match score of that resolution", "6", L),
    _F("lessee_age_days", "days from the lessee's incorporation to the lease start",
       "6 newly formed", L,
       reason="lessee incorporated {lessee_age_days:,.0f|day} before the lease"),
    _F("lessee_employees", "registered employees of the lessee", "10 capacity beyond size", L),
    _F("ownership_depth", "levels from the party to its ultimate parent", "11 ownership chains",
       B),
    _F("ultimate_parent_in_d5_or_macau", "ultimate parent headquartered in D:5 or Macau",
       "§744.23(a)(3); 10/11 ownership", B,
       reason="ultimately owned by {ultimate_parent_name} ({ultimate_parent_country})"),
    _F("screening_match_score", "best token-sort similarity (0-100) of name or address to a "
       "screening-list entry", "1 listed party", B,
       reason="resembles {screening_match_list} entry '{screening_match_name}' "
              "({screening_match_score:.0f}/100)"),
    _F("screening_name_score", "best similarity of the name to a list name or alias",
       "1 listed party", B),
    _F("screening_address_score", "best similarity of the address to a list address",
       "1 listed party", S),
    # ---- route and terms
    _F("destination_licence_required", "destination needs a licence for 3A090/4A090 items",
       "8 route", S),
    _F("destination_d5_or_macau", "destination in D:5 or Macau", "8 route", S,
       reason="destination {destination_country} is in D:5 / Macau"),
    _F("destination_is_hub", "destination is a diversion hub named in cases", "8 route", S,
       reason="destination {destination_country} is a known diversion hub"),
    _F("destination_unconfirmed_hub", "destination is a hub reported by press only", "8 route",
       S),
    _F("consignee_destination_mismatch", "consignee country differs from the destination",
       "8 route", S),
    _F("transit_via_hk_or_mo", "goods pass through Hong Kong or Macau", "8 route", S,
       reason="routed through {transit_countries}"),
    _F("transit_country_count", "number of transit countries", "8 route", S),
    _F("intermediate_consignee_present", "an intermediate consignee is declared", "8 route", S),
    _F("consignee_is_logistics", "consignee is a forwarder / logistics company (industry or "
       "name)", "7 forwarder as consignee", S, reason="consignee is a logistics company"),
    _F("routed_export", "the foreign party controls the export", "8 route / 7", S),
    _F("incoterm_exw", "ex works: the buyer collects at the exporter's door", "8 route / 7", S),
    _F("destination_country_code", "destination (shipment) or data-centre (lease) country code",
       "route", B),
    _F("consignee_country_code", "consignee country code", "route", S),
    # ---- money
    _F("payer_country_mismatch", "payer country differs from the consignee's / lessee's",
       "5 third-country payment", B,
       reason="paid from {payer_country} for a party in another country"),
    _F("payer_in_d5_hk_or_mo", "payer in D:5, Hong Kong or Macau", "5 HK/CN payer", B,
       reason="paid from {payer_country}"),
    _F("unusual_payment_method", "payment by cash, crypto or a third party", "5 unusual payment",
       S, reason="paid by {payment_method}"),
    _F("payer_is_other_party", "payer is named and is not the consignee", "5 third-party payment",
       S),
    _F("payment_method_code", "payment method as a code (contract enum order)", "5", S),
    _F("payer_country_code", "payer country code", "5", B),
    # ---- behaviour (backward only)
    _F("consignee_prior_shipments", "shipments to the consignee dated before this one",
       "6 first-time buyer", S),
    _F("first_shipment_to_consignee", "no earlier shipment to this consignee",
       "6 first-time buyer", S, reason="first shipment to this consignee"),
    _F("days_since_first_shipment", "days since the consignee's first shipment (null if first)",
       "6 business history", S),
    _F("consignee_shipments_30d", "other shipments to the consignee in the 30 days up to this "
       "date", "volume burst", S),
    _F("consignee_value_30d_usd", "their value", "volume burst", S),
    _F("consignee_shipments_90d", "other shipments to the consignee in the 90 days up to this "
       "date", "volume burst", S),
    _F("consignee_value_90d_usd", "their value", "volume burst", S),
    _F("value_to_consignee_history_mean", "this line's value over the mean of the consignee's "
       "earlier lines", "jump against own history", S,
       reason="value {value_to_consignee_history_mean:,.1f}× the consignee's usual"),
    _F("linked_small_shipments_14d", "sub-threshold GPU lines to the consignee or linked "
       "consignees (same owner or address) in 14 days", "splitting", S,
       reason="{linked_small_shipments_14d:,.0f|small GPU shipment} to linked consignees in 14 "
              "days (${linked_small_value_14d_usd:,.0f})"),
    _F("linked_small_value_14d_usd", "their total value", "splitting", S),
    # ---- learned from the data itself (features.learned; any export, not only chips)
    _F("unit_value_per_kg_usd", "declared value per kg of gross weight", "misdeclaration (value)",
       S),
    _F("unit_value_per_kg_to_peer_median", "value per kg over the training median of its HS-6 "
       "peers (else HS-4, HS-2)", "misdeclaration (value)", S,
       reason="declared value per kg is {unit_value_per_kg_to_peer_median:.0%} of the usual "
              "for HS {hs_heading}"),
    _F("unit_value_per_kg_peer_z", "log value per kg minus the peers' median, over their "
       "interquartile range", "misdeclaration (value)", S),
    _F("unit_value_per_unit_usd", "declared value per declared unit (any goods)",
       "misdeclaration (value)", S),
    _F("unit_value_per_unit_to_peer_median", "value per unit over the training median of its "
       "HS-6 peers (else HS-4, HS-2)", "misdeclaration (value)", S,
       reason="declared value per unit is {unit_value_per_unit_to_peer_median:.0%} of the "
              "usual for HS {hs_heading}"),
    _F("unit_value_per_unit_peer_z", "log value per unit minus the peers' median, over their "
       "interquartile range", "misdeclaration (value)", S),
    _F("unit_value_peer_hs_digits", "HS digits of the peer group used (6, 4 or 2)",
       "misdeclaration (value)", S),
    _F("unit_value_per_kg_to_exporter_history", "log value per kg minus the mean of the "
       "exporter's earlier lines", "jump against own history", S),
    _F("unit_value_per_kg_to_consignee_history", "log value per kg minus the mean of the "
       "consignee's earlier lines", "jump against own history", S),
    _F("first_exporter_consignee_pair", "no earlier line from this exporter to this consignee",
       "6 new relationship", S, reason="first shipment from this exporter to this consignee"),
    _F("first_hs4_for_consignee", "no earlier line of this HS-4 heading to this consignee",
       "3 goods outside the line of business", S,
       reason="first HS {hs_heading} goods to this consignee"),
    _F("first_origin_for_hs6", "no earlier line of this HS-6 from this exporter country",
       "8 unusual route", S, reason="first HS {hs_heading} from {exporter_country}"),
    _F("first_forwarder_for_consignee", "no earlier line to this consignee through this "
       "forwarder", "7 forwarder", S),
    # ---- case memory (features.case_memory; the one family that reads labels)
    # a lease's: its lessee as consignee, its provider as exporter, data-centre country →
    # lessee country as route; shipments and leases of one party count together
    *[_F(f"{e}_{what}", f"{text} about records of the same {who}, decided before this "
         "record's date", "case memory", kinds)
      for e, who, kinds in (
          ("consignee", "consignee (a lease: lessee)", B),
          ("exporter", "exporter (a lease: provider)", B),
          ("forwarder", "forwarder", S),
          ("linked", "owner group or registered address (linked parties)", B),
          ("hs4", "HS-4 heading", S),
          ("route", "route (exporter country → destination; a lease: data-centre country → "
                    "lessee country)", B))
      for what, text in (("confirmed_before", "confirmed diversions"),
                         ("cleared_before", "cleared reviews"),
                         ("confirmed_rate", "smoothed confirmed rate of the decisions"))],
    _F("consignee_confirmed_12m", "confirmed diversions of the consignee (a lease: lessee) "
       "decided in the 365 days before this record", "case memory", B,
       reason="consignee had {consignee_confirmed_12m:,.0f|confirmed diversion} in the "
              "previous 12 months",
       lease_reason="lessee had {consignee_confirmed_12m:,.0f|confirmed diversion} in the "
                    "previous 12 months"),
    _F("exporter_confirmed_12m", "confirmed diversions of the exporter (a lease: provider) "
       "decided in the 365 days before this record", "case memory", B,
       reason="exporter had {exporter_confirmed_12m:,.0f|confirmed diversion} in the "
              "previous 12 months",
       lease_reason="provider had {exporter_confirmed_12m:,.0f|confirmed diversion} in the "
                    "previous 12 months"),
    # ---- re-export (retrospective, looks forward)
    _F("later_reexported_to_d5_hk_mo", "consignee later exports controlled goods to D:5/HK/MO",
       "transshipment", S,
       reason="consignee re-exported GPUs to {reexport_destination} "
              "{days_until_reexport:,.0f|day} later"),
    _F("days_until_reexport", "days from this shipment to that re-export", "transshipment", S),
    _F("reexported_unit_share_90d", "units re-exported within 90 days over units received",
       "transshipment", S,
       reason="{reexported_unit_share_90d:.0%} of the units re-exported within 90 days"),
    # ---- leases
    _F("bare_metal_access", "bare-metal access to the GPUs", "10 cloud access", L,
       reason="bare-metal access"),
    _F("datacenter_in_hub", "data centre in a diversion hub", "10 cloud / rented compute", L,
       reason="data centre in {datacenter_country}"),
    _F("lessee_in_d5_or_macau", "lessee's declared country is D:5 or Macau", "10 cloud", L,
       reason="lessee in {lessee_country}"),
    _F("lessee_abroad_from_datacenter", "lessee country differs from the data centre's",
       "10 remote access", L),
    _F("price_per_gpu_month_usd", "contract value per GPU per month", "5 value", L),
    _F("lease_price_to_market", "price per GPU-month over the market (learned median, else "
       "catalogue price / 36 months)", "5 paying above market", L,
       reason="pays {lease_price_to_market:.1f}× the market rate per GPU-month"),
    _F("gpus_per_lessee_employee", "GPUs leased per lessee employee", "10 capacity beyond size",
       L, reason="{chip_units:,.0f} GPUs for a lessee of {lessee_employees:,.0f|employee}"),
]

_NO_MODEL = "no catalogue chip model recognised"
_OVERFLOW = "a declared value is missing or the sum overflows (values near the float limit)"
# When each model input may be null for a record of its kind (Feature.null_when).
_NULL_WHEN: dict[str, str] = {
    "chip_units": "no chip model recognised, or quantity / gpu_count missing or not positive",
    "chip_tpp": _NO_MODEL,
    "total_tpp": "no chip model recognised, or no chip_units",
    "chip_controlled": _NO_MODEL,
    "licence_required_for_item": _NO_MODEL,
    "controlled_declared_low_eccn": _NO_MODEL,
    "misdeclared_to_licence_destination": _NO_MODEL,
    "no_licence_for_licence_destination": _NO_MODEL,
    "unit_value_usd": "value missing, or quantity missing or not positive",
    "unit_value_to_market_low": "no chip model recognised, or no unit value",
    "unit_value_to_learned_median": "no learned median for the chip model, or no unit value",
    "weight_per_unit_kg": "weight missing or negative, or quantity missing or not positive",
    "weight_to_catalogue": "no chip model recognised, or no weight per unit",
    "value_usd": "value not declared (optional for leases)",
    "consignee_resolution_score": "consignee not matched to a registered party",
    "consignee_age_days": "consignee unresolved or its incorporation date unknown",
    "consignee_employees": "consignee unresolved or its employee count unknown",
    "consignee_industry_misfit": "consignee unresolved, or its industry neither fits nor misfits",
    "lessee_resolution_score": "lessee not matched to a registered party",
    "lessee_age_days": "lessee unresolved or its incorporation date unknown",
    "lessee_employees": "lessee unresolved or its employee count unknown",
    "ownership_depth": "party unresolved",
    "ultimate_parent_in_d5_or_macau": "party unresolved",
    "screening_match_score": "no screening list, or no entry to compare with",
    "screening_name_score": "no screening list, or no entry to compare with",
    "screening_address_score": "no address or no list addresses",
    "routed_export": "not declared",
    "incoterm_exw": "incoterm not declared",
    "transit_via_hk_or_mo": "transit countries not declared",
    "transit_country_count": "transit countries not declared",
    "destination_licence_required": "destination not declared",
    "payer_country_mismatch": "payer country not declared",
    "payer_in_d5_hk_or_mo": "payer country not declared",
    "unusual_payment_method": "payment method not declared",
    "bare_metal_access": "access type not declared",
    "lessee_abroad_from_datacenter": "a country not declared",
    "consignee_value_30d_usd": _OVERFLOW,
    "consignee_value_90d_usd": _OVERFLOW,
    "linked_small_value_14d_usd": _OVERFLOW,
    "days_since_first_shipment": "first shipment to the consignee",
    "value_to_consignee_history_mean": "first shipment, or the earlier lines' total value is "
                                       "zero, negative or missing",
    "days_until_reexport": "no later re-export by the consignee",
    "reexported_unit_share_90d": "no chip units on the line",
    "price_per_gpu_month_usd": "value, gpu_count or term missing or not positive",
    "lease_price_to_market": "no price per GPU-month, or no reference price for the model",
    "gpus_per_lessee_employee": "gpu_count missing, or lessee employee count unknown",
    "unit_value_per_kg_usd": "value or weight missing, zero or negative",
    "unit_value_per_kg_to_peer_median": "no value per kg, or no learned peers for the HS code",
    "unit_value_per_kg_peer_z": "no value per kg, or no learned peers for the HS code",
    "unit_value_per_unit_usd": "value or quantity missing, zero or negative",
    "unit_value_per_unit_to_peer_median": "no value per unit, or no learned peers for the HS "
                                          "code",
    "unit_value_per_unit_peer_z": "no value per unit, or no learned peers for the HS code",
    "unit_value_peer_hs_digits": "no learned peers for the HS code",
    "unit_value_per_kg_to_exporter_history": "no value per kg, or no earlier priced line of "
                                             "the exporter",
    "unit_value_per_kg_to_consignee_history": "no value per kg, or no earlier priced line of "
                                              "the consignee",
    "first_hs4_for_consignee": "no HS-4 heading",
    "first_origin_for_hs6": "no HS-6 heading",
    "first_forwarder_for_consignee": "no forwarder declared",
    **{f"{e}_confirmed_rate": "no decisions known at all (no labels and no model)"
       for e in ("consignee", "exporter", "forwarder", "linked", "hs4", "route")},
}
_ALL = [dataclasses.replace(f, null_when=_NULL_WHEN.get(f.name, f.null_when)) for f in _ALL]
if set(_NULL_WHEN) - {f.name for f in _ALL}:
    raise RuntimeError(f"features.registry: null_when for unknown features "
                       f"{sorted(set(_NULL_WHEN) - {f.name for f in _ALL})}")

FEATURES: dict[str, Feature] = {f.name: f for f in _ALL}
if len(FEATURES) != len(_ALL):  # a repeated name would silently drop a feature
    raise RuntimeError("features.registry: duplicate feature names")

# Columns of the feature frame that only rules read (features/rules.py), after the
# features: computed with the reference data (`features.refview`), they are neither model
# inputs nor a record's context, so neither the model, explain nor the reasons see them.
RULE_INPUTS: dict[str, str] = {
    "payer_in_china_sphere": "payer in China, Hong Kong or Macau (the reference's China, "
                             "TREATED_AS_CN and MACAU: `features.refview.china_sphere`)",
}
if set(RULE_INPUTS) & set(FEATURES):
    raise RuntimeError("features.registry: a rule input is also a feature")


# Feature families a training config can leave out (`[inputs] without = [...]`), e.g. for
# an ablation. The configured inputs (`[inputs] categorical/numeric`) are their own.
FAMILIES: dict[str, list[str]] = {
    "unit_value": [f.name for f in _ALL if f.name.startswith("unit_value_per_")
                   or f.name == "unit_value_peer_hs_digits"],
    "novelty": ["first_exporter_consignee_pair", "first_hs4_for_consignee",
                "first_origin_for_hs6", "first_forwarder_for_consignee"],
    "case_memory": [f.name for f in _ALL if f.red_flag == "case memory"],
    # counts and values that grow with the length of the record (a consignee's earlier
    # shipments, its 30/90-day windows, its history mean)
    "behaviour": ["consignee_prior_shipments", "first_shipment_to_consignee",
                  "days_since_first_shipment", "consignee_shipments_30d",
                  "consignee_value_30d_usd", "consignee_shipments_90d",
                  "consignee_value_90d_usd", "value_to_consignee_history_mean"],
}


def unsupervised_feature_names(features: list[str]) -> list[str]:
    """The inputs of the unsupervised layer: ``features`` less the case memory. Earlier
    decisions are no property of the record, and their counts grow with the store, so
    the detectors would call every later record unusual."""
    memory = set(FAMILIES["case_memory"])
    return [f for f in features if f not in memory]


def model_feature_names(without: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Numeric / boolean model inputs, in registry order (less the families ``without``)."""
    unknown = [f for f in without if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown feature families {unknown}; expected some of "
                         f"{sorted(FAMILIES)}")
    left_out = {n for f in without for n in FAMILIES[f]}
    return [f.name for f in _ALL if f.model_input and f.name not in left_out]


def _placeholders(template: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def render_reason(feature_name: str, row: dict) -> str | None:
    """The feature's reason filled from ``row``; None without a template or a needed value."""
    feature = FEATURES.get(feature_name)
    if feature is None or feature.reason is None:
        return None
    if row.get("record_kind") == "lease" and feature.lease_reason:
        return fill_template(feature.lease_reason, row)
    return fill_template(feature.reason, row)


def counted(count: float, noun: str, plural: str | None = None, spec: str = ",.0f") -> str:
    """``count`` formatted by ``spec``, then ``noun`` in the number it reads as: "1
    employee", "3 employees", "0 days" (``plural``: irregular forms, "companies")."""
    shown = format(count, spec)
    one = shown.lstrip("+").replace(",", "") in ("1", "1.0")
    return f"{shown} {noun if one else plural or noun + 's'}"


class _Formatter(string.Formatter):
    """str.format plus a counted noun: ``{n:,.0f|employee}`` gives "1 employee" or "3
    employees"; ``{n:,.0f|other company|other companies}`` an irregular plural."""

    def format_field(self, value, format_spec: str) -> str:
        if "|" not in format_spec:
            return super().format_field(value, format_spec)
        spec, noun, *plural = format_spec.split("|")
        return counted(value, noun, plural[0] if plural else None, spec)


_FORMATTER = _Formatter()


def fill_template(template: str, row: dict) -> str | None:
    values = {}
    for name in _placeholders(template):
        value = row.get(name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        values[name] = value
    try:
        return _FORMATTER.format(template, **values)
    except (ValueError, TypeError):  # a format spec that does not fit the value's type
        return None


# When a numeric feature's value is itself a red flag worth stating; the rules
# (features/rules.py) test the same thresholds. A reason built from
# a model contribution names a feature only when its value passes this test (booleans:
# when true), so a large contribution from an ordinary value ("incorporated 3,400 days
# before") never reads as an accusation.
_c = pl.col
FLAGGED_WHEN: dict[str, pl.Expr] = {
    "unit_value_to_market_low": _c("unit_value_to_market_low") < 0.5,
    "unit_value_to_learned_median": _c("unit_value_to_learned_median") < 0.5,
    "weight_to_catalogue": (_c("weight_to_catalogue") < 0.5) | (_c("weight_to_catalogue") > 2),
    "consignee_age_days": _c("consignee_age_days") < 365,
    "lessee_age_days": _c("lessee_age_days") < 365,
    "consignee_employees": _c("consignee_employees") < 10,
    "consignee_address_shared_by": _c("consignee_address_shared_by") >= 3,
    "screening_match_score": _c("screening_match_score") >= 80,
    "value_to_consignee_history_mean": _c("value_to_consignee_history_mean") >= 3,
    "unit_value_per_kg_to_peer_median": (_c("unit_value_per_kg_to_peer_median") < 0.25)
    | (_c("unit_value_per_kg_to_peer_median") > 4),
    "unit_value_per_unit_to_peer_median": (_c("unit_value_per_unit_to_peer_median") < 0.25)
    | (_c("unit_value_per_unit_to_peer_median") > 4),
    "consignee_confirmed_12m": _c("consignee_confirmed_12m") >= 1,
    "exporter_confirmed_12m": _c("exporter_confirmed_12m") >= 1,

    "linked_small_shipments_14d": _c("linked_small_shipments_14d") >= 3,
    "reexported_unit_share_90d": _c("reexported_unit_share_90d") > 0,
    "lease_price_to_market": (_c("lease_price_to_market") > 1.5)
    | (_c("lease_price_to_market") < 0.5),
    "gpus_per_lessee_employee": _c("gpus_per_lessee_employee") > 10,
}


def flag_expression(name: str, dtype: pl.DataType) -> pl.Expr | None:
    """Whether ``name``'s value is a red flag in a row (None: never stated on its own)."""
    if name in FLAGGED_WHEN:
        return FLAGGED_WHEN[name].fill_null(False)
    if dtype == pl.Boolean:
        return pl.col(name).fill_null(False)
    return None
