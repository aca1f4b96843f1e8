"""The dispatcher's side of partitioned requests: from a request's options to a route.

Block costs come from the profiles agents store under ``ce:blocks:<model>:<node>``
(each block's share of the model's time, averaged over the nodes that profiled it, and
its output bytes); node speeds from telemetry (the model's service time, else the
node's own profile). Plans are pure (:mod:`carbonedge.partitioner.plans`); they are
cached per model, options and topology version (the live nodes with their speed, power
and carbon intensity rounded to two significant digits), so a steady cluster plans a
model once; a cached plan's predictions are those of the telemetry it was made from.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from carbonedge.errors import CarbonEdgeError, InvalidRequest, NoNodeAvailable
from carbonedge.partitioner.catalog import DEFAULT_MODELS
from carbonedge.partitioner.plans import BlockCost, Link, Plan, PlanNode
from carbonedge.partitioner.routing import choose_route
from carbonedge.protocol import keys
from carbonedge.protocol.messages import unpack
from carbonedge.protocol.request import Request
from carbonedge.protocol.routes import Route, check_partition
from carbonedge.scheduler import NodeSnapshot

log = logging.getLogger(__name__)

__all__ = ["PARTITION_LINK", "PartitionOutcome", "PartitionRouter"]

PARTITION_LINK = Link(bandwidth_bytes_per_ms=300_000.0, latency_ms=2.0)
"""What one cut costs through Redis on one host, measured by ``benchmarks/bench_partition.py``:
a fixed hand-off (serialise, MULTI, queue pick-up) plus the activation's bytes."""
REFRESH_S = 2.0
"""How often the block profiles are re-read while partitioned requests arrive."""
PLAN_CACHE_SIZE = 512
_MARKERS = (b"\xa9partition", b"\xa5route")
"""The msgpack keys ``partition`` and ``route``: a request that has neither is not read."""


@dataclass(frozen=True, slots=True)
class PartitionOutcome:
    """Where a partitioned request starts, and what its task payload gains."""

    first_node: str | None
    """The first segment's node; None when the request is served whole."""
    fields: Mapping[str, Any] = field(default_factory=dict)
    """``route``, ``segment`` and ``plan`` (or only ``plan``, saying why it is whole)."""


def _valid_blocks(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A profile's blocks, each with a finite ``time_ms`` >= 0 and ``activation_bytes``."""
    blocks = record.get("blocks")
    if not isinstance(blocks, list) or not blocks:
        raise InvalidRequest("profile has no list of blocks")
    for b in blocks:
        t = b.get("time_ms") if isinstance(b, dict) else None
        size = b.get("activation_bytes") if isinstance(b, dict) else None
        if (not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t)
                or t < 0 or not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise InvalidRequest("a block lacks a finite time_ms >= 0 or an integer "
                                 "activation_bytes >= 0")
    return blocks


def _round2(x: float) -> float:
    return float(f"{x:.2g}")


class PartitionRouter:
    """Turns partitioned requests into routes (one per dispatcher)."""

    def __init__(self, *, link: Link = PARTITION_LINK, max_payload_bytes: int = 1 << 24,
                 models: Sequence[str] = DEFAULT_MODELS) -> None:
        self.link = link
        self.models = sorted(models)
        """The declared models, whose profiles are read."""
        self._max_bytes = max_payload_bytes
        self._profiles: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self._read_at = 0.0
        self._plans: dict[tuple[Any, ...], tuple[Plan | None, str]] = {}
        self._bad: dict[tuple[str, str], str] = {}
        """Malformed profiles seen, with why (each is logged once)."""

    # -- profiles ----------------------------------------------------------------------

    async def prepare(self, r: aioredis.Redis, entries: Iterable[tuple[bytes, dict]],
                      node_ids: Sequence[str]) -> None:
        """Re-read the block profiles if a request of the batch asks for partitioning and
        they are older than :data:`REFRESH_S`."""
        if time.monotonic() - self._read_at < REFRESH_S:
            return
        field = keys.REQUEST_FIELD.encode()
        if any(m in fields.get(field, b"") for _, fields in entries for m in _MARKERS):
            await self.refresh(r, node_ids)

    async def refresh(self, r: aioredis.Redis, node_ids: Sequence[str]) -> None:
        """Read every node's profile of every model."""
        models = self.models
        pipe = r.pipeline(transaction=False)
        for model in models:
            for node in node_ids:
                pipe.get(keys.block_profile_key(model, node))
        raw = await pipe.execute(raise_on_error=False)
        profiles: dict[str, dict[str, list[dict[str, Any]]]] = {}
        it = iter(raw)
        for model in models:
            for node in node_ids:
                data = next(it)
                if data is None:
                    continue
                try:
                    if isinstance(data, Exception):
                        raise InvalidRequest(f"unreadable: {data}")
                    blocks = _valid_blocks(unpack(data, max_bytes=self._max_bytes))
                except CarbonEdgeError as e:
                    if self._bad.get((model, node)) != e.message:
                        log.warning("ignoring a malformed block profile of %s on %s: %s",
                                    model, node, e)
                    self._bad[model, node] = e.message
                    continue
                self._bad.pop((model, node), None)
                profiles.setdefault(model, {})[node] = blocks
        self._profiles = profiles
        self._read_at = time.monotonic()

    def block_costs(self, model: str) -> list[BlockCost] | None:
        """Each block's mean share of the model's time over the nodes that profiled it."""
        per_node = [b for b in self._profiles.get(model, {}).values() if b]
        if not per_node:
            return None
        n = len(per_node[0])
        per_node = [b for b in per_node if len(b) == n]
        shares = [0.0] * n
        for blocks in per_node:
            total = sum(b["time_ms"] for b in blocks) or 1.0
            for i, b in enumerate(blocks):
                shares[i] += b["time_ms"] / total / len(per_node)
        return [BlockCost(max(s, 0.0), int(b["activation_bytes"]))
                for s, b in zip(shares, per_node[0], strict=True)]

    def plan_nodes(self, model: str, snapshots: Iterable[NodeSnapshot]) -> list[PlanNode]:
        """Live nodes with a speed for ``model``: 1 / its service time (telemetry, else the
        node's own profile); block costs are shares of the model's time."""
        nodes = []
        own = self._profiles.get(model, {})
        for s in snapshots:
            exec_ms = s.exec_ms.get(model)
            if exec_ms is None and own.get(s.node_id):
                exec_ms = sum(b["time_ms"] for b in own[s.node_id])
            if exec_ms is None or not math.isfinite(exec_ms) or exec_ms <= 0:
                continue
            nodes.append(PlanNode(s.node_id, speed=1.0 / exec_ms, power_w=s.active_power_w,
                                  carbon_intensity=s.carbon_intensity, pue=s.pue))
        return nodes

    # -- routing -----------------------------------------------------------------------

    def apply(self, request: Request, snapshots: Sequence[NodeSnapshot], selected: str, *,
              model: str | None = None) -> PartitionOutcome:
        """The route of ``request`` (of ``model``, by default its own) and its first node;
        no first node when it is served whole on ``selected``."""
        model = model or request.model or ""
        costs = self.block_costs(model)
        live = {s.node_id for s in snapshots}
        if request.route is not None:
            if costs is None:
                raise self._no_profile(model)
            route = Route.from_wire(request.route, len(costs))
            for seg in route.segments:
                if seg.node not in live:
                    raise NoNodeAvailable(f"route node {seg.node!r} is not alive; live nodes: "
                                          f"{sorted(live)}", field="route")
            plan, reason = None, "route given by the request"
        else:
            partition = check_partition(request.partition if request.partition is not None
                                        else "none")
            if costs is None:
                if partition == "auto":
                    return PartitionOutcome(None)
                raise self._no_profile(model)
            nodes = self.plan_nodes(model, snapshots)
            if partition == "auto" and selected not in {n.node_id for n in nodes}:
                return PartitionOutcome(None)
            # a request's latency SLO bounds its plan too, unless it gives a bound of its own
            bound = (request.latency_bound_ms if request.latency_bound_ms is not None
                     else request.latency_slo_ms)
            plan, reason = self._plan(model, partition, costs, nodes, selected, bound)
            if plan is None:
                return PartitionOutcome(None, {"plan": {"reason": reason}})
            route = plan.route()
        return PartitionOutcome(route[0].node, {
            "route": route.to_wire(), "segment": 0,
            "plan": {"reason": reason, **(plan.to_wire() if plan else {})}})

    def _plan(self, model: str, partition: str | int, costs: list[BlockCost],
              nodes: list[PlanNode], selected: str,
              bound: float | None) -> tuple[Plan | None, str]:
        # the topology version: numbers that jitter from beat to beat do not re-plan
        version = tuple((n.node_id, _round2(n.speed), _round2(n.power_w),
                         _round2(n.carbon_intensity), _round2(n.pue)) for n in nodes)
        key = (model, partition, selected, bound, version)
        cached = self._plans.get(key)
        if cached is None:
            cached = choose_route(partition, costs, nodes, selected=selected,
                                  latency_bound_ms=bound, link=self.link)
            if len(self._plans) >= PLAN_CACHE_SIZE:
                self._plans.clear()
            self._plans[key] = cached
        return cached

    @staticmethod
    def _no_profile(model: str) -> InvalidRequest:
        return InvalidRequest(
            f"model {model!r} has no block profile: no live agent could split it (agents "
            "profile their models at start-up; one with no block flattener is served whole)",
            field="partition")
