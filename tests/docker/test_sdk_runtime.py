"""`carbonedge up --runtime docker`: the topology as containers through the Docker SDK."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from carbonedge.client import Client
from carbonedge.compose.docker_runner import NANO, DockerRuntime, docker_client
from carbonedge.compose.topology import load_topology
from carbonedge.protocol import keys
from carbonedge.settings import Settings
from tests.conftest import SMALL_RUNTIME_URL, _redis_or_fail
from tests.docker.conftest import cgroup_limits
from tests.docker.engine import ROOT, VENV, Engine
from tests.integration.conftest import SMALL_TOPOLOGY
from tests.polling import wait_until

pytestmark = pytest.mark.timeout(900)


def test_docker_sdk_runtime(engine: Engine, tmp_path: Path) -> None:
    """Limits, routing and `carbonedge down` from another process."""
    _redis_or_fail(SMALL_RUNTIME_URL).flushdb()
    compose = tmp_path / "compose.yml"
    compose.write_text(SMALL_TOPOLOGY)
    settings = Settings.load(env={}, redis_url=SMALL_RUNTIME_URL, run_dir=str(tmp_path / "run"),
                             result_timeout_s=120.0)
    runtime = DockerRuntime(load_topology(compose), settings, scale={"node-b": 2},
                            carbon_service=True,
                            image=engine.test_image, project=f"cesdk{os.getpid()}",
                            volumes={str(ROOT): {"bind": "/src", "mode": "ro"},
                                     # .venv may be a symbolic link out of /src
                                     str(VENV): {"bind": str(VENV), "mode": "ro"}})
    client = docker_client()
    try:
        runtime.up(wait_s=240)
        assert runtime.node_ids == ["node-a", "node-b-1", "node-b-2"]
        for container in runtime.containers():
            container.reload()
            host = container.attrs["HostConfig"]
            if container.labels["org.carbonedge.node"] in ("dispatcher", "carbon"):
                assert host["NanoCpus"] == 0
                continue
            assert host["NanoCpus"] == round(0.5 * NANO) and host["Memory"] == 768 << 20
            assert host["MemorySwap"] == 768 << 20 and host["Init"] is True
            assert cgroup_limits(container.id) == (pytest.approx(0.5), 768 << 20)
        with Client(settings) as c:
            assert c.ping(node="node-b-2").result(120).node == "node-b-2"
            assert c.ping(mode="green").result(120).node in ("node-b-1", "node-b-2")
        dispatcher = next(c for c in runtime.containers()
                          if c.labels["org.carbonedge.node"] == "dispatcher")
        assert "CARBONEDGE_NODE_ALLOWLIST=node-a,node-b-1,node-b-2" in dispatcher.attrs[
            "Config"]["Env"]
        # the carbon service runs as it does locally: host power published (up waited for
        # it), the agents' ledger rows reach its CSV in the run dir
        assert {c.labels["org.carbonedge.node"] for c in runtime.containers()} == {
            "carbon", "dispatcher", "node-a", "node-b-1", "node-b-2"}
        assert redis.Redis.from_url(SMALL_RUNTIME_URL).exists(keys.host_power_key(""))
        wait_until(lambda: runtime.emissions_csv.is_file()
                   and "node-b-2" in runtime.emissions_csv.read_text(), 120,
                   "node-b-2's rows in the carbon service's CSV")
        # `carbonedge down`, another process, stops what the state file records
        down = subprocess.run([sys.executable, "-m", "carbonedge.cli", "down"],
                              env={**os.environ, "CARBONEDGE_RUN_DIR": settings.run_dir},
                              capture_output=True, text=True, timeout=120)
        assert down.returncode == 0 and down.stdout.strip() == "down", down.stderr
    finally:
        runtime.down()
    assert not client.containers.list(all=True, filters={"label": f"org.carbonedge.project="
                                                                  f"{runtime.project}"})
    r = redis.Redis.from_url(SMALL_RUNTIME_URL)
    assert not any(r.exists(keys.node_key(n)) for n in runtime.node_ids)
