"""Routing rate of one dispatcher: requests moved from the stream onto node queues per second.

Three nodes are simulated by heartbeats written to Redis (no agents consume, so only the
dispatcher's own work is timed: read, validate, decide, build the Celery message, push,
count, acknowledge). A request carries a MobileNetV2-sized float32 tensor or nothing (ping).

    python benchmarks/bench_dispatcher_rate.py [--requests 5000] [--profile out.prof]

The Redis database it flushes is ``CARBONEDGE_BENCH_REDIS`` (default ``redis://127.0.0.1:6379/11``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import time

import numpy as np
import redis
import redis.asyncio as aioredis

from carbonedge.client.requests import detach_input, make_request
from carbonedge.dispatcher.dispatcher import Dispatcher
from carbonedge.protocol import keys
from carbonedge.protocol.codec import encode_tensor
from carbonedge.protocol.telemetry import Heartbeat
from carbonedge.settings import Settings

URL = os.environ.get("CARBONEDGE_BENCH_REDIS", "redis://127.0.0.1:6379/11")
NODES = [("node-high", 1.0, 620.0), ("node-medium", 0.6, 530.0), ("node-green", 0.4, 380.0)]


def _fake_heartbeats(r: redis.Redis) -> None:
    for node, quota, ci in NODES:
        beat = Heartbeat(node_id=node, ts=time.time(), cpu_quota=quota, mem_limit_bytes=1 << 30,
                         mem_used_bytes=400 << 20, cpu_util=0.1, power_w=1.0,
                         active_power_w=quota * 4, carbon_intensity=ci,
                         exec_ms={"mobilenetv2": 45 / quota})
        r.hset(keys.node_key(node), mapping=beat.to_fields())
        r.expire(keys.node_key(node), 600)
        r.sadd(keys.NODES, node)


async def _drain(settings: Settings, total: int) -> float:
    dispatcher = Dispatcher(settings)
    r = aioredis.Redis.from_url(settings.redis_url)
    await dispatcher._ensure_group(r)
    start = time.perf_counter()
    while dispatcher.dispatched + dispatcher.rejected < total:
        await dispatcher.step(r, block_ms=100)
    elapsed = time.perf_counter() - start
    await r.aclose()
    return elapsed


def run(kind: str, count: int, profile: str | None = None) -> None:
    r = redis.Redis.from_url(URL)
    r.flushdb()
    tensor = encode_tensor(np.zeros((1, 3, 224, 224), np.float32)) if kind == "infer" else None
    settings = Settings.load(env={}, redis_url=URL)
    pipe = r.pipeline(transaction=False)
    for _ in range(count):
        req = make_request(kind=kind, model="mobilenetv2" if tensor else None, tensor=tensor,
                            mode="balanced")
        req = detach_input(req, pipe, settings)  # as Client.submit does: the tensor waits
        pipe.xadd(keys.REQUEST_STREAM, {keys.REQUEST_FIELD: req.pack()})
    pipe.execute()
    _fake_heartbeats(r)  # fresh, after the (slow) request build
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    elapsed = asyncio.run(_drain(settings, count))
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(f"{profile}.{kind}")
    queued = sum(r.llen(keys.node_queue(n)) for n, _, _ in NODES)
    assert queued == count, (queued, count)
    print(f"  {kind:<6} {count:>6} requests routed in {elapsed:6.2f} s = "
          f"{count / elapsed:8.0f} requests/s")
    r.flushdb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--profile", metavar="PATH",
                        help="write cProfile stats of the routing to PATH.<kind>")
    args = parser.parse_args()
    print("dispatcher routing rate (one dispatcher process, 3 simulated nodes):")
    from redis.utils import HIREDIS_AVAILABLE
    print("Redis replies parsed by " + ("hiredis (C)" if HIREDIS_AVAILABLE else
                                        "redis-py's pure-Python parser (hiredis not installed)"))
    run("ping", args.requests, args.profile)
    run("infer", max(args.requests // 10, 100), args.profile)


if __name__ == "__main__":
    main()
