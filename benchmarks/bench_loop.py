"""Replay of the review loop: score → queue → decide → retrain, month by month.

A simulated world of ``--months`` months in which one scheme (``--late-scheme``) appears
only from month ``--late-from-month``. The first ``--warmup-months`` months train the
first model on the simulator's own partial labels (what investigations had confirmed
before the loop starts). Then, for each later month:

1. build the features of every record dated up to the month's end (nothing later is
   seen: re-exports that happen after the month are not yet known), with the decisions
   so far in the case memory (each record sees only those dated before it;
   ``--no-case-memory`` leaves it empty, as the replay did before 2026-11-30);
2. score the month's records with the current model (detector.scoring.score_frame) and
   choose a queue of ``--capacity`` records (detector.queue.mark_queue) with the given
   ``--explore`` share;
3. decide every queued record from the simulator's truth, stored through the decision
   store (detector.decisions) like an analyst's decision;
4. retrain on all labels so far (the warm-up labels and the stored decisions, merged by
   detector.decisions.merge_labels) with the training protocol's split (older labels fit,
   the latest quarter early-stops and calibrates; ``--calibrate`` sets that share;
   ``--config`` the training settings, as `detector train --config`), the
   features rebuilt with the month's decisions in the case memory (shipments' and
   leases'). The model's labelled cells (of the fit slice, as `detector train` stores
   them) go with it to the queue (detector.queue.labelled_cells).

``--adaptive`` sets each month's explore share from the last month's outcome
(detector.queue.adaptive_share); a ``--config`` with ``[queue] explore_order = "value"``
(experiments/explore_value.toml) chooses the explore slots as `detector score` does for a
model trained with it.

Printed: diversions caught per month and in total for each explore share, and the
late scheme's recall at capacity (caught / present) over the last three months; on
stderr, what each explore slot took (kind|destination, unusualness, risk, outcome);
with ``--diagnose``, each month's late-scheme cases (rank, risk, unusualness, case
memory), how many of them were confirmed before, and at each retraining how many
confirmed late cases sit in the fit slice and how many in the calibration slice.
Labels that cannot train a model (no confirmed case, or none cleared, in the fit slice:
seed 21's warm-up) are said on stderr: the loop then scores with rules + unsupervised
detectors fitted on the month (as `detector score` without a champion) until the
decisions can train one, and a retraining that cannot train keeps the previous model.
Simplifications: retraining calls the model layers directly (no MLflow run per month),
and the learned feature statistics are fitted once on the warm-up months.

    python benchmarks/bench_loop.py                       # defaults below
    python benchmarks/bench_loop.py --explore 0 0.1 0.2 --capacity 25 --seeds 11 12 13
    python benchmarks/bench_loop.py --seeds 22 23 --diagnose --calibrate 0.1
        --config experiments/early_stop_logloss.toml     # (one command line)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import polars as pl


def month_bounds(start: date, months: int) -> list[tuple[date, date]]:
    from detector.simulation import add_months

    return [(add_months(start, m), add_months(start, m + 1) - timedelta(days=1))
            for m in range(months)]


class NotTrainable(ValueError):
    """The labels so far cannot train a model (no confirmed case, or none cleared, in the
    fit slice)."""


def train_model(frame: pl.DataFrame, labels: pl.DataFrame, config, features: list[str],
                calibrate: float = 0.25, diagnose: str | None = None):
    from detector.models.ensemble import DiversionModel
    from detector.models.supervised import scheme_weights
    from detector.queue import labelled_cells
    from detector.training import _labelled, split_by_time

    labelled = _labelled(frame, labels)
    slices = split_by_time(labelled, 1.0 - calibrate, calibrate)
    fit_labels = set(slices["fit"]["label"].unique().to_list())
    if not {0, 1} <= fit_labels:
        # `detector train` refuses such labels (CLI.md: training needs labels 0 and 1); the
        # loop keeps scoring with what it had (the caller says so)
        raise NotTrainable(
            f"{labelled.height} labels up to {labelled['record_date'].max()}, "
            f"{int(labelled['label'].sum())} confirmed; the fit slice (the oldest "
            f"{1 - calibrate:.0%}, {slices['fit'].height} labels) has label values "
            f"{sorted(fit_labels) or 'none'}, training needs 0 and 1")
    # what the model's trees learned from, per cell: the queue's familiarity (as `detector
    # train` stores it with a model: the fit slice)
    cells = labelled_cells(slices["fit"])
    cutoff = slices["fit"]["record_date"].max()
    unlabelled = frame.join(labels, on=["record_kind", "record_id"], how="anti") \
        .filter(pl.col("record_date") <= cutoff)
    if diagnose is not None:
        late = pl.col("typology") == diagnose
        diag = {n: (part.filter(late & (pl.col("label") == 1)).height,
                    int(part["label"].sum()), part.height) for n, part in slices.items()
                if n != "test"}
        print(f"  retrain: late/positives/labels in fit {diag['fit']}, calibrate "
              f"{diag['calibrate']}", file=sys.stderr)
    model = DiversionModel(
        features, lightgbm_params=config.lightgbm_params(),
        num_boost_round=config.lightgbm.num_boost_round,
        early_stopping_rounds=config.lightgbm.early_stopping_rounds,
        unsupervised_detectors=config.unsupervised.detectors,
        max_fit_rows=config.unsupervised.max_fit_rows, random_state=config.seed,
    ).fit(slices["fit"], slices["fit"]["label"].to_numpy(), unlabelled=unlabelled,
          valid_frame=slices["calibrate"], valid_labels=slices["calibrate"]["label"].to_numpy(),
          sample_weight=scheme_weights(slices["fit"]["label"].to_numpy(),
                                       slices["fit"]["typology"].to_list(),
                                       config.lightgbm.balance_schemes))
    if diagnose is not None:
        print(f"  retrain: best iteration {model.supervised_.best_iteration_}, calibration "
              f"{model.supervised_.calibration_}", file=sys.stderr)
    return model, cells


def replay(args, seed: int) -> dict[float, list[dict]]:
    """One simulated world replayed once per explore share: per-month rows."""
    from detector.batch import load_batch
    from detector.config import load_config
    from detector.decisions import DecisionStore, make_decision, merge_labels
    from detector.models.ensemble import ModelBundle
    from detector.queue import LABELLED_CELLS, adaptive_share, mark_queue
    from detector.reference import load_reference
    from detector.scoring import LoadedModel, score_frame
    from detector.simulation import simulate
    from features.build import build_features, fit_feature_stats
    from features.registry import model_feature_names

    start = date(2024, 1, 1)
    months = month_bounds(start, args.months)
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        tmp = Path(tmp)
        world = tmp / "world"
        print(f"seed {seed}: simulating {args.shipments} shipments over "
              f"{args.months + args.extra_months} months, {args.late_scheme} only from month "
              f"{args.late_from_month}", file=sys.stderr)
        simulate(world, seed=seed, shipments=args.shipments, start=start,
                 months=args.months + args.extra_months, late_scheme=args.late_scheme,
                 late_from_month=args.late_from_month)
        batch = load_batch(world)
        truth = pl.read_parquet(world / "truth.parquet")
        reference = load_reference()
        shipments, leases = batch.shipments, batch.leases
        warm_end = months[args.warmup_months - 1][1]
        stats = fit_feature_stats(shipments.filter(pl.col("export_date") <= warm_end),
                                  leases.filter(pl.col("start_date") <= warm_end),
                                  batch.parties, reference)
        features = model_feature_names()
        config = load_config(args.config)

        def frame_until(end: date, labels: pl.DataFrame | None) -> pl.DataFrame:
            """Every record dated up to ``end``; the case memory from ``labels`` (each
            record sees only decisions dated before it)."""
            return build_features(shipments.filter(pl.col("export_date") <= end),
                                  leases.filter(pl.col("start_date") <= end), batch.parties,
                                  batch.screening_list, reference, stats,
                                  labels=labels if args.case_memory else None) \
                .sort(["record_kind", "record_id"])

        warm_last = months[args.warmup_months - 1][1]
        warm_ids = pl.concat([
            shipments.filter(pl.col("export_date") <= warm_last)
            .select(pl.lit("shipment").alias("record_kind"), pl.col("shipment_id")
                    .alias("record_id")),
            leases.filter(pl.col("start_date") <= warm_last)
            .select(pl.lit("lease").alias("record_kind"), pl.col("lease_id")
                    .alias("record_id"))])
        warm_labels = batch.dataset.labels.join(warm_ids, on=["record_kind", "record_id"],
                                                how="semi")
        try:
            first_model = train_model(frame_until(warm_last, warm_labels), warm_labels,
                                      config, features, args.calibrate)
        except NotTrainable as exc:
            # as `detector score` without a champion: rules + unsupervised detectors fitted
            # on the batch, until the decisions can train a model
            print(f"seed {seed}: no warm-up model ({exc}); the loop starts with rules + "
                  f"unsupervised detectors fitted on each month", file=sys.stderr)
            first_model = (None, None)

        results = {}
        for share in args.explore:
            store = DecisionStore(tmp / f"decisions-{share}.sqlite")
            model, cells = first_model
            rows = []
            labels = warm_labels
            current = share  # this month's explore share (--adaptive: set from the last)
            for m in range(args.warmup_months, args.months):
                first, last = months[m]
                frame = frame_until(last, labels)  # decisions so far: the case memory
                month = frame.filter(pl.col("record_date").is_between(first, last))
                if model is None:
                    loaded = LoadedModel(None, "rules+unsupervised")
                else:
                    loaded = LoadedModel(ModelBundle(model, features, stats.to_dict(),
                                                     reference.version,
                                                     provenance={LABELLED_CELLS: cells}),
                                         "replay")
                ranked = score_frame(month, loaded, top=0)
                queued = mark_queue(ranked, args.capacity, current, supervised=model is not None,
                                    familiar=cells, order=config.queue.explore_order) \
                    .filter(pl.col("queue_reason").is_not_null()) \
                    .select("record_kind", "record_id", "risk_score", "queue_reason",
                            "destination", "unsupervised_score") \
                    .join(truth, on=["record_kind", "record_id"], how="left")
                store.add([make_decision(
                    r["record_kind"], r["record_id"],
                    "confirm" if r["label"] == 1 else "clear", "replay",
                    typology=r["typology"] or "unspecified", decided_on=last,
                    risk_score=r["risk_score"], source="replay")
                    for r in queued.iter_rows(named=True)])
                present = month.select("record_kind", "record_id").join(
                    truth, on=["record_kind", "record_id"], how="left")
                late = pl.col("typology") == args.late_scheme
                rows.append({
                    "month": first.strftime("%Y-%m"), "records": month.height,
                    "explore": current,
                    "explored": queued.filter(pl.col("queue_reason") == "explore").height,
                    "trained_model": model is not None,
                    "diversions": int((present["label"] == 1).sum()),
                    "caught": int((queued["label"] == 1).sum()),
                    "caught_by_explore": int(((queued["label"] == 1)
                                              & (queued["queue_reason"] == "explore")).sum()),
                    "late_present": present.filter(late & (pl.col("label") == 1)).height,
                    "late_caught": queued.filter(late & (pl.col("label") == 1)).height,
                    "late_by_explore": queued.filter(late & (pl.col("label") == 1)
                                                     & (pl.col("queue_reason") == "explore"))
                    .height,
                })
                if args.diagnose:
                    diagnose(ranked, month, queued, truth, labels, args)
                if args.dump is not None:
                    dump = Path(args.dump) / f"seed{seed}-explore{share}-{first:%Y-%m}.parquet"
                    dump.parent.mkdir(parents=True, exist_ok=True)
                    ranked.join(month.select("record_kind", "record_id", *[
                        c for c in month.columns if c not in ranked.columns]),
                        on=["record_kind", "record_id"], how="left") \
                        .join(truth, on=["record_kind", "record_id"], how="left") \
                        .with_columns(pl.lit(json.dumps(cells)).alias("__cells")) \
                        .write_parquet(dump)
                explored = queued.filter(pl.col("queue_reason") == "explore")
                if explored.height:
                    print("  explored: " + ", ".join(
                        f"{r['record_kind']}|{r['destination']} u={r['unsupervised_score']:.2f} "
                        f"r={r['risk_score']:.2f} -> {r['typology'] if r['label'] == 1 else 0}"
                        for r in explored.iter_rows(named=True)), file=sys.stderr)
                if args.adaptive and share > 0:
                    current = adaptive_share(
                        current, rows[-1]["explored"], rows[-1]["caught_by_explore"],
                        base=share, low=min(share, 1 / args.capacity),
                        high=min(1.0, max(share, args.adaptive_high * share)))
                labels, _ = merge_labels(warm_labels, store.labels(),
                                         frame.select("record_kind", "record_id"))
                if args.case_memory:  # the month's decisions join the case memory
                    frame = frame_until(last, labels)
                try:
                    model, cells = train_model(frame, labels, config, features,
                                               args.calibrate,
                                               args.late_scheme if args.diagnose else None)
                except NotTrainable as exc:
                    print(f"seed {seed}, explore {share}, {first:%Y-%m}: no retraining "
                          f"({exc}); next month scores with "
                          f"{'the previous model' if model is not None else 'rules + unsupervised detectors'}",
                          file=sys.stderr)
                print(f"seed {seed}, explore {share}: {rows[-1]}", file=sys.stderr)
            results[share] = rows
    return results


def diagnose(ranked: pl.DataFrame, month: pl.DataFrame, queued: pl.DataFrame, truth: pl.DataFrame,
             labels: pl.DataFrame, args) -> None:
    """On stderr: the late scheme's cases this month (caught or not), their rank, risk and
    case memory, and how many of its cases were confirmed before."""
    late = (pl.col("typology") == args.late_scheme) & (pl.col("label") == 1)
    confirmed = labels.join(truth.select("record_kind", "record_id", "typology"),
                            on=["record_kind", "record_id"], how="left") \
        .filter(pl.col("label") == 1)
    memory = [c for c in ("consignee_confirmed_before", "linked_confirmed_before",
                          "exporter_confirmed_before", "route_confirmed_before")
              if c in month.columns]
    cases = ranked.select("record_kind", "record_id", "risk_score", "unsupervised_score") \
        .with_row_index("rank", offset=1) \
        .join(month.select("record_kind", "record_id", *memory),
              on=["record_kind", "record_id"], how="left") \
        .join(truth, on=["record_kind", "record_id"], how="left").filter(late)
    threshold = queued.filter(pl.col("queue_reason") == "risk")["risk_score"].min()
    print(f"  late: {cases.height} present, {queued.filter(late).height} caught; "
          f"{confirmed.filter(pl.col('typology') == args.late_scheme).height} confirmed "
          f"before; risk threshold {threshold}", file=sys.stderr)
    for r in cases.iter_rows(named=True):
        print(f"    {r['record_kind']} {r['record_id']} rank {r['rank']} risk "
              f"{r['risk_score']:.3f} u={r.get('unsupervised_score') or 0:.2f} "
              + " ".join(f"{c[:-16]}={r.get(c)}" for c in memory), file=sys.stderr)


def print_table(args, seed: int, results: dict[float, list[dict]]) -> None:
    shares = args.explore
    base = results[shares[0]]
    header = f"{'month':<8} {'records':>7} {'divers.':>7} " + " ".join(
        f"{'caught@' + str(s):>10}" for s in shares) + f" {'late':>5} " + " ".join(
        f"{'late@' + str(s):>8}" for s in shares)
    print(f"seed {seed}")
    print(header)
    print("-" * len(header))
    for i, row in enumerate(base):
        print(f"{row['month']:<8} {row['records']:>7} {row['diversions']:>7} " + " ".join(
            f"{results[s][i]['caught']:>10}" for s in shares) + f" {row['late_present']:>5} "
            + " ".join(f"{results[s][i]['late_caught']:>8}" for s in shares))
    print("-" * len(header))
    print(f"{'total':<8} {sum(r['records'] for r in base):>7} "
          f"{sum(r['diversions'] for r in base):>7} " + " ".join(
              f"{sum(r['caught'] for r in results[s]):>10}" for s in shares) + " "
          + f"{sum(r['late_present'] for r in base[-3:]):>5} (last 3 months) " + " ".join(
              f"{sum(r['late_caught'] for r in results[s][-3:]):>8}" for s in shares))
    for s in shares:
        untrained = [r["month"] for r in results[s] if not r["trained_model"]]
        if untrained:
            print(f"explore {s}: no trained model yet in {', '.join(untrained)} (the labels "
                  f"so far had no confirmed case, or none cleared, in the fit slice): "
                  f"scored by rules + unsupervised detectors fitted on the month")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shipments", type=int, default=20000,
                        help="shipments in the whole simulated world (with --extra-months)")
    parser.add_argument("--months", type=int, default=12, help="months replayed")
    parser.add_argument("--extra-months", type=int, default=2,
                        help="months simulated after the replay and never used: the "
                             "simulator starts no scheme in a world's last 60 days, so its "
                             "final months hold almost no diversions")
    parser.add_argument("--seeds", type=int, nargs="+", default=[11])
    parser.add_argument("--late-scheme", default="cloud_lease")
    parser.add_argument("--late-from-month", type=int, default=7)
    parser.add_argument("--warmup-months", type=int, default=3)
    parser.add_argument("--capacity", type=int, default=25, help="queue size per month")
    parser.add_argument("--explore", type=float, nargs="+", default=[0.0, 0.1, 0.2])
    parser.add_argument("--adaptive", action="store_true",
                        help="each month's explore share from the last month's outcome "
                             "(detector.queue.adaptive_share): doubled when its explore "
                             "slots found a confirmed diversion, halved when none; from "
                             "one slot up to --adaptive-high x the --explore share")
    parser.add_argument("--adaptive-high", type=float, default=2.0,
                        help="with --adaptive: the largest share, as a multiple of the "
                             "--explore share (default 2)")
    parser.add_argument("--calibrate", type=float, default=0.25,
                        help="share of the labels, the latest, that early-stops and "
                             "calibrates each retraining (the rest fits)")
    parser.add_argument("--no-case-memory", dest="case_memory", action="store_false",
                        help="build features without the decisions so far (as the replay "
                             "did before 2026-11-30)")
    parser.add_argument("--diagnose", action="store_true",
                        help="on stderr, per month: the late scheme's cases, their rank, "
                             "risk and case memory, and where its confirmed cases went in "
                             "each retraining (fit or calibrate slice)")
    parser.add_argument("--config", default=None,
                        help="training config (TOML, as `detector train --config`), e.g. "
                             "experiments/early_stop_logloss.toml")
    parser.add_argument("--dump", default=None,
                        help="folder: write each month's ranked records (features, truth "
                             "and the model's labelled cells) as Parquet, for study")
    args = parser.parse_args(argv)

    wall = time.perf_counter()
    print(f"replay: {args.shipments} shipments, {args.months} months replayed, capacity "
          f"{args.capacity} per month, {args.late_scheme} from month {args.late_from_month}, "
          f"warm-up {args.warmup_months} months"
          + (f"; adaptive explore share (1 slot to {args.adaptive_high:g} x the share)"
             if args.adaptive else "") + "\n")
    by_seed = {}
    for seed in args.seeds:
        by_seed[seed] = replay(args, seed)
        print_table(args, seed, by_seed[seed])
    shares = args.explore
    print(f"over {len(args.seeds)} seed(s) {args.seeds}:")
    total = {s: sum(r["caught"] for res in by_seed.values() for r in res[s]) for s in shares}
    diversions = sum(r["diversions"] for res in by_seed.values() for r in res[shares[0]])
    for s in shares:
        late_present = sum(r["late_present"] for res in by_seed.values() for r in res[s][-3:])
        late_caught = sum(r["late_caught"] for res in by_seed.values() for r in res[s][-3:])
        by_explore = sum(r["caught_by_explore"] for res in by_seed.values() for r in res[s])
        slots = sum(r["explored"] for res in by_seed.values() for r in res[s])
        change = (total[s] - total[shares[0]]) / total[shares[0]] if total[shares[0]] \
            else float("nan")
        recall = late_caught / late_present if late_present else float("nan")
        print(f"  explore {s:<4}: caught {total[s]} of {diversions} diversions "
              f"({total[s] / diversions:.1%}; {change:+.1%} vs explore {shares[0]}; "
              f"{by_explore} through {slots} explore slots); {args.late_scheme} recall@capacity in the "
              f"last 3 months {late_caught}/{late_present} = {recall:.2f}")
    print(f"\nwall {time.perf_counter() - wall:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
