"""Handing a node's assigned work back to the request stream, and finding what it lost.

Every request a dispatcher routes is recorded in ``ce:assigned:<node>`` (same MULTI as its
LPUSH); the result's delivery removes it. :data:`TAKE_LUA` atomically (and, unless forced,
only while the node's heartbeat key is absent)

* puts every request of the node's registry back on the ``ce:requests`` stream with its
  attempt number, where the normal dispatch path routes it to a live node;
* drops those requests' Celery messages from the node's queue and from kombu's unacked
  registry, so that neither a revived agent nor kombu's visibility-timeout restore runs
  them again;
* releases the node's in-flight count for them.

:data:`ORPHANS_LUA` finds (and moves) requests assigned to a live node that are in neither
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

__all__ = ["ORPHANS_LUA", "TAKE_LUA", "Taken", "hand_back", "orphans_call",
           "release_previous_life", "take_call"]

log = logging.getLogger(__name__)

_LUA_HELPERS = """
-- Everything in these keys may have been left there by anyone: a registry of the wrong
-- type holds nothing to move, a count that is not a number is started again, and the
-- requests go back to the stream only while it is a stream (else nothing is moved and
-- the dispatcher, which moves a wrong-typed stream aside, lets the next pass do it).
local function list_of(reply)
  if type(reply) ~= 'table' or reply.err then return {} end
  return reply
end
local function next_attempt(attempts, id)
  local n = redis.pcall('HINCRBY', attempts, id, 1)
  if type(n) ~= 'number' then
    redis.pcall('HSET', attempts, id, 1)
    n = 1
  end
  return n
end
local function release(in_flight, node, n)
  local left = redis.pcall('HINCRBY', in_flight, node, -n)
  if type(left) ~= 'number' or left < 0 then redis.pcall('HSET', in_flight, node, 0) end
end
local function stream_usable(stream)
  local kind = redis.call('TYPE', stream)['ok']
  return kind == 'stream' or kind == 'none'
end
local function task_id(message)
  if type(message) == 'table' and type(message.headers) == 'table'
      and type(message.headers.id) == 'string' then
    return message.headers.id
  end
  return nil
end
"""

TAKE_LUA = _LUA_HELPERS + """
-- KEYS: heartbeat, assigned, queue, in-flight, attempts, requests stream, kombu unacked,
--       kombu unacked index, recoveries stream
-- ARGV: node id, queue name, now (unix seconds), reason, '1' to act on a live node
if ARGV[5] ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then return {0, 0, 0} end
local flat = list_of(redis.pcall('HGETALL', KEYS[2]))
if #flat == 0 or not stream_usable(KEYS[6]) then return {0, 0, 0} end
local moved = {}
local n = 0
for i = 1, #flat, 2 do
  local attempt = next_attempt(KEYS[5], flat[i])
  redis.call('XADD', KEYS[6], '*', 'p', flat[i + 1], 'a', tostring(attempt), 'from', ARGV[1])
  moved[flat[i]] = true
  n = n + 1
end
redis.call('DEL', KEYS[2])
local items = list_of(redis.pcall('LRANGE', KEYS[3], 0, -1))
local kept = {}
local dropped = 0
for _, item in ipairs(items) do
  local ok, message = pcall(cjson.decode, item)
  local id = ok and task_id(message) or nil
  if id ~= nil and moved[id] then dropped = dropped + 1 else kept[#kept + 1] = item end
end
if dropped > 0 then
  redis.call('DEL', KEYS[3])
  for _, item in ipairs(kept) do redis.call('RPUSH', KEYS[3], item) end
end
local unacked = list_of(redis.pcall('HGETALL', KEYS[7]))
local forgotten = 0
for i = 1, #unacked, 2 do
  local ok, entry = pcall(cjson.decode, unacked[i + 1])
  if ok and type(entry) == 'table' and entry[3] == ARGV[2] then
    local id = task_id(entry[1])
    if id ~= nil and moved[id] then
      redis.call('HDEL', KEYS[7], unacked[i])
      redis.pcall('ZREM', KEYS[8], unacked[i])
      forgotten = forgotten + 1
    end
  end
end
release(KEYS[4], ARGV[1], n)
redis.pcall('XADD', KEYS[9], 'MAXLEN', '~', '10000', '*', 'node', ARGV[1], 'ts', ARGV[3],
            'requests', tostring(n), 'queued', tostring(dropped),
            'running', tostring(forgotten), 'reason', ARGV[4])
return {n, dropped, forgotten}
"""


ORPHANS_LUA = _LUA_HELPERS + """
-- KEYS: assigned, queue, in-flight, attempts, requests stream, kombu unacked, recoveries
-- ARGV: node id, queue name, now, 'find' or 'move', request ids (for 'move')
-- 'find' returns the ids assigned to the node that are in neither its queue nor kombu's
-- unacked registry (for its queue); 'move' re-dispatches those of the given ids that
-- still are, like TAKE_LUA does for a dead node, and returns how many it moved.
local held = {}
for _, item in ipairs(list_of(redis.pcall('LRANGE', KEYS[2], 0, -1))) do
  local ok, message = pcall(cjson.decode, item)
  local id = ok and task_id(message) or nil
  if id ~= nil then held[id] = true end
end
for _, raw in ipairs(list_of(redis.pcall('HVALS', KEYS[6]))) do
  local ok, entry = pcall(cjson.decode, raw)
  if ok and type(entry) == 'table' and entry[3] == ARGV[2] then
    local id = task_id(entry[1])
    if id ~= nil then held[id] = true end
  end
end
if ARGV[4] == 'find' then
  local orphans = {}
  for _, id in ipairs(list_of(redis.pcall('HKEYS', KEYS[1]))) do
    if not held[id] then orphans[#orphans + 1] = id end
  end
  return orphans
end
if not stream_usable(KEYS[5]) then return 0 end
local n = 0
for i = 5, #ARGV do
  local id = ARGV[i]
  local request = redis.pcall('HGET', KEYS[1], id)
  if type(request) == 'string' and not held[id] then
    local attempt = next_attempt(KEYS[4], id)
    redis.call('XADD', KEYS[5], '*', 'p', request, 'a', tostring(attempt), 'from', ARGV[1])
    redis.call('HDEL', KEYS[1], id)
    n = n + 1
  end
end
if n > 0 then
  release(KEYS[3], ARGV[1], n)
  redis.pcall('XADD', KEYS[7], 'MAXLEN', '~', '10000', '*', 'node', ARGV[1], 'ts', ARGV[3],
              'requests', tostring(n), 'queued', '0', 'running', '0', 'reason', 'orphaned')
end
return n
"""


def orphans_call(node_id: str, mode: str,
                 request_ids: Iterable[str | bytes] = ()) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of :data:`ORPHANS_LUA` for one node (``mode``: 'find' or 'move')."""
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
    """KEYS and ARGV of :data:`TAKE_LUA` for one node (``force``: even if it beats)."""
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
    n, queued, running = client.eval(TAKE_LUA, len(script_keys), *script_keys, *args)
    taken = Taken(node_id, int(n), int(queued), int(running))
    if taken.requests:
        log.warning("%s: re-dispatching the %d request(s) assigned to %s", reason,
                    taken.requests, node_id)
        client.hincrby(keys.DELIVERY_STATS, "redispatched", taken.requests)
    return taken


def release_previous_life(client: redis.Redis, node_id: str) -> Taken:
    """For an agent starting under ``node_id``: re-dispatch what a previous life held."""
    return hand_back(client, node_id, "agent restarted")
