"""The mechanism of each scheme, stated with the record's values.

The first reason of a record names how its likely scheme works, in the record's own
figures ("consignee re-exported 8 H100 SXM to HK 26 days later", "5 small shipments of
H100 SXM to linked consignees within 14 days, each under $50,000 ($212,400 in all)").
Each function takes a feature-frame row (a dict) and returns (text, facts stated) or
None when the record carries no signal of that mechanism; the facts are
detector.reasons fact keys, so later reasons do not restate them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

from features.behaviour import SPLITTING_WINDOW_DAYS
from features.parties import INDUSTRIES_THAT_DO_NOT_FIT
from features.registry import counted
from features.stats import DEFAULT_SMALL_SHIPMENT_VALUE_USD

Mechanism = tuple[str, set[str]]


def _num(row: dict, name: str) -> float | None:
    value = row.get(name)
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _true(row: dict, name: str) -> bool:
    return row.get(name) is True


def _goods(row: dict) -> str:
    return row.get("chip_model") or "GPUs"


def _transit(row: dict) -> str:
    transit = row.get("transit_countries") or []
    return ", ".join(transit) if isinstance(transit, list) else str(transit)


@cache
def restricted() -> tuple[str, ...]:
    """China, Hong Kong and Macau, as the reference data gives them
    (`features.refview.china_sphere`: CN, TREATED_AS_CN and MACAU)."""
    from detector.reference import load_reference
    from features.refview import china_sphere

    return china_sphere(load_reference())


def onward_leg(row: dict) -> bool:
    """A hub company exporting the goods on to China, Hong Kong or Macau: the exporter is
    the party whose profile tells the scheme (it received them on an earlier leg)."""
    exporter = row.get("exporter_country")
    return bool(exporter) and exporter != "US" and row.get("destination_country") in restricted()


def transshipment(row: dict) -> Mechanism | None:
    exporter = row.get("exporter_country")
    if exporter and exporter != "US" and row.get("destination_country") in restricted():
        return (f"re-export of {_goods(row)} from {exporter} to "
                f"{row.get('counterparty_name') or 'a consignee'} in "
                f"{row['destination_country']}", {"reexport_leg"})
    days = _num(row, "days_until_reexport")
    if _true(row, "later_reexported_to_d5_hk_mo") and days is not None:
        units = _num(row, "reexported_units_90d")
        what = (f"{units:,.0f} {_goods(row)}" if units and days <= 90
                else _goods(row) if row.get("chip_model") else "GPUs")
        return (f"consignee re-exported {what} to {row.get('reexport_destination')} "
                f"{counted(days, 'day')} later", {"reexport"})
    if _true(row, "transit_via_hk_or_mo"):
        return (f"{_goods(row)} routed through {_transit(row)} on the way to "
                f"{row.get('destination_country')}", {"route"})
    if _true(row, "consignee_is_logistics") and _true(row, "chip_controlled"):
        return (f"{_goods(row)} consigned to a logistics company in "
                f"{row.get('consignee_country')}", {"logistics"})
    if _true(row, "destination_is_hub") and _true(row, "chip_controlled"):
        return (f"controlled {_goods(row)} to {row.get('destination_country')}, a known "
                "diversion hub", {"hub"})
    return None


# A company under two years old is "newly formed" for know-your-customer checks (BIS red
# flag 6); the reason states its age, so the reader weighs it.
NEWLY_FORMED_DAYS = 730


def shell_company(row: dict) -> Mechanism | None:
    """The profile of a shell or front company (BIS red flags 3, 5, 6): newly formed, a
    handful of employees, an address shared with other companies, a line of business that
    does not buy such chips; with no trade history and a third-party payer added when
    they hold. Needs one profile flag: history and payer alone describe many buyers."""
    if row.get("record_kind") != "lease" and onward_leg(row):
        found = _shell_exporter(row)
        if found is not None:
            return found
    who = "lessee" if row.get("record_kind") == "lease" else "consignee"
    parts, facts = [], set()
    age = _num(row, f"{who}_age_days")
    if age is not None and 0 <= age < NEWLY_FORMED_DAYS:
        parts.append(f"incorporated {counted(age, 'day')} before the "
                     f"{'lease' if who == 'lessee' else 'shipment'}")
        facts.add("age" if who == "consignee" else "lessee_age")
    employees = _num(row, f"{who}_employees")
    if employees is not None and employees < 10:
        parts.append(counted(employees, "employee"))
        facts.add("employees")
    shared = _num(row, "consignee_address_shared_by")
    if who == "consignee" and shared is not None and shared >= 2:
        parts.append(f"{counted(shared, 'other company', 'other companies')} at its address")
        facts.add("address")
    if _true(row, f"{who}_industry_misfit") or (
            who == "consignee" and _true(row, "consignee_industry_misfit")):
        parts.append(f"line of business {row.get('consignee_industry')}")
        facts.add("industry")
    if not parts:
        return None
    if who == "consignee" and _true(row, "first_shipment_to_consignee"):
        parts.append("no earlier shipments to it")
        facts.add("first")
    if _true(row, "payer_is_other_party"):
        payer = row.get("payer_country")
        parts.append("paid by another party" + (f" in {payer}" if payer else ""))
        facts.add("payer")
    return f"shell-like {who}: " + ", ".join(parts), facts


def _shell_exporter(row: dict) -> Mechanism | None:
    """The shell profile of the company re-exporting the goods (an onward leg)."""
    parts = []
    age = _num(row, "exporter_age_days")
    if age is not None and 0 <= age < NEWLY_FORMED_DAYS:
        parts.append(f"incorporated {counted(age, 'day')} before the shipment")
    employees = _num(row, "exporter_employees")
    if employees is not None and employees < 10:
        parts.append(counted(employees, "employee"))
    shared = _num(row, "exporter_address_shared_by")
    if shared is not None and shared >= 2:
        parts.append(f"{counted(shared, 'other company', 'other companies')} at its address")
    if row.get("exporter_industry") in INDUSTRIES_THAT_DO_NOT_FIT:
        parts.append(f"line of business {row['exporter_industry']}")
    if not parts:
        return None
    return "shell-like exporter re-exporting the goods: " + ", ".join(parts), {"exporter"}


def restricted_parent(row: dict) -> Mechanism | None:
    """A parent up the ownership chain headquartered in D:5 or Macau (§744.23(a)(3)), or in
    Hong Kong, which the EAR treats as China; never the consignee itself."""
    depth = _num(row, "ownership_depth")
    country = row.get("ultimate_parent_country")
    if row.get("ultimate_parent_name") and depth and depth >= 1 and (
            _true(row, "ultimate_parent_in_d5_or_macau") or country in restricted()):
        levels = f", {depth:,.0f} level{'s' if depth != 1 else ''} up"
        return (f"ultimately owned by {row['ultimate_parent_name']} ({country}){levels}",
                {"ownership"})
    depth = _num(row, "exporter_ownership_depth")
    country = row.get("exporter_parent_country")
    if (onward_leg(row) and row.get("exporter_parent_name") and depth and depth >= 1
            and (_true(row, "exporter_parent_in_d5_or_macau") or country in restricted())):
        levels = f", {depth:,.0f} level{'s' if depth != 1 else ''} up"
        return (f"exporter re-exporting the goods is ultimately owned by "
                f"{row['exporter_parent_name']} ({country}){levels}", {"exporter_ownership"})
    return None


def cloud_lease(row: dict) -> Mechanism | None:
    if row.get("record_kind") != "lease":
        return None
    units = _num(row, "chip_units")
    access = "bare-metal " if _true(row, "bare_metal_access") else ""
    text = (f"{units:,.0f} " if units else "") + f"{_goods(row)} leased {access}in a " \
        f"{row.get('datacenter_country')} data centre"
    facts = {"bare_metal"} if access else set()
    if _true(row, "lessee_in_d5_or_macau"):
        text += f" by a lessee in {row.get('lessee_country')}"
        facts.add("lessee_country")
    elif _true(row, "ultimate_parent_in_d5_or_macau") and row.get("ultimate_parent_name"):
        text += (f" by a lessee owned by {row['ultimate_parent_name']} "
                 f"({row.get('ultimate_parent_country')})")
        facts.add("ownership")
    elif _true(row, "payer_in_d5_hk_or_mo"):
        text += f", paid from {row.get('payer_country')}"
        facts.add("payer")
    else:
        return None if not access else (text, facts)
    per_employee = _num(row, "gpus_per_lessee_employee")
    if per_employee is not None and per_employee >= 10:
        text += f" ({per_employee:,.0f} GPUs per employee)"
        facts.add("capacity")
    return text, facts


def misdeclaration(row: dict) -> Mechanism | None:
    unit = _num(row, "unit_value_usd")
    described = row.get("goods")
    if _true(row, "parts_hs_for_gpu_priced_item") and unit is not None:
        return (f"GPU-priced line (${unit:,.0f} per unit) declared as parts under 8473.30"
                + (f" as '{described}'" if described else ""), {"parts"})
    if _true(row, "misdeclared_to_licence_destination") and row.get("chip_model"):
        return (f"{row['chip_model']} declared uncontrolled / no licence required to "
                f"{row.get('destination_country')}", {"licence"})
    if _true(row, "controlled_declared_low_eccn") and row.get("chip_model"):
        return (f"{row['chip_model']} ({row.get('chip_eccn')}) declared under a lower ECCN",
                {"low_eccn"})
    ratio = _num(row, "unit_value_to_market_low")
    low, high = _num(row, "chip_price_low_usd"), _num(row, "chip_price_high_usd")
    if ratio is not None and ratio < 0.5 and unit is not None and low and high:
        return (f"{row.get('chip_model')} declared at ${unit:,.0f} per unit against a market "
                f"range of ${low:,.0f}–{high:,.0f}", {"value"})
    if _true(row, "vague_description") and unit is not None and unit >= 1000:
        return (f"vague description '{described}' for ${unit:,.0f} per unit", {"vague"})
    weight = _num(row, "weight_to_catalogue")
    if weight is not None and (weight < 0.5 or weight > 2) and row.get("chip_model"):
        return (f"weight per unit {_num(row, 'weight_per_unit_kg') or 0:,.1f} kg is "
                f"{weight:.0%} of a {row['chip_model']}", {"weight"})
    return None


def splitting(row: dict) -> Mechanism | None:
    count = _num(row, "linked_small_shipments_14d")
    if count is None or count < 3:
        return None
    total = _num(row, "linked_small_value_14d_usd")
    return (f"{counted(count, 'small shipment')} of {_goods(row)} to linked consignees within "
            f"{SPLITTING_WINDOW_DAYS} days, each under ${DEFAULT_SMALL_SHIPMENT_VALUE_USD:,.0f}"
            + (f" (${total:,.0f} in all)" if total else ""), {"splitting"})


# A near miss: an altered spelling or added words ("Kestrel Trading Trading Limited" for
# "Kestrel Trading Ltd." scores 79) sits below the registry's red-flag mark of 80; the
# reason states the score and both names, so the reader judges the resemblance.
NEAR_MISS_SCORE = 75


def screening_evasion(row: dict) -> Mechanism | None:
    exporter = _num(row, "exporter_screening_score")
    if (onward_leg(row) and exporter is not None and exporter >= NEAR_MISS_SCORE
            and row.get("exporter_screening_name")
            and exporter >= (_num(row, "screening_match_score") or 0)):
        listed = (f"{row.get('exporter_screening_list') or 'screening-list'} entry "
                  f"'{row['exporter_screening_name']}'")
        return (f"exporter re-exporting the goods, '{row.get('exporter_name') or 'its name'}', "
                f"resembles {listed} ({exporter:.0f}/100)", {"exporter_screening"})
    score = _num(row, "screening_match_score")
    entry = row.get("screening_match_name")
    if score is None or score < NEAR_MISS_SCORE or not entry:
        return None
    listed = f"{row.get('screening_match_list') or 'screening-list'} entry '{entry}'"
    name, address = _num(row, "screening_name_score"), _num(row, "screening_address_score")
    if address is not None and address >= score and (name is None or address > name):
        return f"address resembles that of {listed} ({score:.0f}/100)", {"screening"}
    party = row.get("counterparty_name")
    return ((f"name '{party}' resembles {listed}" if party else f"name resembles {listed}")
            + f" ({score:.0f}/100)", {"screening"})


MECHANISMS: dict[str, Callable[[dict], Mechanism | None]] = {
    "transshipment": transshipment,
    "shell_company": shell_company,
    "restricted_parent": restricted_parent,
    "cloud_lease": cloud_lease,
    "misdeclaration": misdeclaration,
    "splitting": splitting,
    "screening_evasion": screening_evasion,
}


def mechanism(scheme: str | None, row: dict) -> Mechanism | None:
    """The mechanism of ``scheme`` in ``row``'s values; None for `unclear`, an unknown
    scheme, or a record without that mechanism's signal."""
    found = MECHANISMS.get(scheme or "")
    return found(row) if found else None
