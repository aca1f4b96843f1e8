"""Routes of partitioned requests, as they travel: the wire form and its structural checks.

A :class:`Route` is the executable part of a plan: which node runs which contiguous block
range, in order. It travels in every segment's task, so each agent knows its own range
and where to hand the activation on. A request's ``partition`` option is checked here
(:func:`check_partition`); the partitioner's plans and
:func:`carbonedge.partitioner.routing.choose_route` decide what route it gets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from carbonedge.errors import InvalidRequest

__all__ = [
    "MAX_SEGMENTS",
    "PARTITION_CHOICES",
    "Route",
    "RouteSegment",
    "check_partition",
]

PARTITION_CHOICES = ("none", "auto", "green")
"""The named values of a request's ``partition`` option (besides a segment count)."""
MAX_SEGMENTS = 16


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

