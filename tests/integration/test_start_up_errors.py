"""Settings that cannot work stop a service at start-up with an error naming the setting,
before it touches anything queued: a sentinel URL without a master name, a TLS URL whose
CA file cannot be read, an agent id outside the allow-list."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from carbonedge.client.requests import build_request
from carbonedge.protocol import keys
from carbonedge.protocol.messages import pack

pytestmark = pytest.mark.timeout(120)


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CARBONEDGE_")}
    return subprocess.run([sys.executable, "-m", "carbonedge.cli", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=60)


def test_bad_settings_fail_at_start_up_and_leave_the_queues_alone(
        redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    for _ in range(5):
        redis_client.xadd(keys.REQUEST_STREAM,
                          {keys.REQUEST_FIELD: pack(build_request(kind="ping"))})
    queue = keys.node_queue("node-high")
    redis_client.lpush(queue, b"a", b"b", b"c")

    cases = [
        (["dispatcher"], {"CARBONEDGE_REDIS_URL": "sentinel://127.0.0.1:26379/0"},
         ["redis_url", "master_name"]),
        (["dispatcher"], {"CARBONEDGE_REDIS_URL": "rediss://:pw@127.0.0.1:6380/0?ssl_ca_certs="
                                                  f"{tmp_path / 'missing-ca.pem'}"},
         ["redis_url", "ssl_ca_certs", "missing-ca.pem"]),
        (["agent", "--node", "node-high"], {"CARBONEDGE_REDIS_URL": redis_url,
                                           "CARBONEDGE_NODE_ALLOWLIST": "node-green,node-r-*"},
         ["node_allowlist", "'node-high'"]),
    ]
    for args, env, named in cases:
        done = _run(args, **env)
        assert done.returncode == 2, (args, done.stderr[-2000:])
        assert all(word in done.stderr for word in named), done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        assert ":pw@" not in done.stderr  # the password is not echoed

    assert redis_client.xlen(keys.REQUEST_STREAM) == 5  # nothing read, nothing lost
    assert redis_client.lrange(queue, 0, -1) == [b"c", b"b", b"a"]
    assert not redis_client.exists(keys.node_key("node-high"), keys.DISPATCHER_ALIVE)
