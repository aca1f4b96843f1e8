"""A load run with a node killed and restarted in the middle: the fault suite's figures.

Pings (no model: the routing, delivery and recovery path itself) are submitted at a
steady rate over the running topology. A third of the way in, one node's agent is killed
with SIGKILL; once its requests were re-dispatched (or a deadline passed) it is started
again under the same id. Every request is accounted for with an
:class:`~carbonedge.experiments.accounting.OutcomeLedger`.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from carbonedge.compose.local_runner import LocalRuntime, process_alive
from carbonedge.connections import redis_client
from carbonedge.experiments.accounting import OutcomeLedger, Report
from carbonedge.protocol import keys


@dataclass
class FaultLoadFigures:
    """What one kill-and-restart load run measured."""

    report: Report
    node: str
    rate_per_s: float
    wall_s: float
    redispatched: int
    """Requests the killed node held that were put back on the stream."""
    redispatch_s: float | None
    """From the kill -9 to the re-dispatch (heartbeat expiry + watchdog period)."""
    restart_s: float
    """From the kill -9 to the restarted agent's first heartbeat."""
    late_results: int
    skipped_moved: int

    def lines(self) -> list[str]:
        rep = self.report
        when = f"{self.redispatch_s:.2f} s" if self.redispatch_s is not None else "never"
        return [
            f"requests {rep.submitted} at {self.rate_per_s:.0f}/s in {self.wall_s:.1f} s: "
            f"delivered {rep.delivered}, errored {rep.errored}, duplicated {rep.duplicated}, "
            f"lost {rep.lost}",
            f"{self.node} killed (SIGKILL): {self.redispatched} request(s) re-dispatched "
            f"{when} after the kill; agent back {self.restart_s:.1f} s after it",
            f"late results dropped {self.late_results}, moved requests skipped "
            f"{self.skipped_moved}; answers per node {dict(rep.nodes)}",
        ]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_fault_load(runtime: LocalRuntime, *, requests: int = 5000, rate_per_s: float = 200.0,
                   node: str | None = None, kill_at: float = 1 / 3,
                   timeout_s: float = 300.0) -> FaultLoadFigures:
    """Submit ``requests`` pings at ``rate_per_s``; kill -9 ``node`` after ``kill_at`` of
    them and restart it once its requests were re-dispatched; account for every one."""
    node = node or runtime.node_ids[0]
    url = runtime.settings.redis_url
    client = redis_client(url)
    ledger = OutcomeLedger(url)
    killed_at: list[float] = []
    started = time.monotonic()

    def kill_once(sent: int) -> None:
        if not killed_at and sent >= requests * kill_at:
            killed_at.append(_kill(runtime, node))

    try:
        recoveries_before = client.xlen(keys.RECOVERIES)
        ledger.submit_paced(requests, rate_per_s, kill_once)
        if not killed_at:
            killed_at.append(_kill(runtime, node))
        redispatch = _wait_recovery(client, node, recoveries_before, killed_at[0],
                                    deadline=killed_at[0] + 60)
        _restart(runtime, node, client)
        restart_s = time.time() - killed_at[0]
        report = ledger.wait(timeout_s)
        wall_s = time.monotonic() - started
        stats = {k.decode(): int(v) for k, v in client.hgetall(keys.DELIVERY_STATS).items()}
    finally:
        ledger.close()
        client.close()
    return FaultLoadFigures(
        report=report, node=node, rate_per_s=rate_per_s, wall_s=wall_s,
        redispatched=redispatch[0], redispatch_s=redispatch[1], restart_s=restart_s,
        late_results=stats.get("late_results", 0), skipped_moved=stats.get("skipped_moved", 0))


def _kill(runtime: LocalRuntime, node: str) -> float:
    pid = next(p.pid for p in reversed(runtime.state.processes) if p.name == node)
    at = time.time()
    os.kill(pid, signal.SIGKILL)
    while process_alive(pid):
        time.sleep(0.01)
    return at


def _wait_recovery(client: redis.Redis, node: str, skip: int, killed_at: float,
                   deadline: float) -> tuple[int, float | None]:
    """Requests re-dispatched from ``node`` and how long after the kill the first move was."""
    while time.time() < deadline:
        rows = [{k.decode(): v.decode() for k, v in fields.items()}
                for _, fields in client.xrange(keys.RECOVERIES)][skip:]
        mine = [r for r in rows if r["node"] == node]
        if mine:
            return sum(int(r["requests"]) for r in mine), float(mine[0]["ts"]) - killed_at
        time.sleep(0.05)
    return 0, None


def _restart(runtime: LocalRuntime, node: str, client: redis.Redis,
             timeout_s: float = 120.0) -> None:
    runtime.restart_agent(node)
    deadline = time.monotonic() + timeout_s
    while not client.exists(keys.node_key(node)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{node} did not come back within {timeout_s:.0f} s")
        time.sleep(0.05)
