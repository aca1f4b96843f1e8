"""The dispatcher: reads requests from the stream, asks the scheduler, publishes to a node.

A stream entry is acknowledged (and deleted) only after its task was published or its
error result stored, so a dispatcher killed mid-batch leaves its entries pending for the
next one to reclaim. Node telemetry is re-read every ``view_refresh_s``; between refreshes
each dispatch bumps the chosen node's in-flight count locally so bursts spread out.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
from celery import Celery

from carbonedge.broker.celery_app import make_celery_app
from carbonedge.broker.deferral import DeferralReleaser, plan_for, wants_deferral
from carbonedge.broker.delivery import DELIVER_LUA, delivery_call
from carbonedge.broker.partition_route import PartitionRouter
from carbonedge.broker.publish import encode_task_message
from carbonedge.broker.recovery import Watchdog
from carbonedge.carbon.forecast import DEFAULT_FORECASTER, get_forecaster
from carbonedge.errors import (
    CarbonEdgeError,
    DispatchFailed,
    InvalidMessage,
    NoNodeAvailable,
    UnknownModel,
    UnknownNode,
)
from carbonedge.partitioner.catalog import MODEL_NAMES
from carbonedge.protocol import keys
from carbonedge.protocol.messages import error_result, pack, unpack, validate_request
from carbonedge.protocol.telemetry import ORACLE_FORECAST, Heartbeat
from carbonedge.scheduler import ClusterView, Decision, NodeSnapshot, select, weights_for
from carbonedge.scheduler.budgets import BudgetVerdict, judge, parse_budgets, period_index
from carbonedge.scheduler.slo import apply_latency_slo
from carbonedge.settings import Settings

log = logging.getLogger(__name__)

CLAIM_IDLE_MS = 30_000
"""Entries pending this long on another consumer are taken over (that consumer died)."""


@dataclass(frozen=True, slots=True)
class _Routed:
    node: str
    mode: str
    message: bytes
    request_id: str
    request: bytes
    """The request as submitted: what is re-dispatched if the node dies."""


@dataclass(frozen=True, slots=True)
class _Deferred:
    request_id: str
    request: bytes
    """The request to put back on the stream at ``release_at``."""
    release_at: float
    input_key: str | None
    """Its detached input, which must outlive the wait."""


@dataclass(frozen=True, slots=True)
class _Rejected:
    request_id: str
    error: CarbonEdgeError


class Dispatcher:
    """One dispatcher process (several may share the consumer group)."""

    def __init__(self, settings: Settings, *, app: Celery | None = None,
                 name: str | None = None) -> None:
        self.settings = settings
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.app = app or make_celery_app(settings)
        self._view: ClusterView | None = None
        self._view_at = 0.0
        self._known_nodes: set[str] = set()
        self._snapshots: dict[str, NodeSnapshot] = {}
        self._bad_heartbeats: set[str] = set()
        self._forecasts: dict[str, dict[str, tuple[tuple[float, float], ...]]] = {}
        """Each live node's published intensity steps, by forecaster name."""
        self.releaser = DeferralReleaser()
        self._budgets = parse_budgets(settings.carbon_budgets)
        self._spent: dict[str, float] = {}
        self._spent_at = 0.0
        self.dispatched = 0
        self.rejected = 0
        self.partitions = PartitionRouter(max_payload_bytes=settings.max_payload_bytes)
        self.on_decision: Callable[[str, float], None] | None = None
        """Called with (mode, seconds) after each decision (the metrics histogram)."""

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set."""
        r = aioredis.Redis.from_url(self.settings.redis_url, socket_timeout=10)
        try:
            await self._reclaim(r)
            beat = asyncio.create_task(self._beat(r, stop))
            watchdog = asyncio.create_task(Watchdog(self.settings, self.name, self.handle)
                                           .run(r, stop))
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

    async def step(self, r: aioredis.Redis, *, block_ms: int = 0) -> int:
        """Read one batch of new requests and dispatch it; returns how many were handled."""
        try:
            reply = await r.xreadgroup(keys.DISPATCH_GROUP, self.name, {keys.REQUEST_STREAM: ">"},
                                       count=self.settings.dispatch_batch, block=block_ms or None)
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            await self._ensure_group(r)
            return 0
        entries = reply[0][1] if reply else []
        if entries:
            await self.handle(r, entries)
        return len(entries)

    # -- dispatching -------------------------------------------------------------------

    async def handle(self, r: aioredis.Redis, entries: Iterable[tuple[bytes, dict]]) -> None:
        """Route a batch, then publish, count and acknowledge it in one round trip.

        Entries are acknowledged in the same MULTI as their tasks are pushed, recorded in
        their node's ``ce:assigned`` registry (for re-dispatch if it dies) and errors are
        delivered: either all of that happened, or none did and the entries stay pending
        for a dispatcher to reclaim.
        """
        await self._refresh_view(r)
        await self._sync_in_flight(r)
        await self._refresh_spend(r)
        entries = list(entries)
        await self.partitions.prepare(r, entries, sorted(self._snapshots))
        pipe = r.pipeline(transaction=True)
        ids = []
        for entry_id, fields in entries:
            ids.append(entry_id)
            outcome = self._route(entry_id, fields)
            if isinstance(outcome, _Routed):
                pipe.lpush(keys.node_queue(outcome.node), outcome.message)
                pipe.hset(keys.assigned_key(outcome.node), outcome.request_id, outcome.request)
                pipe.hincrby(keys.IN_FLIGHT, outcome.node, 1)
                pipe.hincrby(keys.DECISIONS, f"{outcome.node}|{outcome.mode}", 1)
            elif isinstance(outcome, _Deferred):
                pipe.zadd(keys.DEFERRED, {outcome.request: outcome.release_at})
                pipe.incr(keys.DEFERRED_TOTAL)
                if outcome.input_key is not None:
                    wait_s = max(outcome.release_at - time.time(), 0.0)
                    pipe.expire(outcome.input_key, int(wait_s + self.settings.input_ttl_s))
            elif isinstance(outcome, _Rejected):
                script_keys, args = delivery_call(
                    outcome.request_id, error_result(outcome.request_id, outcome.error),
                    expires_s=int(self.app.conf.result_expires or 3600))
                pipe.eval(DELIVER_LUA, len(script_keys), *script_keys, *args)
        pipe.xack(keys.REQUEST_STREAM, keys.DISPATCH_GROUP, *ids)
        pipe.xdel(keys.REQUEST_STREAM, *ids)
        await pipe.execute()

    def _route(self, entry_id: bytes, fields: dict) -> _Routed | _Deferred | _Rejected | None:
        """Where an entry goes, or the error to answer it with (None: dead-lettered)."""
        req_id = None
        try:
            raw = fields.get(keys.REQUEST_FIELD.encode(), b"")
            request = unpack(raw, max_bytes=self.settings.max_payload_bytes)
            req_id = request.get("id") if isinstance(request.get("id"), str) else None
            validate_request(request)
            verdict = self._budget_verdict(request)
            if wants_deferral(request):
                deferred = self._defer(request)
                if deferred is not None:
                    return deferred
            attempt = _attempt(fields, self.settings.max_attempts)
            started = time.perf_counter()
            decision = self._decide(request)
            mode = str(request.get("mode") or self.settings.default_mode).lower()
            if self.on_decision is not None:
                self.on_decision(mode, time.perf_counter() - started)
            slo = None
            if request.get("latency_slo_ms") is not None:
                decision, slo = apply_latency_slo(decision, float(request["latency_slo_ms"]))
            wire = decision.to_wire(explain=decision.candidates <= self.settings.explain_max_nodes)
            if slo is not None:
                wire["slo"] = slo
            if verdict is not None:
                wire["budget"] = verdict.to_wire()
            request.update(node=decision.node_id, dispatched_at=time.time(), decision=wire,
                           counted=True, mode=mode, attempt=attempt)
            node, task = decision.node_id, keys.TASK_BY_KIND[request.get("kind", "infer")]
            if PartitionRouter.wants(request):  # split across nodes: the first segment's
                first = self.partitions.apply(request, self._live_snapshots(), node)
                if first is not None:
                    node, task = first, keys.TASK_INFER_SEGMENT
            message = encode_task_message(self.app, task, request, task_id=request["id"],
                                          queue=keys.node_queue(node),
                                          ignore_result=task == keys.TASK_INFER_SEGMENT)
        except Exception as e:  # one bad request must not take the dispatcher down
            error = e if isinstance(e, CarbonEdgeError) else DispatchFailed(
                f"{type(e).__name__}: {e}")
            if not isinstance(e, CarbonEdgeError):
                log.exception("request %s could not be dispatched", req_id or entry_id)
            self.rejected += 1
            log.warning("request %s rejected: %s", req_id or entry_id, error)
            if req_id is None:
                self._dead_letter(entry_id, error)
                return None
            return _Rejected(req_id, error)
        self._view.add_in_flight(node, 1)  # type: ignore[union-attr]
        self.dispatched += 1
        return _Routed(node, mode, message, request["id"], raw)

    def _budget_verdict(self, request: dict[str, Any]) -> BudgetVerdict | None:
        """Refuse a tenant over its carbon budget; route one near it in Green mode."""
        period = self.settings.carbon_budget_period_s
        verdict = judge(request.get("tenant"), self._budgets, self._spent,
                        period_ends_at=(period_index(time.time(), period) + 1) * period)
        if verdict is not None and verdict.force_green:
            request["mode"] = "green"
            request.pop("weights", None)
        return verdict

    async def _refresh_spend(self, r: aioredis.Redis) -> None:
        """Tenants' spend this period, re-read as often as the node view."""
        now = time.time()
        if not self._budgets or now - self._spent_at < self.settings.view_refresh_s:
            return
        key = keys.budget_spend_key(period_index(now, self.settings.carbon_budget_period_s))
        raw = await r.hgetall(key)
        self._spent = {k.decode(): float(v) for k, v in raw.items()}
        self._spent_at = now

    def _defer(self, request: dict[str, Any]) -> _Deferred | None:
        """Hold ``request`` for a lower-carbon slot before its deadline, if there is one."""
        live = self._live_snapshots()
        forecaster = request.get("forecast") or DEFAULT_FORECASTER
        get_forecaster(forecaster)  # an unknown name is refused, listing the known ones
        plan = plan_for(request, time.time(),
                        {s.node_id: self._forecasts.get(s.node_id, {}).get(forecaster, ())
                         for s in live},
                        {s.node_id: s.carbon_intensity for s in live},
                        settle_s=self.settings.heartbeat_interval_s + self.settings.view_refresh_s)
        if not plan.deferred:
            return None
        held = {**request, "deferred_until": plan.release_at,
                "deferral": {"now_g_per_kwh": plan.now_g_per_kwh,
                             "release_g_per_kwh": plan.release_g_per_kwh,
                             "forecast": forecaster}}
        log.info("request %s deferred %.0f s: %.0f -> %.0f g/kWh", request["id"],
                 plan.release_at - time.time(), plan.now_g_per_kwh, plan.release_g_per_kwh)
        input_key = keys.input_key(request["id"]) if request.get("input_ref") is True else None
        return _Deferred(request["id"], pack(held), plan.release_at, input_key)

    def _live_snapshots(self) -> list[NodeSnapshot]:
        view = self._view
        return [self._snapshots[n] for n in view.node_ids] if view is not None else []

    def _decide(self, request: dict[str, Any]) -> Decision:
        if request.get("kind", "infer") == "infer" and request["model"] not in MODEL_NAMES:
            raise UnknownModel(f"unknown model {request['model']!r}; known: {sorted(MODEL_NAMES)}",
                               field="model")
        weights = weights_for(request.get("mode"), request.get("weights"),
                              default_mode=self.settings.default_mode)
        view = self._view
        if view is None or len(view) == 0:
            raise NoNodeAvailable("no live node agent: every heartbeat has expired or none "
                                  "was ever received (is `carbonedge up` running?)")
        pinned = request.get("node")
        if pinned is not None:
            if pinned not in view.node_ids:
                if pinned in self._known_nodes:
                    raise NoNodeAvailable(f"node {pinned!r} is not alive (heartbeat expired)",
                                          field="node")
                raise UnknownNode(f"unknown node {pinned!r}; live nodes: {view.node_ids}",
                                  field="node")
            view = ClusterView.build([self._snapshots[pinned]], now=self._view_at,
                                     ttl_s=self.settings.heartbeat_ttl_s)
        normalisation = request.get("normalisation") or self.settings.normalisation
        return select(view, request.get("model") or "", weights, normalisation)

    def _dead_letter(self, entry_id: bytes, error: CarbonEdgeError) -> None:
        client = self.app.backend.client
        client.xadd(keys.DEAD_LETTER_STREAM, {"ts": repr(time.time()), "entry": entry_id,
                                              "error": error.message}, maxlen=10_000)

    # -- telemetry ---------------------------------------------------------------------

    async def _refresh_view(self, r: aioredis.Redis, *, force: bool = False) -> None:
        now = time.time()
        if not force and self._view is not None and now - self._view_at < self.settings.view_refresh_s:
            return
        node_ids = sorted(m.decode() for m in await r.smembers(keys.NODES))
        pipe = r.pipeline(transaction=False)
        for node_id in node_ids:
            pipe.hgetall(keys.node_key(node_id))
        pipe.hgetall(keys.IN_FLIGHT)
        *beats, in_flight = await pipe.execute()
        counts = {k.decode(): int(v) for k, v in in_flight.items()}
        snapshots = []
        forecasts: dict[str, dict[str, tuple[tuple[float, float], ...]]] = {}
        for node_id, raw in zip(node_ids, beats, strict=True):
            if not raw:
                continue
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            try:
                beat = Heartbeat.from_fields(fields, now=now)
                if beat.node_id != node_id:
                    raise InvalidMessage(f"heartbeat under {node_id} names {beat.node_id}")
                if not node_allowed(node_id, self.settings.node_allowlist):
                    raise UnknownNode(f"node {node_id} is not in node_allowlist", field="node")
            except CarbonEdgeError as e:
                if node_id not in self._bad_heartbeats:
                    log.error("ignoring invalid heartbeat of %s: %s", node_id, e)
                    self._bad_heartbeats.add(node_id)
                continue
            self._bad_heartbeats.discard(node_id)
            snapshots.append(beat.to_snapshot(counts.get(node_id, 0)))
            forecasts[node_id] = {ORACLE_FORECAST: beat.ci_forecast, **beat.forecasts}
        self._known_nodes.update(node_ids)
        self._snapshots = {s.node_id: s for s in snapshots}
        self._forecasts = forecasts
        self._view = ClusterView.build(snapshots, now=now, ttl_s=self.settings.heartbeat_ttl_s)
        self._view_at = now

    async def _sync_in_flight(self, r: aioredis.Redis) -> None:
        """Re-read in-flight counts for every batch.

        A producer that waits for each result submits its next request within a
        millisecond; agents release their count before they publish a result, so a
        count read now is exact, where one cached for even a few milliseconds would
        show the last request still running and push the next one elsewhere.
        """
        counts = await r.hgetall(keys.IN_FLIGHT)
        view = self._view
        if view is None:
            return
        for raw_id, raw_count in counts.items():
            node_id = raw_id.decode()
            if node_id in view:
                view.add_in_flight(node_id, max(int(raw_count), 0) - view.in_flight(node_id))

    # -- housekeeping ------------------------------------------------------------------

    async def _ensure_group(self, r: aioredis.Redis) -> None:
        try:
            await r.xgroup_create(keys.REQUEST_STREAM, keys.DISPATCH_GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
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
        while not stop.is_set():
            try:
                await r.hset(keys.DISPATCHER_ALIVE, self.name, repr(time.time()))
            except redis.RedisError as e:
                log.warning("dispatcher heartbeat failed: %s", e)
            await asyncio.sleep(self.settings.heartbeat_interval_s)


def node_allowed(node_id: str, allowlist: str) -> bool:
    """Whether ``node_id`` matches the comma-separated ids or patterns (empty: all do)."""
    patterns = [p.strip() for p in allowlist.split(",") if p.strip()]
    return not patterns or any(fnmatch.fnmatchcase(node_id, p) for p in patterns)


def _attempt(fields: dict, max_attempts: int) -> int:
    """Which dispatch of the request this is (1 unless its node died while holding it)."""
    try:
        attempt = int(fields.get(b"a", b"0")) + 1
    except ValueError:
        raise InvalidMessage("stream entry field 'a' (attempt) must be an integer",
                             field="a") from None
    if attempt > max_attempts:
        raise DispatchFailed(f"request given up after {attempt - 1} node(s) died while "
                             f"holding it (max_attempts={max_attempts})")
    return attempt


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
