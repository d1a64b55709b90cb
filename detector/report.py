"""The scheduled risk report (`detector report`): one self-contained HTML page or PDF.

Built for schedulers: the same inputs give the same bytes (no clock reads, no random
ids), nothing is fetched from anywhere (inline CSS, charts as inline SVG), text from the
data is escaped by jinja2's autoescape, and failures raise :mod:`detector.errors`
exceptions that the CLI turns into non-zero exit codes.

Definitions used throughout (they are also printed on the page):

* The period is a calendar month ``YYYY-MM``; a record belongs to it by its date
  (``export_date`` for a shipment, ``start_date`` for a lease).
* Review capacity ``k`` (``--capacity``): the period's records are ordered by risk
  (ties by record_kind, then record_id, as in the scores table); the review list is the
  first ``k`` and the review threshold is the score of the ``k``-th.
* "Above the threshold" means a score at or above it (ties at the threshold count).
* The previous period is the month before, counted at this period's threshold so the
  two figures are comparable.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from detector import charts
from detector.contract import BIDI_CONTROLS
from detector.errors import EnvironmentFailure, InputError, UsageError
from detector.queue import check_explore, familiar_cells, mark_queue, parse_capacity
from features import names as features_names

if TYPE_CHECKING:
    from detector.tables import Dataset

FALLBACK_MODEL = "rules+unsupervised"
# Hubs named in real diversion cases, then those reported by the press (FACTS.md).
NO_HUB = "no hub"
TOP_GROUPS = 5  # small multiples per grouping: the top groups, then 'other'
TOP_PARTIES = 10
MAX_NETWORK_NODES = 8
MAX_TRAIL_ROWS = 15
# parties at one address, re-export counterparties: listed up to this, the rest counted
MAX_LISTED = 50
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


def _metric_order(key: str) -> tuple:
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


def _parse_period(text: str) -> tuple[int, int]:
    match = _PERIOD_RE.match(text.strip())
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise UsageError(f"--period: expected a month as YYYY-MM (e.g. 2024-06), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _previous_month(period: str) -> str:
    year, month = _parse_period(period)
    return f"{year - 1}-12" if month == 1 else f"{year}-{month - 1:02d}"


def _month_range(first: str, last: str) -> list[str]:
    months, (year, month) = [], _parse_period(first)
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


def _records(dataset: Dataset) -> pl.DataFrame:
    return pl.concat([_shipment_records(dataset.shipments), _lease_records(dataset.leases)],
                     how="vertical_relaxed").with_columns(
        pl.col("record_date").dt.strftime("%Y-%m").alias("month"))


def _scored_records(dataset: Dataset, scores: pl.DataFrame) -> pl.DataFrame:
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
    duplicated = scores.filter(pl.len().over("record_kind", "record_id") > 1)
    if duplicated.height:
        raise InputError(f"scores: {duplicated.height} rows repeat a (record_kind, record_id); "
                         f"e.g. {duplicated['record_id'].head(5).to_list()}")
    records = _records(dataset).join(scores, on=["record_kind", "record_id"], how="left")
    unscored = records.filter(pl.col("risk_score").is_null())
    if unscored.height:
        examples = [f"{kind} {rid}" for kind, rid in
                    unscored.select("record_kind", "record_id").head(5).iter_rows()]
        raise InputError(
            f"scores: expected a risk_score for every shipment and lease of "
            f"{dataset.directory}; {unscored.height} have none, e.g. {examples}")
    # Highest risk first; ties by record_kind then record_id, as in the scores table.
    return records.sort(["risk_score", "record_kind", "record_id"],
                        descending=[True, False, False])


# ----------------------------------------------------------------------------- registry

@dataclass
class _Registry:
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


def _registry(dataset: Dataset, history: Sequence[Dataset]) -> _Registry:
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
    return _Registry(parties, by_name, by_address, shipments)


# ----------------------------------------------------------------------------- case cards

def _anchor(kind: str, record_id: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", record_id).strip("-")
    if slug != record_id:  # keep anchors unique when ids differ only in odd characters
        slug += "-" + hashlib.sha1(record_id.encode()).hexdigest()[:8]
    return f"case-{kind}-{slug}"


def _party_view(party: dict | None) -> dict | None:
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


def _shared_address(registry: _Registry, party: dict | None, address: str | None,
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


def _resolved_party(registry: _Registry, declared_id: str | None, name: str | None,
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


# The scored feature columns a case card reads (see `_resolved_party`).
CARD_FEATURES = ("consignee_party", "consignee_resolution_score", "lessee_party",
                 "lessee_resolution_score")


def _reexport_trail(registry: _Registry, name: str, country: str, after: date,
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


def _separate_payer(payer_name: str | None, payer_country: str | None, own_names: list[str],
                    own_country: str | None) -> bool:
    """Whether the payer is a party of its own to draw: named and not the consignee (or
    its owners) under another spelling, or unnamed but paying from another country."""
    if payer_name:
        own = {normalise_name(n) for n in own_names if n}
        return normalise_name(payer_name) not in own
    return bool(payer_country) and (payer_country or "").upper() != (own_country or "").upper()


def _network(centre_name: str, centre_role: str, centre_country: str,
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


def _shipment_card(row: dict, record: dict, registry: _Registry,
                   scored: dict | None = None) -> dict:
    """A shipment's case card; ``scored``: its scored feature row (`CARD_FEATURES`)."""
    party, matched_how = _resolved_party(registry, row.get("consignee_party_id"),
                                         row["consignee_name"], row["consignee_country"],
                                         scored, "consignee")
    chain = registry.chain(party)
    exclude = {party["party_id"]} if party else set()
    shared, shared_more = _shared_address(registry, party, row.get("consignee_address"),
                                          exclude)
    trail, trail_total, counterparties, n_counterparties = _reexport_trail(
        registry, row["consignee_name"], row["consignee_country"], row["export_date"],
        row["shipment_id"])

    related: list[tuple[str, str, str, int, str]] = []
    for i, parent in enumerate(chain):
        related.append((parent["name"], "parent", parent["country"], i, "owned by"))
    if _separate_payer(row.get("payer_name"), row.get("payer_country"),
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
    network, hidden = _network(row["consignee_name"], "consignee", row["consignee_country"],
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
        "row": row, "route": route, "party": _party_view(party), "matched_how": matched_how,
        "chain": [_party_view(p) for p in chain], "shared": [_party_view(p) for p in shared],
        "trail": trail, "trail_more": trail_total - len(trail), "shared_more": shared_more,
        "payer_mismatch": payer_mismatch, "network": network, "network_hidden": hidden,
    }


def _lease_card(row: dict, record: dict, registry: _Registry,
                scored: dict | None = None) -> dict:
    """A lease's case card; ``scored``: its scored feature row (`CARD_FEATURES`)."""
    party, matched_how = _resolved_party(registry, row.get("lessee_party_id"),
                                         row["lessee_name"], row["lessee_country"], scored,
                                         "lessee")
    chain = registry.chain(party)
    exclude = {party["party_id"]} if party else set()
    shared, shared_more = _shared_address(registry, party, None, exclude)
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
    if _separate_payer(None, row.get("payer_country"), [], row["lessee_country"]):
        related.append(("(payer)", "payer", row["payer_country"], 0, "paid"))
    for other in shared:
        related.append((other["name"], "shared address", other["country"], 0, "same address"))
    network, hidden = _network(row["lessee_name"], "lessee", row["lessee_country"], related,
                               f"Entities linked to lease {row['lease_id']}")
    hidden += shared_more  # counted, not listed
    payer_mismatch = bool(row.get("payer_country") and row["payer_country"]
                          != row["lessee_country"])
    return record | {
        "row": row, "party": _party_view(party), "matched_how": matched_how,
        "provider": _party_view(provider),
        "chain": [_party_view(p) for p in chain], "shared": [_party_view(p) for p in shared],
        "shared_more": shared_more,
        "payer_mismatch": payer_mismatch, "network": network, "network_hidden": hidden,
    }


# ----------------------------------------------------------------------------- figures

def _headline(current: dict, previous: dict | None, key: str, kind: str,
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
        text = charts.money(abs(value))
        return ("+" if value >= 0 else "−") + text if signed else text
    return f"{value:+,}" if signed else f"{value:,}"


def _figures(records: pl.DataFrame, threshold: float) -> dict:
    flagged = records.filter(pl.col("risk_score") >= threshold)
    return {"scored": records.height, "flagged": flagged.height,
            "value_at_risk": float(flagged["value_usd"].fill_null(0.0).sum())}


def _over_time(scored: pl.DataFrame, threshold: float, column: str,
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


def _ranked_parties(period_records: pl.DataFrame, column: str, threshold: float,
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


def _typologies(dataset: Dataset, history: Sequence[Dataset], period_ids: pl.DataFrame
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


# ----------------------------------------------------------------------------- build

# Bidirectional controls reorder how text is shown (a name can display as another): every
# value a page shows has them as visible escapes, as the CSV writer does.
_BIDI_TABLE = {ord(c): f"\\u{ord(c):04x}" for c in BIDI_CONTROLS}


def _visible_bidi(value: Any) -> Any:
    return value.translate(_BIDI_TABLE) if isinstance(value, str) else value


def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("detector", "templates"),
        autoescape=True,  # every value from the data is text, never markup
        finalize=_visible_bidi,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
    )
    env.filters["money"] = charts.money
    env.filters["score"] = lambda v: f"{v:.3f}"
    env.filters["country_or_dash"] = lambda v: v or "—"
    return env


def build_report(dataset: Dataset, scores: pl.DataFrame, *, model_info: dict | None,
                 period: str | None = None, capacity: str = "1%",
                 history: Sequence[Dataset] = (), provenance: dict | None = None,
                 scored_rows: pl.DataFrame | None = None, drift=None) -> str:
    """The risk report for one month of ``dataset`` as one self-contained HTML page.

    ``scored_rows``: the review records' scored feature rows (record_kind, record_id and
    `CARD_FEATURES`), so their case cards name the parties scoring resolved; ``drift``:
    the batch's `detector.drift.DriftReport` (None without a trained model: the page
    then has no "what changed" section)."""
    history = list(history)
    scored = _scored_records(dataset, scores)
    if scored.height == 0:
        raise InputError(f"{dataset.directory}: no shipments or leases to report on")
    months_present = scored["month"].unique().sort().to_list()
    if period is None:
        period = months_present[-1]
    else:
        period = "{}-{:02d}".format(*_parse_period(period))
    in_period = scored.filter(pl.col("month") == period)
    if in_period.height == 0:
        raise InputError(f"--period {period}: the dataset has no shipments or leases dated in "
                         f"that month; it covers {months_present[0]} to {months_present[-1]}")

    k = parse_capacity(capacity, in_period.height)
    if "queue_reason" in in_period.columns and in_period["queue_reason"].is_not_null().any():
        # the review queue as chosen (detector.queue): by risk, plus records to explore
        review = in_period.filter(pl.col("queue_reason").is_not_null())
        by_risk = review.filter(pl.col("queue_reason") == "risk")
        threshold = float((by_risk if by_risk.height else review)["risk_score"][-1])
    else:
        review = in_period.head(k)
        threshold = float(review["risk_score"][-1])
    previous_period = _previous_month(period)
    current = _figures(in_period, threshold)

    previous_scored = scored.filter(pl.col("month") == previous_period)
    previous_note = None
    if previous_scored.height:
        previous = _figures(previous_scored, threshold)
    else:
        # Records of the previous month that only the history holds were not scored in
        # this run: we can count them but not say how many cross the threshold.
        filed = sum(_records(h).filter(pl.col("month") == previous_period).height
                    for h in history)
        previous = None
        previous_note = (f"{previous_period}: {filed:,} records in the history datasets, not "
                         "scored in this run" if filed else
                         f"no records dated {previous_period} in the data")
    headlines = [
        ("Records scored", _headline(current, previous, "scored", "count", signals_risk=False)),
        (f"At or above the review threshold ({threshold:.3f})",
         _headline(current, previous, "flagged", "count")),
        ("Declared value at risk", _headline(current, previous, "value_at_risk", "money")),
    ]

    months = _month_range(months_present[0], max(months_present[-1], period))
    charts_svg = {
        "over_time": charts.risk_over_time(
            "chart-time", months,
            [("by destination", _over_time(scored, threshold, "destination", months)),
             ("by hub (first hub on the route; data-centre country for leases)",
              _over_time(scored, threshold, "hub", months))],
            period, "records at or above threshold"),
        "distribution": charts.score_distribution(
            "chart-dist", in_period["risk_score"].to_list(), threshold, k),
        "consignees": charts.ranked_bars(
            "chart-consignees", "Top consignees and lessees by risk",
            _ranked_parties(in_period, "party_name", threshold, "party_country"),
            "highest risk score of a record"),
        "forwarders": charts.ranked_bars(
            "chart-forwarders", "Top forwarders by risk",
            _ranked_parties(in_period, "forwarder_name", threshold),
            "highest risk score of a record"),
    }
    typologies = _typologies(dataset, history, in_period.select("record_kind", "record_id"))
    charts_svg["typology"] = (charts.typology_mix("chart-typology", typologies, period)
                              if typologies else None)

    registry = _registry(dataset, history)
    shipments_by_id = {r["shipment_id"]: r for r in dataset.shipments.filter(
        pl.col("shipment_id").is_in(review.filter(pl.col("record_kind") == "shipment")
                                    ["record_id"].implode())).to_dicts()}
    leases_by_id = {r["lease_id"]: r for r in dataset.leases.filter(
        pl.col("lease_id").is_in(review.filter(pl.col("record_kind") == "lease")
                                 ["record_id"].implode())).to_dicts()}
    by_record = {} if scored_rows is None else {
        (r["record_kind"], r["record_id"]): r for r in scored_rows.to_dicts()}
    cards = []
    for position, rec in enumerate(review.to_dicts(), start=1):
        record = rec | {
            "position": position, "anchor": _anchor(rec["record_kind"], rec["record_id"]),
            "reason_list": [r.strip() for r in (rec["reasons"] or "").split(";") if r.strip()],
        }
        feature_row = by_record.get((rec["record_kind"], rec["record_id"]))
        if rec["record_kind"] == "shipment":
            card = _shipment_card(shipments_by_id[rec["record_id"]], record, registry,
                                  feature_row)
            r = card["row"]
            card["goods"] = r["description"]
            card["classification"] = (f"{r.get('eccn') or 'no ECCN'} · HS {r['hs_code']}"
                                      f" · {r['quantity']:,} units")
        else:
            card = _lease_card(leases_by_id[rec["record_id"]], record, registry, feature_row)
            r = card["row"]
            card["goods"] = f"{r['gpu_count']:,} × {r['gpu_model']}"
            card["classification"] = f"lease, {r.get('access_type') or 'access unknown'}"
        cards.append(card)

    score_models = scored["model"].unique().sort().to_list()
    fallback = model_info is None or FALLBACK_MODEL in score_models
    metrics = [(metric_label(k), int(v) if k in COUNT_METRICS and v is not None else v)
               for k, v in sorted(((model_info or {}).get("metrics") or {}).items(),
                                  key=lambda kv: _metric_order(kv[0]))]

    html = _environment().get_template("report.html.j2").render(
        period=period, previous_period=previous_period, previous_note=previous_note,
        capacity_text=capacity, capacity=k, threshold=threshold,
        explore_count=sum(1 for c in cards if c.get("queue_reason") == "explore"),
        n_period=in_period.height,
        n_shipments=in_period.filter(pl.col("record_kind") == "shipment").height,
        n_leases=in_period.filter(pl.col("record_kind") == "lease").height,
        headlines=headlines, cards=cards, charts=charts_svg,
        model_info=model_info, metrics=metrics, fallback=fallback,
        score_models=score_models, provenance=sorted((provenance or {}).items()),
        history_count=len(history), months=months, hubs=", ".join(hub_countries()),
        review_csv=_review_csv(cards), changed=_what_changed(drift),
    )
    return html


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


def _what_changed(drift) -> dict | None:
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


def _review_csv(cards: list[dict]) -> str:
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


# ----------------------------------------------------------------------------- writing

def write_report(html: str, out: Path) -> Path:
    """Write the report: ``.html`` as is, ``.pdf`` through WeasyPrint; atomically either way."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".html", ".htm", ".pdf"):
        raise UsageError(f"--out {out}: expected a file name ending in .html or .pdf")
    if suffix == ".pdf":
        weasyprint = _import_weasyprint()
    from detector.files import atomic_write

    def write(tmp: Path) -> None:
        if suffix == ".pdf":
            # base_url: relative references (there are none) would resolve locally only.
            weasyprint.HTML(string=html, base_url=str(out.parent)).write_pdf(tmp)
        else:
            tmp.write_text(html, encoding="utf-8")

    atomic_write(out, write)  # the user's umask decides the mode, as for every output
    return out


def _import_weasyprint() -> Any:
    try:
        import weasyprint
    except ImportError as exc:
        name = getattr(exc, "name", "") or ""
        if name.startswith("weasyprint") or "weasyprint" in str(exc) and "No module" in str(exc):
            raise EnvironmentFailure(
                "PDF output needs the weasyprint package: pip install weasyprint "
                "(or pip install -e '.[dev]'); or write .html instead") from exc
        raise EnvironmentFailure(_missing_library_message(exc)) from exc
    except OSError as exc:  # cffi could not load a system library (Pango, GObject)
        raise EnvironmentFailure(_missing_library_message(exc)) from exc
    return weasyprint


def _missing_library_message(exc: Exception) -> str:
    return ("PDF output needs the system Pango library, which could not be loaded "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); install it "
            "with: apt-get install libpango-1.0-0 libpangoft2-1.0-0 "
            "(or write .html instead)")


def _queue_candidates(frame: pl.DataFrame, capacities: dict[str, int], supervised: bool,
                      explore: float = 0.0, familiar: dict[str, int] | None = None
                      ) -> pl.DataFrame:
    """The rows of ``frame`` (one part of the scored records) that can be in their month's
    review queue (detector.queue.choose_queue), ties in rank order:

    - by risk: in each month, the first ``capacities[month]``: a record the queue takes
      by risk has fewer than the capacity ahead of it, so also within its part;
    - to explore (closest to 0.5 when supervised; new to the model: unusual over the
      familiarity of its cell): the queue spreads these lists over cells, so a record it
      takes is among the first (explore slots x 2 + records by risk) of its month and
      cell in that list's order; so also within its part.
    """
    from detector.queue import cell_expr, explore_slots, novelty_order

    ranked = frame.sort(["risk_score", "record_kind", "record_id"],
                        descending=[True, False, False])
    month = pl.col("record_date").dt.strftime("%Y-%m")
    first = pl.int_range(pl.len()).over(month) < month.replace_strict(capacities, default=0)
    kept = [ranked.filter(first)]
    slots = {m: explore_slots(c, explore) for m, c in capacities.items()}
    if explore > 0 and any(slots.values()):
        reach = {m: c + slots[m] for m, c in capacities.items()}
        within = pl.int_range(pl.len()).over(month, cell_expr()) < month.replace_strict(
            reach, default=0)
        orders = []
        if supervised:
            orders.append(ranked.sort((pl.col("risk_score") - 0.5).abs(), maintain_order=True))
        cells = ranked.select(cell_expr())[:, 0]
        familiarity = None if familiar is None else cells.replace_strict(
            familiar, default=0, return_dtype=pl.Int64).to_numpy()
        novelty = novelty_order(ranked["unsupervised_score"].to_numpy(), familiarity)
        orders.append(ranked.with_columns(__novelty=pl.Series(novelty))
                      .sort("__novelty", descending=True, maintain_order=True)
                      .drop("__novelty"))
        kept += [o.filter(within) for o in orders]
    return pl.concat(kept).unique(["record_kind", "record_id"], maintain_order=True)


def generate_report(dataset_dir: str | Path, out: str | Path,
                    history_dirs: Sequence[str | Path] = (), *, model_uri: str | None = None,
                    period: str | None = None, capacity: str = "1%",
                    explore: float = 0.0, screening_list: str | Path | None = None,
                    log: Callable[[str], None] = lambda _: None,
                    progress=None) -> Path:
    """`detector report`: score the dataset, build the page, write HTML or PDF atomically.

    ``log`` receives notices, ``progress`` (detector.progress.Progress) the phases."""
    from detector import engine
    from detector.batch import read_batch
    from detector.progress import Progress
    from detector.scoring import check_drift, drift_counts, load_model, score_with_progress

    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm", ".pdf"):
        raise UsageError(f"--out {out}: the report must end in .html or .pdf")
    if period is not None:
        _parse_period(period)
    parse_capacity(capacity, 1)
    check_explore(explore)
    progress = progress or Progress.silent()
    batch = read_batch(progress, dataset_dir, history_dirs, screening_list)
    with progress.phase("load model") as phase:
        model = load_model(model_uri, log)
        phase.finish(model.label)
    # Each month's review queue (detector.queue: by risk, plus a share to explore) gets
    # full reasons, whatever the period: the engine keeps each part's candidates for it.
    months = _records(batch.dataset).select(*engine.KEY, "month")
    capacities = {month: parse_capacity(capacity, n)
                  for month, n in months.group_by("month").len().iter_rows()}
    supervised = not model.fallback
    familiar = familiar_cells(model)
    counts = drift_counts(model)  # the batch's model inputs and risk, binned while scoring
    scores = score_with_progress(
        batch.records(), model, 0, progress,
        keep=lambda layered: _queue_candidates(layered, capacities, supervised, explore,
                                               familiar),
        observe=None if counts is None else counts.add)
    with progress.phase("reasons for each month's review queue") as phase:
        table = scores.table.join(months, on=engine.KEY, how="left", maintain_order="left")
        queue = pl.concat([
            mark_queue(grp, capacity, explore, supervised=supervised, familiar=familiar)
            .filter(pl.col("queue_reason").is_not_null())
            for _, grp in table.group_by("month", maintain_order=True)
        ]).select(*engine.KEY, "queue_reason")
        review = scores.kept.join(queue, on=engine.KEY, how="inner").sort("rank")
        if review.height != queue.height:  # _queue_candidates must hold every queue row
            raise RuntimeError(f"report: {queue.height - review.height} queue rows missing "
                               "from the scored candidates")
        reasons = review.select(*engine.KEY, "queue_reason",
                                pl.Series("_full", scores.reasons(review), dtype=pl.String))
        phase.finish(f"{review.height:,} records")
    scores = engine.scores_columns(
        scores.table.join(reasons, on=engine.KEY, how="left", maintain_order="left")
        .with_columns(reasons=pl.coalesce("_full", "reasons")))
    model_info = None
    if not model.fallback:
        from detector import tracking

        metrics = model.info.get("metrics") or {}
        if model.info.get("run_id"):
            metrics = tracking.run_info(model.info["run_id"])["metrics"] or metrics
        model_info = {"name": model.info.get("name") or model.label,
                      "version": model.info.get("version") or "",
                      "run_id": model.info.get("run_id"), "metrics": metrics,
                      "trained_on": (model.info.get("provenance") or {}).get("dataset")}
    with progress.phase("compare the batch with the model's training data") as phase:
        drift = check_drift(batch, model, counts, log)  # None for the fallback
        phase.finish("no model" if drift is None else f"{len(drift.alerts)} alert(s)")
    with progress.phase("build the page"):
        html = build_report(batch.dataset, scores, model_info=model_info, period=period,
                            capacity=capacity, history=batch.history,
                            provenance={**batch.provenance, "model": model.label},
                            scored_rows=review.select(*engine.KEY, *CARD_FEATURES),
                            drift=drift)
    with progress.phase(f"write {out}"):
        return write_report(html, out)
