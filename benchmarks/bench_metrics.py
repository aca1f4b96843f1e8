"""Benchmark of the Prometheus metrics: what a scrape and the dispatcher's hook cost.

Run ``python benchmarks/bench_metrics.py`` (Redis from ``CARBONEDGE_BENCH_REDIS``, database
flushed). With 3 and 100 nodes' worth of real keys in Redis (heartbeats, queued items,
decisions per mode, carbon and energy totals) it times a whole scrape (``generate_latest``
over :class:`RedisStateCollector`) against the baseline of the same run: one refresh of
`carbonedge status` (``collect_status``), which reads the same per-node keys. It then times
``select()`` on the paper's three nodes with and without the decision-latency observation
the dispatcher adds per request.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis
from prometheus_client import CollectorRegistry, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scheduler import MODEL, NOW, TTL, make_snapshots  # noqa: E402

from carbonedge.ops.metrics import DecisionLatency, RedisStateCollector  # noqa: E402
from carbonedge.ops.status import collect_status  # noqa: E402
from carbonedge.protocol import keys  # noqa: E402
from carbonedge.protocol.telemetry import Heartbeat  # noqa: E402
from carbonedge.scheduler import ClusterView, select, weights_for  # noqa: E402

URL = os.environ.get("CARBONEDGE_BENCH_REDIS", "redis://127.0.0.1:6379/12")


def populate(r: redis.Redis, n: int) -> None:
    r.flushdb()
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        node = f"node-{i:03d}"
        beat = Heartbeat(node_id=node, ts=time.time() + 3600, cpu_quota=0.4,
                         mem_limit_bytes=512 << 20, mem_used_bytes=400 << 20, cpu_util=0.2,
                         power_w=3.0, active_power_w=13.0, carbon_intensity=380.0,
                         exec_ms={MODEL: 80.0})
        pipe.hset(keys.node_key(node), mapping=beat.to_fields())
        pipe.sadd(keys.NODES, node)
        pipe.lpush(keys.node_queue(node), *[b"x"] * 3)
        for mode in ("green", "balanced", "performance"):
            pipe.hset(keys.DECISIONS, f"{node}|{mode}", 10)
        pipe.hset(keys.CARBON_TOTALS, node, 0.5)
        pipe.hset(keys.ENERGY_TOTALS, node, 0.001)
    pipe.execute()


def median_us(fn: Callable[[], object], repeat: int) -> float:
    fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples) / 1000


def main() -> int:
    r = redis.Redis.from_url(URL)
    print(f"{'nodes':>5} {'status refresh us':>18} {'scrape us':>10} {'ratio':>6} {'bytes':>7}")
    for n in (3, 100):
        populate(r, n)
        registry = CollectorRegistry()
        registry.register(RedisStateCollector(URL))
        baseline = median_us(lambda: collect_status(r), 200)
        scrape = median_us(lambda reg=registry: generate_latest(reg), 200)
        size = len(generate_latest(registry))
        print(f"{n:5d} {baseline:18.0f} {scrape:10.0f} {scrape / baseline:5.2f}x {size:7d}")
    r.flushdb()

    view = ClusterView.build(make_snapshots(3), NOW, TTL)
    weights = weights_for("green", None, default_mode="balanced")
    latency = DecisionLatency(CollectorRegistry())

    def timed() -> None:
        started = time.perf_counter()
        select(view, MODEL, weights, "minmax")
        latency.observe("green", time.perf_counter() - started)

    bare = median_us(lambda: select(view, MODEL, weights, "minmax"), 20_000)
    hooked = median_us(timed, 20_000)
    print(f"select() on 3 nodes: {bare:.2f} us bare, {hooked:.2f} us with the latency "
          f"observation ({hooked - bare:+.2f} us, {hooked / bare:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
