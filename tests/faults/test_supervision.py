"""`carbonedge up` supervises what it starts: a process killed with SIGKILL comes back and
serves, `status` shows every process's liveness and restarts, `down` stops everything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis

from carbonedge.cgroups import NodeCgroup
from carbonedge.client import Client
from carbonedge.compose.local_runner import RuntimeState, process_alive
from carbonedge.compose.processes import ProcessSpec
from carbonedge.compose.supervisor import Supervisor
from carbonedge.errors import NoNodeAvailable
from carbonedge.ops.status import collect_cluster
from carbonedge.protocol import keys
from carbonedge.settings import Settings
from tests.conftest import CGROUP_PARENT, TEST_REDIS, _redis_or_fail
from tests.faults.conftest import wait_until
from tests.integration.conftest import SMALL_TOPOLOGY

pytestmark = pytest.mark.timeout(300)

URL = f"{TEST_REDIS}/10"


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "carbonedge.cli", *args], env=env,
                          capture_output=True, text=True, timeout=200)


def _serves(client: Client, node: str) -> bool:
    """Whether a request pinned to ``node`` is served there (not refused as not alive)."""
    try:
        return client.ping(node=node).result(90).node == node
    except NoNodeAvailable:
        return False


def _processes(r: redis.Redis) -> dict[str, dict]:
    return {k.decode(): json.loads(v) for k, v in r.hgetall(keys.PROCESSES).items()}


def _restarted(r: redis.Redis, name: str, old_pid: int) -> bool:
    entry = _processes(r).get(name, {})
    return entry.get("alive") is True and entry.get("pid") not in (None, old_pid)


def test_killed_processes_come_back_and_serve(tmp_path: Path) -> None:
    r = _redis_or_fail(URL)
    r.flushdb()
    compose = tmp_path / "compose.yml"
    compose.write_text(SMALL_TOPOLOGY)
    run_dir = tmp_path / "run"
    env = {**os.environ, "CARBONEDGE_REDIS_URL": URL, "CARBONEDGE_RUN_DIR": str(run_dir),
           "CARBONEDGE_CGROUP_PARENT": CGROUP_PARENT}
    up = _cli("up", "--compose", str(compose), env=env)
    state = None
    try:
        assert up.returncode == 0, up.stderr
        assert "supervised" in up.stdout and "carbon service" in up.stdout
        state = RuntimeState.read(run_dir / "state.json")
        procs = _processes(r)
        assert set(procs) == {"carbon", "dispatcher", "node-a", "node-b"}
        assert all(p["alive"] and p["restarts"] == 0 for p in procs.values())
        settings = Settings.load(env={}, redis_url=URL)
        with Client(settings) as client:
            # an agent killed: what was sent meanwhile is answered, and it comes back
            agent = procs["node-b"]["pid"]
            os.kill(agent, signal.SIGKILL)
            wait_until(lambda: not process_alive(agent), 30, "node-b to die")
            meanwhile = [client.ping(mode="green") for _ in range(5)]
            wait_until(lambda: _restarted(r, "node-b", agent), 60, "node-b to restart")
            assert all(h.result(90).node in ("node-a", "node-b") for h in meanwhile)
            wait_until(lambda: r.exists(keys.node_key("node-b")), 90, "node-b's heartbeat")
            # a dispatcher sees the new heartbeat at its next view refresh (view_refresh_s)
            wait_until(lambda: _serves(client, "node-b"), 30, "node-b to serve again")
            # the dispatcher too: requests wait in the stream, then are routed
            dispatcher = procs["dispatcher"]["pid"]
            os.kill(dispatcher, signal.SIGKILL)
            wait_until(lambda: not process_alive(dispatcher), 30, "the dispatcher to die")
            waiting = client.ping(mode="green")
            wait_until(lambda: _restarted(r, "dispatcher", dispatcher), 60,
                       "the dispatcher to restart")
            assert waiting.result(90).node == "node-b"
            # and the carbon service
            carbon = procs["carbon"]["pid"]
            os.kill(carbon, signal.SIGKILL)
            wait_until(lambda: _restarted(r, "carbon", carbon), 60, "the carbon service")
        procs = _processes(r)
        assert {n: p["restarts"] for n, p in procs.items()} == {
            "carbon": 1, "dispatcher": 1, "node-a": 0, "node-b": 1}
        assert "killed by SIGKILL" in procs["node-b"]["last_exit"]
        # the killed dispatcher's last beat counts as alive until it is stale (seconds)
        wait_until(lambda: len(collect_cluster(r, heartbeat_ttl_s=settings.heartbeat_ttl_s)
                               .live_dispatchers) == 1, 30, "the killed dispatcher's beat")
        status = _cli("status", env=env)
        assert status.returncode == 0, status.stderr
        lines = {line.split()[0]: line for line in status.stdout.splitlines()
                 if line.startswith("  ") and line.split()}
        assert "running" in lines["node-b"] and "killed by SIGKILL" in lines["node-b"]
        assert lines["node-b"].split()[3] == "1" and lines["node-a"].split()[3] == "0"
        assert "dispatcher: 1 alive" in status.stdout
    finally:
        down = _cli("down", env=env)
    assert down.returncode == 0 and down.stdout.strip() == "down", down.stderr
    assert state is not None and state.supervisor_pid is not None
    assert not process_alive(state.supervisor_pid)
    assert not any(p["alive"] and process_alive(p["pid"]) for p in procs.values())
    assert not r.exists(keys.PROCESSES) and not r.exists(keys.PROCESSES_BEAT)
    assert not NodeCgroup.attach("node-b", CGROUP_PARENT).exists()
    status = _cli("status", env=env)
    assert "dispatcher: NONE RUNNING" in status.stdout
    r.close()


def test_a_process_that_keeps_crashing_backs_off(tmp_path: Path) -> None:
    """Each exit doubles the wait before the next start, up to the cap."""
    r = _redis_or_fail(URL)
    r.flushdb()
    (tmp_path / "logs").mkdir()
    settings = Settings.load(env={}, redis_url=URL)
    crashing = ProcessSpec("crasher", ("report", str(tmp_path / "no-such.csv")))
    supervisor = Supervisor([crashing], settings, tmp_path, backoff_s=0.2, max_backoff_s=0.8)
    stop = threading.Event()
    thread = threading.Thread(target=supervisor.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: _processes(r).get("crasher", {}).get("restarts", 0) >= 4, 90,
                   "four restarts")
        entry = _processes(r)["crasher"]
        assert entry["restarts"] >= 4 and entry["last_exit"].startswith("exit 2")
        assert supervisor.children[0].backoff_s == 0.8  # 0.2, 0.4, 0.8, then capped
    finally:
        stop.set()
        thread.join(30)
    assert not r.exists(keys.PROCESSES)
    r.close()
