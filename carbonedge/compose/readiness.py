"""What both runtimes (local processes, containers) do around start-up, against Redis."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis

from carbonedge.compose.topology import Topology
from carbonedge.connections import redis_client
from carbonedge.errors import RuntimeUnavailable
from carbonedge.protocol import keys
from carbonedge.settings import Settings

log = logging.getLogger(__name__)


def export_models(topology: Topology, node_ids: Sequence[str], settings: Settings,
                  log_path: Path) -> None:
    """`carbonedge models export` into ``settings``' store for the nodes that may run ONNX
    Runtime, in a process of its own outside every node's cgroup (exporting holds torch:
    more memory than a small node has); a no-op when the store has every graph. A model
    that fails to export stops start-up if a node must run it on onnxruntime; an ``auto``
    node runs torch instead and says why."""
    runtimes = {topology.node(n).runtime_under(settings) for n in node_ids}
    if runtimes == {"torch"}:
        return
    args = [sys.executable, "-m", "carbonedge.cli", "models", "export", "--keep-going",
            "--compose", str(topology.source)]
    env = {**os.environ, **settings.to_env()}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        done = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode == 0:
        return
    if done.returncode != 2 or "onnxruntime" in runtimes:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeUnavailable(f"exporting the models to ONNX failed; {log_path} ends:\n{tail}")
    log.warning("some models do not export to ONNX (see %s): auto nodes run torch", log_path)


def clear_stale_in_flight(redis_url: str) -> None:
    """Forget in-flight counts of a previous run so they do not bias the scheduler."""
    client = redis_client(redis_url)
    try:
        client.delete(keys.IN_FLIGHT)
    finally:
        client.close()


def wait_until_ready(redis_url: str, node_ids: Sequence[str], timeout_s: float, *,
                     check_started: Callable[[], None], carbon_service: bool = False,
                     host_id: str = "", poll_s: float = 0.1) -> None:
    """Block until every agent's heartbeat, the dispatcher's beat and (if asked) the carbon
    service's host reading (``host_id``'s, where agents run on several hosts) are visible. ``check_started`` raises if a process or container
    died during start-up."""
    client = redis_client(redis_url)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            missing = [n for n in node_ids if not client.exists(keys.node_key(n))]
            if not _dispatcher_beats(client):
                missing.append("the dispatcher")
            if carbon_service and not client.exists(keys.host_power_key(host_id)):
                missing.append("the carbon service")
            if not missing:
                return
            check_started()
            if time.monotonic() > deadline:
                raise RuntimeUnavailable(
                    f"not ready after {timeout_s:.0f} s: waiting for {', '.join(missing)}")
            time.sleep(poll_s)
    finally:
        client.close()


def _dispatcher_beats(client: redis.Redis) -> bool:
    """Whether a dispatcher beat is recorded (a beat hash of the wrong type, left by
    anyone, is moved aside by the dispatcher itself: not yet, then)."""
    try:
        return bool(client.hlen(keys.DISPATCHER_ALIVE))
    except redis.ResponseError:
        return False
