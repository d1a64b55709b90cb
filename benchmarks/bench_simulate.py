"""Wall time and peak memory of `detector simulate` for a large world.

    python benchmarks/bench_simulate.py [--shipments 1000000] [--out DIR]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from detector.simulation import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shipments", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="keep the output here (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "world"
        began = time.perf_counter()
        summary = simulate(out, seed=args.seed, shipments=args.shipments,
                           log=lambda m: print(f"  {time.perf_counter() - began:6.1f}s {m}",
                                               file=sys.stderr))
        wall = time.perf_counter() - began
    # ru_maxrss is in KiB on Linux
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"simulate: {summary.shipments} shipments, {summary.leases} leases, "
          f"{summary.parties} parties in {wall:.1f} s wall, peak RSS {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
