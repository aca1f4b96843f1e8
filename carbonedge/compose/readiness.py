"""What both runtimes (local processes, containers) do around start-up, against Redis."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import redis

from carbonedge.connections import redis_client
from carbonedge.errors import RuntimeUnavailable
from carbonedge.protocol import keys


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
