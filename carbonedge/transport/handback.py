"""Handing a node's assigned work back to the request stream, and finding what it lost.

Every request a dispatcher routes is recorded in ``ce:assigned:<node>`` (same MULTI as its
LPUSH); the result's delivery removes it. :data:`TAKE` (take.lua) atomically (and, unless forced,
only while the node's heartbeat key is absent)

* puts every request of the node's registry back on the ``ce:requests`` stream with its
  attempt number, where the normal dispatch path routes it to a live node;
* drops those requests' Celery messages from the node's queue and from kombu's unacked
  registry, so that neither a revived agent nor kombu's visibility-timeout restore runs
  them again;
* releases the node's in-flight count for them.

:data:`ORPHANS` (orphans.lua) finds (and moves) requests assigned to a live node that are in neither
its queue nor kombu's unacked registry: kombu's Redis transport pops a message with BRPOP
and records it as unacked with a second command, so a Redis lost between the two leaves
it only in an agent's memory. Both scripts read kombu's queue items and its unacked hash,
which is why they live here, with the rest of what knows kombu's formats.

An agent calls :func:`hand_back` for itself (at start-up, after a broker reconnect); the
dispatchers' watchdog (:mod:`carbonedge.dispatcher.recovery`) runs the scripts for dead
nodes and orphans.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from carbonedge.protocol import keys
from carbonedge.protocol.lua import LuaScript

__all__ = ["ORPHANS", "TAKE", "Taken", "hand_back", "orphans_call",
           "release_previous_life", "take_call"]

log = logging.getLogger(__name__)

TAKE = LuaScript(__package__, "handback_helpers.lua", "take.lua")
"""Re-dispatches everything assigned to a node (unless forced, only while it is dead)."""
ORPHANS = LuaScript(__package__, "handback_helpers.lua", "orphans.lua")
"""Finds, or moves, a live node's requests that are in neither its queue nor kombu's
unacked registry."""

def orphans_call(node_id: str, mode: str,
                 request_ids: Iterable[str | bytes] = ()) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of :data:`ORPHANS` for one node (``mode``: 'find' or 'move')."""
    script_keys = [keys.assigned_key(node_id), keys.node_queue(node_id), keys.IN_FLIGHT,
                   keys.ATTEMPTS, keys.REQUEST_STREAM, keys.KOMBU_UNACKED, keys.RECOVERIES]
    return script_keys, [node_id, keys.node_queue(node_id), repr(time.time()), mode,
                         *request_ids]


@dataclass(frozen=True, slots=True)
class Taken:
    """What one recovery of a node moved back to the request stream."""

    node: str
    requests: int
    """Requests re-dispatched (everything the node held)."""
    queued: int
    """Of those, how many were still waiting in the node's queue."""
    running: int
    """Of those, how many the agent had taken and not acknowledged (kombu's unacked)."""


def take_call(node_id: str, reason: str, *,
              force: bool = False) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of :data:`TAKE` for one node (``force``: even if it beats)."""
    queue = keys.node_queue(node_id)
    script_keys = [keys.node_key(node_id), keys.assigned_key(node_id), queue, keys.IN_FLIGHT,
                   keys.ATTEMPTS, keys.REQUEST_STREAM, keys.KOMBU_UNACKED,
                   keys.KOMBU_UNACKED_INDEX, keys.RECOVERIES]
    return script_keys, [node_id, queue, repr(time.time()), reason, "1" if force else "0"]


def hand_back(client: redis.Redis, node_id: str, reason: str) -> Taken:
    """For a live agent that runs nothing right now: re-dispatch everything assigned to it.

    Used when nothing assigned to the node can be running: an agent starting (a restart
    can be quicker than the heartbeat's expiry, so the watchdog may never see the node
    dead), and an agent whose broker connection broke (Celery drops the messages it had
    fetched, and kombu would restore them only after its hour-long visibility timeout).
    """
    script_keys, args = take_call(node_id, reason, force=True)
    n, queued, running = TAKE(client, script_keys, args)
    taken = Taken(node_id, int(n), int(queued), int(running))
    if taken.requests:
        log.warning("%s: re-dispatching the %d request(s) assigned to %s", reason,
                    taken.requests, node_id)
        client.hincrby(keys.DELIVERY_STATS, "redispatched", taken.requests)
    return taken


def release_previous_life(client: redis.Redis, node_id: str) -> Taken:
    """For an agent starting under ``node_id``: re-dispatch what a previous life held."""
    return hand_back(client, node_id, "agent restarted")
