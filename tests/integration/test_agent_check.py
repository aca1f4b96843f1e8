"""`carbonedge agent --check`: the health check containers run, against the real Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from carbonedge.errors import ConfigError
from carbonedge.node_agent.health import check_heartbeat, container_id, instance_node_id
from carbonedge.protocol import keys
from carbonedge.protocol.telemetry import Heartbeat
from tests.conftest import SMALL_RUNTIME_URL


def _beat(node_id: str, ts: float) -> dict[str, str]:
    return Heartbeat(node_id=node_id, ts=ts, cpu_quota=0.4, mem_limit_bytes=512 << 20,
                     mem_used_bytes=100 << 20, cpu_util=0.1, power_w=1.0, active_power_w=2.0,
                     carbon_intensity=380.0, tasks_done=7).to_fields()


def _check(node: str, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CARBONEDGE_REDIS_URL": url}
    return subprocess.run([sys.executable, "-m", "carbonedge.cli", "agent", "--node", node,
                           "--check", *extra], env=env, capture_output=True, text=True,
                          timeout=60)


def test_fresh_heartbeat_is_healthy(redis_client: redis.Redis) -> None:
    redis_client.hset(keys.node_key("node-green"), mapping=_beat("node-green", time.time()))
    health = check_heartbeat(redis_client, "node-green", ttl_s=3.0)
    assert health.healthy and "7 task(s) done" in health.detail


def test_missing_stale_and_invalid_heartbeats_are_unhealthy(redis_client: redis.Redis) -> None:
    missing = check_heartbeat(redis_client, "node-green", ttl_s=3.0)
    assert not missing.healthy and "no heartbeat of node-green" in missing.detail

    redis_client.hset(keys.node_key("node-green"), mapping=_beat("node-green", time.time() - 10))
    stale = check_heartbeat(redis_client, "node-green", ttl_s=3.0)
    assert not stale.healthy and "stale" in stale.detail

    redis_client.hset(keys.node_key("node-green"), "power_w", "nan")
    invalid = check_heartbeat(redis_client, "node-green", ttl_s=3.0)
    assert not invalid.healthy and "power_w" in invalid.detail


def test_cli_exit_status_follows_the_heartbeat(redis_url: str,
                                               redis_client: redis.Redis) -> None:
    gone = _check("node-green", redis_url)
    assert gone.returncode == 1 and "no heartbeat of node-green" in gone.stderr

    redis_client.hset(keys.node_key("node-green-abc123"),
                      mapping=_beat("node-green-abc123", time.time() + 1))
    ok = _check("node-green", redis_url, "--instance", "abc123")
    assert ok.returncode == 0 and "node-green-abc123 healthy" in ok.stdout, ok.stderr


def test_cli_check_without_redis_is_unhealthy() -> None:
    down = _check("node-green", "redis://127.0.0.1:1/0")
    assert down.returncode == 1 and "no Redis" in down.stderr


def test_instance_ids() -> None:
    assert instance_node_id("node-green", None) == "node-green"
    assert instance_node_id("node-green", "2") == "node-green-2"
    assert instance_node_id("node-green", "hostname").startswith("node-green-")
    with pytest.raises(ConfigError) as e:
        instance_node_id("node-green", "a b")
    assert e.value.field == "instance"


def test_container_id_from_docker_mounts(tmp_path: Path) -> None:
    cid = "e6ca59cf478ad13deaf10bdfcdc5a090d91115a897ef110de1ff0fd43a589c66"
    (tmp_path / "mountinfo").write_text(
        f"812 790 254:0 /var/lib/docker/containers/{cid}/hostname /etc/hostname rw - ext4\n")
    assert container_id(tmp_path) == cid
    (tmp_path / "mountinfo").write_text("1 0 254:0 / / rw - ext4\n")
    (tmp_path / "cgroup").write_text(f"0::/system.slice/docker-{cid}.scope\n")
    assert container_id(tmp_path) == cid
    (tmp_path / "cgroup").write_text("0::/user.slice\n")
    with pytest.raises(ConfigError) as e:
        container_id(tmp_path)
    assert e.value.field == "instance"


@pytest.mark.timeout(240)
def test_real_agent_is_healthy_until_it_stops(small_runtime) -> None:  # type: ignore[no-untyped-def]
    assert small_runtime.settings.redis_url == SMALL_RUNTIME_URL
    up = _check("node-a", SMALL_RUNTIME_URL)
    assert up.returncode == 0 and "node-a healthy" in up.stdout, up.stderr
    small_runtime.down()
    stopped = _check("node-a", SMALL_RUNTIME_URL)
    assert stopped.returncode == 1 and "no heartbeat of node-a" in stopped.stderr
