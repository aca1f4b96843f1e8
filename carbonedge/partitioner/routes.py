"""Routes of partitioned requests, and the policy that picks one.

A :class:`Route` is the executable part of a plan: which node runs which contiguous block
range, in order. It travels in every segment's task, so each agent knows its own range
and where to hand the activation on. :func:`choose_route` turns a request's ``partition``
option into a route (or ``None``: serve the request whole, task-level).

Pure: no torch, no Redis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from carbonedge.errors import InvalidRequest
from carbonedge.partitioner.plans import (
    MAX_PERMUTED_SEGMENTS,
    BlockCost,
    Link,
    Plan,
    PlanNode,
    balanced_plan,
    green_plan,
    monolithic_plan,
)

__all__ = [
    "AUTO_CARBON_MARGIN",
    "PARTITION_CHOICES",
    "Route",
    "RouteSegment",
    "check_partition",
    "choose_route",
]

PARTITION_CHOICES = ("none", "auto", "green")
"""The named values of a request's ``partition`` option (besides a segment count)."""
MAX_SEGMENTS = 16
AUTO_CARBON_MARGIN = 0.10
"""``auto`` splits a request only when the split saves at least this share of carbon."""


@dataclass(frozen=True, slots=True)
class RouteSegment:
    """Blocks ``[start, stop)`` of the model run on ``node``."""

    node: str
    start: int
    stop: int

    def to_wire(self) -> dict[str, Any]:
        return {"node": self.node, "start": self.start, "stop": self.stop}


@dataclass(frozen=True, slots=True)
class Route:
    """Contiguous segments covering blocks ``[0, n)``, each on a different node."""

    segments: tuple[RouteSegment, ...]

    @property
    def n_blocks(self) -> int:
        return self.segments[-1].stop

    def __len__(self) -> int:
        return len(self.segments)

    def __getitem__(self, index: int) -> RouteSegment:
        return self.segments[index]

    def to_wire(self) -> list[dict[str, Any]]:
        return [s.to_wire() for s in self.segments]

    @classmethod
    def from_plan(cls, plan: Plan) -> Route:
        return cls(tuple(RouteSegment(s.node_id, s.start, s.stop) for s in plan.segments))

    @classmethod
    def from_wire(cls, wire: Any, n_blocks: int | None = None) -> Route:
        """Parse and check a route; with ``n_blocks`` it must cover exactly that many.

        Raises :class:`InvalidRequest` on ``route`` naming what is wrong.
        """
        if not isinstance(wire, Sequence) or isinstance(wire, (str, bytes)) or not wire:
            raise InvalidRequest("route must be a non-empty list of {node, start, stop}",
                                 field="route")
        if len(wire) > MAX_SEGMENTS:
            raise InvalidRequest(f"route has {len(wire)} segments; at most {MAX_SEGMENTS}",
                                 field="route")
        segments = []
        for i, item in enumerate(wire):
            if isinstance(item, Mapping):
                node, start, stop = item.get("node"), item.get("start"), item.get("stop")
            elif isinstance(item, Sequence) and not isinstance(item, (str, bytes)) and len(item) == 3:
                node, start, stop = item
            else:
                raise InvalidRequest(f"route[{i}] must be {{node, start, stop}}", field="route")
            if not isinstance(node, str) or not node:
                raise InvalidRequest(f"route[{i}].node must be a node id", field="route")
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, stop)):
                raise InvalidRequest(f"route[{i}] start and stop must be integers", field="route")
            segments.append(RouteSegment(node, start, stop))
        expected = 0
        for i, seg in enumerate(segments):
            if seg.start != expected or seg.stop <= seg.start:
                raise InvalidRequest(
                    f"route[{i}] is [{seg.start}, {seg.stop}); segments must be non-empty and "
                    f"contiguous from block 0 (expected start {expected})", field="route")
            expected = seg.stop
        nodes = [s.node for s in segments]
        if len(set(nodes)) != len(nodes):
            raise InvalidRequest(f"route visits a node twice: {nodes}", field="route")
        if n_blocks is not None and expected != n_blocks:
            raise InvalidRequest(
                f"route ends at block {expected} but the model has {n_blocks} blocks",
                field="route")
        return cls(tuple(segments))


def check_partition(value: Any) -> str | int:
    """A request's ``partition`` option, checked: ``"none"``, ``"auto"``, ``"green"`` or
    a segment count ``k >= 1``."""
    if isinstance(value, str) and value.lower() in PARTITION_CHOICES:
        return value.lower()
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SEGMENTS:
        return value
    raise InvalidRequest(
        f"partition must be one of {', '.join(PARTITION_CHOICES)} or a segment count "
        f"1..{MAX_SEGMENTS}, got {value!r}", field="partition")


def choose_route(
    partition: str | int,
    blocks: Sequence[BlockCost],
    nodes: Sequence[PlanNode],
    *,
    selected: str,
    latency_bound_ms: float | None = None,
    link: Link,
) -> tuple[Plan | None, str]:
    """The plan a request runs (``None``: serve it whole on ``selected``) and why.

    - a count ``k``: ``1`` runs every block on ``selected`` through the segment path
      (a baseline for the cost of that path); ``k >= 2`` is the balanced plan over
      exactly ``k`` nodes (least bottleneck),
    - ``green``: least carbon over up to three nodes within ``latency_bound_ms``
      (default: the predicted latency of ``selected`` alone),
    - ``auto``: the green plan, taken only if it has at least two segments and saves
      at least :data:`AUTO_CARBON_MARGIN` of the carbon of ``selected`` alone;
      a bound no plan meets falls back to ``selected`` too.
    """
    by_id = {n.node_id: n for n in nodes}
    if selected not in by_id:
        raise InvalidRequest(f"node {selected!r} has no speed estimate for this model",
                             field="partition")
    whole = monolithic_plan(blocks, by_id[selected], link=link)
    if partition == "none":
        return None, "partition=none"
    if isinstance(partition, int):
        if partition == 1:
            return whole, "partition=1: every block on the selected node"
        return balanced_plan(blocks, nodes, partition, link=link), f"partition={partition}"
    bound = whole.latency_ms if latency_bound_ms is None else latency_bound_ms
    k_max = min(MAX_PERMUTED_SEGMENTS, len(nodes), len(blocks))
    if partition == "green":
        return green_plan(blocks, nodes, k_max, bound, link=link), "partition=green"
    try:
        plan = green_plan(blocks, nodes, k_max, bound, link=link)
    except InvalidRequest:
        return None, f"auto: no split meets {bound:.3g} ms"
    saving = 1.0 - plan.carbon_g / whole.carbon_g if whole.carbon_g > 0 else 0.0
    if len(plan.segments) >= 2 and saving >= AUTO_CARBON_MARGIN:
        return plan, f"auto: split saves {saving:.0%} carbon within {bound:.3g} ms"
    return None, f"auto: best split saves {saving:.0%} carbon (< {AUTO_CARBON_MARGIN:.0%})"
