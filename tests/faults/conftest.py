"""Fault fixtures: real runtimes on databases of their own, and ways to break them."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from carbonedge.compose.local_runner import LocalRuntime, process_alive
from carbonedge.experiments.accounting import OutcomeLedger
from carbonedge.protocol import keys
from tests import model_files
from tests.conftest import TEST_REDIS
from tests.integration.conftest import SMALL_TOPOLOGY, start_runtime
from tests.polling import wait_until

FAULTS_URL = f"{TEST_REDIS}/9"
"""Database of the fault suite's runtimes (one at a time, flushed by each)."""


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TorchScript model that runs ~0.2 s per inference on half a CPU: warm agents serve
    MobileNetV2 in milliseconds, too fast to kill or freeze one mid-request on purpose."""
    return model_files.torchscript(tmp_path_factory.mktemp("models") / "slow.pt",
                                   model_files.Slow(), shape=(3, 224, 224))


@pytest.fixture
def small(tmp_path: Path, slow_model: Path) -> Iterator[LocalRuntime]:
    """Two small nodes (node-a 500 g/kWh, node-b 200 g/kWh): Green sends all to node-b.
    They serve MobileNetV2 and ``slow``."""
    compose = tmp_path / "compose.yml"
    compose.write_text(SMALL_TOPOLOGY + "x-carbonedge:\n  models: [mobilenetv2, {name: slow, "
                       f"source: 'torchscript:{slow_model}'}}]\n")
    runtime = start_runtime(tmp_path, FAULTS_URL, compose)
    yield runtime
    runtime.down()


@pytest.fixture
def ledger(small: LocalRuntime) -> Iterator[OutcomeLedger]:
    book = OutcomeLedger(small.settings.redis_url)
    yield book
    book.close()


def pid_of(runtime: LocalRuntime, name: str) -> int:
    return next(p.pid for p in reversed(runtime.state.processes) if p.name == name)


def kill(runtime: LocalRuntime, name: str, sig: int = signal.SIGKILL) -> float:
    """Signal a runtime process and wait until it is gone; returns when it was signalled."""
    pid = pid_of(runtime, name)
    at = time.time()
    os.kill(pid, sig)
    wait_until(lambda: not process_alive(pid), 30, f"{name} to exit")
    return at


def restart_agent(runtime: LocalRuntime, node_id: str, timeout_s: float = 120) -> None:
    """Start ``node_id``'s agent again (its old process must be dead) and wait for its beat."""
    runtime.restart_agent(node_id)
    client = redis.Redis.from_url(runtime.settings.redis_url)
    try:
        wait_until(lambda: client.exists(keys.node_key(node_id)), timeout_s,
                   f"{node_id}'s heartbeat")
    finally:
        client.close()


def recoveries(url: str, node_id: str) -> list[dict[str, str]]:
    """Re-dispatch records of ``node_id``, oldest first."""
    client = redis.Redis.from_url(url)
    try:
        rows = [{k.decode(): v.decode() for k, v in fields.items()}
                for _, fields in client.xrange(keys.RECOVERIES)]
    finally:
        client.close()
    return [r for r in rows if r["node"] == node_id]


def delivery_stats(url: str) -> dict[str, int]:
    client = redis.Redis.from_url(url)
    try:
        return {k.decode(): int(v) for k, v in client.hgetall(keys.DELIVERY_STATS).items()}
    finally:
        client.close()
