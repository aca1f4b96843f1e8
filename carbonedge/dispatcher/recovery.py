"""Re-dispatching the work of dead nodes and dead dispatchers.

Every request a dispatcher routes is also recorded in ``ce:assigned:<node>`` (same MULTI
as the LPUSH); the agent's result delivery removes it. When a node's heartbeat key has
expired, the transport's take script (:data:`~carbonedge.transport.handback.TAKE`) atomically, and only while the key is still absent,

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
the orphans script (:data:`~carbonedge.transport.handback.ORPHANS`) covers these cases by construction. Every step that moves a
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
from collections.abc import Awaitable, Callable

import redis
import redis.asyncio as aioredis

from carbonedge.protocol import keys
from carbonedge.protocol.telemetry import CLOCK_SKEW_S, valid_node_id
from carbonedge.protocol.untrusted import (
    Rejections,
    is_wrong_type,
    move_aside,
    parse_amount,
    text,
)
from carbonedge.settings import Settings
from carbonedge.transport.handback import ORPHANS, TAKE, Taken, orphans_call, take_call
from carbonedge.transport.repair import cap_in_flight

log = logging.getLogger(__name__)

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
            n, queued, running = await TAKE(r, script_keys, args)
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
            found = list(await ORPHANS(r, script_keys, args))
            for request_id in found:
                suspects[node_id, request_id] = self._suspects.get((node_id, request_id), now)
            due = [i for i in found if now - suspects[node_id, i] >= bound]
            if not due:
                continue
            script_keys, args = orphans_call(node_id, "move", due)
            n = int(await ORPHANS(r, script_keys, args))
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

