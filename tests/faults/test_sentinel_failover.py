"""Redis Sentinel: three sentinels, a primary and a replica; every process is given only
the sentinel URL. The primary is killed (-9) under load; every acknowledged request ends
in a result (or an error result), none is lost, and the failover time is printed."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from carbonedge.client import Client
from carbonedge.compose.local_runner import LocalRuntime
from carbonedge.compose.topology import load_topology
from carbonedge.connections import redis_client
from carbonedge.experiments.failover_load import run_failover_load
from carbonedge.settings import Settings
from tests.conftest import CGROUP_PARENT
from tests.faults.servers import SentinelGroup
from tests.integration.conftest import SMALL_TOPOLOGY
from tests.integration.test_monitoring import free_port, http_get, wait_for_port
from tests.polling import wait_until

pytestmark = pytest.mark.timeout(420)


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    sentinels = SentinelGroup(tmp_path / "sentinel", secrets.token_hex(8)).start()
    yield sentinels
    sentinels.stop()


def sentinel_runtime(tmp_path: Path, url: str) -> LocalRuntime:
    compose = tmp_path / "compose.yml"
    compose.write_text(SMALL_TOPOLOGY)
    settings = Settings.load(env={}, redis_url=url, run_dir=str(tmp_path / "run"),
                             result_timeout_s=60.0, cgroup_parent=CGROUP_PARENT)
    runtime = LocalRuntime(load_topology(compose), settings)
    runtime.up(wait_s=120)
    return runtime


def test_primary_killed_under_load_loses_no_acknowledged_request(
        group: SentinelGroup, tmp_path: Path) -> None:
    runtime = sentinel_runtime(tmp_path, group.url)
    try:
        with Client(runtime.settings) as client:  # the producer API over Sentinel too
            assert client.ping().result(60).node in ("node-a", "node-b")
        first_port = group.primary_port()
        assert first_port == group.primary.port  # type: ignore[union-attr]

        def kill() -> float:
            at = time.time()
            group.primary.kill()  # type: ignore[union-attr]
            return at

        def recover() -> None:  # the old primary comes back as the new one's replica
            group.rejoin(group.primary)  # type: ignore[arg-type]

        figures = run_failover_load(group.url, kill, recover, requests=600, rate_per_s=100)
        for line in figures.lines():
            print(line)
        report = figures.report
        assert figures.unanswered_at_kill > 0, "the kill hit no request in flight"
        assert figures.failover_s is not None, "the sentinels never promoted the replica"
        assert group.primary_port() == group.replica.port  # type: ignore[union-attr]
        assert report.submitted == 600
        assert report.lost == 0, report.line()
        assert report.duplicated == 0, report.line()
        assert report.delivered + report.errored == report.submitted
        # after the failover the same URL serves again: dispatcher, agents and producer
        with Client(runtime.settings) as client:
            assert client.ping().result(60).node in ("node-a", "node-b")
        primary = redis_client(group.url, socket_timeout=5)
        assert primary.info("replication")["role"] == "master"
        primary.close()
        _flower_sees_the_agents(group.url)
    finally:
        runtime.down()


def _flower_sees_the_agents(url: str) -> None:
    """Flower, given the sentinel URL, lists both agents and reads their queue lengths."""
    port = free_port()
    env = {**os.environ, "CARBONEDGE_REDIS_URL": url, "CARBONEDGE_FLOWER_BASIC_AUTH": "ops:pw"}
    proc = subprocess.Popen([sys.executable, "-m", "carbonedge.cli", "flower", "--port",
                             str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc)
        base = f"http://127.0.0.1:{port}"
        def workers() -> bool:
            status, body = http_get(base + "/api/workers?refresh=1", auth="ops:pw")
            names = {n.split("@")[0] for n in json.loads(body)} if status == 200 else set()
            return names >= {"node-a", "node-b"}

        # agents answer `inspect` between tasks
        wait_until(workers, 60, "Flower listing both agents", interval_s=1)
        status, body = http_get(base + "/api/queues/length", auth="ops:pw")
        assert status == 200
        queues = {q["name"] for q in json.loads(body)["active_queues"]}
        assert {"ce.node.node-a", "ce.node.node-b"} <= queues
    finally:
        proc.terminate()
        proc.wait(30)
