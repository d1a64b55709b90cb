"""Digests of what scoring outputs, to prove a refactor changes no score (issue #15).

A digest hashes the scores table row by row in rank order: (record_kind, record_id,
rank) for the ranking, risk_score rounded to 1e-9 for the scores, and (reasons, model)
for the text. `test_score_digests.py` recomputes them and compares with
``score_digests.json``.

How the stored digests were made (issue #15): with the code before the scoring engine
(main at 1a1bda5, then at each merge of main, main's own code); the engine reproduced
every one of them exactly (scores, explain, pyfunc, report, fallback) before two
intended changes that are not about the engine: explain's context lists the party a
record resolved to (consignee_party, lessee_party), and the registry's red-flag
thresholds were aligned with the rules (demo20k's reasons digest). world200k: the
engine matched the pre-engine digests of main at 1a1bda5 and 5c0a04d; main's simulator
changed since, and the stored 200k entry was re-made with the engine's code (2064aba,
before main's report change of issue #13, so without a report digest): a guard against
later changes, not a before/after proof. After merging main's issue 12/13 changes
(mechanism-first reasons, explain's drivers and likely scheme, report columns), world10k
and demo20k were re-made with the merged code once it matched main's own code (e6f633d)
on every digest but the two intended changes above; the world200k entry then predated those
changes of main. After merging main's issues
10, 11 and 14 (main at a2d55df: case memory, learned inputs), world10k and demo20k were
re-made once the merged code matched main's own code at a2d55df on scores, report,
pyfunc and fallback digests, explain differing only by the intended party keys above
(checked by diffing explain's JSON of the top 3 records on world10k). world200k was
re-made at the same time, its scores, report and pyfunc digests equal to main's own code
at a2d55df (computed with that code) and explain differing as above. Issue 12's "the payer
is one fact" (reasons) changed the reasons, explain and report digests of all three worlds,
re-made with --write --with-200k; ranking and risk digests unchanged.

A change that is *meant* to change scores (a new feature, new reason wording) changes
these digests too: regenerate them, and say so in the commit, with

    .venv/bin/python tests/score_digests.py --write [--with-200k]

Which worlds (each simulated with the given arguments, trained with the default
config, then scored with the champion and, for the 10k world, without a model):
- ``world10k``: the session world of the pipeline tests (seed 7, 10,000 shipments,
  12 months); runs in CI.
- ``demo20k``: the README's demo (seed 0, 20,000 shipments, 24 months); runs in CI.
- ``world200k``: seed 1, 200,000 shipments, 24 months; minutes of work, so it runs
  only with DETECTOR_SLOW_TESTS=1 (and is skipped, visibly, otherwise).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from datetime import date
from pathlib import Path

import polars as pl

STORE = Path(__file__).with_name("score_digests.json")

WORLDS = {
    "world10k": {"seed": 7, "shipments": 10_000, "months": 12},
    "demo20k": {"seed": 0, "shipments": 20_000, "months": 24},
    "world200k": {"seed": 1, "shipments": 200_000, "months": 24},
}


def _sha(frame: pl.DataFrame) -> str:
    return hashlib.sha256(frame.write_csv().encode()).hexdigest()[:24]


def scores_digest(scores: pl.DataFrame) -> dict[str, str]:
    """Digests of a scores table: ranking, risk (to 1e-9), reasons and model; row count."""
    table = scores.sort("rank")
    return {
        "rows": str(table.height),
        "ranking": _sha(table.select("record_kind", "record_id", "rank")),
        "risk_1e-9": _sha(table.select(
            (pl.col("risk_score") * 1e9).round().cast(pl.Int64))),
        "reasons": _sha(table.select(pl.col("reasons").fill_null(""), "model")),
    }


def _rounded(value):
    """JSON-able ``value`` with floats rounded to 9 decimals (the digests' precision)."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 9)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def explain_digest(explanation: dict) -> str:
    """Digest of `detector explain --json`'s content, floats to 1e-9."""
    text = json.dumps(_rounded(explanation), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def report_digest(world: Path, out: Path) -> str:
    """Digest of `detector report`'s HTML for ``world`` (latest month, 1% capacity, a
    tenth explored), with the machine-specific parts (paths, run ids) masked."""
    import re

    from detector.report import generate_report

    html = generate_report(world, out, capacity="1%", explore=0.1).read_text()
    html = html.replace(str(world.resolve()), "WORLD")
    html = re.sub(r"[0-9a-f]{32}", "RUN", html)
    return hashlib.sha256(html.encode()).hexdigest()[:24]


def simulate_world(name: str, directory: Path) -> Path:
    from detector.simulation import simulate

    spec = WORLDS[name]
    simulate(directory, seed=spec["seed"], shipments=spec["shipments"],
             start=date(2024, 1, 1), months=spec["months"])
    return directory


def world_digests(world: Path, home: Path, *, fallback_home: Path | None = None,
                  train: bool = True) -> dict:
    """Train (unless ``train`` is False: the home already holds a champion) and score
    ``world``; digests of the scores, of explain for the first three ranks, of the
    pyfunc's scores on the first 2,000 shipments and of the report. ``fallback_home``:
    also score and report without a model (an empty home)."""
    import tempfile

    from pipeline_fixtures import detector_env

    from detector.scoring import explain, load_model, score, score_shipments_frame

    out: dict = {}
    with detector_env(home):
        if train:
            from detector.training import train as run_training

            run_training(world)
        with tempfile.TemporaryDirectory() as tmp:
            scored = score(world, Path(tmp) / "scores.parquet", top=1000)
            out["scores"] = scores_digest(scored.scores_table())
            first = scored.frame.sort("rank").head(3)
            out["explain"] = [explain_digest(explain(world, rid, kind))
                              for kind, rid in first.select("record_kind", "record_id").rows()]
            out["report"] = report_digest(world, Path(tmp) / "report.html")
        model = load_model(None)
        from detector.tables import read_dataset

        shipments = read_dataset(world).shipments.head(2000)
        out["pyfunc"] = scores_digest(score_shipments_frame(shipments, model.bundle,
                                                            "pyfunc"))
    if fallback_home is not None:
        with detector_env(fallback_home), tempfile.TemporaryDirectory() as tmp:
            scored = score(world, Path(tmp) / "scores.parquet", top=1000)
            out["fallback_scores"] = scores_digest(scored.scores_table())
            out["fallback_report"] = report_digest(world, Path(tmp) / "report.html")
    return out


def compute(name: str, work: Path) -> dict:
    world = simulate_world(name, work / name)
    return world_digests(world, work / f"{name}-home",
                         fallback_home=work / f"{name}-empty" if name == "world10k" else None)


def main(argv: list[str]) -> None:
    import tempfile

    names = ["world10k", "demo20k"] + (["world200k"] if "--with-200k" in argv else [])
    stored = json.loads(STORE.read_text()) if STORE.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            digests = compute(name, Path(tmp))
            print(name, json.dumps(digests, indent=1))
            stored[name] = digests
    if "--write" in argv:
        STORE.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
        print(f"wrote {STORE}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main(sys.argv[1:])
