"""Dispatch overhead: a no-op request through CarbonEdge vs a bare Celery round trip.

Both go to the same agent's queue in the same run: CarbonEdge's path is
client -> ce:requests stream -> dispatcher (scheduler decision) -> queue -> agent ->
result backend -> client; the baseline is ``send_task`` to that queue and ``get``.

    python benchmarks/bench_dispatch.py [--requests 500]
"""

from __future__ import annotations

import argparse
import statistics
import time

from _runtime import bench_runtime

from carbonedge.client import Client
from carbonedge.experiments.workload import percentile
from carbonedge.protocol import keys
from carbonedge.transport.celery_app import make_celery_app

ONE_NODE = """
services:
  node-bench:
    cpus: 1.0
    mem_limit: 1g
    x-carbonedge: {role: node, carbon_intensity: 400}
"""


def _sequential(label: str, roundtrip, n: int) -> list[float]:
    for _ in range(20):  # warm-up: connections, subscriptions
        roundtrip()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        roundtrip()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    print(f"  {label:<28} p50 {statistics.median(times):6.2f} ms   "
          f"p95 {percentile(times, 95):6.2f} ms   mean {statistics.fmean(times):6.2f} ms")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--burst", type=int, default=3000)
    args = parser.parse_args()
    with bench_runtime(ONE_NODE) as runtime:
        settings = runtime.settings
        client = Client(settings)
        app = make_celery_app(settings)
        queue = keys.node_queue("node-bench")
        payload = {"v": 1, "id": "bare", "kind": "ping", "submitted_at": time.time()}

        def bare() -> None:
            app.send_task(keys.TASK_PING, args=[payload], queue=queue).get(timeout=10)

        def routed() -> None:
            client.ping().result(10)

        print(f"no-op round trip, {args.requests} sequential requests (1 agent, 1.0 CPU):")
        bare_t = _sequential("bare Celery send_task+get", bare, args.requests)
        routed_t = _sequential("CarbonEdge submit+result", routed, args.requests)
        ratio = statistics.median(routed_t) / statistics.median(bare_t)
        print(f"  ratio of medians: {ratio:.2f}x (target <= 1.5x); "
              f"routed p50 target <= 3 ms: {'met' if statistics.median(routed_t) <= 3 else 'NOT met'}")

        print(f"throughput, {args.burst} no-op requests submitted at once, same agent:")
        t0 = time.perf_counter()
        results = [app.send_task(keys.TASK_PING, args=[payload], queue=queue)
                   for _ in range(args.burst)]
        for res in results:
            res.get(timeout=120)
        bare_rate = args.burst / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        handles = [client.ping() for _ in range(args.burst)]
        for h in handles:
            h.result(120)
        routed_rate = args.burst / (time.perf_counter() - t0)
        print(f"  bare Celery {bare_rate:6.0f} requests/s   CarbonEdge {routed_rate:6.0f} "
              f"requests/s ({routed_rate / bare_rate:.2f}x of bare; target >= 500/s)")
        client.close()


if __name__ == "__main__":
    main()
