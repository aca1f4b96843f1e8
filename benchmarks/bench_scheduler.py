"""Benchmark of the scheduler: ``select()`` latency at 3, 100 and 1,000 nodes.

Run ``python benchmarks/bench_scheduler.py``. For each cluster size and normalisation it
times many ``select()`` calls from outside (``perf_counter_ns`` around the call, so the
Decision object is included) with the dispatcher's pattern in between (untimed:
``add_in_flight`` on the chosen node, a completion on a random one). It also reports the
view build (once per telemetry refresh, not part of ``select()``), the first ``select()``
of a model after a build (it fills the per-model cache), and the forced other path so
that the threshold between the Python and the numpy paths can be checked.

Targets: median <= 10 us at 3 nodes, <= 200 us at 1,000 nodes.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time

import numpy as np

from carbonedge.scheduler import MODES, ClusterView, NodeSnapshot, select
from carbonedge.scheduler.selector import VECTOR_MIN_NODES

NOW = 1_000_000.0
TTL = 15.0
MODEL = "mobilenetv2"
TARGETS_US = {3: 10.0, 1000: 200.0}


def make_snapshots(n: int, seed: int = 0) -> list[NodeSnapshot]:
    """``n`` heterogeneous nodes shaped like the paper's (quota, memory, grid, timings)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        quota = rng.choice([1.0, 0.6, 0.4])
        limit = (1 << 30) if quota == 1.0 else (512 << 20)
        out.append(
            NodeSnapshot(
                node_id=f"node-{i:05d}",
                cpu_quota=quota,
                mem_limit_bytes=limit,
                mem_used_bytes=int(rng.uniform(350e6, 420e6)),
                cpu_util=rng.uniform(0.0, 0.3),
                power_w=rng.uniform(2.0, 10.0),
                active_power_w=quota * 32.5 + limit / (1 << 30) * 0.375,
                carbon_intensity=rng.choice([620.0, 530.0, 380.0]) * rng.uniform(0.9, 1.1),
                in_flight=rng.randint(0, 3),
                exec_ms={MODEL: 30.0 / quota * rng.uniform(0.9, 1.1), "resnet18": 80.0 / quota},
                heartbeat_ts=NOW - rng.uniform(0.0, TTL),
            )
        )
    return out


def time_build(snaps: list[NodeSnapshot], repeat: int) -> list[int]:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        ClusterView.build(snaps, NOW, TTL)
        samples.append(time.perf_counter_ns() - t0)
    return samples


def time_cold(snaps: list[NodeSnapshot], norm: str, vectorised: bool, repeat: int) -> list[int]:
    samples = []
    weights = MODES["balanced"]
    for _ in range(repeat):
        view = ClusterView.build(snaps, NOW, TTL)
        t0 = time.perf_counter_ns()
        select(view, MODEL, weights, norm, _vectorised=vectorised)
        samples.append(time.perf_counter_ns() - t0)
    return samples


class SelectRun:
    """Warm ``select()`` calls on one view with one normalisation and one forced path."""

    def __init__(self, snaps: list[NodeSnapshot], norm: str, vectorised: bool) -> None:
        self.view = ClusterView.build(snaps, NOW, TTL)
        self.norm = norm
        self.vectorised = vectorised
        self.rng = random.Random(1)
        self.outside: list[int] = []
        self.inside: list[int] = []
        self.modes = [MODES[m] for m in sorted(MODES)]
        for _ in range(200):  # warm the caches and the interpreter
            select(self.view, MODEL, self.modes[0], norm, _vectorised=vectorised)

    def chunk(self, calls: int) -> None:
        """Time ``calls`` selects, each followed (untimed) by the dispatcher's updates."""
        view, norm, vec, modes = self.view, self.norm, self.vectorised, self.modes
        ids, rng, clock = view.node_ids, self.rng, time.perf_counter_ns
        outside, inside = self.outside, self.inside
        for i in range(calls):
            weights = modes[i % 3]
            t0 = clock()
            decision = select(view, MODEL, weights, norm, _vectorised=vec)
            outside.append(clock() - t0)
            inside.append(decision.duration_ns)
            view.add_in_flight(decision.node_id)
            view.add_in_flight(ids[rng.randrange(len(ids))], -1)


def p99(samples: list[int]) -> float:
    return float(np.percentile(samples, 99))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 100, 1000])
    parser.add_argument("--calls", type=int, default=20_000, help="selects per row (3 nodes)")
    args = parser.parse_args(argv)

    print(f"CPython {platform.python_version()} on {platform.machine()}, numpy {np.__version__}")
    print(f"numpy path from {VECTOR_MIN_NODES} nodes; times in microseconds\n")
    header = (
        f"{'nodes':>6} {'norm':>7} {'path':>6} {'min':>7} {'median':>8} {'p99':>8} "
        f"{'inside':>8} {'cold':>8} {'target':>7} {'met':>4}"
    )
    print(header)
    print("-" * len(header))
    verdicts = []
    builds = {}
    for size in args.sizes:
        snaps = make_snapshots(size)
        calls = max(1000, args.calls // max(1, size // 20))
        builds[size] = time_build(snaps, 50 if size <= 100 else 10)
        auto_vec = size >= VECTOR_MIN_NODES
        runs = [
            SelectRun(snaps, norm, vectorised)
            for norm in ("minmax", "paper")
            for vectorised in (auto_vec, not auto_vec)
        ]
        # interleave the configurations in short chunks, so that every row sees the same
        # mix of quiet and busy moments of a shared machine
        chunk = max(20, 500 // max(1, size // 20))
        for _ in range(max(1, calls // chunk)):
            for run in runs:
                run.chunk(chunk)
        for run in runs:
            cold = time_cold(snaps, run.norm, run.vectorised, 20)
            median = statistics.median(run.outside) / 1e3
            auto = run.vectorised == auto_vec
            target = TARGETS_US.get(size) if auto else None
            met = "" if target is None else ("yes" if median <= target else "NO")
            if target is not None:
                verdicts.append(median <= target)
            path = ("numpy" if run.vectorised else "python") + ("" if auto else "*")
            print(
                f"{size:>6} {run.norm:>7} {path:>6} {min(run.outside) / 1e3:>7.2f} "
                f"{median:>8.2f} {p99(run.outside) / 1e3:>8.2f} "
                f"{statistics.median(run.inside) / 1e3:>8.2f} "
                f"{statistics.median(cold) / 1e3:>8.1f} "
                f"{'' if target is None else f'{target:.0f}':>7} {met:>4}"
            )
    print("\n* forced path, not the one select() takes at that size (for the threshold)")
    print("min/median/p99: around the call; inside: median Decision.duration_ns;")
    print("cold: median first select() of a model after a build (fills the model's cache)\n")
    for size, samples in builds.items():
        median = statistics.median(samples) / 1e3
        print(f"ClusterView.build at {size:>5} nodes: median {median:9.1f} us")
    ok = all(verdicts)
    print(f"\ntargets {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
