"""Dispatchers die (kill -9) or run side by side: no request is lost or dispatched twice."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from carbonedge.client.requests import build_request
from carbonedge.compose.local_runner import LocalRuntime
from carbonedge.compose.processes import ProcessSpec
from carbonedge.experiments.accounting import OutcomeLedger
from carbonedge.protocol import keys
from carbonedge.protocol.messages import pack
from tests.faults.conftest import delivery_stats, kill, wait_until

pytestmark = pytest.mark.timeout(300)


def _first_dispatches(url: str) -> int:
    """Routing decisions, less re-dispatches (an agent whose heartbeat lapsed on a loaded
    machine has its requests routed again, legitimately)."""
    client = redis.Redis.from_url(url)
    try:
        decisions = sum(int(v) for v in client.hvals(keys.DECISIONS))
        return decisions - int(client.hget(keys.DELIVERY_STATS, "redispatched") or 0)
    finally:
        client.close()


def _start_dispatcher(runtime: LocalRuntime) -> None:
    runtime._start([ProcessSpec("dispatcher", ("dispatcher",))])  # the runner's own start path


def test_entries_read_by_a_dead_dispatcher_are_reclaimed(small: LocalRuntime,
                                                        ledger: OutcomeLedger) -> None:
    """A dispatcher that read a batch and died before acknowledging it leaves the batch
    pending under its name; a live dispatcher claims and dispatches it."""
    url = small.settings.redis_url
    client = redis.Redis.from_url(url)
    try:
        requests = [build_request(kind="ping") for _ in range(50)]
        ledger.expect([r["id"] for r in requests])
        pipe = client.pipeline(transaction=True)  # nobody else can read them in between
        for request in requests:
            pipe.xadd(keys.REQUEST_STREAM, {keys.REQUEST_FIELD: pack(request)})
        pipe.xreadgroup(keys.DISPATCH_GROUP, "ghost", {keys.REQUEST_STREAM: ">"}, count=50)
        pipe.hset(keys.DISPATCHER_ALIVE, "ghost", repr(time.time() - 60))
        *_, read, _ = pipe.execute()
        assert len(read[0][1]) == 50
        report = ledger.wait(60)
        print("dead dispatcher's pending entries:", report.line())
        assert (report.delivered, report.lost, report.duplicated) == (50, 0, 0)
        wait_until(lambda: b"ghost" not in {c["name"] for c in client.xinfo_consumers(
            keys.REQUEST_STREAM, keys.DISPATCH_GROUP)}, 30, "the dead consumer's removal")
        assert not client.hexists(keys.DISPATCHER_ALIVE, "ghost")
    finally:
        client.close()


def test_kill_9_dispatcher_under_load_loses_nothing(small: LocalRuntime,
                                                    ledger: OutcomeLedger) -> None:
    stop = threading.Event()

    def pinger() -> None:
        while not stop.is_set():
            ledger.submit_pings(10)
            time.sleep(0.05)

    thread = threading.Thread(target=pinger, daemon=True)
    thread.start()
    try:
        wait_until(lambda: ledger.answered() >= 100, 60, "the first answers")
        submitted_before_kill = len(ledger.submitted)
        kill(small, "dispatcher")
        # requests pile up in the stream with no dispatcher at all
        wait_until(lambda: len(ledger.submitted) >= submitted_before_kill + 50, 60,
                   "requests submitted with no dispatcher")
        _start_dispatcher(small)
        # the pile-up is served, and then the load the new dispatcher routes itself
        under_new = len(ledger.submitted)
        wait_until(lambda: ledger.answered() >= under_new + 50, 90,
                   "answers to requests sent under the new dispatcher")
    finally:
        stop.set()
        thread.join()
    report = ledger.wait(120)
    print("kill -9 dispatcher under load:", report.line())
    assert report.lost == 0 and report.duplicated == 0 and report.errored == 0
    assert _first_dispatches(small.settings.redis_url) == report.submitted  # routed once


def test_two_dispatchers_route_each_request_once(small: LocalRuntime, ledger: OutcomeLedger) -> None:
    url = small.settings.redis_url
    _start_dispatcher(small)
    client = redis.Redis.from_url(url)
    try:
        wait_until(lambda: client.hlen(keys.DISPATCHER_ALIVE) >= 2, 60, "the second dispatcher")
        for _ in range(40):
            ledger.submit_pings(50)
            time.sleep(0.01)
        report = ledger.wait(180)
        consumers = client.xinfo_consumers(keys.REQUEST_STREAM, keys.DISPATCH_GROUP)
    finally:
        client.close()
    print("two dispatchers:", report.line(), "| consumers:",
          {c["name"].decode(): c["pending"] for c in consumers})
    assert (report.delivered, report.lost, report.duplicated) == (2000, 0, 0)
    assert len(consumers) >= 2
    assert _first_dispatches(url) == 2000  # no request was routed by both
    stats = delivery_stats(url)
    if not stats.get("redispatched"):  # no heartbeat lapsed: nothing ran twice
        assert stats.get("late_results", 0) == 0 and stats.get("skipped_moved", 0) == 0
