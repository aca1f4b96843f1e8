"""A load run through a Redis Sentinel failover: the primary is killed (-9) mid-run.

Pings are submitted at a steady rate through the sentinel URL with an
:class:`~carbonedge.experiments.accounting.OutcomeLedger`, each batch acknowledged only
once a replica holds it (``replica_acks``). After a third of them the caller's ``kill``
removes the primary; the run times how long the sentinels take to name a new one, calls
``recover`` (e.g. restart the old server, which the sentinels turn into a replica), and
keeps submitting until ``requests`` were acknowledged. Submissions refused meanwhile are
counted apart: the producer got a clear error for each, and none counts as lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from redis.sentinel import Sentinel

from carbonedge.connections import parse_redis_url
from carbonedge.errors import RuntimeUnavailable
from carbonedge.experiments.accounting import OutcomeLedger, Report


@dataclass
class FailoverFigures:
    """What one failover run measured."""

    report: Report
    rate_per_s: float
    wall_s: float
    failover_s: float | None
    """From the kill -9 to the sentinels naming the new primary."""
    first_ack_s: float | None
    """From the kill -9 to the first submission acknowledged again (replica included)."""
    refused: int
    """Submission attempts refused with an error while the primary was away."""
    answered_refused: int
    """Of the requests whose submission raised, those answered anyway (they had arrived)."""
    errors: dict[str, int]
    unanswered_at_kill: int = 0
    """Acknowledged requests not yet answered when the primary was killed (the fault hit
    work in flight)."""

    def lines(self) -> list[str]:
        rep = self.report
        failover = f"{self.failover_s:.2f} s" if self.failover_s is not None else "never"
        first = f"{self.first_ack_s:.2f} s" if self.first_ack_s is not None else "never"
        return [
            f"acknowledged {rep.submitted} pings at {self.rate_per_s:.0f}/s in "
            f"{self.wall_s:.1f} s: delivered {rep.delivered}, errored {rep.errored}, "
            f"duplicated {rep.duplicated}, lost {rep.lost} (of the acknowledged)",
            f"primary killed (-9) with {self.unanswered_at_kill} request(s) unanswered: sentinels named a new primary {failover} after the kill; "
            f"submissions acknowledged again {first} after it",
            f"submissions refused meanwhile {self.refused} ({self.answered_refused} of their "
            f"requests answered anyway): {self.errors}",
        ]


def run_failover_load(url: str, kill: Callable[[], float], recover: Callable[[], None], *,
                      requests: int = 2000, rate_per_s: float = 100.0,
                      kill_at: float = 1 / 3, timeout_s: float = 300.0) -> FailoverFigures:
    """Submit ``requests`` pings (acknowledged ones) at ``rate_per_s`` through the sentinel
    ``url``; ``kill()`` the primary (returning when) after ``kill_at`` of them."""
    target = parse_redis_url(url)
    if not target.is_sentinel:
        raise ValueError("a failover run needs a sentinel:// URL")
    sentinel = Sentinel(target.sentinels, sentinel_kwargs={"socket_timeout": 1,
                                                          **target.sentinel_auth})
    before = sentinel.discover_master(target.master_name)
    ledger = OutcomeLedger(url)
    batch = max(1, round(rate_per_s / 50))
    errors: dict[str, int] = {}
    killed_at: float | None = None
    unanswered = 0
    failover_s = first_ack_s = None
    started = time.monotonic()
    attempts = 0
    try:
        while len(ledger.submitted) < requests:
            attempts += 1
            try:
                ledger.submit_pings(min(batch, requests - len(ledger.submitted)))
                if killed_at is not None and first_ack_s is None:
                    first_ack_s = time.time() - killed_at
            except (redis.RedisError, RuntimeUnavailable) as e:
                kind = type(e).__name__
                errors[kind] = errors.get(kind, 0) + 1
            if killed_at is None and len(ledger.submitted) >= requests * kill_at:
                unanswered = len(ledger.submitted) - ledger.answered()
                killed_at = kill()
            if killed_at is not None and failover_s is None:
                failover_s = _promoted_after(sentinel, target.master_name, before, killed_at)
                if failover_s is not None:
                    recover()
            time.sleep(max(0.0, started + attempts * batch / rate_per_s - time.monotonic()))
        report = ledger.wait(timeout_s)
        wall_s = time.monotonic() - started
        answered_refused = sum(1 for i in ledger.unconfirmed if ledger.result(i) is not None)
    finally:
        ledger.close()
        for s in sentinel.sentinels:
            s.close()
    return FailoverFigures(report=report, rate_per_s=rate_per_s, wall_s=wall_s,
                           failover_s=failover_s, first_ack_s=first_ack_s,
                           refused=sum(errors.values()), answered_refused=answered_refused,
                           errors=errors, unanswered_at_kill=unanswered)


def _promoted_after(sentinel: Sentinel, name: str, before: tuple[str, int],
                    killed_at: float) -> float | None:
    """Seconds from the kill to the sentinels naming another primary (None: not yet)."""
    try:
        now = sentinel.discover_master(name)
    except redis.RedisError:
        return None
    return time.time() - killed_at if tuple(now) != tuple(before) else None
