"""Container-test fixtures: one provisioned Docker engine per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from carbonedge.compose.topology import NodeSpec
from tests.conftest import session_export_dir
from tests.docker.engine import ROOT, Engine, EngineUnavailable, provision

COMPOSE = ROOT / "compose" / "docker-compose.yml"


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the test image runs the project's virtualenv on Debian's Python 3.11")
    try:
        engine = provision()
    except EngineUnavailable as e:
        pytest.skip(f"no Docker engine for the container tests: {e}")
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def exported_models() -> Path:
    """The topology's ONNX graphs, exported once on the host for every container test: the
    containers run this virtualenv (same versions) and mount the store, since their source
    tree is read-only and an export on 0.4 CPU would outlast the tests' patience."""
    subprocess.run([sys.executable, "-m", "carbonedge.cli", "models", "export", "--compose",
                    str(COMPOSE)], env={**os.environ, "CARBONEDGE_EXPORT_DIR":
                                        str(session_export_dir())}, check=True, timeout=600)
    return session_export_dir()


def assert_limits_applied(container: dict[str, Any], spec: NodeSpec) -> None:
    """What the engine was asked for (`docker inspect`) is the node class's limits and init."""
    host = container["HostConfig"]
    assert host["NanoCpus"] == round(spec.cpus * 1e9)
    assert host["Memory"] == spec.mem_limit_bytes
    assert host["Init"] is True


def cgroup_limits(container_id: str) -> tuple[float, int]:
    """CPU quota (cores) and memory limit as the cgroup files inside the container say."""
    script = ("if [ -f /sys/fs/cgroup/cpu.max ]; then cat /sys/fs/cgroup/cpu.max "
              "/sys/fs/cgroup/memory.max; else cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us "
              "/sys/fs/cgroup/cpu/cpu.cfs_period_us /sys/fs/cgroup/memory/memory.limit_in_bytes; fi")
    out = subprocess.run(["docker", "exec", container_id, "sh", "-c", script],
                         capture_output=True, text=True, check=True, timeout=60).stdout.split()
    quota, period, mem = out  # v2 "quota period" + memory.max; v1 the same three files
    return int(quota) / int(period), int(mem)
