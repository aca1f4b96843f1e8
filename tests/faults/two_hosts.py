"""Agents on two hosts of one machine: host A (this namespace) and host B (a namespace of
its own, see :mod:`tests.faults.netns`) sharing one TLS-only Redis with an ACL user per
role. Used by the second-host fault test and ``benchmarks/bench_multihost.py``.

Host A runs ``carbonedge up``'s local runtime (dispatcher, node-a and node-b in cgroups,
its carbon service) as the dispatcher user over TLS on 127.0.0.1. Host B runs node-r's
agent in a cgroup of its own and host B's carbon service, given only the agent user's
``rediss://`` URL on the test address and the test CA: that address, through TLS, is the
only way they can reach Redis. Each host's carbon service publishes its own power
(``host_id``), and node-r's intensity is its own zone's.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from carbonedge.cgroups import NodeCgroup
from carbonedge.compose.local_runner import LocalRuntime, process_alive
from carbonedge.compose.topology import load_topology
from carbonedge.connections import redis_client
from carbonedge.ops.acl import ROLES
from carbonedge.protocol import keys
from carbonedge.settings import Settings
from tests.faults.netns import SecondHost
from tests.faults.servers import RedisServer, role_url, with_tls_acl
from tests.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]
HOST_A_TOPOLOGY = """
x-zone-a: &zone-a
  placement: {constraints: ["node.labels.carbonedge.zone.zone-a == true"]}
services:
  node-a:
    deploy: {<<: *zone-a, resources: {limits: {cpus: "0.5", memory: 768M}}}
    x-carbonedge: {role: node, carbon_intensity: 500, zone: zone-a}
  node-b:
    deploy: {<<: *zone-a, resources: {limits: {cpus: "0.5", memory: 768M}}}
    x-carbonedge: {role: node, carbon_intensity: 300, zone: zone-a}
"""
HOST_B_TOPOLOGY = """
services:
  node-r:
    deploy:
      resources: {limits: {cpus: "0.5", memory: 768M}}
      placement: {constraints: ["node.labels.carbonedge.zone.zone-b == true"]}
    x-carbonedge: {role: node, carbon_intensity: 120, zone: zone-b}
"""
REMOTE_NODE = "node-r"
ALLOWLIST = "node-a,node-b,node-r"


@dataclass
class TwoHosts:
    host: SecondHost
    redis: RedisServer
    passwords: dict[str, str]
    runtime: LocalRuntime
    directory: Path
    remote: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    cgroup: NodeCgroup | None = None

    def url(self, role: str, address: str | None = None) -> str:
        return role_url(self.redis, role, self.passwords[role], address)

    @property
    def remote_url(self) -> str:
        """What host B is given: the agent user, TLS, the test address."""
        return self.url("agent", self.host.outer_ip)

    def kill_local(self, node: str) -> None:
        pid = next(p.pid for p in reversed(self.runtime.state.processes) if p.name == node)
        os.kill(pid, signal.SIGKILL)

    def remote_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONEDGE_")}
        env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
                   CARBONEDGE_REDIS_URL=self.remote_url, CARBONEDGE_HOST_ID="host-b",
                   CARBONEDGE_NODE_ALLOWLIST=REMOTE_NODE,
                   CARBONEDGE_RUN_DIR=str(self.directory / "host-b"))
        return env

    def start_remote(self, name: str, args: list[str], *, cgroup: NodeCgroup | None = None,
                     ) -> subprocess.Popen[bytes]:
        (self.directory / "host-b").mkdir(parents=True, exist_ok=True)
        proc = self.host.spawn([sys.executable, "-m", "carbonedge.cli", *args],
                               self.remote_env(), self.directory / "host-b" / f"{name}.log",
                               preexec_fn=cgroup.preexec_fn() if cgroup else None)
        self.remote[name] = proc
        return proc

    def remote_log(self, name: str) -> str:
        path = self.directory / "host-b" / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"

    def stop_remote(self) -> None:
        for proc in self.remote.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.remote.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@contextmanager
def two_hosts(directory: Path, *, cgroup_parent: str, ready_s: float = 180.0,
              ) -> Iterator[TwoHosts]:
    """Both hosts up (every heartbeat and both hosts' power readings visible); always
    torn down."""
    passwords = {role: secrets.token_urlsafe(12) for role in ROLES}
    with SecondHost() as host:
        redis_server = with_tls_acl(directory / "redis", passwords,
                                    ("127.0.0.1", host.outer_ip)).start()
        try:
            compose_a, compose_b = directory / "host-a.yml", directory / "host-b.yml"
            compose_a.write_text(HOST_A_TOPOLOGY)
            compose_b.write_text(HOST_B_TOPOLOGY)
            settings = Settings.load(
                env={}, redis_url=role_url(redis_server, "dispatcher", passwords["dispatcher"]),
                run_dir=str(directory / "host-a"), result_timeout_s=60.0,
                cgroup_parent=cgroup_parent, host_id="host-a", node_allowlist=ALLOWLIST)
            runtime = LocalRuntime(load_topology(compose_a), settings, carbon_service=True)
            hosts = TwoHosts(host, redis_server, passwords, runtime, directory)
            try:
                runtime.up(wait_s=ready_s)
                spec = load_topology(compose_b).node(REMOTE_NODE)
                hosts.cgroup = NodeCgroup.create(REMOTE_NODE, spec.cpus, spec.mem_limit_bytes,
                                                 cgroup_parent)
                hosts.start_remote("carbon", ["carbon"])
                hosts.start_remote(REMOTE_NODE, ["agent", "--node", REMOTE_NODE, "--compose",
                                                 str(compose_b)], cgroup=hosts.cgroup)
                _wait_remote(hosts, ready_s)
                yield hosts
            finally:
                hosts.stop_remote()
                runtime.down()
                if hosts.cgroup is not None:
                    hosts.cgroup.remove()
        finally:
            redis_server.stop()


def _wait_remote(hosts: TwoHosts, timeout_s: float) -> None:
    """Until node-r's heartbeat and host B's power reading are in Redis."""
    client = redis_client(hosts.url("monitor"), socket_timeout=5)

    def ready() -> bool:
        for name, proc in hosts.remote.items():
            if not process_alive(proc.pid) or proc.poll() is not None:
                raise RuntimeError(f"host B's {name} exited:\n{hosts.remote_log(name)}")
        return bool(client.exists(keys.node_key(REMOTE_NODE))
                    and client.exists(keys.host_power_key("host-b")))

    try:
        wait_until(ready, timeout_s, "host B's agent and carbon service",
                   on_fail=lambda: f"agent log:\n{hosts.remote_log(REMOTE_NODE)}",
                   interval_s=0.1)
    finally:
        client.close()
