"""How fast the review page answers for a large batch (issue #14 target: the queue page
of a 1M-record batch in under 2 s after scoring, a case page in under 1 s).

Simulates a small world and trains a model on it (temporary DETECTOR_HOME), simulates a
large batch, scores it with `detector score`'s library function into a Parquet scores
file, opens the review page on that file (`detector review DIR --scores FILE`) and times
requests through the ASGI app in-process (rendering included, no network):

* start-up: reading the batch and the scores (before the page can answer);
* queue pages: the first page, a deep page of all records, filters and sorts;
* case pages, after the one background scoring that explanations need.

    python benchmarks/bench_review.py                 # 1,000,000 shipments
    python benchmarks/bench_review.py --shipments 200000
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path


def timed(client, path: str, params: dict | None = None, repeat: int = 3) -> tuple[float, int]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        response = client.get(path, params=params)
        times.append(time.perf_counter() - t0)
        assert response.status_code == 200, (path, params, response.status_code)
    return statistics.median(times), len(response.content)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shipments", type=int, default=1_000_000)
    parser.add_argument("--train-shipments", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-review-") as tmp:
        tmp = Path(tmp)
        os.environ["DETECTOR_HOME"] = str(tmp / "home")
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        from starlette.testclient import TestClient

        from detector.decisions import DecisionStore
        from detector.review.app import create_app
        from detector.review.session import open_review
        from detector.scoring import score
        from detector.simulation import simulate
        from detector.training import train

        log = lambda m: print(m, file=sys.stderr)
        simulate(tmp / "train", seed=args.seed, shipments=args.train_shipments,
                 start=date(2024, 1, 1), months=12)
        train(tmp / "train")
        t0 = time.perf_counter()
        simulate(tmp / "batch", seed=args.seed + 1, shipments=args.shipments,
                 start=date(2024, 1, 1), months=12)
        log(f"simulated in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        scores = tmp / "scores.parquet"
        scored = score(tmp / "batch", scores, log=log)
        records = scored.frame.height
        del scored
        score_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        session = open_review(tmp / "batch", scores_path=scores, analyst="bench",
                              store=DecisionStore(tmp / "decisions.sqlite"), log=log)
        open_s = time.perf_counter() - t0
        client = TestClient(create_app(session), base_url="http://127.0.0.1")
        t0 = time.perf_counter()
        prepare = session.prepare_in_background()
        first_queue = timed(client, "/", repeat=1)[0]  # while the background scoring runs
        queue_pages = {
            "queue, page 1": timed(client, "/"),
            "all records, page 10,000": timed(client, "/", {"scope": "all", "page": "10000"}),
            "all records, destination HK": timed(client, "/", {"scope": "all",
                                                              "destination": "HK"}),
            "all records, sorted by value": timed(client, "/", {"scope": "all",
                                                               "sort": "value"}),
            "all records, leases, band high": timed(client, "/", {"scope": "all",
                                                                 "kind": "lease",
                                                                 "band": "high"}),
        }
        prepare.join()
        prepare_s = time.perf_counter() - t0
        table = session.table
        picks = [table.row(i, named=True) for i in (0, 10, 100, records // 2, records - 1)]
        case_times = [timed(client, "/case", {"kind": r["record_kind"], "id": r["record_id"]})
                      for r in picks]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    print(f"review page, {records:,} scored records ({args.shipments:,} shipments), "
          f"in-process requests, median of 3")
    print(f"  score the batch (detector score, Parquet): {score_s:.1f} s")
    print(f"  start-up (read batch and scores):           {open_s:.1f} s")
    print(f"  first queue page during background scoring: {first_queue * 1000:.0f} ms")
    for name, (seconds, size) in queue_pages.items():
        print(f"  {name + ':':<44} {seconds * 1000:.0f} ms ({size / 1024:.0f} KiB)")
    print(f"  background scoring for case pages:          {prepare_s:.1f} s")
    for pick, (seconds, _) in zip(picks, case_times):
        print(f"  case page, rank {pick['rank']:>9,}:{'':<18} {seconds * 1000:.0f} ms")
    print(f"  peak RSS of this process: {peak:.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
