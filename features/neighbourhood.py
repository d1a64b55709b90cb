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


class ShipmentIndex:
    """What `around` looks up, prepared once per batch: the distinct consignee names,
    exporter names, addresses, party ids and HS codes with their normalised forms and
    the rows that hold each (a batch of a million lines holds far fewer distinct values),
    the earliest line of each HS-6 and origin, the parties and their ownership groups.
    Each record's neighbourhood is then gathered by row number, never by a join over the
    whole batch; a caller that explains several records of one batch keeps one index
    (detector.batch.Batch.shipment_index)."""

    def __init__(self, shipments: pl.DataFrame | pl.LazyFrame, parties: pl.DataFrame):
        """``shipments``: in memory, or a lazy scan (a large batch waiting on disk: only
        the columns looked up here, and each record's neighbourhood, are read)."""
        self.shipments = shipments
        self.parties = unique_parties(parties)
        self.party_ids = set(self.parties["party_id"].to_list())
        self._tops: dict[str, str] | None = None
        rows = shipments.select(
            pl.int_range(pl.len(), dtype=pl.UInt32).alias("__i"), "shipment_id",
            "consignee_name", "consignee_country", "exporter_name", "exporter_country",
            "consignee_address", "consignee_party_id", "hs_code", "export_date")
        if isinstance(rows, pl.LazyFrame):
            rows = rows.collect()

        def rows_by(columns: list[str]) -> pl.DataFrame:
            return rows.group_by(columns).agg("__i")

        self.consignees = rows_by(["consignee_name", "consignee_country"]).with_columns(
            pl.col("consignee_country").str.to_uppercase().alias("country"),
            normalise_name(pl.col("consignee_name")).alias("name_norm"))
        self.names_by_country = {
            country: block["name_norm"].to_list() for (country,), block in
            self.consignees.select("name_norm", "country").unique().drop_nulls()
            .group_by("country")}
        self.exporters = rows_by(["exporter_name", "exporter_country"]).with_columns(
            pl.col("exporter_country").str.to_uppercase().alias("country"),
            normalise_name(pl.col("exporter_name")).alias("exporter_norm"))
        self.addresses = rows_by(["consignee_address"]).with_columns(
            normalise_address(pl.col("consignee_address")).alias("address_norm"))
        self.by_party = rows_by(["consignee_party_id"]).drop_nulls("consignee_party_id")
        # the earliest line of each HS-6 from each origin (the learned inputs' novelty)
        self.first_of_hs6 = (
            rows.select("__i", "export_date", "shipment_id",
                        hs_digits(pl.col("hs_code"), 6).alias("hs6"),
                        pl.col("exporter_country").str.to_uppercase().alias("origin"))
            .filter(pl.col("hs6").is_not_null() & (pl.col("hs6") != ""))
            .sort("export_date", "shipment_id", nulls_last=False)
            .group_by("hs6", "origin", maintain_order=True).first())
        self.dates = rows["export_date"]
        self.ids = rows["shipment_id"]

    @property
    def tops(self) -> dict[str, str]:
        if self._tops is None:
            self._tops = _ultimate_parents(self.parties)
        return self._tops

    def around(self, shipment_id: str) -> pl.DataFrame:
        """The shipments (contract columns, any order) that the features of
        ``shipment_id`` read, itself included; a superset, never fewer."""
        shipments = self.shipments
        position = self.ids.index_of(shipment_id)
        if position is None:
            return _rows_at(shipments, pl.Series("__i", [], dtype=pl.UInt32))
        target = _rows_at(shipments, pl.Series("__i", [position], dtype=pl.UInt32))
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
        wanted = [(name_norm, country)]
        for (member_country,), block in members.group_by("country"):
            names = self.names_by_country.get(member_country, [])
            scores, _ = best_matches(names, block["name_norm"].drop_nulls().to_list(),
                                     score_cutoff=RESOLVE_SCORE_CUTOFF)
            wanted += [(n, member_country) for n, s in zip(names, scores) if s > 0]
        wanted_frame = pl.DataFrame(wanted, schema={"name_norm": pl.String, "country": pl.String},
                                    orient="row").unique()
        exporter_norm = target.select(normalise_name(pl.col("exporter_name"))).item()
        origin = (row["exporter_country"] or "").upper()
        found = [
            self.consignees.join(wanted_frame, on=["name_norm", "country"], how="semi"),
            self.by_party.filter(pl.col("consignee_party_id").is_in(list(group))),
            # every shipment exported under the consignee's name (re-export linkage)
            self.exporters.filter((pl.col("exporter_norm") == name_norm)
                                  & (pl.col("country") == country)),
        ]
        if address_norm:
            found.append(self.addresses.filter(pl.col("address_norm") == address_norm))
        near = pl.concat([f.select("__i") for f in found]).explode("__i")["__i"]
        # the learned inputs: the exporter's own earlier lines, and whether the HS-6 came
        # from this origin before (the pair's earliest shipment decides that)
        exported = self.exporters.filter((pl.col("exporter_norm") == exporter_norm)
                                         & (pl.col("country") == origin)) \
            .select("__i").explode("__i")["__i"]
        earlier = exported.filter(self.dates.gather(exported) <= row["export_date"])
        hs6 = target.select(hs_digits(pl.col("hs_code"), 6)).item()
        first = self.first_of_hs6.filter((pl.col("hs6") == hs6) & (pl.col("origin") == origin))[
            "__i"] if hs6 else pl.Series("__i", [], dtype=pl.UInt32)
        index = pl.concat([near, earlier, first, pl.Series("__i", [position], dtype=pl.UInt32)]
                          ).unique().sort()
        return _rows_at(shipments, index)


def _rows_at(shipments: pl.DataFrame | pl.LazyFrame, index: pl.Series) -> pl.DataFrame:
    """The rows of ``shipments`` at ``index`` (sorted, distinct), in that order; from a
    lazy scan in one streaming pass that keeps only those rows."""
    if isinstance(shipments, pl.DataFrame):
        return shipments.gather(index)
    return shipments.with_row_index("__i").filter(pl.col("__i").is_in(index.implode())) \
        .drop("__i").collect(engine="streaming")


def shipments_around(shipments: pl.DataFrame, parties: pl.DataFrame, shipment_id: str
                     ) -> pl.DataFrame:
    """The shipments (contract columns, any order) that the features of ``shipment_id``
    read, itself included; a superset, never fewer (`ShipmentIndex.around`; an index
    kept for the batch saves its preparation on every further record)."""
    return ShipmentIndex(shipments, parties).around(shipment_id)
