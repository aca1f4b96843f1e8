"""The dispatcher: reads requests from the stream, asks the scheduler, publishes to a node.

A stream entry is acknowledged (and deleted) only after its task was published or its
error result stored, so a dispatcher killed mid-batch leaves its entries pending for the
next one to reclaim. Node telemetry is re-read every ``view_refresh_s``; between refreshes
each dispatch bumps the chosen node's in-flight count locally so bursts spread out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
import redis.asyncio as aioredis
from celery import Celery

from carbonedge.connections import async_redis_client
from carbonedge.dispatcher.deferral import DeferralReleaser
from carbonedge.dispatcher.partition_route import PartitionRouter
from carbonedge.dispatcher.quarantine import Quarantine
from carbonedge.dispatcher.recovery import Watchdog
from carbonedge.dispatcher.routing import (
    Cluster,
    DeadLetter,
    Deferred,
    Outcome,
    Pipeline,
    Rejected,
    Routed,
    Step,
    for_want_of_a_node,
)
from carbonedge.dispatcher.steps import default_steps
from carbonedge.dispatcher.telemetry import TelemetryReader
from carbonedge.partitioner.catalog import Catalogue, load_catalogue
from carbonedge.protocol import keys
from carbonedge.protocol.messages import error_result
from carbonedge.protocol.telemetry import ORACLE_FORECAST
from carbonedge.protocol.untrusted import (
    Rejections,
    is_wrong_type,
    move_aside,
    parse_amount,
    text,
)
from carbonedge.scheduler import ClusterView
from carbonedge.scheduler.budgets import parse_budgets, period_index
from carbonedge.settings import Settings
from carbonedge.transport.allowlist import node_allowed
from carbonedge.transport.celery_app import make_celery_app
from carbonedge.transport.delivery import DELIVER, delivery_call
from carbonedge.transport.repair import is_not_a_number, reset_field, reset_in_flight

log = logging.getLogger(__name__)

__all__ = ["Dispatcher", "node_allowed", "run_dispatcher"]

CLAIM_IDLE_MS = 30_000
"""Entries pending this long on another consumer are taken over (that consumer died)."""


_EXPECTED_TYPES = {"LPUSH": "list", "HSET": "hash", "HINCRBY": "hash", "ZADD": "zset",
                   "INCRBY": "string", "XADD": "stream", "XACK": "stream", "XDEL": "stream"}
"""The type each command of a dispatch MULTI needs its key to have."""


class Dispatcher:
    """One dispatcher process (several may share the consumer group)."""

    def __init__(self, settings: Settings, *, app: Celery | None = None,
                 name: str | None = None, models: Catalogue | None = None) -> None:
        self.settings = settings
        self.models = models or load_catalogue(settings.compose_path())
        """The declared models (the compose file's): a request for another is UnknownModel."""
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.app = app or make_celery_app(settings)
        self.cluster = Cluster()
        """The batch's view of the nodes and tenants' spend, which routing steps read."""
        self.rejections = Rejections(f"dispatcher {self.name}", log)
        """Malformed values read from Redis, logged once per cause and counted."""
        self.telemetry = TelemetryReader(
            self.rejections, allowlist=settings.node_allowlist,
            quarantine=Quarantine(hold_s=settings.quarantine_s,
                                  factor=settings.telemetry_jump_factor))
        self.releaser = DeferralReleaser(rejections=self.rejections)
        self._budgets = parse_budgets(settings.carbon_budgets)
        self._spent_at = 0.0
        self.dispatched = 0
        self.rejected = 0
        self.partitions = PartitionRouter(max_payload_bytes=settings.max_payload_bytes,
                                          models=self.models.names)
        self.on_decision: Callable[[str, float], None] | None = None
        """Called with (mode, seconds) after each decision (the metrics histogram)."""
        self.steps: list[Step] = default_steps(
            settings, models=self.models, app=self.app, partitions=self.partitions,
            budgets=self._budgets, on_decision=lambda: self.on_decision)
        """Routing, in order (see :mod:`carbonedge.dispatcher.steps`): a policy plugs in
        by inserting a step; a change applies from the next batch."""

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set."""
        r = async_redis_client(self.settings.redis_url, socket_timeout=10)
        try:
            await self._reclaim(r)
            beat = asyncio.create_task(self._beat(r, stop))
            watchdog = asyncio.create_task(Watchdog(self.settings, self.name, self.handle,
                                                    self.rejections).run(r, stop))
            releaser = asyncio.create_task(self.releaser.run(r, stop))
            try:
                await self._serve(r, stop)
            finally:
                beat.cancel()
                watchdog.cancel()
                releaser.cancel()
                with contextlib.suppress(redis.RedisError):
                    await r.hdel(keys.DISPATCHER_ALIVE, self.name)
        finally:
            await r.aclose()

    async def _serve(self, r: aioredis.Redis, stop: asyncio.Event) -> None:
        """Dispatch until stopped; ride out Redis outages (pending entries are reclaimed)."""
        reclaim = False
        failing: str | None = None
        while not stop.is_set():
            try:
                if reclaim:
                    await self._reclaim(r)
                    reclaim = False
                await self.step(r, block_ms=500)
            except (redis.ConnectionError, redis.TimeoutError) as e:
                log.warning("Redis unavailable (%s); retrying in 1 s", e)
                reclaim = True
                await asyncio.sleep(1.0)
            except Exception as e:  # e.g. ACLs, a script killed, a bug: serve on
                reason = f"{type(e).__name__}: {e}"[:200]
                if isinstance(e, redis.ResponseError) and is_wrong_type(e):
                    # a key replaced by one of another type between a read and a write:
                    # the next read repairs it; the batch, still pending, is reclaimed
                    self.rejections.reject("dispatch", "a key", f"changed type: {reason}")
                elif reason != failing:
                    log.exception("dispatching failed; retrying every second (logged once "
                                  "per cause)")
                failing, reclaim = reason, True
                await asyncio.sleep(1.0)
            else:
                if failing:
                    log.info("dispatching works again")
                failing = None

    async def step(self, r: aioredis.Redis, *, block_ms: int = 0) -> int:
        """Read one batch of new requests and dispatch it; returns how many were handled.

        The in-flight counts are read in the same round trip, right behind the batch:
        Redis runs a client's next command only once its blocked read returns, so they are
        as fresh as a read after the batch arrived, without that read's round trip.
        """
        pipe = r.pipeline(transaction=False)
        pipe.xreadgroup(keys.DISPATCH_GROUP, self.name, {keys.REQUEST_STREAM: ">"},
                        count=self.settings.dispatch_batch, block=block_ms or None)
        pipe.hgetall(keys.IN_FLIGHT)
        reply, in_flight = await pipe.execute(raise_on_error=False)
        if isinstance(reply, redis.ResponseError):
            if is_wrong_type(reply):  # no request can be in a key that is not a stream
                await move_aside(r, keys.REQUEST_STREAM, "stream", self.rejections)
            elif "NOGROUP" not in str(reply) and "UNBLOCKED" not in str(reply):
                raise reply  # (UNBLOCKED: the stream was deleted while we waited on it)
            await self._ensure_group(r)
            return 0
        if isinstance(reply, Exception):
            raise reply
        entries = reply[0][1] if reply else []
        if entries:
            await self.handle(r, entries, in_flight=in_flight)
        return len(entries)

    # -- dispatching -------------------------------------------------------------------

    async def handle(self, r: aioredis.Redis, entries: Iterable[tuple[bytes, dict]], *,
                     in_flight: Any = None) -> None:
        """Route a batch, then publish, count and acknowledge it in one round trip.

        Entries are acknowledged in the same MULTI as their tasks are pushed, recorded in
        their node's ``ce:assigned`` registry (for re-dispatch if it dies) and errors are
        delivered: either all of that happened, or none did and the entries stay pending
        for a dispatcher to reclaim. ``in_flight`` is the reply of an HGETALL of the
        in-flight counts read with the batch (None: read them now).
        """
        entries = list(entries)
        # A re-dispatched request (field "a") comes from a node the watchdog just found
        # dead; a view older than that could send it straight back there.
        await self._refresh_view(r, force=any(b"a" in fields for _, fields in entries))
        await self._sync_in_flight(r, in_flight)
        await self._refresh_spend(r)
        await self.partitions.prepare(r, entries, sorted(self.cluster.snapshots))
        pipe = r.pipeline(transaction=True)
        writes: list[tuple[str, str | None, str | None]] = []
        """Per command of the MULTI: its key, the type it needs and the hash field it adds
        to (to repair what a failed command found there)."""

        def write(command: str, key: str, *args: Any, field: str | None = None,
                  **options: Any) -> None:
            getattr(pipe, command.lower())(key, *args, **options)
            writes.append((key, _EXPECTED_TYPES.get(command), field))

        pipeline = Pipeline(self.steps)
        outcomes = [self._route(pipeline, entry_id, fields) for entry_id, fields in entries]
        if any(for_want_of_a_node(o) for o in outcomes):
            # the view is up to view_refresh_s old: a node that came back within that time
            # (a restarted agent) would be refused; read the telemetry again, route again
            await self._refresh_view(r, force=True)
            await self._sync_in_flight(r)
            self.rejected -= sum(map(for_want_of_a_node, outcomes))  # counted once, below
            outcomes = [self._route(pipeline, entry_id, fields) if for_want_of_a_node(o) else o
                        for (entry_id, fields), o in zip(entries, outcomes, strict=True)]
        ids = [entry_id for entry_id, _ in entries]
        # one command per node and key, not per request: the MULTI's cost is per command
        queued: dict[str, list[bytes]] = {}
        assigned: dict[str, dict[str, bytes]] = {}
        decided: dict[str, int] = {}
        deferred: dict[bytes, float] = {}
        held = 0
        for outcome in outcomes:
            if isinstance(outcome, Routed):
                queued.setdefault(outcome.node, []).append(outcome.message)
                assigned.setdefault(outcome.node, {})[outcome.request_id] = outcome.request
                if outcome.first:
                    label = f"{outcome.node}|{outcome.mode}"
                    decided[label] = decided.get(label, 0) + 1
            elif isinstance(outcome, Deferred):
                deferred[outcome.request] = outcome.release_at
                held += 1
                if outcome.input_key is not None:
                    wait_s = max(outcome.release_at - time.time(), 0.0)
                    write("EXPIRE", outcome.input_key,
                          int(wait_s + self.settings.input_ttl_s))
            elif isinstance(outcome, Rejected):
                script_keys, args = delivery_call(
                    outcome.request_id, error_result(outcome.request_id, outcome.error),
                    expires_s=int(self.app.conf.result_expires or 3600))
                await DELIVER(pipe, script_keys, args)  # queued: EVALSHA in the MULTI
                writes.append((f"the result of {outcome.request_id}", None, None))
            elif isinstance(outcome, DeadLetter):
                write("XADD", keys.DEAD_LETTER_STREAM,
                      {"ts": repr(time.time()), "source": "request stream",
                       "entry": outcome.entry_id, "error": outcome.error.message},
                      maxlen=10_000, approximate=True)
        for node, messages in queued.items():
            write("LPUSH", keys.node_queue(node), *messages)  # in order: consumers pop right
            write("HSET", keys.assigned_key(node), mapping=assigned[node])
            write("HINCRBY", keys.IN_FLIGHT, node, len(messages), field=node)
        for label, n in decided.items():
            write("HINCRBY", keys.DECISIONS, label, n, field=label)
        if deferred:
            write("ZADD", keys.DEFERRED, deferred)
            write("INCRBY", keys.DEFERRED_TOTAL, held)
        write("XACK", keys.REQUEST_STREAM, keys.DISPATCH_GROUP, *ids)
        write("XDEL", keys.REQUEST_STREAM, *ids)
        replies = await pipe.execute(raise_on_error=False)
        failed = [(w, e) for w, e in zip(writes, replies, strict=True)
                  if isinstance(e, Exception)]
        for (key, expected, field), error in failed:
            await self._repair(r, key, expected, field, error)

    async def _repair(self, r: aioredis.Redis, key: str, expected: str | None,
                      field: str | None, error: Exception) -> None:
        """A command of the dispatch MULTI failed on what someone left in its key (the
        others were applied: MULTI does not roll back). Repair it for the next batch."""
        if is_wrong_type(error) and expected is not None:
            await move_aside(r, key, expected, self.rejections)
        elif is_not_a_number(error) and field is not None:
            bad = await r.hget(key, field)
            if bad is None:
                return
            if key == keys.IN_FLIGHT:
                await reset_in_flight(r, field, bad, self.rejections)
            else:
                await reset_field(r, key, field, bad, "", self.rejections, "counter")
        else:
            self.rejections.reject("dispatch-write", key, str(error)[:200])

    def _route(self, pipeline: Pipeline, entry_id: bytes, fields: dict) -> Outcome:
        """Where an entry goes, or the error to answer it with (or to dead-letter it with,
        when it has no request id to answer)."""
        outcome = pipeline.route(entry_id, fields, self.cluster)
        if isinstance(outcome, Routed):
            self.dispatched += 1
        elif isinstance(outcome, (Rejected, DeadLetter)):
            self.rejected += 1
        return outcome

    async def _refresh_spend(self, r: aioredis.Redis) -> None:
        """Tenants' spend this period, re-read as often as the node view."""
        now = time.time()
        if not self._budgets or now - self._spent_at < self.settings.view_refresh_s:
            return
        key = keys.budget_spend_key(period_index(now, self.settings.carbon_budget_period_s))
        try:
            raw = await r.hgetall(key)
        except redis.ResponseError as e:
            if not is_wrong_type(e):
                raise
            await move_aside(r, key, "hash", self.rejections)
            raw = {}
        spent = {}
        for raw_tenant, raw_grams in raw.items():
            tenant, grams = text(raw_tenant), parse_amount(raw_grams)
            if tenant is None:
                self.rejections.reject("budget", raw_tenant, "tenant name is not UTF-8")
            elif grams is None:  # agents cannot add to it either: start it again
                await reset_field(r, key, raw_tenant, raw_grams, "", self.rejections, "budget")
            else:
                spent[tenant] = grams
        self.cluster.spent = spent
        self._spent_at = now

    # -- telemetry ---------------------------------------------------------------------

    async def _refresh_view(self, r: aioredis.Redis, *, force: bool = False) -> None:
        now = time.time()
        cluster = self.cluster
        if not force and cluster.view is not None and \
                now - cluster.view_at < self.settings.view_refresh_s:
            return
        telemetry = await self.telemetry.read(r, now)
        snapshots = telemetry.snapshots()
        cluster = self.cluster
        cluster.known_nodes.update(telemetry.known)
        cluster.snapshots = {s.node_id: s for s in snapshots}
        cluster.forecasts = {n: {ORACLE_FORECAST: b.ci_forecast, **b.forecasts}
                             for n, b in telemetry.beats.items()}
        cluster.quarantined = telemetry.quarantined
        cluster.set_view(ClusterView.build(snapshots, now=now,
                                           ttl_s=self.settings.heartbeat_ttl_s), now)

    async def _sync_in_flight(self, r: aioredis.Redis, raw: Any = None) -> None:
        """Re-read in-flight counts for every batch (``raw``: as read with it).

        A producer that waits for each result submits its next request within a
        millisecond; agents release their count before they publish a result, so a
        count read now is exact, where one cached for even a few milliseconds would
        show the last request still running and push the next one elsewhere.
        """
        if raw is None:
            try:
                raw = await r.hgetall(keys.IN_FLIGHT)
            except redis.ResponseError as e:
                raw = e
        elif isinstance(raw, Exception) and not isinstance(raw, redis.ResponseError):
            raise raw
        counts = await self.telemetry.counts(r, raw)
        view = self.cluster.view
        if view is None:
            return
        for node_id, count in counts.items():
            if node_id in view:
                view.add_in_flight(node_id, max(count, 0) - view.in_flight(node_id))

    # -- housekeeping ------------------------------------------------------------------

    async def _ensure_group(self, r: aioredis.Redis) -> None:
        try:
            await r.xgroup_create(keys.REQUEST_STREAM, keys.DISPATCH_GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if is_wrong_type(e):  # no request can be in a key that is not a stream
                await move_aside(r, keys.REQUEST_STREAM, "stream", self.rejections)
                await self._ensure_group(r)
            elif "BUSYGROUP" not in str(e):
                raise

    async def _reclaim(self, r: aioredis.Redis) -> None:
        """Dispatch entries left pending by this name or by a consumer idle too long."""
        await self._ensure_group(r)  # a restarted Redis may have lost the group
        own = await r.xreadgroup(keys.DISPATCH_GROUP, self.name, {keys.REQUEST_STREAM: "0"},
                                 count=10_000)
        entries = [e for e in (own[0][1] if own else []) if e[1]]
        start = "0-0"
        while True:
            start, claimed, *_ = await r.xautoclaim(keys.REQUEST_STREAM, keys.DISPATCH_GROUP,
                                                    self.name, CLAIM_IDLE_MS, start, count=1000)
            entries.extend(e for e in claimed if e[1])
            if start in (b"0-0", "0-0"):
                break
        if entries:
            log.info("reclaiming %d pending request(s)", len(entries))
            await self.handle(r, entries)

    async def _beat(self, r: aioredis.Redis, stop: asyncio.Event) -> None:
        """Beat (for watchdogs and `carbonedge status`) and publish the rejection counts."""
        while not stop.is_set():
            try:
                await self._beat_once(r)
            except redis.RedisError as e:
                log.warning("dispatcher heartbeat failed: %s", e)
            await asyncio.sleep(self.settings.heartbeat_interval_s)

    async def _beat_once(self, r: aioredis.Redis, *, again: bool = True) -> None:
        pipe = r.pipeline(transaction=False)
        pipe.hset(keys.DISPATCHER_ALIVE, self.name, repr(time.time()))
        pending = self.rejections.take_pending()
        for field, n in pending.items():
            pipe.hincrby(keys.REJECTED, field, n)
        replies = await pipe.execute(raise_on_error=False)
        written = [keys.DISPATCHER_ALIVE, *[keys.REJECTED] * len(pending)]
        wrong = {k for k, reply in zip(written, replies, strict=True)
                 if isinstance(reply, redis.ResponseError) and is_wrong_type(reply)}
        for key in wrong:
            await move_aside(r, key, "hash", self.rejections)
        if wrong and again:  # beat now, not an interval late
            await self._beat_once(r, again=False)


def run_dispatcher(settings: Settings,
                   setup: Callable[[Dispatcher], None] | None = None) -> None:
    """Run one dispatcher until SIGINT/SIGTERM."""
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        dispatcher = Dispatcher(settings)
        if setup is not None:  # e.g. metrics hooks
            setup(dispatcher)
        log.info("dispatcher %s reading %s", dispatcher.name, keys.REQUEST_STREAM)
        await dispatcher.run(stop)

    asyncio.run(main())
