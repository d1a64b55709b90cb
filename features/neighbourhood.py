"""The records one shipment's features read: what `detector explain` builds, not the batch.

A shipment's own features need only its row, the parties and the screening list; its
cross-record features (features/behaviour.py) read the shipments that share one of its
keys: the same consignee (resolved party, else normalised name and country), the same
owner group or declared address (splitting), and the shipments its consignee later
exported (re-export linkage). `shipments_around` returns a superset of those, cheaply:
every shipment whose consignee could resolve to a party of the record's group (exact
id, or a name within the resolution cutoff of one of the group's names in the same
country), with the record's normalised name, or at its declared address, every
shipment exported under the consignee's name, and (for the learned inputs: the
exporter's own history, the first origin of an HS-6) every shipment of the same
exporter or the same HS-6. Features built over that subset equal
the batch's for the record (tests/test_explain.py checks it on a simulated world).
No I/O.
"""

from __future__ import annotations

import polars as pl

from features.learned import hs_digits
from features.names import best_matches, normalise_address, normalise_name
from features.parties import RESOLVE_SCORE_CUTOFF, resolve_names, unique_parties


def _ultimate_parents(parties: pl.DataFrame) -> dict[str, str]:
    """party_id -> top of its ownership chain (itself without a parent; cycles cut)."""
    parent = dict(zip(parties["party_id"].to_list(), parties["parent_party_id"].to_list()))
    out = {}
    for pid in parent:
        top, seen = pid, {pid}
        while parent.get(top) is not None and parent[top] in parent and parent[top] not in seen:
            top = parent[top]
            seen.add(top)
        out[pid] = top
    return out


def _distinct(shipments: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """The distinct values of ``columns``: a batch of a million lines holds far fewer
    names, addresses and codes, so each is normalised once, not once per line."""
    return shipments.select(columns).unique()


def _lines_with(shipments: pl.DataFrame, keys: pl.DataFrame) -> pl.Series:
    """The shipment ids whose raw values of ``keys``' columns are one of its rows."""
    if keys.height == 0:
        return pl.Series("shipment_id", [], dtype=shipments.schema["shipment_id"])
    return shipments.join(keys, on=keys.columns, how="semi")["shipment_id"]


class ShipmentIndex:
    """What `around` looks up, prepared once per batch: the distinct consignee names,
    exporter names, addresses, HS codes and origins with their normalised forms (a batch
    of a million lines holds far fewer), the parties and their ownership groups. Each
    record's neighbourhood then joins on the raw values that qualify; `detector explain`
    and the review page keep one index per batch (detector.batch.Batch.shipment_index)."""

    def __init__(self, shipments: pl.DataFrame, parties: pl.DataFrame):
        self.shipments = shipments
        self.parties = unique_parties(parties)
        self.party_ids = set(self.parties["party_id"].to_list())
        self._tops: dict[str, str] | None = None
        self.consignees = _distinct(shipments, ["consignee_name", "consignee_country"]) \
            .with_columns(pl.col("consignee_country").str.to_uppercase().alias("country"),
                          normalise_name(pl.col("consignee_name")).alias("name_norm"))
        self.names_by_country = {
            country: block["name_norm"].to_list() for (country,), block in
            self.consignees.select("name_norm", "country").unique().drop_nulls()
            .group_by("country")}
        self.exporters = _distinct(shipments, ["exporter_name", "exporter_country"]) \
            .with_columns(pl.col("exporter_country").str.to_uppercase().alias("country"),
                          normalise_name(pl.col("exporter_name")).alias("exporter_norm"))
        self.hs_codes = _distinct(shipments, ["hs_code"]).with_columns(
            hs_digits(pl.col("hs_code"), 6).alias("__hs6"))
        self.origins = _distinct(shipments, ["exporter_country"]).with_columns(
            pl.col("exporter_country").str.to_uppercase().alias("country"))
        self.addresses = _distinct(shipments, ["consignee_address"]).with_columns(
            normalise_address(pl.col("consignee_address")).alias("address_norm"))

    @property
    def tops(self) -> dict[str, str]:
        if self._tops is None:
            self._tops = _ultimate_parents(self.parties)
        return self._tops

    def around(self, shipment_id: str) -> pl.DataFrame:
        """The shipments (contract columns, any order) that the features of
        ``shipment_id`` read, itself included; a superset, never fewer."""
        shipments = self.shipments
        target = shipments.filter(pl.col("shipment_id") == shipment_id)
        if target.height == 0:
            return target
        row = target.row(0, named=True)
        country = (row["consignee_country"] or "").upper()
        name_norm = target.select(normalise_name(pl.col("consignee_name"))).item() or ""
        address_norm = target.select(normalise_address(pl.col("consignee_address"))).item() or ""

        parties = self.parties
        party = row.get("consignee_party_id") if row.get("consignee_party_id") in self.party_ids \
            else None
        if party is None and name_norm:
            found = resolve_names(pl.DataFrame({"name_norm": [name_norm], "country": [country]}),
                                  parties)
            party = found["resolved_party_id"][0] if found.height else None
        group: set[str] = set()
        if party is not None:
            tops = self.tops
            top = tops.get(party, party)
            group = {p for p, t in tops.items() if t == top} | {party}

        # consignee names (normalised, with country) that could resolve into the group
        members = parties.filter(pl.col("party_id").is_in(list(group))).select(
            pl.col("country").str.to_uppercase(),
            pl.concat_list(pl.col("name"), pl.col("aliases").fill_null([])).alias("names")
        ).explode("names").select("country", normalise_name(pl.col("names")).alias("name_norm"))
        consignees = self.consignees
        wanted = [(name_norm, country)]
        for (member_country,), block in members.group_by("country"):
            names = self.names_by_country.get(member_country, [])
            scores, _ = best_matches(names, block["name_norm"].drop_nulls().to_list(),
                                     score_cutoff=RESOLVE_SCORE_CUTOFF)
            wanted += [(n, member_country) for n, s in zip(names, scores) if s > 0]
        wanted_frame = pl.DataFrame(wanted, schema={"name_norm": pl.String, "country": pl.String},
                                    orient="row").unique()
        exporters = self.exporters
        raw_exporter = ["exporter_name", "exporter_country"]
        near = (
            _lines_with(shipments, consignees.join(wanted_frame, on=["name_norm", "country"],
                                                   how="semi")
                        .select("consignee_name", "consignee_country"))
            .append(shipments.filter(pl.col("consignee_party_id").is_in(list(group)))
                    ["shipment_id"])
            .append(_lines_with(shipments, exporters.filter(
                (pl.col("exporter_norm") == name_norm) & (pl.col("country") == country))
                .select(raw_exporter)))
        )
        # the learned inputs: the exporter's own earlier lines, and whether the HS-6 came
        # from this origin before (the pair's earliest shipment decides that)
        record_date = row["export_date"]
        exporter_norm = target.select(normalise_name(pl.col("exporter_name"))).item()
        origin = (row["exporter_country"] or "").upper()
        same_exporter = exporters.filter((pl.col("exporter_norm") == exporter_norm)
                                         & (pl.col("country") == origin)).select(raw_exporter)
        near = near.append(shipments.join(same_exporter, on=raw_exporter, how="semi")
                           .filter(pl.col("export_date") <= record_date)["shipment_id"])
        hs6 = target.select(hs_digits(pl.col("hs_code"), 6)).item()
        if hs6:
            codes = self.hs_codes.filter(pl.col("__hs6") == hs6).select("hs_code")
            origins = self.origins.filter(pl.col("country") == origin).select("exporter_country")
            near = near.append(
                shipments.join(codes, on="hs_code", how="semi")
                .join(origins, on="exporter_country", how="semi")
                .sort("export_date", "shipment_id").head(1)["shipment_id"])
        if address_norm:
            addresses = self.addresses.filter(pl.col("address_norm") == address_norm) \
                .select("consignee_address")
            near = near.append(_lines_with(shipments, addresses))
        return shipments.filter(pl.col("shipment_id").is_in(near.append(
            pl.Series([shipment_id])).unique().implode()))


def shipments_around(shipments: pl.DataFrame, parties: pl.DataFrame, shipment_id: str
                     ) -> pl.DataFrame:
    """The shipments (contract columns, any order) that the features of ``shipment_id``
    read, itself included; a superset, never fewer (`ShipmentIndex.around`; an index
    kept for the batch saves its preparation on every further record)."""
    return ShipmentIndex(shipments, parties).around(shipment_id)
