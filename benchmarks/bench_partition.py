"""Partitioned inference on the default topology: what a cut costs, and what a split saves.

1. Latency. The same image, sequential, batch 1, through the client, stream, dispatcher
   and agents: whole-model requests on node-high (baseline), the segment path with one
   segment on node-high (``partition=1``), and balanced plans over 2 and 3 nodes
   (``partition=2``, ``3``). Overhead = end-to-end minus the segments' compute; the
   overhead *per cut* is (overhead of k segments - overhead of the whole-model baseline)
   / (k - 1). Hand-off = a later segment's wait from the previous segment's hand-off to
   its start (Redis MULTI, queue pick-up, nothing else); 1st queue = the same wait for
   the dispatcher's hop to the first node, for comparison.
2. Carbon. Measured gCO2 per inference (the agents' charges: energy x their grid's
   intensity) of task-level Green and Performance against ``partition="auto"``
   (Balanced mode) and green plans under latency bounds from just above the fastest
   node's service time to just above the slowest one's; interleaved, in the same run.
3. Memory: each agent's peak cgroup charge once it has loaded all three models (what a
   node needs to take any segment of any model).

    python benchmarks/bench_partition.py [--iterations 20] [--model mobilenetv2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import redis
from _runtime import bench_runtime

from carbonedge.cgroups import NodeCgroup
from carbonedge.client import Client
from carbonedge.client.results import InferenceResult
from carbonedge.errors import CarbonEdgeError, InvalidRequest
from carbonedge.protocol import keys
from carbonedge.protocol.telemetry import Heartbeat

MIB = 1 << 20


def interleaved(n: int, configs: dict[str, Callable[[], InferenceResult]]
                ) -> dict[str, list[InferenceResult]]:
    """``n`` results per config, the configs taken in turn, so that the load of a shared
    machine falls on every config alike (after 3 warm-up rounds: a new route's first
    runs allocate buffers)."""
    out: dict[str, list[InferenceResult]] = {label: [] for label in configs}
    for i in range(n + 3):
        for label, submit in configs.items():
            try:
                result = submit()
            except InvalidRequest as e:  # a bound the drifting telemetry no longer allows
                REFUSED[label] = REFUSED.get(label, 0) + 1
                if REFUSED[label] == 1:
                    print(f"  ({label}: {e})")
                continue
            if i >= 3:
                out[label].append(result)
    return out


REFUSED: dict[str, int] = {}


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def route_of(result: InferenceResult) -> str:
    return " > ".join(f"{s.node}[{s.start},{s.stop})" for s in result.segments) or result.node


def latency_row(label: str, results: list[InferenceResult], base_overhead: float | None) -> float:
    e2e = med([r.e2e_ms for r in results])
    compute = med([r.exec_ms for r in results])
    overhead = med([r.e2e_ms - r.exec_ms for r in results])
    k = max(len(r.segments) for r in results) or 1
    handoffs = [s.queue_ms for r in results for s in r.segments[1:]]
    moved = med([float(sum(s.out_bytes for s in r.segments)) for r in results]) if k > 1 else 0
    per_cut = ((overhead - base_overhead) / (k - 1)
               if base_overhead is not None and k > 1 else float("nan"))
    first_hop = med([r.queue_ms for r in results])
    print(f"  {label:<24} {e2e:8.1f} {compute:8.1f} {overhead:9.1f} {per_cut:8.2f} "
          f"{first_hop:9.2f} {med(handoffs):9.2f} {moved / 1024:9.0f}  {route_of(results[-1])}")
    return overhead


def carbon_row(label: str, results: list[InferenceResult], base: float) -> None:
    carbon = med([r.carbon_g for r in results])
    e2e = med([r.e2e_ms for r in results])
    if not results:
        print(f"  {label:<30} every request refused")
        return
    split = sum(1 for r in results if len(r.segments) > 1)
    predicted = med([r.raw["plan"]["carbon_g"] for r in results
                     if (r.raw.get("plan") or {}).get("carbon_g") is not None])
    print(f"  {label:<30} {carbon * 1e3:9.4f} {carbon / base:7.2f}x {e2e:8.1f} "
          f"{predicted * 1e3:9.4f}  {split:3d}/{len(results)} split, {REFUSED.get(label, 0)} refused  "
          f"{route_of(results[-1])}")


def service_ms(runtime, model: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Each node's service time of ``model`` from its heartbeat (what plans predict with)."""
    r = redis.Redis.from_url(runtime.settings.redis_url)
    try:
        return {n: Heartbeat.from_fields(
            {k.decode(): v.decode() for k, v in r.hgetall(keys.node_key(n)).items()},
            now=time.time()).exec_ms[model] for n in runtime.node_ids}
    finally:
        r.close()


def wait_for_profiles(runtime, model: str) -> None:  # type: ignore[no-untyped-def]
    r = redis.Redis.from_url(runtime.settings.redis_url)
    deadline = time.monotonic() + 120
    while not all(r.exists(keys.block_profile_key(model, n)) for n in runtime.node_ids):
        if time.monotonic() > deadline:
            raise SystemExit("agents did not store their block profiles")
        time.sleep(0.2)
    while not all(model in Heartbeat.from_fields(
            {k.decode(): v.decode() for k, v in r.hgetall(keys.node_key(n)).items()},
            now=time.time()).exec_ms for n in runtime.node_ids):
        time.sleep(0.2)
    r.close()
    time.sleep(2.5)  # the dispatcher re-reads profiles every 2 s


def memory_line(node: str, limit: int, parent: str) -> str:
    mem_dir = NodeCgroup.attach(node, parent).dirs["memory"]
    peak = int((mem_dir / "memory.max_usage_in_bytes").read_text())
    rss = dict(line.split() for line in (mem_dir / "memory.stat").read_text().splitlines())
    oom = dict(line.split() for line in (mem_dir / "memory.oom_control").read_text().splitlines())
    return (f"  {node:<12} limit {limit // MIB:5d} MiB  peak charge {peak / MIB:6.0f} MiB  "
            f"rss now {int(rss['total_rss']) / MIB:5.0f} MiB  OOM kills "
            f"{oom.get('oom_kill', '?')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--model", default="mobilenetv2")
    args = parser.parse_args()
    n, model = args.iterations, args.model
    x = np.random.default_rng(7).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with bench_runtime(preload=(model,)) as runtime:
        client = Client(runtime.settings)
        for node in runtime.node_ids:  # telemetry and block profiles of every node
            for _ in range(6):
                client.submit(model, x, node=node).result(120)
        wait_for_profiles(runtime, model)

        def submit(**options: object) -> Callable[[], InferenceResult]:
            return lambda: client.submit(model, x, **options).result(120)  # type: ignore[arg-type]

        print(f"{model}, batch 1, {n} requests per row, rows interleaved (medians, ms)")
        print(f"  {'':<24} {'e2e':>8} {'compute':>8} {'overhead':>9} {'per cut':>8} "
              f"{'1st queue':>9} {'hand-off':>9} {'KiB moved':>9}  segments")
        latency = interleaved(n, {
            "whole, node-high": submit(node="node-high"),
            "partition=1, node-high": submit(node="node-high", partition=1),
            "partition=2": submit(partition=2),
            "partition=3": submit(partition=3),
        })
        base = None
        for label, results in latency.items():
            overhead = latency_row(label, results, base)
            base = overhead if base is None else base

        service = service_ms(runtime, model)
        print("service time per node (ms, telemetry): "
              + ", ".join(f"{k} {v:.1f}" for k, v in service.items()))
        fastest, slowest = min(service.values()), max(service.values())
        configs = {
            "task-level Green": submit(mode="green"),
            "task-level Performance": submit(mode="performance"),
            "auto, Balanced mode": submit(mode="balanced", partition="auto"),
        }
        # 10% slack on the bounds: service times drift between beats
        for bound in (1.1 * fastest, (fastest + slowest) / 2, 1.1 * slowest):
            configs[f"green plan <= {bound:.0f} ms"] = submit(partition="green",
                                                             latency_bound_ms=bound)
        carbon = interleaved(n, configs)
        print("carbon per inference (mg CO2: measured, and the plan's prediction) against "
              "task-level Green:")
        print(f"  {'':<30} {'measured':>9} {'ratio':>8} {'e2e ms':>8} {'predicted':>9}")
        base_carbon = med([r.carbon_g for r in carbon["task-level Green"]])
        for label, results in carbon.items():
            carbon_row(label, results, base_carbon)
        for node in runtime.node_ids:  # what the cluster has to hold for every split
            for other in ("mobilenetv4", "efficientnet_b0"):
                if other != model:
                    try:
                        client.submit(other, x, node=node).result(60)
                    except CarbonEdgeError as e:
                        print(f"  {other} on {node}: {type(e).__name__}: {e}")
        print("peak cgroup memory of each agent after loading all three models:")
        for spec in runtime.topology.nodes:
            print(memory_line(spec.name, spec.mem_limit_bytes, runtime.settings.cgroup_parent))
        client.close()


if __name__ == "__main__":
    main()
