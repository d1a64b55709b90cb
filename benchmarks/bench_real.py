"""Real declarations: KCS 2020 → 2021-Q1, the detector beside plain LightGBM and the paper.

Maps the KCS files with the shipped mapping (data/mappings/kcs.toml), trains the detector
on 2020 through the real pipeline (`experiments/kcs.toml`, MLflow in a temporary
DETECTOR_HOME), scores 2021-Q1 *without* Q1's labels (its case memory knows only the 2020
decisions: those stored in the model and the 2020 dataset given as --history), and prints
precision among the top 5% and 10% of Q1 against Q1's labels. Beside it, on the same
split and labels: plain LightGBM on the raw columns, the paper's published figures, and
an ablation (the families the KCS config leaves out put back in: case memory, the
consignee's running counts; and each family taken away: unit value, the configured
extra-column inputs, novelty flags).

    python benchmarks/bench_real.py [--kcs ../shared/data/kcs] [--no-ablation]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

# On a shared machine, OpenMP threads that spin while waiting slow LightGBM several-fold.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_KCS = ROOT.parent.parent / "shared" / "data" / "kcs"
MAPPING = ROOT / "data" / "mappings" / "kcs.toml"
CONFIG = ROOT / "experiments" / "kcs.toml"
# Jeong et al. 2022, Table 3: train 2020, validate 2021-Q1, precision among the top 5% /
# 10% of the *test* months (2021-Q2, not distributed here).
PAPER = {"paper: LightGBM (2021-Q2)": (0.762, 0.641),
         "paper: XGBoost (2021-Q2)": (0.675, 0.579),
         "paper: CatBoost (2021-Q2)": (0.621, 0.520)}
RAW_NUMERIC = ["Tax Rate", "Net Mass", "Item Price"]
NOT_INPUTS = ["Declaration ID", "Date", "Fraud", "Critical Fraud"]


def precision_at(y: np.ndarray, scores: np.ndarray, share: float) -> float:
    k = int(np.ceil(share * len(y)))
    order = np.argsort(-scores, kind="stable")[:k]
    return float(y[order].mean())


def plain_lightgbm(kcs: Path, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """LightGBM on the raw KCS columns (categories as codes of the sorted training values,
    unseen = missing; numbers as they are), default parameters, 300 rounds, fitted on
    every 2020 row: (Q1 labels, Q1 scores) in file order."""
    import lightgbm as lgb

    train = pl.read_csv(kcs / "declarations_2020.csv", infer_schema=False)
    test = pl.read_csv(kcs / "declarations_2021q1.csv", infer_schema=False)
    categorical = [c for c in train.columns if c not in RAW_NUMERIC + NOT_INPUTS]
    codes = {c: {v: i for i, v in enumerate(train[c].drop_nulls().unique().sort().to_list())}
             for c in categorical}

    def matrix(df: pl.DataFrame) -> np.ndarray:
        cols = [df[c].cast(pl.Float64) for c in RAW_NUMERIC]
        cols += [df[c].replace_strict(codes[c], default=None, return_dtype=pl.Float64)
                 for c in categorical]
        return np.column_stack([c.to_numpy() for c in cols])

    params = {"objective": "binary", "verbosity": -1, "num_threads": 2, "seed": seed,
              "deterministic": True}
    booster = lgb.train(params, lgb.Dataset(matrix(train), train["Fraud"].cast(pl.Int64)
                                            .to_numpy()), num_boost_round=300)
    return test["Fraud"].cast(pl.Int64).to_numpy(), booster.predict(matrix(test))


def run_detector(train_dir: Path, q1_dir: Path, truth: pl.DataFrame, config: Path,
                 home: Path, label: str) -> tuple[float, float, dict]:
    from detector.batch import load_batch
    from detector.scoring import load_model, score_batch
    from detector.training import train

    os.environ["DETECTOR_HOME"] = str(home)
    t0 = time.perf_counter()
    result = train(train_dir, config_path=config, experiment=f"bench-real-{label}",
                   model_name=f"kcs-{label}")
    t1 = time.perf_counter()
    batch = load_batch(q1_dir, [train_dir])
    scored = score_batch(batch, load_model(f"models:/kcs-{label}/{result.version}"), top=0)
    t2 = time.perf_counter()
    test = scored.frame.select("record_id", "risk_score").join(truth, on="record_id",
                                                               how="inner")
    if test.height != truth.height:
        raise SystemExit(f"{label}: scored {test.height} of {truth.height} Q1 records")
    y, s = test["label"].to_numpy(), test["risk_score"].to_numpy()
    print(f"  {label}: train {t1 - t0:.0f}s, score {t2 - t1:.0f}s; training test slice "
          f"PR-AUC {result.metrics['pr_auc']:.3f}", file=sys.stderr)
    return precision_at(y, s, 0.05), precision_at(y, s, 0.10), result.metrics


def variant(config: Path, directory: Path, name: str, **changes) -> Path:
    """A copy of the training config with some [inputs] settings changed."""
    from detector.config import load_config

    base = load_config(config)
    inputs = dataclasses.replace(base.inputs, **changes)
    lines = [f'name = "{name}"', f'seed = {base.seed}', "[split]",
             f"fit = {base.split.fit}", f"calibrate = {base.split.calibrate}", "[lightgbm]"]
    lines += [f"{k} = {v}" for k, v in dataclasses.asdict(base.lightgbm).items()]
    lines += ["[inputs]"]
    lines += [f"{k} = {list(v)!r}".replace("'", '"')
              for k, v in dataclasses.asdict(inputs).items()]
    path = directory / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kcs", type=Path, default=DEFAULT_KCS,
                        help="directory holding declarations_2020.csv and "
                             "declarations_2021q1.csv")
    parser.add_argument("--no-ablation", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from detector.config import load_config
    from detector.importer import import_data

    t0 = time.perf_counter()
    rows: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-real-") as tmp:
        tmp = Path(tmp)
        train_dir, q1_dir = tmp / "kcs_2020", tmp / "kcs_2021q1"
        import_data([args.kcs / "declarations_2020.csv"], train_dir, MAPPING)
        import_data([args.kcs / "declarations_2021q1.csv"], q1_dir, MAPPING)
        # Q1 is scored without its labels: they are the answer key only
        truth = pl.read_parquet(q1_dir / "labels.parquet").select("record_id", "label")
        (q1_dir / "labels.parquet").unlink()
        print(f"imported {args.kcs}: 2020 and 2021-Q1 ({truth.height} records, "
              f"{int(truth['label'].sum())} frauds) in {time.perf_counter() - t0:.0f}s",
              file=sys.stderr)
        p5, p10, _ = run_detector(train_dir, q1_dir, truth, CONFIG, tmp / "home",
                                        "detector")
        rows["detector (experiments/kcs.toml)"] = (p5, p10)
        if not args.no_ablation:
            kept_out = load_config(CONFIG).inputs.without
            ablations = {
                "  with case memory": {"without": tuple(f for f in kept_out
                                                         if f != "case_memory")},
                "  with case memory and running counts": {"without": ()},
                "  without unit value (peers, own history)": {
                    "without": (*kept_out, "unit_value")},
                "  without extra-column inputs": {"categorical": (), "numeric": ()},
                "  without novelty flags": {"without": (*kept_out, "novelty")},
            }
            for n, (label, changes) in enumerate(ablations.items()):
                config = variant(CONFIG, tmp, f"ablation{n}", **changes)
                p5, p10, _ = run_detector(train_dir, q1_dir, truth, config, tmp / "home",
                                          f"ablation{n}")
                rows[label] = (p5, p10)
        y, s = plain_lightgbm(args.kcs, args.seed)
        rows["plain LightGBM, raw columns"] = (precision_at(y, s, 0.05),
                                               precision_at(y, s, 0.10))
    rows.update(PAPER)
    base = float(truth["label"].mean())
    print(f"\nKCS customs declarations: train on 2020 (37,385), score 2021-Q1 "
          f"({truth.height:,}; fraud rate {base:.3f}) without its labels.")
    print(f"{'model':<44}{'precision@5%':>14}{'precision@10%':>15}")
    print("-" * 73)
    for name, (a, b) in rows.items():
        print(f"{name:<44}{a:>14.3f}{b:>15.3f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"\ntargets: precision@5% >= 0.88, @10% >= 0.80; wall {time.perf_counter() - t0:.0f} s;"
          f" peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
