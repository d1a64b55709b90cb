"""Scale benchmark (issue #7): `detector train` and `detector score` on a large world.

    python benchmarks/bench_scale.py [--shipments 1000000] [--world DIR]
        [--list-entries 10000] [--parquet-shipments 0] [--skip-train] [--model URI]

What it does, printing every figure as it goes:
1. simulates a world (or uses --world) and expands its screening list to
   --list-entries entries with realistic variants (legal-form swaps, transliteration-
   style spellings, branch suffixes, other countries), written beside the world;
2. runs `detector train` as a child process (its own DETECTOR_HOME) and reports wall
   time, peak RSS and the time between its progress messages;
3. runs `detector score --top 1000` as a child process: wall time and peak RSS, the
   targets of issue #7 (30 s, 6 GiB on 1M shipments);
4. repeats scoring in this process, phase by phase — read, features, rules, each
   unsupervised detector, LightGBM, rank, reasons for the top N, write — so the
   breakdown uses the very functions `detector score` calls;
5. with --parquet-shipments N (e.g. 10000000): writes a world of N shipments as Parquet
   (the 1M world repeated with new ids and shifted dates; or reuse --parquet-world) and
   scores it with `detector score` as a child process, in parts of --chunk-rows
   shipments (default 1,000,000): wall time and peak RSS (target: 8 GiB).

Peak RSS of a child comes from os.wait4 (ru_maxrss of that child alone).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LEGAL_FORMS = ["Co., Ltd.", "Limited", "Pte. Ltd.", "Sdn. Bhd.", "LLC", "FZE", "FZCO", "GmbH",
               "Trading Co.", "Holdings Ltd.", "Technology Co., Ltd.", "Inc."]
COUNTRIES = ["CN", "HK", "MO", "AE", "SG", "MY", "TH", "RU", "IR", "TR", "VN", "KZ"]
SPELLINGS = [("Technology", "Tech"), ("Shenzhen", "Shen Zhen"), ("Intelligent", "Intelligence"),
             ("Computing", "Compute"), ("International", "Intl"), ("Electronics", "Electronic"),
             ("Beijing", "Peking"), ("Trading", "Trade"), ("Company", "Co")]


def expand_screening_list(base: pl.DataFrame, entries: int, seed: int = 0) -> pl.DataFrame:
    """``base`` plus variants of its names until it holds ``entries`` rows.

    Real lists carry many near-duplicate entries (aliases, branches, successor companies,
    other spellings); each variant applies one or two such edits to a base name and may
    move to another country and list.
    """
    rng = np.random.default_rng(seed)
    base = base.select("name", "alt_names", "country", "address", "list_name", "start_date")
    names = base["name"].to_list()
    need = max(entries - base.height, 0)
    pick = rng.integers(0, len(names), need)
    form_re = re.compile(r"[,\s]+(" + "|".join(re.escape(f) for f in LEGAL_FORMS) + r")\s*$",
                         re.IGNORECASE)
    out_names = []
    for i, j in enumerate(pick):
        name = names[j]
        stem = form_re.sub("", name)
        kind = i % 5
        if kind == 0:
            name = f"{stem} {LEGAL_FORMS[rng.integers(len(LEGAL_FORMS))]}"
        elif kind == 1:
            a, b = SPELLINGS[rng.integers(len(SPELLINGS))]
            name = name.replace(a, b) if a in name else f"{stem} {b}"
        elif kind == 2:
            name = f"{stem} ({['Hong Kong', 'Shenzhen', 'Dubai', 'Singapore'][i % 4]} Branch)"
        elif kind == 3:
            name = f"{stem} {['New', 'Global', 'Asia', 'United'][i % 4]} " \
                   f"{LEGAL_FORMS[rng.integers(len(LEGAL_FORMS))]}"
        else:
            name = f"{stem} {i:05d} {LEGAL_FORMS[rng.integers(len(LEGAL_FORMS))]}"
        out_names.append(name)
    source = base[pick.tolist()] if need else base.clear()
    variants = source.with_columns(
        name=pl.Series(out_names, dtype=pl.String),
        country=pl.Series(rng.choice(COUNTRIES, need).tolist(), dtype=pl.String),
        alt_names=pl.lit(None, base.schema["alt_names"]))
    return pl.concat([base, variants]).head(entries)


def run_child(args: list[str], env: dict, log_path: Path) -> tuple[float, float, int, str]:
    """Wall seconds, peak RSS (GiB) and exit code of one child; stderr is timestamped."""
    began = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        # stderr carries progress; stamp each line as it arrives
        import threading

        def pump():
            for line in proc.stderr:
                log.write(f"{time.perf_counter() - began:7.1f}s {line}")
                log.flush()
        pumper = threading.Thread(target=pump)
        pumper.start()
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        pumper.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - began, usage.ru_maxrss / 1024 ** 2, proc.returncode, stdout


def in_process_phases(world: Path, screening_list: Path, model_uri: str, out: Path,
                      top: int) -> list[tuple[str, float]]:
    """`detector score`'s steps, timed one by one in this process."""
    from detector.batch import feature_frame, load_batch
    from detector.models.ensemble import FallbackModel
    from detector.reasons import full_reasons, rule_labels
    from detector.scoring import load_model, rank, write_scores
    from features.registry import model_feature_names
    from features.stats import FeatureStats

    phases = []

    def lap(name, began):
        phases.append((name, time.perf_counter() - began))
        return time.perf_counter()

    t = time.perf_counter()
    batch = load_batch(world, [], screening_list)
    t = lap("read (CSV/Parquet, validation, screening list)", t)
    model = load_model(model_uri)
    t = lap("load model bundle", t)
    stats = None if model.fallback else FeatureStats.from_dict(model.bundle.feature_stats)
    frame = feature_frame(batch, stats)
    t = lap(f"features ({frame.height:,} rows x {frame.width} columns)", t)
    scorer = (FallbackModel(model_feature_names()).fit(frame) if model.fallback
              else model.bundle.model)
    hits = scorer.rules_.hits(frame)
    t = lap("rules layer", t)
    unsup = scorer.unsupervised_
    x = unsup._prepare(frame)
    t = lap("unsupervised: feature matrix", t)
    per_detector = {}
    for name, det in unsup.detectors_.items():
        raw = det.decision_function(x)
        per_detector[name] = np.searchsorted(unsup.train_scores_[name], raw, "right") \
            / len(unsup.train_scores_[name])
        t = lap(f"unsupervised: {name}", t)
    layered = frame.with_columns(
        rule_points=hits["rule_points"], rule_hits=hits["rule_hits"],
        unsupervised_score=pl.Series(np.mean(np.vstack(list(per_detector.values())), axis=0)),
        **{f"unsupervised_{k}": pl.Series(v) for k, v in per_detector.items()})
    risk = scorer.risk(layered)
    t = lap("lightgbm risk" if not model.fallback else "fallback risk", t)
    ranked = rank(layered.with_columns(risk_score=pl.Series(risk, dtype=pl.Float64)))
    t = lap("rank", t)
    head, tail = ranked[:top], ranked[top:]
    head = head.with_columns(reasons=pl.Series(full_reasons(head, scorer, model.fallback),
                                               dtype=pl.String))
    t = lap(f"reasons for the top {top} (contributions + text)", t)
    tail = tail.with_columns(reasons=rule_labels(pl.col("rule_hits")))
    scored = pl.concat([head, tail], how="vertical_relaxed").with_columns(
        model=pl.lit(model.label))
    t = lap("rule labels for the other rows", t)
    from detector.contract import SCORES

    write_scores(scored.select(SCORES.column_names), out, {"benchmark": True})
    lap(f"write {out.suffix}", t)
    return phases


def parquet_world(world: Path, out: Path, shipments: int) -> Path:
    """A world of ``shipments`` rows as Parquet: the world's shipments repeated with new ids
    and dates shifted by whole years (so behaviour windows see realistic densities)."""
    from detector.tables import read_dataset

    ds = read_dataset(world)
    out.mkdir(parents=True, exist_ok=True)
    base = ds.shipments
    copies = -(-shipments // base.height)
    parts = []
    for k in range(copies):
        parts.append(base.with_columns(
            shipment_id=pl.col("shipment_id") + f"-r{k}",
            export_date=pl.col("export_date").dt.offset_by(f"{-k}y")))
    pl.concat(parts).head(shipments).write_parquet(out / "shipments.parquet",
                                                   row_group_size=250_000)
    del parts
    ds.leases.write_parquet(out / "leases.parquet")
    ds.parties.write_parquet(out / "parties.parquet")
    ds.screening_list.write_parquet(out / "screening_list.parquet")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shipments", type=int, default=1_000_000)
    ap.add_argument("--world", type=Path, default=None)
    ap.add_argument("--list-entries", type=int, default=10_000)
    ap.add_argument("--top", type=int, default=1000)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-phases", action="store_true")
    ap.add_argument("--model", default=None, help="score with this model instead of training")
    ap.add_argument("--parquet-shipments", type=int, default=0)
    ap.add_argument("--parquet-world", type=Path, default=None,
                    help="reuse this Parquet world (written by an earlier run) for step 5")
    ap.add_argument("--chunk-rows", type=int, default=None,
                    help="pass --chunk-rows to detector score (default: its own)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1024 ** 3:.0f} GiB; "
          f"python {platform.python_version()}, polars {pl.__version__}; workdir {work}")
    env = {**os.environ, "DETECTOR_HOME": str(work / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    detector = [sys.executable, "-m", "detector"]

    world = args.world
    if world is None:
        from detector.simulation import simulate

        world = work / "world"
        t = time.perf_counter()
        simulate(world, seed=0, shipments=args.shipments)
        print(f"simulate {args.shipments:,} shipments: {time.perf_counter() - t:.1f} s")
    from detector.reference import read_screening_list
    from detector.tables import write_table

    base_list = read_screening_list(world / "screening_list.csv")
    screening = work / f"screening_list_{args.list_entries}.csv"
    write_table(expand_screening_list(base_list, args.list_entries), screening)
    print(f"screening list: {base_list.height:,} simulated entries expanded to "
          f"{args.list_entries:,} -> {screening}")

    model_uri = args.model
    if not args.skip_train and model_uri is None:
        wall, peak, rc, stdout = run_child(
            [*detector, "train", str(world), "--screening-list", str(screening)], env,
            work / "train.log")
        print(f"\ndetector train: {wall:.1f} s wall, peak RSS {peak:.2f} GiB, exit {rc} "
              f"(target: 300 s)")
        print("  " + "\n  ".join((work / "train.log").read_text().splitlines()))
        print("  " + "\n  ".join(stdout.splitlines()[:2]))
        if rc != 0:
            sys.exit(rc)
        model_uri = "models:/chip-diversion@champion"

    score_args = ["--screening-list", str(screening), "--top", str(args.top)]
    if model_uri:
        score_args += ["--model", model_uri]
    if args.chunk_rows:
        score_args += ["--chunk-rows", str(args.chunk_rows)]
    def score_child(data: Path, name: str, what: str, targets: str) -> int:
        """Run `detector score` on ``data`` as a child process and print its figures."""
        out, log = work / f"{name}.parquet", work / f"{name}.log"
        wall, peak, rc, _ = run_child([*detector, "score", str(data), "--out", str(out),
                                       *score_args], env, log)
        rows = pl.scan_parquet(out).select(pl.len()).collect().item() if rc == 0 else 0
        print(f"\ndetector score{what} ({rows:,} records, reasons for the top {args.top}): "
              f"{wall:.1f} s wall, peak RSS {peak:.2f} GiB, exit {rc} (targets: {targets})")
        print("  " + "\n  ".join(log.read_text().splitlines()))
        return rc

    rc = score_child(world, "scores", "", "30 s, 6 GiB")
    if rc != 0:
        sys.exit(rc)

    if not args.skip_phases:
        os.environ["DETECTOR_HOME"] = env["DETECTOR_HOME"]
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        print("\nwhere the time goes (same steps in this process):")
        phases = in_process_phases(world, screening, model_uri, work / "phases.parquet", args.top)
        for name, seconds in phases:
            print(f"  {seconds:7.2f} s  {name}")
        print(f"  {sum(s for _, s in phases):7.2f} s  total")

    if args.parquet_shipments:
        t = time.perf_counter()
        if args.parquet_world is not None:
            big = args.parquet_world
            print(f"\nParquet world: {big}")
        else:
            big = parquet_world(world, work / "world_parquet", args.parquet_shipments)
            print(f"\nParquet world of {args.parquet_shipments:,} shipments written in "
                  f"{time.perf_counter() - t:.1f} s")
        score_child(big, "scores_big", ", Parquet", "8 GiB")


if __name__ == "__main__":
    main()
