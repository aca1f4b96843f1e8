"""Shared fixtures: the real Redis on a dedicated database, flushed per test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

TEST_REDIS_URL = os.environ.get("CARBONEDGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _redis_or_fail() -> redis.Redis:
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a Redis at {TEST_REDIS_URL}: {e}")
        pytest.skip(f"no Redis at {TEST_REDIS_URL}: {e}")
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
