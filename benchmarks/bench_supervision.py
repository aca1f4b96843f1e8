"""How long a process of `carbonedge up` is down after a SIGKILL, against its cold start.

The default topology is brought up supervised, as `carbonedge up` does (carbon service,
dispatcher, three agents with MobileNetV2 preloaded); the baseline is that cold start
(nothing running to every heartbeat). Then, in turn, node-green's agent, the dispatcher
and the carbon service are killed with SIGKILL, and the time until it serves again is
measured: a request pinned to the agent answered by its new life; a Green request
answered through the new dispatcher; host power published by the new carbon service.
Each includes the supervisor's first back-off (1 s).

    python benchmarks/bench_supervision.py [--runs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis
from _runtime import BENCH_REDIS_URL

from carbonedge.client import Client
from carbonedge.compose.local_runner import LocalRuntime
from carbonedge.compose.topology import load_topology
from carbonedge.errors import NoNodeAvailable
from carbonedge.protocol import keys
from carbonedge.settings import Settings


def _pid(r: redis.Redis, name: str) -> int:
    return int(json.loads(r.hget(keys.PROCESSES, name))["pid"])


def _until(predicate: Callable[[], object], timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("gave up waiting")
        time.sleep(0.02)


def _restarted(r: redis.Redis, name: str, old: int) -> bool:
    raw = r.hget(keys.PROCESSES, name)
    entry = json.loads(raw) if raw else {}
    return entry.get("alive") is True and entry.get("pid") != old


def _served(client: Client, **options: str) -> None:
    """Until a ping is answered (one sent while the dispatcher's view, re-read every
    0.2 s, does not show the new life yet is refused: send another)."""
    while True:
        try:
            client.ping(**options).result(120)
            return
        except NoNodeAvailable:
            time.sleep(0.02)


def one_run(settings: Settings) -> dict[str, float]:
    r = redis.Redis.from_url(settings.redis_url)
    r.flushdb()
    runtime = LocalRuntime(load_topology(None), settings, preload=("mobilenetv2",),
                           carbon_service=True, supervise=True)
    started = time.monotonic()
    runtime.up(wait_s=300)
    out = {"cold start (baseline)": time.monotonic() - started}
    try:
        with Client(runtime.settings) as client:
            client.ping(node="node-green").result(60)
            agent = _pid(r, "node-green")
            killed, wall = time.monotonic(), time.time()
            os.kill(agent, signal.SIGKILL)
            _until(lambda: float(r.hget(keys.node_key("node-green"), "started_at") or 0)
                   > wall)  # the new life's first heartbeat
            _served(client, node="node-green")
            out["agent killed -> serves again"] = time.monotonic() - killed

            dispatcher = _pid(r, "dispatcher")
            killed = time.monotonic()
            os.kill(dispatcher, signal.SIGKILL)
            _served(client, mode="green")
            out["dispatcher killed -> routes again"] = time.monotonic() - killed

            carbon = _pid(r, "carbon")
            killed, wall = time.monotonic(), time.time()
            os.kill(carbon, signal.SIGKILL)
            _until(lambda: float(r.hget(keys.HOST_POWER, "ts") or 0) > wall + 1.0
                   and _restarted(r, "carbon", carbon))
            out["carbon service killed -> publishes again"] = time.monotonic() - killed
    finally:
        runtime.down()
        r.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="carbonedge-bench-") as tmp:
            settings = Settings.load(redis_url=BENCH_REDIS_URL, run_dir=str(Path(tmp) / "run"))
            runs.append(one_run(settings))
    base = statistics.median(r["cold start (baseline)"] for r in runs)
    print(f"{'':<42} {'median s':>9} {'runs':>16} {'x cold start':>13}")
    for name in runs[0]:
        values = [r[name] for r in runs]
        spread = ", ".join(f"{v:.1f}" for v in values)
        print(f"{name:<42} {statistics.median(values):>9.1f} {spread:>16} "
              f"{statistics.median(values) / base:>13.2f}")


if __name__ == "__main__":
    main()
