"""Dispatch overhead: a no-op request through CarbonEdge vs a bare Celery round trip.

Both go to the same agent's queue in the same run: CarbonEdge's path is
client -> ce:requests stream -> dispatcher (scheduler decision) -> queue -> agent ->
result backend -> client; the baseline is ``send_task`` to that queue and ``get``.
Sequential round trips alternate between the two, so both see the same host conditions.
Then a burst of no-ops to the same agent, each way, and a burst through the dispatcher to
the three default agents together.

    python benchmarks/bench_dispatch.py [--requests 500] [--burst 3000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

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


def _interleaved(roundtrips: dict[str, Callable[[], None]], n: int) -> dict[str, list[float]]:
    """``n`` timed round trips of each, alternating (after a warm-up of 20 each)."""
    for _ in range(20):  # warm-up: connections, subscriptions
        for roundtrip in roundtrips.values():
            roundtrip()
    times: dict[str, list[float]] = {label: [] for label in roundtrips}
    for _ in range(n):
        for label, roundtrip in roundtrips.items():
            t0 = time.perf_counter()
            roundtrip()
            times[label].append((time.perf_counter() - t0) * 1e3)
    for label, values in times.items():
        values.sort()
        print(f"  {label:<28} p50 {statistics.median(values):6.2f} ms   "
              f"p95 {percentile(values, 95):6.2f} ms   mean {statistics.fmean(values):6.2f} ms")
    return times


def _burst(client: Client, n: int) -> float:
    """Requests per second of ``n`` pings submitted at once through the dispatcher."""
    t0 = time.perf_counter()
    handles = [client.ping() for _ in range(n)]
    for h in handles:
        h.result(120)
    return n / (time.perf_counter() - t0)


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

        print(f"no-op round trip, {args.requests} sequential requests each, alternating "
              "(1 agent, 1.0 CPU):")
        times = _interleaved({"bare Celery send_task+get": bare,
                              "CarbonEdge submit+result": routed}, args.requests)
        ratio = (statistics.median(times["CarbonEdge submit+result"])
                 / statistics.median(times["bare Celery send_task+get"]))
        print(f"  ratio of medians: {ratio:.2f}x (target <= 1.15x: "
              f"{'met' if ratio <= 1.15 else 'NOT met'})")

        print(f"throughput, {args.burst} no-op requests submitted at once, same agent:")
        t0 = time.perf_counter()
        results = [app.send_task(keys.TASK_PING, args=[payload], queue=queue)
                   for _ in range(args.burst)]
        for res in results:
            res.get(timeout=120)
        bare_rate = args.burst / (time.perf_counter() - t0)
        routed_rate = _burst(client, args.burst)
        share = routed_rate / bare_rate
        print(f"  bare Celery {bare_rate:6.0f} requests/s   CarbonEdge {routed_rate:6.0f} "
              f"requests/s ({share:.2f}x of bare; target >= 0.95x: "
              f"{'met' if share >= 0.95 else 'NOT met'})")
        client.close()
    with bench_runtime() as runtime:
        client = Client(runtime.settings)
        for _ in range(50):
            client.ping().result(10)
        rate = _burst(client, args.burst)
        print(f"throughput, {args.burst} no-op requests submitted at once, the three default "
              f"agents: {rate:.0f} requests/s (target >= 900/s: "
              f"{'met' if rate >= 900 else 'NOT met'})")
        client.close()


if __name__ == "__main__":
    main()
