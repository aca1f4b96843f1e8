"""Re-dispatching the work of dead nodes and dead dispatchers.

Every request a dispatcher routes is also recorded in ``ce:assigned:<node>`` (same MULTI
as the LPUSH); the agent's result delivery removes it. When a node's heartbeat key has
expired, :data:`TAKE_LUA` atomically, and only while the key is still absent,

* puts every request of the node's registry back on the ``ce:requests`` stream with its
  attempt number, where the normal dispatch path routes it to a live node;
* drops those requests' Celery messages from the node's queue and from kombu's unacked
  registry, so that neither a revived agent nor kombu's visibility-timeout restore runs
  them again (a revived agent also checks that it still owns a request before running
  it, and the first-writer-wins delivery drops any late result);
* releases the node's in-flight count for them.

Because the requests go back through the stream, a dispatcher that dies halfway through
a re-dispatch leaves stream entries pending like any other, and two dispatchers running
the watchdog cannot both move the same request: the script empties the registry.

Stream entries left pending by a dispatcher whose beat has stopped are claimed with
XCLAIM (min idle time, so only one claimer gets each) and dispatched again.

A live node can also lose a request: kombu's Redis transport pops a message with BRPOP
and records it in its unacked registry with a second command, so a Redis killed between
the two (or a reply lost with it) leaves the message only in the agent's memory, which
Celery drops when it reconnects. The agent's hand-back runs only when Celery notices the
broken connection, and kombu can drop one quietly (a BRPOP socket that closes while the
channel has no credit, e.g. after a failed ack, is just disconnected and reopened), so
:data:`ORPHANS_LUA` covers these cases by construction. Every step that moves a
request's Celery message (dispatch, segment hand-on, kombu's restore) does so in the same
atomic step as its registry entry, and a delivery removes the entry, so a request assigned
to a node is always in that node's queue or in kombu's unacked registry, except for the
moment between BRPOP and the unacked record. One that stays in neither for
``orphan_after_s`` is re-dispatched by the watchdog. Moving one that the agent does still
hold is safe: the agent runs nothing that is no longer in its registry, and delivery keeps
the first result only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from carbonedge.broker.repair import cap_in_flight, is_wrong_type, move_aside
from carbonedge.protocol import keys
from carbonedge.protocol.telemetry import CLOCK_SKEW_S, valid_node_id
from carbonedge.protocol.untrusted import Rejections, parse_amount, text
from carbonedge.settings import Settings

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


Entries = list[tuple[bytes, dict]]


class Watchdog:
    """Runs inside a dispatcher's event loop: recovers dead nodes and dead dispatchers."""

    def __init__(self, settings: Settings, name: str,
                 dispatch: Callable[[aioredis.Redis, Entries], Awaitable[None]],
                 rejections: Rejections | None = None) -> None:
        self.settings = settings
        self.name = name
        self._dispatch = dispatch
        self.rejections = rejections or Rejections(f"watchdog {name}", log)
        self.recovered: list[Taken] = []
        self.reclaimed = 0
        self.orphans_moved = 0
        self._orphans_at = 0.0
        self._counts_at = 0.0
        self._suspects: dict[tuple[str, str], float] = {}
        """(node, request id) seen orphaned -> when it was first seen so (monotonic)."""

    async def run(self, r: aioredis.Redis, stop: asyncio.Event) -> None:
        """Check every ``recovery_interval_s`` until ``stop`` is set; ride out Redis errors."""
        while not stop.is_set():
            try:
                await self.check(r)
                self.rejections.accept("watchdog", "check")
            except (redis.ConnectionError, redis.TimeoutError) as e:
                log.warning("recovery check failed (%s); retrying", e)
            except Exception as e:  # the watchdog must outlive any one bad check
                quiet = isinstance(e, redis.ResponseError) and is_wrong_type(e)
                if not quiet and not self.rejections.active("watchdog"):
                    log.exception("recovery check crashed; retrying (logged once)")
                self.rejections.reject("watchdog", "check", f"{type(e).__name__}: {e}"[:200])
            try:
                await asyncio.wait_for(stop.wait(), self.settings.recovery_interval_s)
            except TimeoutError:
                pass

    async def check(self, r: aioredis.Redis) -> list[Taken]:
        """One pass: take dead nodes' requests, live nodes' orphans, then dead dispatchers'
        pending entries; now and then, in-flight counts above their registries."""
        taken = [t for t in await self.recover_nodes(r) if t.requests]
        await self.rescue_orphans(r)
        await self.reclaim_dispatchers(r)
        await self.cap_counts(r)
        return taken

    async def cap_counts(self, r: aioredis.Redis) -> int:
        """Every half ``orphan_after_s``: an in-flight count above the node's registry
        (leaked, or forged to steer traffic away) is lowered to the registry's size."""
        now = time.monotonic()
        if now - self._counts_at < self.settings.orphan_after_s / 2:
            return 0
        self._counts_at = now
        capped = 0
        for node_id in await self._node_ids(r):
            capped += await cap_in_flight(r, node_id, self.rejections)
        return capped

    async def _node_ids(self, r: aioredis.Redis) -> list[str]:
        """The valid node ids of the registry (one of the wrong type is moved aside)."""
        try:
            members = await r.smembers(keys.NODES)
        except redis.ResponseError as e:
            if not is_wrong_type(e):
                raise
            # no node id in it; agents add theirs again on their next beat
            await move_aside(r, keys.NODES, "set", self.rejections)
            return []
        return sorted(n for n in map(text, members) if n is not None and valid_node_id(n))

    async def _nodes_holding_requests(self, r: aioredis.Redis, *, alive: bool) -> list[str]:
        """Nodes with requests assigned to them whose heartbeat is (``alive``) or is not."""
        node_ids = await self._node_ids(r)
        pipe = r.pipeline(transaction=False)
        for node_id in node_ids:
            pipe.exists(keys.node_key(node_id))
            pipe.hlen(keys.assigned_key(node_id))
        replies = await pipe.execute(raise_on_error=False)
        out = []
        for n, beating, held in zip(node_ids, replies[::2], replies[1::2], strict=True):
            if isinstance(held, redis.ResponseError) and is_wrong_type(held):
                # a registry of the wrong type holds no request: out of the way
                await move_aside(r, keys.assigned_key(n), "hash", self.rejections)
            elif isinstance(held, int) and held and bool(beating) == alive:
                out.append(n)
        return out

    async def recover_nodes(self, r: aioredis.Redis) -> list[Taken]:
        dead = await self._nodes_holding_requests(r, alive=False)
        out = []
        for node_id in dead:
            script_keys, args = take_call(node_id, "heartbeat expired")
            n, queued, running = await r.eval(TAKE_LUA, len(script_keys), *script_keys, *args)
            taken = Taken(node_id, int(n), int(queued), int(running))
            if taken.requests:
                log.warning("node %s is dead (heartbeat expired): re-dispatching %d request(s) "
                            "(%d queued, %d running)", node_id, taken.requests, taken.queued,
                            taken.running)
                await r.hincrby(keys.DELIVERY_STATS, "redispatched", taken.requests)
                self.recovered.append(taken)
            out.append(taken)
        return out

    async def rescue_orphans(self, r: aioredis.Redis) -> int:
        """Re-dispatch requests of live nodes that were orphaned for ``orphan_after_s``.

        Runs every half ``orphan_after_s`` (it reads whole queues). A request is moved
        only when it was orphaned at two looks at least ``orphan_after_s`` apart, far
        longer than the moment between a BRPOP and kombu's unacked record, and the
        script checks again before it moves anything.
        """
        bound = self.settings.orphan_after_s
        now = time.monotonic()
        if now - self._orphans_at < bound / 2:
            return 0
        self._orphans_at = now
        # a dead node's requests are taken by recover_nodes
        live = await self._nodes_holding_requests(r, alive=True)
        suspects: dict[tuple[str, str], float] = {}
        moved = 0
        for node_id in live:
            script_keys, args = orphans_call(node_id, "find")
            found = list(await r.eval(ORPHANS_LUA, len(script_keys), *script_keys, *args))
            for request_id in found:
                suspects[node_id, request_id] = self._suspects.get((node_id, request_id), now)
            due = [i for i in found if now - suspects[node_id, i] >= bound]
            if not due:
                continue
            script_keys, args = orphans_call(node_id, "move", due)
            n = int(await r.eval(ORPHANS_LUA, len(script_keys), *script_keys, *args))
            for request_id in due:
                suspects.pop((node_id, request_id), None)
            if n:
                log.warning("node %s is alive but %d request(s) assigned to it were in neither "
                            "its queue nor kombu's unacked registry for %.0f s (a message lost "
                            "in a broker connection loss): re-dispatching them", node_id, n,
                            bound)
                await r.hincrby(keys.DELIVERY_STATS, "redispatched", n)
                moved += n
        self._suspects = suspects
        self.orphans_moved += moved
        return moved

    async def reclaim_dispatchers(self, r: aioredis.Redis) -> int:
        """Claim and dispatch entries pending on dispatchers that stopped beating."""
        try:
            consumers = await r.xinfo_consumers(keys.REQUEST_STREAM, keys.DISPATCH_GROUP)
        except redis.ResponseError:  # no stream or group yet
            return 0
        try:
            beats = await r.hgetall(keys.DISPATCHER_ALIVE)
        except redis.ResponseError as e:
            if not is_wrong_type(e):
                raise
            beats = {}  # the dispatcher's beat moves it aside
        now = time.time()
        stale_after = max(self.settings.heartbeat_ttl_s, 2 * self.settings.heartbeat_interval_s)
        await self._forget_bad_beats(r, beats, now, stale_after,
                                     {c["name"] for c in consumers})
        claimed = 0
        for consumer in consumers:
            name = consumer["name"]
            if text(name) == self.name:
                continue
            beat = parse_amount(beats.get(name if isinstance(name, bytes) else name.encode()))
            if beat is not None and now - beat < stale_after:
                continue  # alive: its pending entries are its own business
            if consumer["pending"]:
                claimed += await self._claim_from(r, name)
            else:
                await r.xgroup_delconsumer(keys.REQUEST_STREAM, keys.DISPATCH_GROUP, name)
                await r.hdel(keys.DISPATCHER_ALIVE, name)
                log.info("removed dead dispatcher %r from the consumer group", name)
        self.reclaimed += claimed
        return claimed

    async def _forget_bad_beats(self, r: aioredis.Redis, beats: dict, now: float,
                                stale_after: float, consumers: set) -> None:
        """Beats that are no number or from the future, and stale ones of no consumer
        (a dispatcher that never read), would count as dispatchers for ever: removed."""
        bad = []
        for name, raw in beats.items():
            ts = parse_amount(raw)
            if ts is None or ts > now + CLOCK_SKEW_S:
                self.rejections.reject("dispatcher-beat", name, f"not a time: {raw[:40]!r}")
                bad.append(name)
            elif name not in consumers and now - ts > 10 * stale_after:
                bad.append(name)
        if bad:
            await r.hdel(keys.DISPATCHER_ALIVE, *bad)

    async def _claim_from(self, r: aioredis.Redis, consumer: str | bytes) -> int:
        pending = await r.xpending_range(keys.REQUEST_STREAM, keys.DISPATCH_GROUP, "-", "+",
                                         1000, consumername=consumer)
        ids = [p["message_id"] for p in pending]
        if not ids:
            return 0
        idle_ms = int(self.settings.heartbeat_interval_s * 1000)
        entries = await r.xclaim(keys.REQUEST_STREAM, keys.DISPATCH_GROUP, self.name, idle_ms,
                                 ids)
        live = [e for e in entries if e[1]]
        gone = [e[0] for e in entries if not e[1]]  # deleted meanwhile: nothing to dispatch
        if gone:
            await r.xack(keys.REQUEST_STREAM, keys.DISPATCH_GROUP, *gone)
        if live:
            log.warning("dispatcher %r stopped beating: dispatching its %d pending request(s)",
                        consumer, len(live))
            await self._dispatch(r, live)
        return len(live)


def recovery_log(client: redis.Redis, count: int = 100) -> Iterable[dict[str, str]]:
    """The latest re-dispatch records, newest first (for status views and benchmarks)."""
    for _, fields in client.xrevrange(keys.RECOVERIES, count=count):
        yield {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}
