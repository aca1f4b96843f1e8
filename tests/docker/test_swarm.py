"""The same compose file on Docker Swarm: `docker stack deploy` of the default topology on
a single-node swarm (`docker swarm init` ... `docker swarm leave --force`), limits from
`deploy.resources`, placement by zone labels, one carbon service per host, then
`docker service scale`."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from carbonedge.client import Client
from carbonedge.compose.topology import load_topology, zone_constraint
from carbonedge.protocol import keys
from carbonedge.settings import Settings
from tests.docker.conftest import COMPOSE, assert_limits_applied
from tests.docker.engine import ROOT, VENV, Engine
from tests.docker.test_containers import NODE_CLASSES, live_ids, wait_until
from tests.integration.test_monitoring import free_port

pytestmark = pytest.mark.timeout(900)

OVERRIDE = ROOT / "tests" / "docker" / "swarm.test.yml"


def docker(*args: str, timeout: float = 120, env: dict[str, str] | None = None,
           check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)
    if check:
        assert done.returncode == 0, f"docker {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done.stdout


class Stack:
    """One stack of the test on the swarm: the compose file merged with the test override."""

    def __init__(self, engine: Engine, exports: Path, tmp: Path) -> None:
        self.name = f"cestack{secrets.token_hex(3)}"
        self.password = secrets.token_urlsafe(16)
        self.redis_port = free_port()
        self.env = {"CARBONEDGE_REDIS_PASSWORD": self.password,
                    "CARBONEDGE_FLOWER_BASIC_AUTH": f"ops:{secrets.token_urlsafe(8)}",
                    "CE_TEST_IMAGE": engine.test_image, "CE_TEST_SRC": str(ROOT),
                    "CE_TEST_VENV": str(VENV), "CE_TEST_EXPORTS": str(exports),
                    "CE_TEST_REDIS_PORT": str(self.redis_port),
                    "CE_TEST_FLOWER_PORT": str(free_port())}
        self.redis_url = f"redis://:{self.password}@127.0.0.1:{self.redis_port}/0"
        self.file = tmp / "stack.yml"

    def deploy(self) -> dict[str, Any]:
        """`docker stack config` merges the two files (as `stack deploy -c -c` would); the
        published ports go (the host network takes none), then `docker stack deploy`."""
        merged = yaml.safe_load(docker("stack", "config", "-c", str(COMPOSE), "-c",
                                       str(OVERRIDE), env=self.env))
        for service in merged["services"].values():
            service.pop("ports", None)
        merged.get("networks", {}).pop("default", None)  # no service is left on it
        self.file.write_text(yaml.safe_dump(merged))
        docker("stack", "deploy", "--resolve-image", "never", "-c", str(self.file), self.name,
               timeout=300)
        return merged

    def service(self, name: str) -> str:
        return f"{self.name}_{name}"

    def containers(self, name: str) -> list[dict[str, Any]]:
        ids = docker("ps", "-q", "--filter",
                     f"label=com.docker.swarm.service.name={self.service(name)}").split()
        return json.loads(docker("inspect", *ids)) if ids else []

    def tasks(self, name: str) -> str:
        return docker("service", "ps", "--no-trunc", self.service(name), check=False)

    def logs(self) -> str:
        out = []
        for name in ("dispatcher", "carbon", *NODE_CLASSES):
            out.append(docker("service", "logs", "--tail", "15", self.service(name),
                              check=False, timeout=60))
        return "\n".join(out)

    def remove(self) -> None:
        docker("stack", "rm", self.name, check=False, timeout=180)
        wait_until("the stack's containers to go", lambda: not docker(
            "ps", "-aq", "--filter", f"label=com.docker.stack.namespace={self.name}"), 120)


def _live_by_class(r: redis.Redis) -> dict[str, set[str]] | None:
    """Each class's live agents once every class has one (None before; Redis may still
    be starting: Swarm orders nothing)."""
    try:
        found = {c: live_ids(r, c) for c in NODE_CLASSES}
    except redis.ConnectionError:
        return None
    return found if all(found.values()) else None


@pytest.fixture(scope="module")
def swarm(engine: Engine) -> Iterator[str]:
    """This engine as a single-node swarm (left again if the test made it one)."""
    made = docker("info", "--format", "{{.Swarm.LocalNodeState}}").strip() != "active"
    if made:
        docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    node = docker("info", "--format", "{{.Swarm.NodeID}}").strip()
    try:
        yield node
    finally:
        if made:
            docker("swarm", "leave", "--force", check=False)


def test_stack_deploy_then_service_scale(engine: Engine, swarm: str, exported_models: Path,
                                         tmp_path: Path) -> None:
    topology = load_topology(COMPOSE)
    zones = {spec.name: spec.zone for spec in topology.nodes}
    labels = [f"--label-add=carbonedge.zone.{z}=true" for z in zones.values()]
    docker("node", "update", *labels, swarm)
    stack = Stack(engine, exported_models, tmp_path)
    try:
        merged = stack.deploy()
        for name in NODE_CLASSES:  # the stack keeps the file's limits and zone placement
            deploy = merged["services"][name]["deploy"]
            assert zone_constraint(zones[name]) in deploy["placement"]["constraints"]
        r = redis.Redis.from_url(stack.redis_url, socket_timeout=10)
        ids = wait_until("a heartbeat from every node class",
                         lambda: _live_by_class(r), 300, stack.logs)
        for name in NODE_CLASSES:
            spec = topology.node(name)
            (container,) = stack.containers(name)
            assert_limits_applied(container, spec)
            (node_id,) = ids[name]
            assert node_id == f"{name}-{container['Id'][:12]}"

        # one carbon service per host: Swarm filled in the host id, agents and service agree
        hostname = docker("info", "--format", "{{.Name}}").strip()
        wait_until("the carbon service's reading for this host",
                   lambda: r.exists(keys.host_power_key(hostname)), 120, stack.logs)
        on_host = {m.decode() for m in r.smembers(keys.host_nodes_key(hostname))}
        assert {n for found in ids.values() for n in found} <= on_host

        settings = Settings.load(env={}, redis_url=stack.redis_url, result_timeout_s=120.0)
        with Client(settings) as client:
            assert client.ping(mode="green").result(120).node in ids["node-green"]

            docker("service", "scale", "--detach", f"{stack.service('node-green')}=2")
            both = wait_until("two node-green agents", lambda: len(
                live_ids(r, "node-green")) == 2 and live_ids(r, "node-green"), 300, stack.logs)
            for node_id in both:  # each replica has a queue of its own
                assert client.ping(node=node_id).result(120).node == node_id

        # placement follows the zone label: without it a third replica finds no host
        docker("node", "update", f"--label-rm=carbonedge.zone.{zones['node-green']}", swarm)
        docker("service", "scale", "--detach", f"{stack.service('node-green')}=3")
        wait_until("the third node-green task to wait for a host of its zone",
                   lambda: "no suitable node" in stack.tasks("node-green"), 120,
                   lambda: stack.tasks("node-green"))
        assert len(live_ids(r, "node-green")) == 2
    finally:
        stack.remove()
        docker("node", "update", *[f"--label-rm=carbonedge.zone.{z}" for z in zones.values()
                                   if z != zones["node-green"]], swarm, check=False)
