"""Dead agents stop receiving work; with nobody to serve, results fail clearly and in time."""

from __future__ import annotations

import os
import signal
import time

import pytest

from carbonedge.client import Client
from carbonedge.compose.local_runner import LocalRuntime, process_alive
from carbonedge.errors import NoNodeAvailable, ResultTimeout
from tests.integration.conftest import live_nodes
from tests.polling import wait_until

pytestmark = pytest.mark.timeout(180)


def _pid(runtime: LocalRuntime, name: str) -> int:
    return next(p.pid for p in runtime.state.processes if p.name == name)


def test_killed_agent_expires_and_gets_no_more_tasks(small_runtime: LocalRuntime) -> None:
    client = Client(small_runtime.settings)
    try:
        assert {client.ping(node=n).result(30).node for n in ("node-a", "node-b")} == {
            "node-a", "node-b"}
        os.kill(_pid(small_runtime, "node-b"), signal.SIGKILL)
        ttl = small_runtime.settings.heartbeat_ttl_s
        # its heartbeat expires within the TTL (and the polling's slack)
        wait_until(lambda: "node-b" not in live_nodes(small_runtime), ttl + 2,
                   "node-b's heartbeat to expire")
        # node-b (200 g/kWh) would win every Green decision if it were alive
        nodes = {client.ping(mode="green").result(30).node for _ in range(20)}
        assert nodes == {"node-a"}
        with pytest.raises(NoNodeAvailable, match="node-b"):
            client.ping(node="node-b").result(30)
    finally:
        client.close()


def test_no_node_alive_fails_fast_with_a_clear_error(small_runtime: LocalRuntime) -> None:
    client = Client(small_runtime.settings)
    try:
        for name in ("node-a", "node-b"):
            os.kill(_pid(small_runtime, name), signal.SIGKILL)
        wait_until(lambda: not live_nodes(small_runtime),
                   small_runtime.settings.heartbeat_ttl_s + 2, "every heartbeat to expire")
        start = time.monotonic()
        with pytest.raises(NoNodeAvailable, match="no live node agent"):
            client.ping().result(10)
        assert time.monotonic() - start < 10
    finally:
        client.close()


def test_no_dispatcher_times_out_with_a_diagnosis(small_runtime: LocalRuntime) -> None:
    client = Client(small_runtime.settings)
    try:
        dispatcher = _pid(small_runtime, "dispatcher")
        os.kill(dispatcher, signal.SIGTERM)
        wait_until(lambda: not process_alive(dispatcher), 15, "the dispatcher to exit")
        start = time.monotonic()
        with pytest.raises(ResultTimeout, match="no dispatcher is running"):
            client.ping().result(2.0)
        assert time.monotonic() - start < 5
    finally:
        client.close()
