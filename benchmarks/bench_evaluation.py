"""Held-out evaluation: train on the first 18 months, score the last 6, against the truth.

For each simulator seed: simulate a world, split it at month 18 (the training dataset
keeps the simulator's partial labels; the scored dataset has none and uses the training
one as --history), train the detector through the real pipeline (MLflow in a temporary
DETECTOR_HOME), score the last 6 months, and evaluate against truth.parquet. Three
baselines run on the same split. Prints mean and spread over the seeds.

    python benchmarks/bench_evaluation.py --shipments 200000 --seeds 1 2 3
    python benchmarks/bench_evaluation.py --seeds 1 --config experiments/balance_schemes.toml
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl

from detector.evaluation import evaluate
from detector.tables import read_dataset, write_table

TABLES = ("shipments", "leases", "parties", "labels", "screening_list")


def _add_months(d: date, months: int) -> date:
    y, m = divmod(d.month - 1 + months, 12)
    return date(d.year + y, m + 1, 1)


def split_world(world: Path, train_dir: Path, test_dir: Path, cutoff: date) -> None:
    """Records before ``cutoff`` (with their labels) → train; the rest (no labels) → test."""
    ds = read_dataset(world)
    for d in (train_dir, test_dir):
        d.mkdir(parents=True, exist_ok=True)
        write_table(ds.parties, d / "parties.csv")
        if ds.screening_list is not None:
            write_table(ds.screening_list, d / "screening_list.csv")
    s_train = ds.shipments.filter(pl.col("export_date") < cutoff)
    l_train = ds.leases.filter(pl.col("start_date") < cutoff)
    write_table(s_train, train_dir / "shipments.csv")
    write_table(l_train, train_dir / "leases.csv")
    write_table(ds.shipments.filter(pl.col("export_date") >= cutoff), test_dir / "shipments.csv")
    write_table(ds.leases.filter(pl.col("start_date") >= cutoff), test_dir / "leases.csv")
    train_ids = pl.concat([s_train.select(pl.col("shipment_id").alias("record_id")),
                           l_train.select(pl.col("lease_id").alias("record_id"))])
    labels = ds.labels.join(train_ids, on="record_id", how="semi")
    # Only what was decided before the cut-off was known at training time.
    labels = labels.filter(pl.col("decided_on").is_null() | (pl.col("decided_on") < cutoff))
    write_table(labels, train_dir / "labels.csv")


def run_seed(seed: int, shipments: int, workdir: Path,
             config: str | None = None) -> dict[str, dict[str, float]]:
    from detector.batch import load_batch
    from detector.models.baselines import (
        ChecklistBaseline,
        RawIsolationForest,
        RawLightGBM,
        raw_frame,
    )
    from detector.reference import load_reference
    from detector.scoring import load_model, score_batch
    from detector.simulation import simulate
    from detector.training import train

    start = date(2024, 1, 1)
    world, train_dir, test_dir = workdir / "world", workdir / "train", workdir / "test"
    t0 = time.perf_counter()
    simulate(world, seed=seed, shipments=shipments, start=start, months=24)
    split_world(world, train_dir, test_dir, _add_months(start, 18))
    truth = pl.read_parquet(world / "truth.parquet")
    t1 = time.perf_counter()
    os.environ["DETECTOR_HOME"] = str(workdir / "home")
    trained = train(train_dir, config_path=config, experiment=f"bench-seed-{seed}",
                    model_name="chip-diversion")
    t2 = time.perf_counter()
    batch = load_batch(test_dir, [train_dir])
    scored = score_batch(batch, load_model(None), top=1000)
    t3 = time.perf_counter()
    print(f"  seed {seed}: simulate+split {t1 - t0:.0f}s, train {t2 - t1:.0f}s, "
          f"score {t3 - t2:.0f}s (model version {trained.version})", file=sys.stderr)

    test = scored.frame.select("record_kind", "record_id", "risk_score").join(
        truth, on=["record_kind", "record_id"], how="left").sort(["record_kind", "record_id"])
    y = test["label"].fill_null(0).to_numpy()
    typ = test["typology"].to_list()
    results = {"detector": evaluate(y, test["risk_score"].to_numpy(), typ)}

    ref = load_reference()
    train_batch = load_batch(train_dir)
    raw_train = raw_frame(train_batch.shipments, train_batch.leases, train_batch.parties, ref)
    raw_test = raw_frame(batch.dataset.shipments, batch.dataset.leases, batch.parties, ref) \
        .join(truth, on=["record_kind", "record_id"], how="left").sort(["record_kind", "record_id"])
    y_raw = raw_test["label"].fill_null(0).to_numpy()
    typ_raw = raw_test["typology"].to_list()
    labelled = raw_train.join(train_batch.dataset.labels.select("record_kind", "record_id",
                                                                "label"),
                              on=["record_kind", "record_id"], how="inner")
    baselines = {
        "checklist": ChecklistBaseline().fit(raw_train),
        "iforest_raw": RawIsolationForest(seed).fit(raw_train),
        "lightgbm_raw": RawLightGBM(seed).fit(labelled, labelled["label"].to_numpy()),
    }
    for name, model in baselines.items():
        results[name] = evaluate(y_raw, model.decision_function(raw_test), typ_raw,
                                 probability=name == "lightgbm_raw")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shipments", type=int, default=200_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--config", default=None,
                        help="training config (TOML, as `detector train --config`)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    per_seed = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            per_seed.append(run_seed(seed, args.shipments, Path(tmp), args.config))
    models = list(per_seed[0])
    metrics = ["pr_auc", "precision_at_1pct", "recall_at_5pct", "brier"]
    typologies = sorted({k for r in per_seed for m in r.values() for k in m
                         if k.startswith("recall_at_5pct_")})
    print(f"\nHeld-out evaluation: {args.shipments:,} shipments per world, seeds {args.seeds}, "
          f"training config {args.config or 'the defaults'}; "
          "train on months 1-18 (partial labels), score months 19-24, truth from the simulator.")
    print("mean ± standard deviation over seeds\n")
    header = f"{'metric':<38}" + "".join(f"{m:>20}" for m in models)
    print(header)
    print("-" * len(header))
    for metric in metrics + typologies:
        cells = []
        for m in models:
            vals = np.array([r[m].get(metric, np.nan) for r in per_seed], dtype=float)
            cells.append("-" if np.all(np.isnan(vals)) else
                         f"{np.nanmean(vals):.3f} ± {np.nanstd(vals):.3f}")
        print(f"{metric:<38}" + "".join(f"{c:>20}" for c in cells))
    pos = np.mean([r["detector"]["positives"] for r in per_seed])
    n = np.mean([r["detector"]["records"] for r in per_seed])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"\nscored records per seed: {n:,.0f} (diversions: {pos:,.0f}); "
          f"wall {time.perf_counter() - t0:.0f} s; peak RSS {peak:.2f} GiB; "
          "brier only for models that output probabilities")


if __name__ == "__main__":
    main()
