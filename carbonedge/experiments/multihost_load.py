"""A load run across agents on several hosts, with faults at set points of it.

Pings are submitted at a steady rate with an
:class:`~carbonedge.experiments.accounting.OutcomeLedger`. Each :class:`Fault` starts
when its share of the requests was submitted (an agent killed, a host's link cut) and,
if it has an ``end``, ends ``duration_s`` later (the link restored) while the load goes
on. Afterwards the recovery stream says when the dispatchers' watchdog re-dispatched the
requests each faulted node held; the run reports lost and duplicated requests and the
re-dispatch delays (from the fault to the re-dispatch, per request moved).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from carbonedge.connections import redis_client
from carbonedge.experiments.accounting import OutcomeLedger, Report
from carbonedge.protocol import keys


@dataclass
class Fault:
    """Something done to one node mid-run."""

    name: str
    node: str
    """The node whose requests the watchdog should re-dispatch."""
    at: float
    """When, as the share of requests submitted (0..1)."""
    start: Callable[[], None]
    end: Callable[[], None] | None = None
    duration_s: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None


@dataclass
class MultiHostFigures:
    report: Report
    rate_per_s: float
    wall_s: float
    redispatch_s: list[float] = field(default_factory=list)
    """Per request moved: seconds from its node's fault to its re-dispatch."""
    moved: dict[str, int] = field(default_factory=dict)
    """Requests re-dispatched per faulted node (the faults hit work in flight)."""
    late_results: int = 0
    skipped_moved: int = 0

    def lines(self) -> list[str]:
        rep = self.report
        lines = [f"requests {rep.submitted} at {self.rate_per_s:.0f}/s in {self.wall_s:.1f} s: "
                 f"delivered {rep.delivered}, errored {rep.errored}, duplicated "
                 f"{rep.duplicated}, lost {rep.lost}; answers per node {dict(rep.nodes)}"]
        if self.redispatch_s:
            delays = sorted(self.redispatch_s)
            lines.append(f"re-dispatched {len(delays)} request(s) {self.moved}: after the fault "
                         f"p50 {statistics.median(delays):.2f} s, max {delays[-1]:.2f} s")
        else:
            lines.append("no request was re-dispatched")
        lines.append(f"late results dropped {self.late_results}, moved requests skipped "
                     f"{self.skipped_moved}")
        return lines


def run_multihost_load(url: str, faults: list[Fault], *, requests: int = 3000,
                       rate_per_s: float = 100.0, timeout_s: float = 300.0) -> MultiHostFigures:
    """Submit ``requests`` pings at ``rate_per_s`` through ``url`` while ``faults`` happen."""
    client = redis_client(url, socket_timeout=30)
    ledger = OutcomeLedger(url)
    pending = sorted(faults, key=lambda f: f.at)
    timers: list[threading.Thread] = []
    started = time.monotonic()

    def begin_due(sent: int) -> None:
        while pending and sent >= requests * pending[0].at:
            timers.extend(_begin(pending.pop(0)))

    try:
        skip = client.xlen(keys.RECOVERIES)
        ledger.submit_paced(requests, rate_per_s, begin_due)
        for fault in pending:  # a fault set at the very end
            timers.extend(_begin(fault))
        for timer in timers:
            timer.join()
        report = ledger.wait(timeout_s)
        wall_s = time.monotonic() - started
        rows = [{k.decode(): v.decode() for k, v in fields.items()}
                for _, fields in client.xrange(keys.RECOVERIES)][skip:]
        stats = {k.decode(): int(v) for k, v in client.hgetall(keys.DELIVERY_STATS).items()}
    finally:
        ledger.close()
        client.close()
    figures = MultiHostFigures(report=report, rate_per_s=rate_per_s, wall_s=wall_s,
                               late_results=stats.get("late_results", 0),
                               skipped_moved=stats.get("skipped_moved", 0))
    for fault in faults:
        assert fault.started_at is not None
        mine = [r for r in rows if r["node"] == fault.node
                and float(r["ts"]) >= fault.started_at and int(r["requests"]) > 0]
        figures.moved[fault.node] = sum(int(r["requests"]) for r in mine)
        for row in mine:
            figures.redispatch_s += [float(row["ts"]) - fault.started_at] * int(row["requests"])
    return figures


def _begin(fault: Fault) -> list[threading.Thread]:
    """Start ``fault`` now; if it ends, a thread ends it ``duration_s`` later."""
    fault.started_at = time.time()
    fault.start()
    if fault.end is None:
        return []

    def finish() -> None:
        time.sleep(fault.duration_s)
        fault.end()  # type: ignore[misc]
        fault.ended_at = time.time()

    thread = threading.Thread(target=finish, name=f"end {fault.name}", daemon=True)
    thread.start()
    return [thread]
