"""Is this node alive? `carbonedge agent --check`, the container health check.

An agent is healthy while its heartbeat hash exists, parses and is younger than the
heartbeat expiry: exactly the condition under which the dispatcher schedules it.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from carbonedge.errors import CarbonEdgeError, ConfigError
from carbonedge.protocol import keys
from carbonedge.protocol.telemetry import Heartbeat, valid_node_id

HOSTNAME = "hostname"
"""``--instance hostname``: suffix the node class with the host name."""
CONTAINER = "container"
"""``--instance container``: suffix the node class with the container id (12 digits).

Unlike the host name it stays distinct under ``network_mode: host``, where every replica
would otherwise share the host's name."""
_CONTAINER_ID = re.compile(r"(?:/containers/|docker[-/])([0-9a-f]{64})")


@dataclass(frozen=True, slots=True)
class Health:
    """The verdict on one node's heartbeat."""

    node_id: str
    healthy: bool
    detail: str


def instance_node_id(node_class: str, instance: str | None) -> str:
    """The node id of one replica: the class, or ``<class>-<instance>``.

    ``instance="container"`` takes the container id, so every replica of ``docker compose
    up --scale`` gets an id (and a queue) of its own; ``"hostname"`` the host name.
    """
    if not instance:
        return node_class
    if instance == CONTAINER:
        suffix = container_id()[:12]
    elif instance == HOSTNAME:
        suffix = socket.gethostname().split(".")[0]
    else:
        suffix = instance
    node_id = f"{node_class}-{suffix}"
    if not valid_node_id(node_id):
        raise ConfigError(f"node id {node_id!r} (from --instance {instance!r}) must be letters, "
                          "digits, '.', '_' or '-', at most 63 characters", field="instance")
    return node_id


def container_id(proc: Path = Path("/proc/self")) -> str:
    """This container's id, from the files Docker mounts into it (cgroup v1 or v2)."""
    for name in ("mountinfo", "cgroup"):
        try:
            found = _CONTAINER_ID.search((proc / name).read_text())
        except OSError:
            continue
        if found:
            return found.group(1)
    raise ConfigError("--instance container: this process does not run in a Docker container "
                      "(no container id in /proc/self/mountinfo or cgroup)", field="instance")


def check_heartbeat(client: redis.Redis, node_id: str, ttl_s: float,
                    *, now: float | None = None) -> Health:
    """Healthy when ``node_id``'s heartbeat exists, is valid and is at most ``ttl_s`` old."""
    now = time.time() if now is None else now
    raw = client.hgetall(keys.node_key(node_id))
    if not raw:
        return Health(node_id, False, f"no heartbeat of {node_id} (never sent, or expired)")
    try:
        beat = Heartbeat.from_fields({k.decode(): v.decode() for k, v in raw.items()}, now=now)
    except CarbonEdgeError as e:
        return Health(node_id, False, f"invalid heartbeat of {node_id}: {e}")
    age = now - beat.ts
    if age > ttl_s:
        return Health(node_id, False, f"heartbeat of {node_id} is stale: {age:.1f} s old "
                                      f"(expiry {ttl_s:.1f} s)")
    return Health(node_id, True, f"{node_id} healthy: heartbeat {max(age, 0.0):.1f} s old, "
                                 f"{beat.tasks_done} task(s) done")
