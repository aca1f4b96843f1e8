"""An agent on a second host joins over TLS with an ACL user, charges its tasks from its
own host's power and its own zone's intensity, and survives being cut off, while an agent
of the first host is killed: lost 0, duplicated 0.

The second host is a network namespace (tests/faults/netns.py) whose only way to Redis is
TLS on a test address; every process is given only a URL (and the test CA)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from carbonedge.client import Client
from carbonedge.connections import redis_client
from carbonedge.experiments.multihost_load import Fault, run_multihost_load
from carbonedge.protocol import keys
from tests.conftest import CGROUP_PARENT
from tests.faults.netns import NetnsUnavailable
from tests.faults.two_hosts import REMOTE_NODE, TwoHosts, two_hosts
from tests.polling import wait_until

pytestmark = pytest.mark.timeout(600)

PROBE = """
import sys, redis
url, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
from carbonedge.connections import redis_client
assert redis_client(url, socket_timeout=5).ping()
for where, client in (("plain", redis.Redis(host=address, port=port, socket_timeout=3,
                                             socket_connect_timeout=3)),
                      ("loopback", redis.Redis(port=port, socket_connect_timeout=3)),
                      ("untrusted", redis.Redis(host=address, port=port, ssl=True,
                                                socket_timeout=3, socket_connect_timeout=3))):
    try:
        client.ping()
    except redis.RedisError as e:
        print(where, "refused:", type(e).__name__)
    else:
        print(where, "ANSWERED")
"""


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[TwoHosts]:
    try:
        with two_hosts(tmp_path, cgroup_parent=CGROUP_PARENT) as both:
            yield both
    except NetnsUnavailable as e:
        pytest.skip(f"no second host here: {e}")


def test_agent_on_a_second_host_over_tls_survives_kill_and_cut(hosts: TwoHosts) -> None:
    # Host B reaches Redis through TLS on the test address, and in no other way.
    probe = hosts.host.run([sys.executable, "-c", PROBE, hosts.remote_url,
                            hosts.host.outer_ip, str(hosts.redis.port)])
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.count("refused") == 3, probe.stdout

    with Client(redis_url=hosts.url("producer")) as client:
        pinned = client.ping(node=REMOTE_NODE).result(60)
        assert pinned.node == REMOTE_NODE
        charged = client.submit("mobilenetv2", _zeros(), node=REMOTE_NODE).result(180)
    assert charged.node == REMOTE_NODE and charged.intensity_g_per_kwh == 120.0
    assert charged.accounting == "device" and charged.carbon_g > 0

    monitor = redis_client(hosts.url("monitor"), socket_timeout=5)
    try:
        # Each host's carbon service accounts for its own nodes; node-r beats with its zone's
        # intensity and charges from host B's power reading.
        assert monitor.smembers(keys.host_nodes_key("host-b")) == {REMOTE_NODE.encode()}
        assert monitor.smembers(keys.host_nodes_key("host-a")) == {b"node-a", b"node-b"}
        assert monitor.exists(keys.host_power_key("host-a"), keys.host_power_key("host-b")) == 2
        beat = monitor.hget(keys.node_key(REMOTE_NODE), "carbon_intensity")
        assert beat is not None and float(beat) == 120.0

        def settled() -> dict[bytes, bytes] | None:  # host B's service settles node-r's task
            return next((f for _, f in monitor.xrange(keys.CARBON_SETTLED)
                         if f[b"task_id"] == charged.id.encode()), None)

        wait_until(settled, 60, "host B's carbon service to settle the task's measured charge")
        assert settled()[b"settlement"] == b"settled"  # type: ignore[index]
        with pytest.raises(redis.exceptions.NoPermissionError):
            monitor.set("ce:monitor-write", 1)  # the monitor user is read-only
    finally:
        monitor.close()

    faults = [
        Fault("kill -9 node-b (host A)", "node-b", 1 / 3,
              start=lambda: hosts.kill_local("node-b")),
        Fault("cut host B off for 10 s", REMOTE_NODE, 1 / 2, start=hosts.host.cut,
              end=hosts.host.restore, duration_s=10.0),
    ]
    figures = run_multihost_load(hosts.url("dispatcher"), faults, requests=600, rate_per_s=60)
    for line in figures.lines():
        print(line)
    report = figures.report
    assert report.lost == 0 and report.duplicated == 0, report.line()
    assert report.delivered == report.submitted == 600
    # positive controls: both faults hit work in flight, and host B served
    assert figures.moved["node-b"] > 0 and figures.moved[REMOTE_NODE] > 0, figures.moved
    assert report.nodes[REMOTE_NODE] > 0
    # host B serves again after the cut
    with Client(redis_url=hosts.url("producer")) as client:
        assert client.ping(node=REMOTE_NODE).result(90).node == REMOTE_NODE


def _zeros():  # noqa: ANN202
    import numpy as np

    return np.zeros((1, 3, 224, 224), np.float32)
