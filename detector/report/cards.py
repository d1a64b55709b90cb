"""Case cards: what the report (and the review page) shows about one record: the party,
its ownership chain, the parties at its address, the payer, the re-export trail and a
small network of linked entities.

A card reads what scoring computed, so it can never contradict the score that put the
record on the list: the party the record resolved to, how far its ownership chain was
followed, how many parties share its address and whether its payer is another party
come from the record's scored feature row (`CARD_FEATURES`); the parties it lists at
the address and the re-export trail come from the feature builders' own definitions
(features.parties.registered_addresses, features.behaviour.name_key and
reexport_event), applied to the same parties and shipments scoring read.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING

import polars as pl

from detector.report.charts import network_svg
from detector.report.data import normalise_address, normalise_name
from features.behaviour import name_key, reexport_event
from features.parties import registered_addresses, shared_address_key, unique_parties

if TYPE_CHECKING:
    from detector.tables import Dataset

MAX_NETWORK_NODES = 8
MAX_TRAIL_ROWS = 15
# parties at one address, re-export counterparties: listed up to this, the rest counted
MAX_LISTED = 50
KEY = ["record_kind", "record_id"]

# The scored feature columns a case card reads.
CARD_FEATURES = ("consignee_party", "consignee_resolution_score", "lessee_party",
                 "lessee_resolution_score", "ownership_depth", "consignee_address_shared_by",
                 "payer_is_other_party")

# ----------------------------------------------------------------------------- registry

TRAIL_COLUMNS = ("shipment_id", "export_date", "consignee_name", "consignee_country",
                 "destination_country", "quantity", "value_usd", "description")


@dataclass
class Registry:
    """The parties and shipments scoring read (the dataset and its history), indexed
    for case cards: parties by id and by registered address, shipments by the key their
    exporter links on (`features.behaviour.name_key`)."""

    parties: dict[str, dict]
    by_address: dict[str, list[str]]
    shipments: pl.DataFrame  # with exporter_key, by (export_date, shipment_id)
    # providers are not resolved by scoring (no feature reads them): exact names only
    provider_names: dict[tuple[str, str], str] = field(default_factory=dict)
    # shipment_id -> counted as a re-export event (features.behaviour.reexport_event)
    events: dict[str, bool] = field(default_factory=dict)
    # when set, ``shipments`` holds only the exports under these keys (a report's cards)
    trail_keys: frozenset[str] | None = None

    def party(self, party_id: str | None) -> dict | None:
        return self.parties.get(party_id) if party_id else None

    def provider(self, party_id: str | None, name: str | None, country: str | None
                 ) -> dict | None:
        """The lease's provider: by its declared id, else by exact normalised name in
        the data-centre country, else the one party of that name in any country
        (providers often run data centres outside their home country)."""
        if party_id and party_id in self.parties:
            return self.parties[party_id]
        norm = normalise_name(name)
        match = self.provider_names.get((norm, (country or "").upper()))
        if match:
            return self.parties[match]
        found = {pid for (n, _), pid in self.provider_names.items() if n == norm}
        return self.parties[found.pop()] if norm and len(found) == 1 else None

    def chain(self, party: dict | None, levels: int | None) -> tuple[list[dict], dict | None]:
        """The parents above ``party`` that scoring followed (``levels``: the record's
        ``ownership_depth``; a cycle stops it), and the parent above the last of them
        when scoring stopped below the top (features.parties.MAX_OWNERSHIP_LEVELS)."""
        chain, seen = [], {party["party_id"]} if party else set()
        parent_id = party.get("parent_party_id") if party else None
        while parent_id and parent_id in self.parties and parent_id not in seen:
            if len(chain) >= (levels or 0):
                return chain, self.parties[parent_id]
            seen.add(parent_id)
            chain.append(self.parties[parent_id])
            parent_id = self.parties[parent_id].get("parent_party_id")
        return chain, None

    def at_address(self, key: str | None, party_id: str | None) -> list[str]:
        """The parties registered at ``key`` (a normalised address) other than
        ``party_id``, by id."""
        return [p for p in self.by_address.get(key or "", []) if p != party_id]

    def prepare_trails(self, keys: Sequence[str]) -> None:
        """Decide, once for all the cards to come, which shipments exported under
        ``keys`` (consignee name keys) count as re-export events: the feature
        builders' flags (chip recognition, licence need, destination) of those
        shipments, built from the same reference data as scoring."""
        from detector.reference import load_reference
        from features.build import build_features
        from features.refview import view

        self._check_kept(keys)
        wanted = self.shipments.filter(pl.col("exporter_key").is_in(list(set(keys)))
                                       & ~pl.col("shipment_id").is_in(list(self.events)))
        if wanted.height == 0:
            return
        reference = load_reference()
        flags = build_features(wanted.drop("exporter_key"), None, None, None, reference)
        counted = flags.select("record_id", reexport_event(view(reference).d5_hk_mo)
                               .fill_null(False).alias("event"))
        self.events.update(zip(counted["record_id"].to_list(), counted["event"].to_list()))

    def _check_kept(self, keys: Sequence[str]) -> None:
        outside = set(keys) - self.trail_keys if self.trail_keys is not None else set()
        if outside - {None}:
            raise ValueError(f"registry holds the exports of {len(self.trail_keys)} "
                             f"consignee keys; asked for others: {sorted(outside)[:3]}")

    def reexport_trail(self, key: str | None, after: date, record_id: str
                       ) -> tuple[list[dict], int, list[dict], int]:
        """The re-export events scoring linked to a consignee (``key``: its name key)
        from ``after`` on: the first MAX_TRAIL_ROWS and their total, the first
        MAX_LISTED distinct counterparties and theirs."""
        if key is None:
            return [], 0, [], 0
        self.prepare_trails([key])
        later = self.shipments.filter((pl.col("exporter_key") == key)
                                      & (pl.col("export_date") >= after)
                                      & (pl.col("shipment_id") != record_id))
        trail = later.filter(pl.col("shipment_id").replace_strict(
            self.events, default=False, return_dtype=pl.Boolean))
        counterparties = trail.select("consignee_name", "consignee_country").unique(
            maintain_order=True)
        rows = trail.head(MAX_TRAIL_ROWS).select(TRAIL_COLUMNS).to_dicts()
        return (rows, trail.height, counterparties.head(MAX_LISTED).to_dicts(),
                counterparties.height)


def batch_parties(dataset: Dataset, history: Sequence[Dataset]) -> pl.DataFrame:
    """The parties scoring resolves against: the dataset's, then the history's (the
    dataset's row wins for a repeated party_id, as in detector.batch)."""
    return unique_parties(pl.concat([d.parties for d in [dataset, *history]],
                                    how="diagonal_relaxed"))


def build_registry(dataset: Dataset, history: Sequence[Dataset],
                   trail_keys: Sequence[str | None] | None = None) -> Registry:
    """The case cards' registry; ``trail_keys``: keep only the shipments exported under
    these consignee keys (the only re-export trails the cards will ask for), not a sorted
    copy of every shipment of a large batch."""
    frame = batch_parties(dataset, history)
    parties = {row["party_id"]: row for row in frame.to_dicts()}
    addresses = registered_addresses(frame).sort("party_id").collect()
    by_address: dict[str, list[str]] = {}
    for address, party_id in addresses.select("address_norm", "party_id").iter_rows():
        by_address.setdefault(address, []).append(party_id)
    provider_names: dict[tuple[str, str], str] = {}
    for party_id in sorted(parties):
        row = parties[party_id]
        for name in [row["name"], *(row.get("aliases") or [])]:
            provider_names.setdefault((normalise_name(name), (row["country"] or "").upper()),
                                      party_id)
    shipments = pl.concat([d.shipments.lazy() for d in [dataset, *history]],
                          how="diagonal_relaxed")
    exporters = shipments.select("exporter_name", "exporter_country").unique().with_columns(
        name_key(normalise_name_expr("exporter_name"),
                 pl.col("exporter_country").str.to_uppercase()).alias("exporter_key"))
    kept = None
    if trail_keys is not None:
        kept = frozenset(k for k in trail_keys if k is not None)
        # The exporters under the kept keys first (two columns), then only their shipments
        # are read whole: a filter after the join would not reach a spilled batch's scan.
        exporters = exporters.filter(pl.col("exporter_key").is_in(list(kept))).collect(
            engine="streaming")
        names = exporters["exporter_name"]
        shipments = shipments.filter(
            pl.col("exporter_name").is_in(names.drop_nulls().implode())
            | (pl.col("exporter_name").is_null() & pl.lit(names.null_count() > 0))
        ).join(exporters.lazy(), on=["exporter_name", "exporter_country"], how="inner",
               nulls_equal=True)
    else:
        shipments = shipments.join(exporters, on=["exporter_name", "exporter_country"],
                                   how="left", nulls_equal=True)
    shipments = shipments.sort(["export_date", "shipment_id"]).collect()
    return Registry(parties, by_address, shipments, provider_names, trail_keys=kept)


def normalise_name_expr(column: str) -> pl.Expr:
    from features.names import normalise_name as normalise

    return normalise(pl.col(column))


def consignee_key(row: dict) -> str | None:
    """The key scoring links a shipment's consignee to its later exports on."""
    frame = pl.DataFrame({"n": [row["consignee_name"]], "c": [row["consignee_country"]]},
                         schema={"n": pl.String, "c": pl.String})
    return frame.select(name_key(normalise_name_expr("n"), pl.col("c").str.to_uppercase()))[0, 0]


def address_key(declared: str | None, party: dict | None) -> str | None:
    """The address whose other registrations scoring counted for a shipment
    (features.parties.shared_address_key)."""
    frame = pl.DataFrame({"d": [normalise_address(declared)],
                          "p": [normalise_address(party.get("address")) if party else ""]},
                         schema={"d": pl.String, "p": pl.String})
    return frame.select(shared_address_key(pl.col("d"), pl.col("p")))[0, 0]


def card_rows(dataset: Dataset, history: Sequence[Dataset], keys: pl.DataFrame
              ) -> pl.DataFrame:
    """The scored features (`CARD_FEATURES`) of ``keys``' records (record_kind,
    record_id), built by the feature builders over the dataset and its history: for a
    page made from a scores table alone. Built without a model's statistics, which no
    card feature reads (parties, ownership, addresses, payer)."""
    from detector.reference import load_reference
    from features.build import build_features

    wanted = keys.select(pl.concat_str(KEY, separator="\x00"))[:, 0].to_list()
    frame = build_features(
        pl.concat([d.shipments for d in [dataset, *history]], how="diagonal_relaxed"),
        pl.concat([d.leases for d in [dataset, *history]], how="diagonal_relaxed"),
        batch_parties(dataset, history), None, load_reference(),
        scored=pl.concat_str(KEY, separator="\x00").is_in(wanted))
    return frame.select(*KEY, *CARD_FEATURES)


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


def shared_address(registry: Registry, key: str | None, party_id: str | None,
                   counted: int | None = None) -> tuple[list[dict], int]:
    """The first MAX_LISTED other parties registered at ``key`` and how many more there
    are (an address can hold thousands: a card lists a few and counts the rest).
    ``counted``: how many scoring counted (consignee_address_shared_by), which the
    card then states."""
    others = registry.at_address(key, party_id)
    total = len(others) if counted is None else int(counted)
    listed = [registry.parties[p] for p in others[:MAX_LISTED]]
    return listed, max(0, total - len(listed))


def resolved_party(registry: Registry, declared_id: str | None, scored: dict, prefix: str
                   ) -> tuple[dict | None, str]:
    """The party scoring resolved the record's ``prefix`` (consignee, lessee) to, read
    from its scored feature row (``{prefix}_party``, ``{prefix}_resolution_score``), and
    how it was matched; so a card names the party the score used."""
    party = registry.party(scored.get(f"{prefix}_party"))
    if party is None:
        return None, "not found in the party registry"
    if declared_id == party["party_id"]:
        return party, "by party id"
    score = scored.get(f"{prefix}_resolution_score")
    if score is None or score >= 100:
        return party, "by name and country"
    return party, f"by similar name and country ({score:.0f}/100)"


def separate_payer(payer_name: str | None, payer_country: str | None,
                   other_party: bool | None, own_country: str | None) -> bool:
    """Whether the card draws the payer as a party of its own: a named payer when
    scoring found it is another party (payer_is_other_party); an unnamed one when it
    pays from another country."""
    if payer_name:
        return bool(other_party)
    return bool(payer_country) and (payer_country or "").upper() != (own_country or "").upper()


def parent_named(chain: list[dict], name: str | None, country: str | None) -> int | None:
    """The position in ``chain`` of the parent a payer names (same normalised name and
    country), so a parent that pays is drawn once."""
    if not name:
        return None
    key = (normalise_name(name), (country or "").upper())
    for i, parent in enumerate(chain):
        if (normalise_name(parent["name"]), (parent["country"] or "").upper()) == key:
            return i
    return None


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
    svg = network_svg((centre_name, centre_role, centre_country), others, edges, label)
    return svg, len(related) - len(shown)


def shipment_card(row: dict, record: dict, registry: Registry, scored: dict | None) -> dict:
    """A shipment's case card; ``scored``: its scored feature row (`CARD_FEATURES`)."""
    scored = scored or {}
    party, matched_how = resolved_party(registry, row.get("consignee_party_id"), scored,
                                        "consignee")
    chain, beyond = registry.chain(party, scored.get("ownership_depth"))
    shared, shared_more = shared_address(
        registry, address_key(row.get("consignee_address"), party),
        party["party_id"] if party else None, scored.get("consignee_address_shared_by"))
    trail, trail_total, counterparties, n_counterparties = registry.reexport_trail(
        consignee_key(row), row["export_date"], row["shipment_id"])

    related: list[tuple[str, str, str, int, str]] = []
    for i, parent in enumerate(chain):
        related.append((parent["name"], "parent", parent["country"], i, "owned by"))
    if separate_payer(row.get("payer_name"), row.get("payer_country"),
                      scored.get("payer_is_other_party"), row["consignee_country"]):
        paying_parent = parent_named(chain, row.get("payer_name"), row.get("payer_country"))
        if paying_parent is not None:  # one node for one party: the parent pays
            name, _, country, link, edge = related[paying_parent]
            related[paying_parent] = (name, "parent and payer", country, link,
                                      f"{edge}; paid ({row.get('payment_method') or 'unknown'})")
        else:
            related.append((row.get("payer_name") or "(unnamed payer)", "payer",
                            row.get("payer_country") or "", 0,
                            f"paid ({row.get('payment_method') or 'unknown'})"))
    for other in shared:
        related.append((other["name"], "shared address", other["country"], 0, "same address"))
    for leg in counterparties:
        related.append((leg["consignee_name"], "re-export", leg["consignee_country"], 0,
                        "re-exported to"))
    network, hidden = network_diagram(row["consignee_name"], "consignee",
                                      row["consignee_country"], related,
                                      f"Entities linked to shipment {row['shipment_id']}")
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
        "chain": [party_view(p) for p in chain], "chain_beyond": party_view(beyond),
        "shared": [party_view(p) for p in shared],
        "trail": trail, "trail_more": trail_total - len(trail), "shared_more": shared_more,
        "payer_mismatch": payer_mismatch, "network": network, "network_hidden": hidden,
    }


def lease_card(row: dict, record: dict, registry: Registry, scored: dict | None) -> dict:
    """A lease's case card; ``scored``: its scored feature row (`CARD_FEATURES`)."""
    scored = scored or {}
    party, matched_how = resolved_party(registry, row.get("lessee_party_id"), scored,
                                        "lessee")
    chain, beyond = registry.chain(party, scored.get("ownership_depth"))
    # no feature counts a lessee's address: the card lists who shares its registered one
    shared, shared_more = shared_address(
        registry, address_key(None, party), party["party_id"] if party else None)
    provider = registry.provider(row.get("provider_party_id"), row["provider_name"],
                                 row["datacenter_country"])
    related: list[tuple[str, str, str, int, str]] = [
        (row["provider_name"], "provider", row["datacenter_country"], 0,
         f"leases {row['gpu_count']} GPUs")]
    for i, parent in enumerate(chain):
        related.append((parent["name"], "parent", parent["country"], 0 if i == 0 else i + 1,
                        "owned by"))
    if separate_payer(None, row.get("payer_country"), None, row["lessee_country"]):
        related.append(("(payer)", "payer", row["payer_country"], 0, "paid"))
    for other in shared:
        related.append((other["name"], "shared address", other["country"], 0, "same address"))
    network, hidden = network_diagram(row["lessee_name"], "lessee", row["lessee_country"],
                                      related, f"Entities linked to lease {row['lease_id']}")
    hidden += shared_more  # counted, not listed
    payer_mismatch = bool(row.get("payer_country") and row["payer_country"]
                          != row["lessee_country"])
    return record | {
        "row": row, "party": party_view(party), "matched_how": matched_how,
        "provider": party_view(provider),
        "chain": [party_view(p) for p in chain], "chain_beyond": party_view(beyond),
        "shared": [party_view(p) for p in shared],
        "shared_more": shared_more,
        "payer_mismatch": payer_mismatch, "network": network, "network_hidden": hidden,
    }
