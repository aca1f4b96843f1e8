"""The whole pipeline over a Redis that wants a password, an ACL user, or TLS.

Each test starts its own redis-server (TLS with a CA the test makes), runs the real
dispatcher and agents against it through their usual ``CARBONEDGE_REDIS_URL``, and
checks that a request goes end to end and that a client without the credentials, or
one that does not trust the certificate, is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from carbonedge.client import Client
from carbonedge.compose.local_runner import LocalRuntime
from tests.faults.servers import RedisServer, with_acl_user, with_password, with_tls
from tests.integration.conftest import start_runtime

pytestmark = pytest.mark.timeout(300)

ONE_NODE = """
services:
  node-a:
    cpus: 0.5
    mem_limit: 768m
    x-carbonedge: {role: node, carbon_intensity: 300}
"""


def _runtime(tmp_path: Path, url: str) -> LocalRuntime:
    compose = tmp_path / "compose.yml"
    compose.write_text(ONE_NODE)
    return start_runtime(tmp_path, url, compose)


def _round_trip(runtime: LocalRuntime, *, inference: bool = False) -> None:
    client = Client(runtime.settings)
    try:
        assert client.ping().result(60).node == "node-a"
        if inference:  # a real tensor through every hop (stream, queue, claim check, result)
            x = np.zeros((1, 3, 224, 224), np.float32)
            result = client.submit("mobilenetv2", x).result(120)
            assert result.node == "node-a" and len(result.top5) == 5
    finally:
        client.close()


@pytest.fixture
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    server: RedisServer = request.param(tmp_path / "redis")
    try:
        server.start()
    except RuntimeError as e:
        if "tls" in str(e).lower():
            pytest.skip(f"this redis-server has no TLS: {e}")
        raise
    yield server
    server.stop()


def _password(d: Path) -> RedisServer:
    return with_password(d, "s3cret-pw")


def _acl(d: Path) -> RedisServer:
    return with_acl_user(d, "carbonedge", "acl-pw")


def _tls(d: Path) -> RedisServer:
    return with_tls(d, "tls-pw")


@pytest.mark.parametrize("served", [_password, _acl], indirect=True, ids=["requirepass", "acl"])
def test_pipeline_over_authenticated_redis(served: RedisServer, tmp_path: Path) -> None:
    anonymous = redis.Redis(host="127.0.0.1", port=served.port)
    with pytest.raises(redis.AuthenticationError):
        anonymous.set("x", "1")  # the server really requires credentials
    anonymous.close()
    runtime = _runtime(tmp_path, served.url)
    try:
        _round_trip(runtime)
    finally:
        runtime.down()


@pytest.mark.parametrize("served", [_tls], indirect=True, ids=["tls"])
def test_pipeline_over_tls_with_certificate_verification(served: RedisServer,
                                                         tmp_path: Path) -> None:
    plain = redis.Redis(host="127.0.0.1", port=served.port, password="tls-pw",
                        socket_timeout=2, socket_connect_timeout=2)
    with pytest.raises(redis.ConnectionError):
        plain.ping()  # no plain-text access
    plain.close()
    untrusted = redis.Redis.from_url(served.url.split("?")[0], socket_timeout=2)
    with pytest.raises(redis.ConnectionError, match="(?i)certificate"):
        untrusted.ping()  # verification is on: the system CAs do not know the test CA
    untrusted.close()
    runtime = _runtime(tmp_path, served.url)
    try:
        _round_trip(runtime, inference=True)
    finally:
        runtime.down()
