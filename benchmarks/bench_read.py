"""What row accounting costs when a dataset is read: print the phases' wall times.

    python benchmarks/bench_read.py [--shipments 1000000] [--world DIR]

Times, for the world's shipments.csv: the independent record count from the raw bytes
(detector.csvlines.count_records), polars' own row count, and the whole
`read_dataset` (every table: count, parse, type, check, account). Then the same file with
one stray quote, so it is read by the line-level recovery path instead. Without
--world, simulates one (`detector simulate`) into a temporary directory.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.csvlines import count_records  # noqa: E402
from detector.tables import read_dataset


def _timed(label: str, fn):
    start = time.perf_counter()
    value = fn()
    print(f"{label:<58} {time.perf_counter() - start:8.2f} s")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shipments", type=int, default=1_000_000)
    parser.add_argument("--world", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-read-") as tmp:
        world = args.world
        if world is None:
            from detector.simulation import simulate

            world = Path(tmp) / "world"
            _timed(f"simulate {args.shipments:,} shipments",
                   lambda: simulate(world, seed=1, shipments=args.shipments,
                                    start=date(2024, 1, 1), months=24))
        path = world / "shipments.csv"
        size = path.stat().st_size
        print(f"shipments.csv: {size / 2**20:,.0f} MiB")
        counted = _timed("independent record count (csvlines.count_records)",
                         lambda: count_records(path))
        rows = _timed("polars row count (scan_csv + len)",
                      lambda: pl.scan_csv(path, infer_schema=False).select(pl.len())
                      .collect().item())
        print(f"records counted {counted.records:,}, polars {rows:,}, clean {counted.clean}")
        dataset = _timed("read_dataset (all tables, with accounting)",
                         lambda: read_dataset(world))
        print(f"read {dataset.shipments.height:,} shipments")
        damaged = Path(tmp) / "damaged"
        shutil.copytree(world, damaged, ignore=shutil.ignore_patterns("*.parquet"))
        lines = (damaged / "shipments.csv").read_bytes().split(b"\n")
        lines[2] = lines[2].replace(b",", b',19" RACK,', 1)  # one line with a field too many
        (damaged / "shipments.csv").write_bytes(b"\n".join(lines))
        recovered = _timed("read_dataset, one bad line (line-level recovery path)",
                           lambda: read_dataset(damaged, allow_errors=True))
        print(f"read {recovered.shipments.height:,} shipments, quarantined "
              f"{recovered.quarantined_rows:,} row(s)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
