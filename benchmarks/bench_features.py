"""Build the full feature frame for a world of N shipments; print wall time and peak RSS.

    python benchmarks/bench_features.py [--shipments 1000000] [--world DIR]

With --world, reads a dataset directory (e.g. written by `detector simulate`);
otherwise it tries `detector.simulation.simulate` into a temporary directory and, if the
simulator is not available, generates a plain vectorised world here (random parties,
names with legal-form variants, chips from the reference catalogue, dates over two
years) so the benchmark never depends on it.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.contract import LEASES, PARTIES, SHIPMENTS
from detector.reference import load_reference
from detector.tables import read_dataset
from features.build import build_features, fit_feature_stats

COUNTRIES = np.array(["SG", "MY", "TH", "HK", "TW", "JP", "US", "DE", "CN", "AE", "VN", "IN"])
FORMS = {"SG": "Pte. Ltd.", "MY": "Sdn. Bhd.", "HK": "Limited", "CN": "Co., Ltd.",
         "DE": "GmbH", "US": "LLC"}


def plain_world(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_parties = max(100, n // 20)
    pc = rng.choice(COUNTRIES, n_parties)
    stem = np.array([f"Company{i:07d} Tech" for i in range(n_parties)])
    names = [f"{s} {FORMS.get(c, 'Ltd')}" for s, c in zip(stem, pc)]
    parties = pl.DataFrame({
        "party_id": [f"P{i}" for i in range(n_parties)], "name": names, "country": pc,
        "address": [f"{rng.integers(1, 500)} Road {i % (n_parties // 3)}" for i in range(n_parties)],
        "incorporation_date": [date(2000 + int(y), 1, 1) for y in rng.integers(0, 25, n_parties)],
        "parent_party_id": [f"P{int(p)}" if rng.random() < 0.3 else None
                            for p in rng.integers(0, n_parties, n_parties)],
        "industry": rng.choice(["cloud_provider", "distributor", "trading", "logistics"], n_parties),
        "employees": rng.integers(1, 5000, n_parties),
    })
    chips = load_reference().chips["model"].to_numpy()
    who = rng.integers(0, n_parties, n)
    # a share of filings spell the name differently (case, punctuation, dropped form)
    variant = rng.random(n)
    cons_name = np.where(variant < 0.7, np.array(names)[who],
                         np.where(variant < 0.9, np.char.upper(stem[who]), stem[who]))
    days = rng.integers(0, 730, n)
    shipments = pl.DataFrame({
        "shipment_id": [f"S{i}" for i in range(n)],
        "export_date": pl.Series(days).cast(pl.Int32).cast(pl.Date) + pl.duration(days=19723),
        "exporter_name": np.where(rng.random(n) < 0.05, cons_name, "US Exporter Inc"),
        "exporter_country": np.where(rng.random(n) < 0.05, pc[who], "US"),
        "consignee_name": cons_name, "consignee_country": pc[who],
        "consignee_party_id": np.where(rng.random(n) < 0.5, [f"P{w}" for w in who], None),
        "destination_country": pc[who],
        "hs_code": rng.choice(["8471500000", "8473301180", "8542310000"], n),
        "eccn": rng.choice(["3A090.a", "4A090.a", "EAR99", "5A992.c"], n),
        "license_type": rng.choice(["license", "nlr", "exception"], n),
        "description": [f"NVIDIA {c} accelerator" for c in rng.choice(chips, n)],
        "quantity": rng.integers(1, 50, n), "value_usd": rng.uniform(1e3, 2e6, n),
        "gross_weight_kg": rng.uniform(1, 500, n),
        "payer_country": rng.choice(COUNTRIES, n),
        "payment_method": rng.choice(["wire", "letter_of_credit", "cash"], n),
        "transit_countries": [["HK"] if r < 0.1 else None for r in rng.random(n)],
    }).with_columns(pl.col("export_date").cast(pl.Date))
    nl = max(10, n // 100)
    lw = rng.integers(0, n_parties, nl)
    leases = pl.DataFrame({
        "lease_id": [f"L{i}" for i in range(nl)], "provider_name": "Cloud",
        "datacenter_country": rng.choice(COUNTRIES, nl),
        "lessee_name": np.array(names)[lw], "lessee_country": pc[lw],
        "gpu_model": rng.choice(chips, nl), "gpu_count": rng.integers(8, 2048, nl),
        "start_date": [date(2024, 1, 1)] * nl, "term_months": rng.integers(1, 36, nl),
        "value_usd": rng.uniform(1e4, 1e7, nl), "access_type": rng.choice(["bare_metal", "shared_vm"], nl),
    })
    screening = pl.DataFrame({"name": [names[i] + " X" for i in range(0, n_parties, 50)][:3000],
                              "list_name": "Entity List"})
    return shipments, leases, parties, screening


def _conform(df, table):
    return df.with_columns(pl.lit(None, t).alias(c) for c, t in table.schema.items()
                           if c not in df.columns).cast({c: t for c, t in table.schema.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shipments", type=int, default=1_000_000)
    ap.add_argument("--world", type=Path, default=None)
    args = ap.parse_args()

    t0 = time.perf_counter()
    if args.world is None:
        try:
            from detector.simulation import simulate
            tmp = Path(tempfile.mkdtemp(prefix="bench_world_"))
            simulate(tmp, seed=0, shipments=args.shipments)
            args.world = tmp
        except (ImportError, AttributeError, ValueError, OSError) as exc:  # optional here
            print(f"simulator unavailable ({type(exc).__name__}); using the plain world")
    if args.world is not None:
        ds = read_dataset(args.world)
        ship, lease, party, screen = ds.shipments, ds.leases, ds.parties, ds.screening_list
        source = str(args.world)
    else:
        ship, lease, party, screen = plain_world(args.shipments)
        ship, lease, party = _conform(ship, SHIPMENTS), _conform(lease, LEASES), _conform(party, PARTIES)
        source = "plain world"
    print(f"world ({source}): {ship.height:,} shipments, {lease.height:,} leases, "
          f"{party.height:,} parties, {0 if screen is None else screen.height:,} list entries "
          f"in {time.perf_counter() - t0:.1f} s")

    reference = load_reference()
    t1 = time.perf_counter()
    stats = fit_feature_stats(ship, lease, party, reference)
    t2 = time.perf_counter()
    frame = build_features(ship, lease, party, screen, reference, stats)
    t3 = time.perf_counter()
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"fit_feature_stats: {t2 - t1:.1f} s")
    print(f"build_features: {frame.height:,} rows x {frame.width} columns in {t3 - t2:.1f} s")
    print(f"peak RSS (whole process, world generation included): {peak_gib:.2f} GiB")


if __name__ == "__main__":
    main()
