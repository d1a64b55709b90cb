"""The world simulator behind `detector simulate` (GitHub issue #3).

It writes a labelled dataset in the data contract: a large, varied legitimate trade in
AI accelerators, servers and parts, and a small share (~2%) of diversion schemes drawn
from the real cases in FACTS.md (docs/typologies.md describes each one and the traces
it leaves). Labels are partial, as from real investigations; ``truth.parquet`` holds the
complete ground truth, which training never reads.

The package: `world` (parties, legitimate trade, labels; the building blocks schemes
use), `schemes` (the registry of schemes, one function per typology), `catalogue` (the
goods), `names` (party names and addresses); `simulate` here writes the files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import polars as pl

from detector.contract import LABELS, LEASES, PARTIES, SHIPMENTS
from detector.errors import UsageError
from detector.files import os_failure
from detector.simulation.schemes import SCHEMES
from detector.simulation.world import TYPOLOGIES, World, add_months
from detector.tables import write_table

__all__ = ["SCHEMES", "TYPOLOGIES", "SimulationSummary", "add_months", "simulate"]


@dataclass
class SimulationSummary:
    out_dir: Path
    shipments: int
    leases: int
    parties: int
    labels: int
    screening_entries: int
    diversion_shipments: int
    diversion_leases: int
    confirmed: int
    cleared: int
    files: list[Path] = field(default_factory=list)


def simulate(out_dir: str | Path, seed: int = 0, shipments: int = 10000,
             start: date = date(2024, 1, 1), months: int = 24, *,
             late_scheme: str | None = None, late_from_month: int = 7,
             log: Callable[[str], None] | None = None) -> SimulationSummary:
    """Write a synthetic labelled dataset and its ground truth to ``out_dir``.

    ``late_scheme`` (a typology): that scheme starts no earlier than month
    ``late_from_month`` (1 = the first month), so a model trained on the early months has
    never seen it (benchmarks/bench_loop.py). Without it the world is unchanged.

    Only the files it writes are replaced (each atomically): shipments.csv, parties.csv,
    leases.csv, labels.csv, screening_list.csv and truth.parquet.
    """
    if shipments < 1:
        raise UsageError(f"--shipments must be at least 1, got {shipments}")
    if months < 1:
        raise UsageError(f"--months must be at least 1, got {months}")
    if seed < 0:
        raise UsageError(f"--seed must be 0 or more, got {seed}")
    if late_scheme is not None and late_scheme not in TYPOLOGIES:
        raise UsageError(f"--late-scheme {late_scheme}: expected one of {', '.join(TYPOLOGIES)}")
    if late_scheme is not None and not 1 <= late_from_month <= months:
        raise UsageError(f"--late-from-month {late_from_month}: expected a month from 1 to "
                         f"{months}")
    say = log or (lambda message: None)
    from detector.reference import load_reference

    world = World(seed, shipments, start, months, load_reference())
    if late_scheme is not None:
        world.late_scheme = late_scheme
        world.late_from_day = (add_months(start, late_from_month - 1) - start).days
    say("building parties")
    world.build_legit_parties()
    world.build_screening_list()
    say("planning diversion schemes")
    world.plan_schemes(SCHEMES)
    say("generating shipments")
    shipments_df = world.shipments_frame()
    say("generating leases")
    leases_df = world.leases_frame()
    say("labelling")
    labels_df, truth_df = world.labels_and_truth(shipments_df, leases_df)
    parties_df = world.parties_frame()
    screening_df = world.screening_frame()

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_failure(exc, out, "create the output directory") from None
    say(f"writing {out}")
    files = [
        write_table(shipments_df.select(SHIPMENTS.column_names).sort("shipment_id"),
                    out / "shipments.csv"),
        write_table(parties_df.select(PARTIES.column_names).sort("party_id"), out / "parties.csv"),
        write_table(leases_df.select(LEASES.column_names).sort("lease_id"), out / "leases.csv"),
        write_table(labels_df.select(LABELS.column_names).sort("record_kind", "record_id"),
                    out / "labels.csv"),
        write_table(screening_df.sort("name", "list_name", "country", nulls_last=True),
                    out / "screening_list.csv"),
        write_table(truth_df.sort("record_kind", "record_id"), out / "truth.parquet"),
    ]
    return SimulationSummary(
        out_dir=out, shipments=shipments_df.height, leases=leases_df.height,
        parties=parties_df.height, labels=labels_df.height,
        screening_entries=screening_df.height,
        diversion_shipments=int(truth_df.filter((pl.col("record_kind") == "shipment")
                                                & (pl.col("label") == 1)).height),
        diversion_leases=int(truth_df.filter((pl.col("record_kind") == "lease")
                                             & (pl.col("label") == 1)).height),
        confirmed=int((labels_df["label"] == 1).sum()), cleared=int((labels_df["label"] == 0).sum()),
        files=files)
