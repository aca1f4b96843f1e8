"""Fault figures: a load run with one agent killed (-9) and restarted during it.

    python benchmarks/bench_faults.py [--requests 5000] [--rate 200] [--node node-high]
                                      [--runs 1]

Prints requests submitted / delivered / errored / duplicated / lost, how many requests
the killed node held and how long after the kill they were re-dispatched (heartbeat
expiry + watchdog period), and how many late results and moved requests the delivery
guard dropped. Uses the default topology on ``CARBONEDGE_BENCH_REDIS``.
"""

from __future__ import annotations

import argparse
import statistics

from _runtime import bench_runtime

from carbonedge.experiments.fault_load import run_fault_load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=200.0, help="pings submitted per second")
    parser.add_argument("--node", default="node-high", help="the node killed and restarted")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    times = []
    for run in range(args.runs):
        with bench_runtime() as runtime:
            figures = run_fault_load(runtime, requests=args.requests, rate_per_s=args.rate,
                                     node=args.node)
        print(f"run {run + 1}:")
        for line in figures.lines():
            print("  " + line)
        if figures.redispatch_s is not None:
            times.append(figures.redispatch_s)
    if len(times) > 1:
        print(f"re-dispatch after kill -9: median {statistics.median(times):.2f} s, "
              f"min {min(times):.2f} s, max {max(times):.2f} s over {len(times)} runs")


if __name__ == "__main__":
    main()
