"""Monitoring as an operator sees it: Prometheus metrics and Flower, over HTTP, after real
tasks ran on real agents."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from carbonedge.client import Client
from carbonedge.compose.local_runner import LocalRuntime
from carbonedge.protocol import keys
from carbonedge.scheduler.budgets import period_index
from tests.conftest import SMALL_RUNTIME_URL
from tests.integration.conftest import SMALL_TOPOLOGY, start_runtime
from tests.polling import wait_until

pytestmark = pytest.mark.timeout(300)

MODEL = "mobilenetv2"
CREDENTIALS = "ops:s3cret-pass"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, auth: str | None = None, timeout: float = 20) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    def listens() -> bool:
        assert proc.poll() is None, f"process exited with {proc.returncode}"
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listens, timeout, f"a listener on port {port}", interval_s=0.2)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalRuntime, int]]:
    """Two small nodes and a dispatcher that exports metrics."""
    tmp = tmp_path_factory.mktemp("monitored")
    compose = tmp / "compose.yml"
    compose.write_text(SMALL_TOPOLOGY)
    port = free_port()
    runtime = start_runtime(tmp, SMALL_RUNTIME_URL, compose,
                            dispatcher_args=("--metrics-port", str(port)))
    yield runtime, port
    runtime.down()


@pytest.fixture(scope="module")
def ran(monitored: tuple[LocalRuntime, int]) -> dict[str, int]:
    """Real inferences in Green and Performance mode plus pings; how many of each mode."""
    runtime, _ = monitored
    x = np.random.default_rng(0).standard_normal((3, 224, 224)).astype(np.float32)
    with Client(runtime.settings) as client:
        for mode in ("green", "performance"):
            client.submit(MODEL, x, mode=mode).result(120)
        client.submit(MODEL, x, mode="green", tenant="team-a").result(120)
        client.ping(mode="performance").result(60)
    return {"green": 2, "performance": 2}


def test_metrics_after_real_tasks(monitored: tuple[LocalRuntime, int],
                                  ran: dict[str, int]) -> None:
    runtime, port = monitored
    r = redis.Redis.from_url(runtime.settings.redis_url)
    samples = scrape(port)
    assert samples[("ce_redis_up", ())] == 1
    for node, intensity in (("node-a", 500.0), ("node-b", 200.0)):
        assert samples[("ce_node_alive", (("node", node),))] == 1
        assert samples[("ce_node_queue_length", (("node", node),))] == r.llen(keys.node_queue(node))
        assert samples[("ce_node_carbon_intensity_g_per_kwh", (("node", node),))] == intensity
        carbon = float(r.hget(keys.CARBON_TOTALS, node) or 0)
        assert samples[("ce_node_carbon_grams_total", (("node", node),))] == pytest.approx(carbon)
    # green work went to the low-carbon node, and it was charged for it
    assert samples[("ce_decisions_total", (("mode", "green"), ("node", "node-b")))] == 2
    assert samples[("ce_node_carbon_grams_total", (("node", "node-b"),))] > 0
    energy = {k.decode(): float(v) for k, v in r.hgetall(keys.ENERGY_TOTALS).items()}
    for node, kwh in energy.items():
        assert samples[("ce_node_energy_kwh_total", (("node", node),))] == pytest.approx(kwh)
    decided = {k.decode(): int(v) for k, v in r.hgetall(keys.DECISIONS).items()}
    for mode, count in ran.items():
        exported = sum(v for (name, labels), v in samples.items()
                       if name == "ce_decisions_total" and ("mode", mode) in labels)
        assert exported == sum(v for k, v in decided.items() if k.endswith("|" + mode)) >= count
        # every decision of this dispatcher was timed
        assert samples[("ce_decision_latency_seconds_count", (("mode", mode),))] >= count
        assert 0 < samples[("ce_decision_latency_seconds_sum", (("mode", mode),))] < count
    assert samples[("ce_requests_waiting", ())] == 0


def test_exporter_reports_budget_spend_and_deferrals(monitored: tuple[LocalRuntime, int],
                                                    ran: dict[str, int]) -> None:
    runtime, _ = monitored
    r = redis.Redis.from_url(runtime.settings.redis_url)
    period = period_index(time.time(), runtime.settings.carbon_budget_period_s)
    # agents charge tenants in a batch after the result
    wait_until(lambda: r.hget(keys.budget_spend_key(period), "team-a"), 30, "team-a's spend")
    spent = float(r.hget(keys.budget_spend_key(period), "team-a") or 0)
    assert spent > 0
    port = free_port()
    env = {**os.environ, "CARBONEDGE_REDIS_URL": runtime.settings.redis_url,
           "CARBONEDGE_CARBON_BUDGETS": "team-a=50,team-b=5"}
    proc = subprocess.Popen([sys.executable, "-m", "carbonedge.cli", "metrics",
                             "--metrics-port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        samples = scrape(port)
    finally:
        proc.terminate()
        proc.wait(30)
    assert samples[("ce_budget_spent_grams", (("tenant", "team-a"),))] == pytest.approx(spent)
    assert samples[("ce_budget_grams", (("tenant", "team-a"),))] == 50
    assert samples[("ce_budget_grams", (("tenant", "team-b"),))] == 5
    assert samples[("ce_deferred_requests", ())] == r.zcard(keys.DEFERRED)
    assert samples[("ce_deferrals_total", ())] == int(r.get(keys.DEFERRED_TOTAL) or 0)


def test_metrics_exporter_binds_loopback_and_reports_redis_down(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "CARBONEDGE_REDIS_URL": "redis://127.0.0.1:1/0"}
    proc = subprocess.Popen([sys.executable, "-m", "carbonedge.cli", "metrics",
                             "--metrics-port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        assert scrape(port)[("ce_redis_up", ())] == 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no traffic: just picks the outward address
            outward = s.getsockname()[0]
        if outward != "127.0.0.1":
            with socket.socket() as s:
                assert s.connect_ex((outward, port)) != 0, "exporter listens beyond loopback"
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture
def flower(monitored: tuple[LocalRuntime, int]) -> Iterator[int]:
    runtime, _ = monitored
    port = free_port()
    env = {**os.environ, "CARBONEDGE_REDIS_URL": runtime.settings.redis_url,
           "CARBONEDGE_FLOWER_BASIC_AUTH": CREDENTIALS}
    proc = subprocess.Popen([sys.executable, "-m", "carbonedge.cli", "flower",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


def test_flower_requires_credentials(flower: int) -> None:
    assert http_get(f"http://127.0.0.1:{flower}/api/workers")[0] == 401
    assert http_get(f"http://127.0.0.1:{flower}/api/workers", auth="ops:wrong")[0] == 401


def test_flower_refuses_to_start_without_credentials() -> None:
    env = {k: v for k, v in os.environ.items() if k != "CARBONEDGE_FLOWER_BASIC_AUTH"}
    done = subprocess.run([sys.executable, "-m", "carbonedge.cli", "flower"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "CARBONEDGE_FLOWER_BASIC_AUTH" in done.stderr


def test_flower_shows_agents_and_their_queue_lengths(monitored: tuple[LocalRuntime, int],
                                                     ran: dict[str, int], flower: int) -> None:
    runtime, metrics_port = monitored
    base = f"http://127.0.0.1:{flower}"
    def workers() -> dict:
        status, body = http_get(base + "/api/workers?refresh=1", auth=CREDENTIALS)
        assert status == 200
        found = json.loads(body)
        queues = {q["name"] for w in found.values() for q in (w.get("active_queues") or [])}
        return found if {"ce.node.node-a", "ce.node.node-b"} <= queues else {}

    # agents answer `inspect` between tasks; ask until both have
    listed = wait_until(workers, 60, "Flower listing both agents' queues", interval_s=1)
    assert {name.split("@")[0] for name in listed} >= {"node-a", "node-b"}

    # a burst at one node: its queue fills while the solo worker runs the first tasks
    x = np.random.default_rng(1).standard_normal((3, 224, 224)).astype(np.float32)
    seen = {"flower": 0, "metrics": 0}

    def both_saw_a_queue() -> bool:
        status, body = http_get(base + "/api/queues/length", auth=CREDENTIALS)
        assert status == 200
        lengths = {q["name"]: q["messages"] for q in json.loads(body)["active_queues"]}
        assert "ce.node.node-b" in lengths
        seen["flower"] = max(seen["flower"], lengths.get("ce.node.node-a", 0))
        seen["metrics"] = max(seen["metrics"], int(
            scrape(metrics_port)[("ce_node_queue_length", (("node", "node-a"),))]))
        return seen["flower"] >= 1 and seen["metrics"] >= 1

    with Client(runtime.settings) as client:
        handles = [client.submit_direct("node-a", "efficientnet_b0", x) for _ in range(6)]
        wait_until(both_saw_a_queue, 60, "Flower and the exporter to see node-a's queue",
                   on_fail=lambda: seen, interval_s=0.1)
        for h in handles:
            assert h.result(180).node == "node-a"
