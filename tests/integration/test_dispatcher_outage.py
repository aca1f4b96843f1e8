"""The dispatcher rides out a Redis restart and keeps routing afterwards."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import pytest
import redis

from carbonedge.client.requests import build_request
from carbonedge.compose.redis_server import ensure_redis
from carbonedge.dispatcher.dispatcher import Dispatcher
from carbonedge.protocol import keys
from carbonedge.protocol.messages import pack
from carbonedge.protocol.telemetry import Heartbeat
from carbonedge.settings import Settings
from tests.polling import wait_until

pytestmark = pytest.mark.timeout(90)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _beat(r: redis.Redis) -> None:
    beat = Heartbeat(node_id="node-x", ts=time.time(), cpu_quota=1.0, mem_limit_bytes=1 << 30,
                     mem_used_bytes=1 << 28, cpu_util=0.0, power_w=1.0, active_power_w=4.0,
                     carbon_intensity=300.0)
    r.hset(keys.node_key("node-x"), mapping=beat.to_fields())
    r.expire(keys.node_key("node-x"), 60)
    r.sadd(keys.NODES, "node-x")


def _submit_and_wait_queued(r: redis.Redis, expected: int) -> None:
    _beat(r)
    r.xadd(keys.REQUEST_STREAM, {keys.REQUEST_FIELD: pack(build_request(kind="ping"))})
    wait_until(lambda: r.llen(keys.node_queue("node-x")) >= expected, 15,
               "the request to be routed")


def test_dispatcher_survives_a_redis_restart(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://127.0.0.1:{_free_port()}/0"
    server = ensure_redis(url, tmp_path)
    assert server is not None
    settings = Settings.load(env={}, redis_url=url)
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete,
                              args=(Dispatcher(settings).run(stop),), daemon=True)
    thread.start()
    try:
        r = redis.Redis.from_url(url)
        _submit_and_wait_queued(r, 1)
        server.stop()
        # the outage lasts until the dispatcher has noticed it (and keeps retrying)
        wait_until(lambda: "Redis unavailable" in caplog.text, 30,
                   "the dispatcher to notice the outage")
        server = ensure_redis(url, tmp_path)  # a fresh, empty server on the same port
        assert server is not None
        r = redis.Redis.from_url(url)
        _submit_and_wait_queued(r, 1)
        assert thread.is_alive()
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        if server is not None:
            server.stop()
