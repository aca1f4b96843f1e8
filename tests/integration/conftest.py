"""Integration fixtures: real agent processes in real cgroups, a real dispatcher."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from carbonedge.compose.local_runner import LocalRuntime
from carbonedge.compose.topology import load_topology
from carbonedge.settings import Settings
from tests.conftest import (
    CGROUP_PARENT,
    DEFAULT_RUNTIME_URL,
    SMALL_RUNTIME_URL,
    _redis_or_fail,
    session_export_dir,
)

SMALL_TOPOLOGY = """
services:
  node-a:
    cpus: 0.5
    mem_limit: 768m
    x-carbonedge: {role: node, carbon_intensity: 500}
  node-b:
    cpus: 0.5
    mem_limit: 768m
    x-carbonedge: {role: node, carbon_intensity: 200}
"""


def start_runtime(tmp: Path, url: str, compose: Path | None = None,
                  **kwargs: object) -> LocalRuntime:
    """A started runtime on database ``url`` (flushed first), with its own run dir."""
    _redis_or_fail(url).flushdb()
    settings = Settings.load(env={}, redis_url=url, run_dir=str(tmp / "run"),
                             result_timeout_s=60.0, cgroup_parent=CGROUP_PARENT,
                             export_dir=str(session_export_dir()))
    runtime = LocalRuntime(load_topology(compose), settings, **kwargs)  # type: ignore[arg-type]
    runtime.up(wait_s=120)
    return runtime


@pytest.fixture(scope="package")
def default_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    """The default topology (the paper's three nodes), MobileNetV2 preloaded, and the
    carbon service. Package-wide, not session-wide: it stops after the last integration
    test, so its agents hold no CPU while the fault tests time their runtimes."""
    runtime = start_runtime(tmp_path_factory.mktemp("default"), DEFAULT_RUNTIME_URL,
                            preload=("mobilenetv2",), carbon_service=True)
    yield runtime
    runtime.down()


@pytest.fixture
def small_runtime(tmp_path: Path) -> Iterator[LocalRuntime]:
    """Two small nodes and no model preloaded: for tests that kill or break things."""
    compose = tmp_path / "compose.yml"
    compose.write_text(SMALL_TOPOLOGY)
    runtime = start_runtime(tmp_path, SMALL_RUNTIME_URL, compose)
    yield runtime
    runtime.down()


def live_nodes(runtime: LocalRuntime) -> set[str]:
    from carbonedge.protocol import keys

    client = redis.Redis.from_url(runtime.settings.redis_url)
    try:
        return {n for n in runtime.node_ids if client.exists(keys.node_key(n))}
    finally:
        client.close()
