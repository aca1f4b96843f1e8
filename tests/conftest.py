"""Shared fixtures (the real Redis on a dedicated database, flushed per test), and the
suite's layout: each test directory is a marker, and the directories run cheapest first."""

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


SUITES: dict[str, tuple[str, ...]] = {
    "unit": ("unit",),
    "integration": ("integration",),
    "faults": ("faults", "integration"),
    "docker": ("docker",),
}
"""Test directory -> the markers its tests get, in the order the suite runs them: unit tests
fail fastest and need nothing, docker tests are the slowest and need an engine."""
_TESTS_DIR = Path(__file__).parent


def _suite_of(item: pytest.Item) -> str | None:
    try:
        top = item.path.relative_to(_TESTS_DIR).parts[0]
    except (ValueError, IndexError):
        return None
    return top if top in SUITES else None


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by these markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test by its directory, then run the directories in :data:`SUITES` order
    (stable within one), so a package-wide runtime of one ends before the next starts."""
    rank = {name: i for i, name in enumerate(SUITES)}
    suites = {item.nodeid: _suite_of(item) for item in items}
    for item in items:
        for marker in SUITES.get(suites[item.nodeid] or "", ()):
            item.add_marker(marker)
    items.sort(key=lambda item: rank.get(suites[item.nodeid] or "", len(rank)))


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
