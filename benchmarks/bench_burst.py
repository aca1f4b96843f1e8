"""A mixed burst: how close the default topology comes to its combined service rate.

Brings the default topology up, warms every node, reads each node's service time for
MobileNetV2 from its heartbeat, then has ``--producers`` threads submit ``--n`` requests
in all (modes in turn: Performance, Balanced, Green; random weights, batch 1) as fast as
they can, and waits for every result. Prints the drain time against the time the nodes'
combined service rate allows (N / Σ 1/T_node; target: within 1.3x), the share of each
node per mode, and the outcome ledger (lost and duplicated must be 0).

    .venv/bin/python benchmarks/bench_burst.py [--n 2000] [--producers 4] [--green-slo-ms MS]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._runtime import bench_runtime  # noqa: E402
from carbonedge.client import Client  # noqa: E402
from carbonedge.experiments.accounting import OutcomeLedger  # noqa: E402
from carbonedge.experiments.blocks import warm_up  # noqa: E402
from carbonedge.experiments.workload import synthetic_images  # noqa: E402
from carbonedge.protocol import keys  # noqa: E402
from carbonedge.protocol.telemetry import Heartbeat  # noqa: E402

MODEL = "mobilenetv2"
MODES = ("performance", "balanced", "green")


def _service_ms(url: str, nodes: list[str]) -> dict[str, float]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        out = {}
        for node in nodes:
            beat = Heartbeat.from_fields(client.hgetall(keys.node_key(node)), now=time.time())
            out[node] = beat.exec_ms[MODEL]
        return out
    finally:
        client.close()


def _produce(settings: object, tensor: np.ndarray, count: int, offset: int,
             green_slo_ms: float | None, done: list[tuple[str, str, str]],
             ids: list[str], lock: threading.Lock) -> None:
    with Client(settings) as client:  # type: ignore[arg-type]
        handles = []
        for i in range(count):
            mode = MODES[(offset + i) % len(MODES)]
            slo = {"latency_slo_ms": green_slo_ms} if mode == "green" and green_slo_ms else {}
            handle = client.submit(MODEL, tensor, mode=mode, **slo)
            with lock:
                ids.append(handle.id)
            handles.append((mode, handle))
        for mode, handle in handles:
            result = handle.result(600)
            with lock:
                done.append((handle.id, mode, result.node))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--producers", type=int, default=4)
    ap.add_argument("--green-slo-ms", type=float, default=None,
                    help="give the Green requests this latency SLO")
    args = ap.parse_args()

    images = synthetic_images(5, seed=21)
    tensor = np.random.default_rng(0).standard_normal((3, 224, 224)).astype(np.float32)
    with bench_runtime(preload=(MODEL,)) as rt:
        with Client(rt.settings) as client:
            warm_up(client, rt.node_ids, MODEL, images, per_node=15, timeout=120)
        service = _service_ms(rt.settings.redis_url, rt.node_ids)
        quotas = sum(spec.cpus for spec in rt.topology.nodes)
        ledger = OutcomeLedger(rt.settings.redis_url)
        done: list[tuple[str, str, str]] = []
        ids: list[str] = []
        lock = threading.Lock()
        per = args.n // args.producers
        threads = [threading.Thread(target=_produce, args=(rt.settings, tensor, per, p * per,
                                                           args.green_slo_ms, done, ids, lock))
                   for p in range(args.producers)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        drain = time.perf_counter() - start
        ledger.expect(ids)
        report = ledger.wait(30)
        duplicates = ledger.duplicates()
        ledger.close()

    n = len(done)
    ideal = n / sum(1000.0 / ms for ms in service.values())
    print(f"\n{n} {MODEL} requests ({', '.join(MODES)} in turn; random weights) from "
          f"{args.producers} producers"
          + (f"; Green with latency_slo_ms={args.green_slo_ms:.0f}" if args.green_slo_ms else ""))
    print("service time per node (device busy ms, from heartbeats): "
          + ", ".join(f"{k} {v:.1f}" for k, v in service.items()))
    print(f"drained in {drain:.1f} s; the combined service rate allows {ideal:.1f} s: "
          f"{drain / ideal:.2f}x (target <= 1.3x)")
    shares: dict[str, Counter[str]] = defaultdict(Counter)
    for _, mode, node in done:
        shares[mode][node] += 1
    for mode in MODES:
        total = sum(shares[mode].values()) or 1
        print(f"  {mode:<12} " + "  ".join(f"{node} {100 * shares[mode][node] / total:5.1f}%"
                                           for node in service))
    if not args.green_slo_ms and shares["green"]:
        # Without an SLO, Green keeps Table V routing: its requests queue on its node alone,
        # which bounds the drain from below whatever the other modes do.
        node, _ = shares["green"].most_common(1)[0]
        floor = sum(shares["green"].values()) * service[node] / 1000.0
        print(f"Green's requests on {node} alone need {floor:.1f} s: the best drain without "
              f"an SLO is {max(floor, ideal) / ideal:.2f}x (--green-slo-ms lifts it)")
    print(f"the nodes' quotas sum to {quotas:.1f} CPUs on a {os.cpu_count()}-CPU host, "
          "which also runs the dispatcher, Redis and the producers")
    print(f"outcomes: {report.line()}")
    for request_id, outcomes in duplicates.items():
        print(f"  delivered twice: {request_id}: " + "; ".join(
            f"{t:.3f} {r.get('node')} {r.get('status')} attempt {(r.get('decision') or {}).get('attempt')}"
            for t, r in outcomes))
    return 0 if report.lost == 0 and report.duplicated == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
