"""Case cards: what the report (and the review page) shows about one record: the party,
its ownership chain, the parties at its address, the payer, the re-export trail and a
small network of linked entities."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

import polars as pl

import detector.report.charts as charts
from detector.report.data import normalise_address, normalise_name

if TYPE_CHECKING:
    from detector.tables import Dataset

MAX_NETWORK_NODES = 8
MAX_TRAIL_ROWS = 15
# parties at one address, re-export counterparties: listed up to this, the rest counted
MAX_LISTED = 50

# ----------------------------------------------------------------------------- registry

@dataclass
class Registry:
    """Parties and shipments from the dataset and its history, indexed for case cards."""

    parties: dict[str, dict]
    by_name: dict[tuple[str, str], str]
    by_address: dict[str, list[str]]
    shipments: pl.DataFrame  # with normalised exporter / consignee names

    def party(self, party_id: str | None, name: str | None, country: str | None
              ) -> tuple[dict | None, str]:
        if party_id and party_id in self.parties:
            return self.parties[party_id], "by party id"
        match = self.by_name.get((normalise_name(name), (country or "").upper()))
        if match:
            return self.parties[match], "by name and country"
        return None, "not found in the party registry"

    def unique_name(self, name: str | None) -> dict | None:
        """The one party with this normalised name in any country, if exactly one."""
        norm = normalise_name(name)
        found = {pid for (n, _), pid in self.by_name.items() if n == norm}
        return self.parties[found.pop()] if norm and len(found) == 1 else None

    def chain(self, party: dict | None) -> list[dict]:
        """The parent chain above ``party`` up to its ultimate parent (cycles stopped)."""
        chain, seen = [], {party["party_id"]} if party else set()
        parent_id = party.get("parent_party_id") if party else None
        while parent_id and parent_id in self.parties and parent_id not in seen:
            seen.add(parent_id)
            chain.append(self.parties[parent_id])
            parent_id = self.parties[parent_id].get("parent_party_id")
        return chain


def build_registry(dataset: Dataset, history: Sequence[Dataset]) -> Registry:
    # The dataset's own party rows win over history rows with the same party_id.
    parties: dict[str, dict] = {}
    for source in [*reversed(list(history)), dataset]:
        for row in source.parties.to_dicts():
            parties[row["party_id"]] = row
    by_name: dict[tuple[str, str], str] = {}
    by_address: dict[str, list[str]] = {}
    for party_id in sorted(parties):
        row = parties[party_id]
        for name in [row["name"], *(row.get("aliases") or [])]:
            by_name.setdefault((normalise_name(name), (row["country"] or "").upper()), party_id)
        if address := normalise_address(row.get("address")):
            by_address.setdefault(address, []).append(party_id)
    shipments = pl.concat([d.shipments for d in [dataset, *history]], how="vertical_relaxed")
    names = pl.concat([shipments["exporter_name"], shipments["consignee_name"]]).unique()
    lookup = pl.DataFrame({"name": names,
                           "norm": [normalise_name(n) for n in names.to_list()]})
    shipments = (shipments
                 .join(lookup.rename({"name": "exporter_name", "norm": "exporter_norm"}),
                       on="exporter_name", how="left")
                 .join(lookup.rename({"name": "consignee_name", "norm": "consignee_norm"}),
                       on="consignee_name", how="left")
                 .sort(["export_date", "shipment_id"]))
    return Registry(parties, by_name, by_address, shipments)


# ----------------------------------------------------------------------------- case cards

def anchor(kind: str, record_id: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", record_id).strip("-")
    if slug != record_id:  # keep anchors unique when ids differ only in odd characters
        slug += "-" + hashlib.sha1(record_id.encode()).hexdigest()[:8]
    return f"case-{kind}-{slug}"


def party_view(party: dict | None) -> dict | None:
    if party is None:
        return None
    return {k: party.get(k) for k in ("party_id", "name", "country", "address",
                                      "incorporation_date", "industry", "employees",
                                      "registration_id")} | {
        "aliases": "; ".join(party.get("aliases") or []),
        "profile": " · ".join(part for part in (
            f"incorporated {party['incorporation_date']}" if party.get("incorporation_date")
            else "", party.get("industry") or "",
            f"{party['employees']:,} employees" if party.get("employees") is not None else "",
            f"registry no. {party['registration_id']}" if party.get("registration_id") else "",
        ) if part)}


def shared_address(registry: Registry, party: dict | None, address: str | None,
                    exclude: set[str]) -> tuple[list[dict], int]:
    """The first MAX_LISTED other parties at the record's address, and how many more
    there are (an address can hold thousands: a card lists a few and counts the rest).

    The address is the one the features count (consignee_address_shared_by): the
    declared address when there is one, else the resolved party's registered address.
    """
    key = normalise_address(address) or (normalise_address(party.get("address"))
                                         if party else "")
    found, more = [], 0
    for party_id in registry.by_address.get(key, []) if key else []:
        if party_id not in exclude:
            exclude.add(party_id)
            if len(found) < MAX_LISTED:
                found.append(registry.parties[party_id])
            else:
                more += 1
    return found, more


def resolved_party(registry: Registry, declared_id: str | None, name: str | None,
                    country: str | None, scored: dict | None, prefix: str
                    ) -> tuple[dict | None, str]:
    """The party scoring resolved the record's ``prefix`` (consignee, lessee) to, read
    from its scored feature row (``{prefix}_party``, ``{prefix}_resolution_score``), and
    how it was matched; so a card names the party the score used. Without a scored row
    (a page built from a scores file alone), the registry's exact lookup."""
    if scored is None:
        return registry.party(declared_id, name, country)
    party_id = scored.get(f"{prefix}_party")
    if party_id is None or party_id not in registry.parties:
        return None, "not found in the party registry"
    if declared_id == party_id:
        return registry.parties[party_id], "by party id"
    score = scored.get(f"{prefix}_resolution_score")
    if score is None or score >= 100:
        return registry.parties[party_id], "by name and country"
    return registry.parties[party_id], f"by similar name and country ({score:.0f}/100)"


# The scored feature columns a case card reads (see `resolved_party`).
CARD_FEATURES = ("consignee_party", "consignee_resolution_score", "lessee_party",
                 "lessee_resolution_score")


def reexport_trail(registry: Registry, name: str, country: str, after: date,
                    record_id: str) -> tuple[list[dict], int, list[dict], int]:
    """Later shipments whose exporter is this consignee, from its country: the first
    MAX_TRAIL_ROWS and their total, the first MAX_LISTED distinct counterparties and
    theirs."""
    norm = normalise_name(name)
    if not norm:
        return [], 0, [], 0
    trail = registry.shipments.filter(
        (pl.col("exporter_norm") == norm)
        & (pl.col("exporter_country").str.to_uppercase() == (country or "").upper())
        & (pl.col("export_date") >= after) & (pl.col("shipment_id") != record_id))
    counterparties = trail.select("consignee_name", "consignee_country").unique(
        maintain_order=True)
    rows = trail.head(MAX_TRAIL_ROWS).select(
        "shipment_id", "export_date", "consignee_name", "consignee_country",
        "destination_country", "quantity", "value_usd", "description").to_dicts()
    return (rows, trail.height, counterparties.head(MAX_LISTED).to_dicts(),
            counterparties.height)


def separate_payer(payer_name: str | None, payer_country: str | None, own_names: list[str],
                    own_country: str | None) -> bool:
    """Whether the payer is a party of its own to draw: named and not the consignee (or
    its owners) under another spelling, or unnamed but paying from another country."""
    if payer_name:
        own = {normalise_name(n) for n in own_names if n}
        return normalise_name(payer_name) not in own
    return bool(payer_country) and (payer_country or "").upper() != (own_country or "").upper()


def network_diagram(centre_name: str, centre_role: str, centre_country: str,
             related: list[tuple[str, str, str, int, str]], label: str
             ) -> tuple[str | None, int]:
    """Draw the case network; ``related`` rows are (name, role, country, link_to, edge).
    None when nothing is linked: a lone node says nothing."""
    if not related:
        return None, 0
    shown = related[:MAX_NETWORK_NODES]
    others = [(n, r, c) for n, r, c, _, _ in shown]
    edges = [(link if link < len(shown) + 1 else 0, i + 1, edge)
             for i, (_, _, _, link, edge) in enumerate(shown)]
    svg = charts.network_svg((centre_name, centre_role, centre_country), others, edges, label)
    return svg, len(related) - len(shown)


def shipment_card(row: dict, record: dict, registry: Registry,
                   scored: dict | None = None) -> dict:
    """A shipment's case card; ``scored``: its scored feature row (`CARD_FEATURES`)."""
    party, matched_how = resolved_party(registry, row.get("consignee_party_id"),
                                         row["consignee_name"], row["consignee_country"],
                                         scored, "consignee")
    chain = registry.chain(party)
    exclude = {party["party_id"]} if party else set()
    shared, shared_more = shared_address(registry, party, row.get("consignee_address"),
                                          exclude)
    trail, trail_total, counterparties, n_counterparties = reexport_trail(
        registry, row["consignee_name"], row["consignee_country"], row["export_date"],
        row["shipment_id"])

    related: list[tuple[str, str, str, int, str]] = []
    for i, parent in enumerate(chain):
        related.append((parent["name"], "parent", parent["country"], i, "owned by"))
    if separate_payer(row.get("payer_name"), row.get("payer_country"),
                       [row["consignee_name"], *(p["name"] for p in [party, *chain] if p)],
                       row["consignee_country"]):
        related.append((row.get("payer_name") or "(unnamed payer)", "payer",
                        row.get("payer_country") or "", 0,
                        f"paid ({row.get('payment_method') or 'unknown'})"))
    for other in shared:
        related.append((other["name"], "shared address", other["country"], 0, "same address"))
    for leg in counterparties:
        related.append((leg["consignee_name"], "re-export", leg["consignee_country"], 0,
                        "re-exported to"))
    network, hidden = network_diagram(row["consignee_name"], "consignee", row["consignee_country"],
                               related, f"Entities linked to shipment {row['shipment_id']}")
    hidden += shared_more + n_counterparties - len(counterparties)  # counted, not listed

    route = [("exporter", row["exporter_name"], row["exporter_country"])]
    route += [("transit", None, c) for c in (row.get("transit_countries") or [])]
    if row.get("intermediate_consignee_name") or row.get("intermediate_consignee_country"):
        route.append(("intermediate consignee", row.get("intermediate_consignee_name"),
                      row.get("intermediate_consignee_country")))
    route.append(("consignee", row["consignee_name"], row["consignee_country"]))
    route.append(("destination", None, row["destination_country"]))
    payer_mismatch = bool(row.get("payer_country") and row["payer_country"]
                          != row["consignee_country"])
    return record | {
        "row": row, "route": route, "party": party_view(party), "matched_how": matched_how,
        "chain": [party_view(p) for p in chain], "shared": [party_view(p) for p in shared],
        "trail": trail, "trail_more": trail_total - len(trail), "shared_more": shared_more,
        "payer_mismatch": payer_mismatch, "network": network, "network_hidden": hidden,
    }


def lease_card(row: dict, record: dict, registry: Registry,
                scored: dict | None = None) -> dict:
    """A lease's case card; ``scored``: its scored feature row (`CARD_FEATURES`)."""
    party, matched_how = resolved_party(registry, row.get("lessee_party_id"),
                                         row["lessee_name"], row["lessee_country"], scored,
                                         "lessee")
    chain = registry.chain(party)
    exclude = {party["party_id"]} if party else set()
    shared, shared_more = shared_address(registry, party, None, exclude)
    provider, _ = registry.party(row.get("provider_party_id"), row["provider_name"],
                                 row["datacenter_country"])
    if provider is None:  # providers often run data centres outside their home country
        provider = registry.unique_name(row["provider_name"])
    related: list[tuple[str, str, str, int, str]] = [
        (row["provider_name"], "provider", row["datacenter_country"], 0,
         f"leases {row['gpu_count']} GPUs")]
    for i, parent in enumerate(chain):
        related.append((parent["name"], "parent", parent["country"], 0 if i == 0 else i + 1,
                        "owned by"))
    if separate_payer(None, row.get("payer_country"), [], row["lessee_country"]):
        related.append(("(payer)", "payer", row["payer_country"], 0, "paid"))
    for other in shared:
        related.append((other["name"], "shared address", other["country"], 0, "same address"))
    network, hidden = network_diagram(row["lessee_name"], "lessee", row["lessee_country"], related,
                               f"Entities linked to lease {row['lease_id']}")
    hidden += shared_more  # counted, not listed
    payer_mismatch = bool(row.get("payer_country") and row["payer_country"]
                          != row["lessee_country"])
    return record | {
        "row": row, "party": party_view(party), "matched_how": matched_how,
        "provider": party_view(provider),
        "chain": [party_view(p) for p in chain], "shared": [party_view(p) for p in shared],
        "shared_more": shared_more,
        "payer_mismatch": payer_mismatch, "network": network, "network_hidden": hidden,
    }

