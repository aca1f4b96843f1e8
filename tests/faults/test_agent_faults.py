"""Agents die mid-task (kill -9, OOM, frozen cgroup): their requests move, none vanish."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from carbonedge.cgroups import NodeCgroup
from carbonedge.client.requests import build_request
from carbonedge.compose.local_runner import LocalRuntime, process_alive
from carbonedge.experiments.accounting import OutcomeLedger
from carbonedge.protocol import keys
from carbonedge.protocol.codec import encode_tensor
from tests import model_files
from tests.conftest import CGROUP_PARENT
from tests.faults.conftest import FAULTS_URL, delivery_stats, kill, pid_of, recoveries, wait_until
from tests.integration.conftest import SMALL_TOPOLOGY, start_runtime

pytestmark = pytest.mark.timeout(300)

INPUT = encode_tensor(np.zeros((1, 3, 224, 224), np.float32))
RECOVERY_BOUND_S = 30.0
"""Far above the ~3-4 s measured (benchmarks/bench_faults.py), far below Celery's hour."""


def _infer_green(model: str = "slow") -> dict:
    # node-b (200 g/kWh) wins every Green decision while it is alive; ``slow`` runs long
    # enough (~0.2 s) to be caught mid-request
    return build_request(model=model, tensor=INPUT, mode="green")


def _running_on(url: str, node_id: str) -> bool:
    """Whether node_id's agent has taken a task and not acknowledged it (kombu's unacked)."""
    client = redis.Redis.from_url(url)
    try:
        queue = keys.node_queue(node_id).encode()
        return any(queue in v for v in client.hvals(keys.KOMBU_UNACKED))
    finally:
        client.close()


def _pinger(ledger: OutcomeLedger, stop: threading.Event, per_batch: int = 10) -> threading.Thread:
    def run() -> None:
        while not stop.is_set():
            ledger.submit_pings(per_batch, mode="green")
            time.sleep(0.05)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_kill_9_under_load_loses_nothing(small: LocalRuntime, ledger: OutcomeLedger) -> None:
    stop = threading.Event()
    pinger = _pinger(ledger, stop)
    try:
        wait_until(lambda: ledger.answered() >= 50, 60, "the first answers")
        killed_at = kill(small, "node-b")
        # node-b stays in the dispatcher's view until its heartbeat expires: what is
        # routed to it meanwhile must be re-dispatched too
        wait_until(lambda: recoveries(small.settings.redis_url, "node-b"), RECOVERY_BOUND_S,
                   "node-b's requests to be re-dispatched")
        after = len(ledger.submitted)  # and load goes on to be served without node-b
        wait_until(lambda: ledger.answered() >= after + 20, 60, "answers after the re-dispatch")
    finally:
        stop.set()
        pinger.join()
    report = ledger.wait(120)
    print("kill -9 under load:", report.line())
    record = recoveries(small.settings.redis_url, "node-b")[0]
    print(f"re-dispatch {float(record['ts']) - killed_at:.2f} s after kill -9, "
          f"{record['requests']} request(s)")
    assert report.lost == 0 and report.duplicated == 0 and report.errored == 0
    assert int(record["requests"]) > 0
    assert report.nodes["node-a"] > 0


def test_kill_9_mid_inference_is_redispatched(small: LocalRuntime, ledger: OutcomeLedger) -> None:
    url = small.settings.redis_url
    request_id = ledger.submit(_infer_green())
    wait_until(lambda: _running_on(url, "node-b"), 60, "node-b to take the request")
    killed_at = kill(small, "node-b")
    report = ledger.wait(120, settle_s=0.5)
    record = recoveries(url, "node-b")[0]
    print(f"mid-inference kill: re-dispatched {float(record['ts']) - killed_at:.2f} s after "
          f"kill -9; answered {ledger.delivered_at(request_id) - killed_at:.2f} s after it")
    assert (report.delivered, report.lost, report.duplicated) == (1, 0, 0)
    assert report.nodes == {"node-a": 1}
    assert record["running"] == "1"
    client = redis.Redis.from_url(url)
    try:  # nothing left for kombu to restore to the dead queue an hour from now
        assert not any(keys.node_queue("node-b").encode() in v
                       for v in client.hvals(keys.KOMBU_UNACKED))
        assert client.hlen(keys.assigned_key("node-b")) == 0
    finally:
        client.close()


def test_oom_kill_in_the_memory_cgroup_is_redispatched(tmp_path: Path) -> None:
    """node-b runs torch, which allocates ``hungry``'s ~50 MB activation per request and
    frees it after; with its limit just above what it holds idle, a request OOM-kills it."""
    hungry = model_files.torchscript(tmp_path / "hungry.pt", model_files.Hungry(),
                                     shape=(3, 224, 224))
    compose = tmp_path / "compose.yml"
    # node-a so dirty that Green prefers node-b however much slower torch runs ``hungry``
    compose.write_text(SMALL_TOPOLOGY.replace(
        "carbon_intensity: 200}", "carbon_intensity: 20, runtime: torch}").replace(
        "carbon_intensity: 500}", "carbon_intensity: 2000}")
        + f"x-carbonedge:\n  models: [{{name: hungry, source: 'torchscript:{hungry}'}}]\n")
    small = start_runtime(tmp_path, FAULTS_URL, compose)
    ledger = OutcomeLedger(small.settings.redis_url)
    try:
        if not small.state.constrained:
            pytest.skip("agents run without cgroups here")
        record = next(p for p in small.state.processes if p.name == "node-b")
        parent, _, name = record.cgroup.rpartition("/")
        memory = NodeCgroup.attach(name, parent).dirs["memory"]
        ledger.submit_pings(1, node="node-b")
        ledger.wait(60, settle_s=0)
        usage = int((memory / "memory.usage_in_bytes").read_text())
        # room for the agent as it is, not for a request's activations: it must OOM
        limit = str(usage + (8 << 20))
        (memory / "memory.limit_in_bytes").write_text(limit)
        memsw = memory / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            memsw.write_text(limit)
        pid = pid_of(small, "node-b")
        request_id = ledger.submit(_infer_green("hungry"))
        wait_until(lambda: not process_alive(pid), 120, "the kernel to OOM-kill node-b")
        report = ledger.wait(120, settle_s=0.5)
        oom_events = (memory / "memory.oom_control").read_text()
        print("OOM:", report.line(), "|", oom_events.replace("\n", " "))
        assert "oom_kill 0" not in oom_events
        assert report.lost == 0 and report.duplicated == 0
        result = ledger.result(request_id)
        assert result is not None and result["status"] == "ok" and result["node"] == "node-a"
        assert result["runtime"] == "onnxruntime"
    finally:
        ledger.close()
        small.down()


@contextlib.contextmanager
def _freezer(name: str, pid: int) -> Iterator[Path]:
    root = Path("/sys/fs/cgroup/freezer")
    if not (root / "cgroup.procs").exists():
        pytest.skip("no cgroup v1 freezer on this host")
    d = root / CGROUP_PARENT / f"{name}-freeze"
    try:
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.procs").write_text(str(pid))
    except OSError as e:
        pytest.skip(f"cannot use the freezer cgroup: {e}")
    try:
        yield d / "freezer.state"
    finally:
        (d / "freezer.state").write_text("THAWED")
        with contextlib.suppress(OSError):
            for p in (d / "cgroup.procs").read_text().split():
                (root / "cgroup.procs").write_text(p)
            d.rmdir()


def test_frozen_agent_is_recovered_and_its_late_result_dropped(small: LocalRuntime,
                                                               ledger: OutcomeLedger) -> None:
    url = small.settings.redis_url
    with _freezer("node-b", pid_of(small, "node-b")) as state:
        request_id = ledger.submit(_infer_green())
        wait_until(lambda: _running_on(url, "node-b"), 60, "node-b to take the request")
        frozen_at = time.time()
        state.write_text("FROZEN")
        wait_until(lambda: ledger.delivered_at(request_id), 120, "the re-dispatched result")
        print(f"frozen agent: answered by node-a {ledger.delivered_at(request_id) - frozen_at:.2f}"
              " s after the freeze")
        state.write_text("THAWED")
        # the thawed agent finishes the request it held: its result must be dropped
        wait_until(lambda: delivery_stats(url).get("late_results", 0) >= 1, 120,
                   "node-b's late result")
    report = ledger.wait(5, settle_s=2.0)
    assert (report.delivered, report.lost, report.duplicated) == (1, 0, 0)
    assert report.nodes == {"node-a": 1}
    # the thawed agent is back in service and nothing is double-counted as in flight
    client = redis.Redis.from_url(url)
    try:
        wait_until(lambda: client.exists(keys.node_key("node-b")), 30, "node-b's heartbeat")
        later = OutcomeLedger(url)
        try:
            later.submit_pings(20, mode="green")
            again = later.wait(60, settle_s=0.5)
        finally:
            later.close()
        assert (again.lost, again.duplicated) == (0, 0)
        assert int(client.hget(keys.IN_FLIGHT, "node-b") or 0) == 0
    finally:
        client.close()


def test_sigterm_mid_stream_loses_nothing(small: LocalRuntime, ledger: OutcomeLedger) -> None:
    stop = threading.Event()
    pinger = _pinger(ledger, stop)
    try:
        wait_until(lambda: ledger.answered() >= 50, 60, "the first answers")
        kill(small, "node-b", signal.SIGTERM)
        after = len(ledger.submitted)  # load goes on while node-b is gone
        wait_until(lambda: ledger.answered() >= after + 50, 60, "answers after the SIGTERM")
    finally:
        stop.set()
        pinger.join()
    report = ledger.wait(120)
    print("SIGTERM under load:", report.line())
    assert report.lost == 0 and report.duplicated == 0 and report.errored == 0
    # the stop hit a stream node-b was serving, and its share went to node-a
    assert report.nodes["node-b"] > 0 and report.nodes["node-a"] > 0
