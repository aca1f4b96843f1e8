"""The topology in real containers with `docker compose`: limits, health checks, routing,
Flower, Prometheus and scaling, on the engine the session provisions (and stops again)."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from carbonedge.cli import _COMMANDS
from carbonedge.client import Client
from carbonedge.compose.topology import load_topology
from carbonedge.errors import NoNodeAvailable
from carbonedge.protocol import keys
from carbonedge.protocol.telemetry import Heartbeat
from carbonedge.settings import Settings
from tests import polling
from tests.docker.conftest import COMPOSE, assert_limits_applied, cgroup_limits
from tests.docker.engine import ROOT, VENV, Engine
from tests.integration.test_monitoring import free_port, scrape

pytestmark = pytest.mark.timeout(900)

OVERRIDE = ROOT / "tests" / "docker" / "compose.test.yml"
NODE_CLASSES = ("node-high", "node-medium", "node-green")
MODEL = "mobilenetv2"


class Project:
    """One compose project of the test: the base file, the test override, an env file."""

    def __init__(self, engine: Engine, exports: Path, tmp: Path) -> None:
        self.engine = engine
        self.name = f"cetest{secrets.token_hex(3)}"
        self.password = secrets.token_urlsafe(16)
        self.flower_auth = f"ops:{secrets.token_urlsafe(8)}"
        self.redis_port, self.metrics_port, self.flower_port, self.carbon_metrics_port = (
            free_port() for _ in range(4))
        self.env_file = tmp / "test.env"
        self.env_file.write_text("\n".join([
            f"CARBONEDGE_REDIS_PASSWORD={self.password}",
            f"CARBONEDGE_FLOWER_BASIC_AUTH={self.flower_auth}",
            f"CE_TEST_IMAGE={engine.test_image}", f"CE_TEST_SRC={ROOT}",
            f"CE_TEST_VENV={VENV}",
            f"CE_TEST_REDIS_PORT={self.redis_port}", f"CE_TEST_METRICS_PORT={self.metrics_port}",
            f"CE_TEST_FLOWER_PORT={self.flower_port}",
            f"CE_TEST_CARBON_METRICS_PORT={self.carbon_metrics_port}",
            f"CE_TEST_EXPORTS={exports}", ""]))
        self.redis_url = f"redis://:{self.password}@127.0.0.1:{self.redis_port}/0"
        # the carbon service joins once the `carbonedge carbon` command exists
        self.services = ["redis", "dispatcher", "flower", *NODE_CLASSES]
        if "carbon" in _COMMANDS:
            self.services.append("carbon")

    def compose(self, *args: str, timeout: float = 240) -> str:
        cmd = [*self.engine.compose, "-p", self.name, "--env-file", str(self.env_file),
               "-f", str(COMPOSE), "-f", str(OVERRIDE), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        assert done.returncode == 0, f"{' '.join(args)}: {done.stdout}\n{done.stderr}"
        return done.stdout

    def containers(self, service: str) -> list[dict[str, Any]]:
        """`docker inspect` of the service's running containers."""
        ids = self.compose("ps", "-q", service).split()
        if not ids:
            return []
        out = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True,
                             check=True, timeout=60).stdout
        return [c for c in json.loads(out) if c["State"]["Running"]]

    def logs(self) -> str:
        try:
            return self.compose("logs", "--no-color", "--tail", "30", timeout=60)
        except AssertionError as e:
            return str(e)


def live_ids(r: redis.Redis, node_class: str) -> set[str]:
    """Ids of the class's agents whose heartbeat is visible now."""
    members = {m.decode() for m in r.smembers(keys.NODES)}
    return {n for n in members
            if n.startswith(node_class + "-") and r.exists(keys.node_key(n))}


def wait_until(what: str, check: Any, timeout: float, on_fail: Any = None) -> Any:
    """:func:`tests.polling.wait_until` in this module's argument order, checking every half
    second (each check runs `docker` or asks Redis across the engine)."""
    return polling.wait_until(check, timeout, what, on_fail=on_fail, interval_s=0.5)


def http_get(url: str, auth: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def project(engine: Engine, exported_models: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    p = Project(engine, exported_models, tmp_path_factory.mktemp("compose"))
    try:
        p.compose("up", "-d", "--no-build", *p.services)
        yield p
    finally:
        p.compose("down", "--volumes", "--timeout", "10", timeout=180)


def test_compose_topology_in_containers(project: Project) -> None:
    p = project
    topology = load_topology(COMPOSE)
    r = redis.Redis.from_url(p.redis_url, socket_timeout=10)
    ids = wait_until("a heartbeat from every node class",
                     lambda: all(live_ids(r, c) for c in NODE_CLASSES) and
                     {c: live_ids(r, c) for c in NODE_CLASSES}, 240, p.logs)
    assert all(len(found) == 1 for found in ids.values()), ids

    # limits: what compose asked the engine for, what the cgroup files say, what the agent sees
    for node_class in NODE_CLASSES:
        spec = topology.node(node_class)
        (container,) = p.containers(node_class)
        assert_limits_applied(container, spec)
        cpus, mem = cgroup_limits(container["Id"])
        assert cpus == pytest.approx(spec.cpus) and mem == spec.mem_limit_bytes
        (node_id,) = ids[node_class]
        assert node_id == f"{node_class}-{container['Id'][:12]}"
        beat = Heartbeat.from_fields({k.decode(): v.decode() for k, v in
                                      r.hgetall(keys.node_key(node_id)).items()}, now=time.time())
        assert beat.mem_limit_bytes == spec.mem_limit_bytes and beat.cpu_source != "process"

    # the health check (`carbonedge agent --check`) passes in every agent container
    wait_until("healthy agent containers", lambda: all(
        c["State"]["Health"]["Status"] == "healthy"
        for n in NODE_CLASSES for c in p.containers(n)), 120, p.logs)

    # the paper's routing: Green to the low-carbon node, Performance to the fastest
    settings = Settings.load(env={}, redis_url=p.redis_url, result_timeout_s=180.0)
    x = np.random.default_rng(0).standard_normal((3, 224, 224)).astype(np.float32)
    with Client(settings) as client:
        green = client.submit(MODEL, x, mode="green").result(180)
        perf = client.submit(MODEL, x, mode="performance").result(180)
        assert green.node in ids["node-green"] and perf.node in ids["node-high"]
        assert green.carbon_g > 0 and perf.carbon_g > 0

    # Flower (basic auth) sees every agent; Prometheus sees every node queue
    flower = f"http://127.0.0.1:{p.flower_port}"
    assert http_get(flower + "/api/workers")[0] == 401
    workers = wait_until("Flower listing the three agents", lambda: _flower_nodes(
        flower, p.flower_auth) >= {n for found in ids.values() for n in found}, 60)
    assert workers
    status, body = http_get(flower + "/api/queues/length", auth=p.flower_auth)
    assert status == 200
    lengths = {q["name"]: q["messages"] for q in json.loads(body)["active_queues"]}
    assert {keys.node_queue(n) for found in ids.values() for n in found} <= set(lengths)
    samples = scrape(p.metrics_port)
    for found in ids.values():
        (node_id,) = found
        assert samples[("ce_node_alive", (("node", node_id),))] == 1
        assert ("ce_node_queue_length", (("node", node_id),)) in samples
    if "carbon" in p.services:  # the carbon service exports its windows and the carbon so far
        wait_until("a reconciliation window", lambda: scrape(p.carbon_metrics_port).get(
            ("ce_carbon_windows", ()), 0) >= 1, 90, p.logs)
        carbon = scrape(p.carbon_metrics_port)
        assert carbon[("ce_carbon_window_latest", (("field", "cpu_energy"),))] >= 0
        assert carbon[("ce_node_carbon_grams_total", (("node", green.node),))] > 0


def _flower_nodes(base: str, auth: str) -> set[str]:
    status, body = http_get(base + "/api/workers?refresh=1", auth=auth)
    return {name.split("@")[0] for name in json.loads(body)} if status == 200 else set()


def test_scale_green_to_two_and_back(project: Project) -> None:
    p = project
    r = redis.Redis.from_url(p.redis_url, socket_timeout=10)
    (first,) = wait_until("node-green", lambda: live_ids(r, "node-green"), 240, p.logs)
    p.compose("up", "-d", "--no-build", "--no-recreate", "--scale", "node-green=2", *p.services)
    both = wait_until("two node-green agents", lambda: len(live_ids(r, "node-green")) == 2 and
                      live_ids(r, "node-green"), 240, p.logs)
    assert first in both
    settings = Settings.load(env={}, redis_url=p.redis_url, result_timeout_s=120.0)
    with Client(settings) as client:
        for node_id in both:  # each replica has a queue of its own and is scheduled alone
            assert client.ping(node=node_id).result(120).node == node_id
        decided = {k.decode().partition("|")[0] for k in r.hkeys(keys.DECISIONS)}
        assert both <= decided
        # a burst spreads by load (node-medium is only a little less green), never to a
        # replica that is not live
        live = {n for c in NODE_CLASSES for n in live_ids(r, c)}
        burst = {h.result(120).node for h in [client.ping(mode="green") for _ in range(12)]}
        assert burst & both and burst <= live

        p.compose("up", "-d", "--no-build", "--no-recreate", "--scale", "node-green=1",
                  *p.services)
        (kept,) = wait_until("one node-green agent", lambda: len(live_ids(r, "node-green")) == 1
                             and live_ids(r, "node-green"), 60, p.logs)
        (gone,) = both - {kept}
        assert len(p.containers("node-green")) == 1
        # out of scheduling: a request pinned to it is refused, green work goes to the other
        # (once the dispatcher has re-read telemetry, every view_refresh_s)
        time.sleep(settings.view_refresh_s * 5)
        with pytest.raises(NoNodeAvailable):
            client.ping(node=gone).result(60)
        assert client.ping(mode="green").result(60).node == kept
