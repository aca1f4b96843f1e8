"""Shared fixtures: the real Redis on a dedicated database, flushed per test."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

TEST_REDIS = os.environ.get("CARBONEDGE_TEST_REDIS", "redis://127.0.0.1:6379")
TEST_REDIS_URL = f"{TEST_REDIS}/13"
"""Database of tests that own Redis for their own duration."""
DEFAULT_RUNTIME_URL = f"{TEST_REDIS}/15"
"""Database of the session-wide default topology."""
SMALL_RUNTIME_URL = f"{TEST_REDIS}/14"
"""Database of the per-test small topologies (they kill agents)."""
CGROUP_PARENT = os.environ.get("CARBONEDGE_CGROUP_PARENT", "carbonedge")
"""Parent cgroup of test runtimes: two test sessions on one host each need their own."""


@functools.cache
def session_export_dir() -> Path:
    """One store of exported ONNX graphs for the whole test session: each model is exported
    once (the first test or runtime that needs it), then every runtime's agents share it."""
    return Path(tempfile.mkdtemp(prefix="carbonedge-test-exports-"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session_export_dir.cache_info().currsize:
        shutil.rmtree(session_export_dir(), ignore_errors=True)


def _redis_or_fail(url: str = TEST_REDIS_URL) -> redis.Redis:
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a Redis at {url}: {e}")
        pytest.skip(f"no Redis at {url}: {e}")
    return client


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A URL of the real Redis on a database of its own, empty at the start of the test."""
    client = _redis_or_fail()
    client.flushdb()
    yield TEST_REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()
