"""Redis is killed and restarted: agents, dispatcher and producers carry on, nothing is lost.

The server runs with AOF and fsync on every write, so everything it acknowledged before
the kill -9 is there after the restart (without persistence a restart empties Redis, and
the requests it held time out with a diagnosis instead). Celery workers have had bugs
where a worker reconnects but no longer consumes its queue: requests submitted after the
restart must be served by every agent.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from carbonedge.client import Client
from carbonedge.compose.local_runner import LocalRuntime, process_alive
from carbonedge.errors import ResultTimeout, RuntimeUnavailable
from carbonedge.experiments.accounting import OutcomeLedger
from carbonedge.protocol import keys
from tests.faults.conftest import wait_until
from tests.faults.servers import RedisServer, persistent
from tests.integration.conftest import SMALL_TOPOLOGY, start_runtime

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = persistent(tmp_path / "redis").start()
    yield srv
    srv.stop()


@pytest.fixture
def runtime(tmp_path: Path, server: RedisServer) -> Iterator[LocalRuntime]:
    compose = tmp_path / "compose.yml"
    compose.write_text(SMALL_TOPOLOGY)
    rt = start_runtime(tmp_path, server.url, compose, carbon_service=True)
    yield rt
    rt.down()


def _all_alive(url: str, node_ids: list[str]) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=1)
    try:
        return all(client.exists(keys.node_key(n)) for n in node_ids) and bool(
            client.hlen(keys.DISPATCHER_ALIVE))
    except redis.RedisError:
        return False
    finally:
        client.close()


def test_redis_kill_9_and_restart(server: RedisServer, runtime: LocalRuntime) -> None:
    ledger = OutcomeLedger(server.url)
    client = Client(runtime.settings)
    try:
        ledger.submit_pings(200)
        ledger.submit_pings(100, mode="green")
        # some answered, some still queued or running when Redis dies
        wait_until(ledger.answered, 60, "the first answers")
        server.kill()
        answered_before = ledger.answered()
        assert answered_before < 300, "all answered before the kill: nothing was in flight"
        with pytest.raises(RuntimeUnavailable, match="Redis"):
            client.ping()  # during the outage: refused at once, with a reason
        time.sleep(2.0)  # the outage's length: agents and the dispatcher retry through it
        server.start()
        wait_until(lambda: _all_alive(server.url, runtime.node_ids), 60, "heartbeats to return")
        # after the reconnect every agent must still consume its queue
        ledger.submit_pings(100)
        for node_id in runtime.node_ids:
            ledger.submit_pings(50, node=node_id)
        report = ledger.wait(120)
        print("Redis kill -9 + restart:", report.line(), ledger.missing())
        assert report.lost == 0 and report.duplicated == 0 and report.errored == 0
        assert set(report.nodes) == set(runtime.node_ids)
        assert client.ping().result(60).node in runtime.node_ids  # the producer reconnects too
        # the carbon service rode out the outage too: alive, and its telemetry is back
        r = redis.Redis.from_url(server.url)
        try:
            r.delete(keys.HOST_POWER)
            wait_until(lambda: r.exists(keys.HOST_POWER), 60, "the carbon service's telemetry")
        finally:
            r.close()
        assert all(process_alive(p.pid) for p in runtime.state.processes)
    finally:
        client.close()
        ledger.close()


def test_without_persistence_every_request_still_ends_in_an_answer(tmp_path: Path) -> None:
    """A restart of a Redis that keeps nothing empties it: requests it held are gone,
    and their producers must learn so (an error), not wait forever."""
    server = RedisServer(tmp_path / "volatile", [], "")
    port = server.port
    server.args = ["--port", str(port), "--save", "", "--appendonly", "no"]
    server.url = f"redis://127.0.0.1:{port}/0"
    server.start()
    compose = tmp_path / "compose.yml"
    compose.write_text(SMALL_TOPOLOGY)
    rt = start_runtime(tmp_path, server.url, compose)
    client = Client(rt.settings)
    try:
        handles = [client.ping() for _ in range(10)]
        submitted = {handle.id for handle in handles}
        assert len(submitted) == len(handles)
        server.kill()
        server.start()
        outcomes: dict[str, str] = {}
        for handle in handles:
            try:
                answer = handle.result(2.0)
                assert answer.id == handle.id, "answered with another request's result"
                outcomes[answer.id] = "result"
            # a timeout saying why (no trace of it, no dispatcher or agent back yet), or
            # Redis lost while waiting: either names the request; any other error fails
            except (ResultTimeout, RuntimeUnavailable) as e:
                assert handle.id in e.message, e.message
                outcomes[handle.id] = "no trace" if "no trace" in e.message else type(e).__name__
        print("volatile Redis restart:", Counter(outcomes.values()))
        assert set(outcomes) == submitted  # every request ended, in a result or a named error
        assert client.ping().result(60).node in rt.node_ids  # and it serves again
    finally:
        client.close()
        rt.down()
        server.stop()
