"""`carbonedge up` / `down` as a user runs them: separate processes, a state file between."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from carbonedge.cgroups import NodeCgroup
from carbonedge.protocol import keys
from tests.conftest import CGROUP_PARENT, SMALL_RUNTIME_URL, _redis_or_fail
from tests.integration.conftest import SMALL_TOPOLOGY

pytestmark = pytest.mark.timeout(180)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "carbonedge.cli", *args], env=env,
                          capture_output=True, text=True, timeout=150)


def test_up_then_down_from_separate_processes(tmp_path: Path) -> None:
    _redis_or_fail(SMALL_RUNTIME_URL).flushdb()
    compose = tmp_path / "compose.yml"
    compose.write_text(SMALL_TOPOLOGY)
    env = {**os.environ, "CARBONEDGE_REDIS_URL": SMALL_RUNTIME_URL,
           "CARBONEDGE_RUN_DIR": str(tmp_path / "run")}
    up = _cli("up", "--compose", str(compose), "--scale", "node-b=2", env=env)
    try:
        assert up.returncode == 0, up.stderr
        assert "node-a, node-b-1, node-b-2" in up.stdout
        r = redis.Redis.from_url(SMALL_RUNTIME_URL)
        assert all(r.exists(keys.node_key(n)) for n in ("node-a", "node-b-1", "node-b-2"))
        assert NodeCgroup.attach("node-b-2", CGROUP_PARENT).limits().cpus == pytest.approx(0.5)
        again = _cli("up", "--compose", str(compose), env=env)
        assert again.returncode == 2 and "carbonedge down" in again.stderr
    finally:
        down = _cli("down", env=env)
    assert down.returncode == 0 and down.stdout.strip() == "down", down.stderr
    assert not (tmp_path / "run" / "state.json").exists()
    assert not any(r.exists(keys.node_key(n)) for n in ("node-a", "node-b-1", "node-b-2"))
    assert not NodeCgroup.attach("node-a", CGROUP_PARENT).exists()
    assert _cli("down", env=env).stdout.startswith("nothing recorded")
