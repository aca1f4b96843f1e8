"""The typed task: what an agent runs, a request as the dispatcher routed it.

A task message's one argument is the request's wire map plus the fields the dispatcher
(or the node that ran the previous segment) adds: the node it was routed to, when, the
decision, whether it is counted in the node's in-flight work, the attempt, and for a
partitioned request the segment, the plan and the hops so far. :meth:`Task.from_wire`
validates all of it once (the error names the field) and types it; after that nothing
reads the map by string key. A task is immutable: the next segment's is made with
:func:`dataclasses.replace`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from carbonedge.errors import InvalidMessage
from carbonedge.protocol.messages import require
from carbonedge.protocol.request import Request, frozen, thawed

__all__ = ["Task"]


@dataclass(frozen=True, slots=True)
class Task:
    """One request (or one segment of a partitioned request) for an agent to run."""

    request: Request
    node: str | None = None
    """The node the dispatcher routed it to (None: sent to a queue directly)."""
    dispatched_at: float | None = None
    """When it was queued for this node (by the dispatcher, or by the previous segment)."""
    decision: Mapping[str, Any] | None = None
    """The scheduler's decision, as the result reports it."""
    counted: bool = False
    """The dispatcher counted it in the node's in-flight work and registry."""
    attempt: int = 1
    """Which dispatch of the request this is (a node that died holding it adds one)."""
    segment: int | None = None
    """The index in ``request.route`` of the segment to run (partitioned requests)."""
    plan: Mapping[str, Any] | None = None
    """Why the route was chosen (partitioned requests)."""
    hops: tuple[Mapping[str, Any], ...] = ()
    """The segments run so far, each as the final result's ``segments`` entry."""

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def input_held(self) -> bool:
        """A partitioned request's stored input stays until the request ends (a request
        re-dispatched when a later node dies starts again from it)."""
        return self.segment is not None and self.request.input_ref

    def model_to_run(self) -> str:
        """The model it runs (a request that left the model to the broker has it from the
        dispatcher); InvalidMessage when it names none."""
        if self.request.model is None:
            raise InvalidMessage("missing field 'model'", field="model")
        return self.request.model

    @classmethod
    def from_wire(cls, msg: Any) -> Task:
        """Validate a task payload and type it; InvalidMessage/InvalidRequest name the
        field. A segment after the first carries no input (it reads its activation)."""
        if not isinstance(msg, Mapping):
            raise InvalidMessage(f"task payload must be a map, got {type(msg).__name__}")
        own = {k: msg[k] for k in _TASK_FIELDS if k in msg}
        segment = own.get("segment")
        if segment is not None:
            require(own, "segment", int)
            if segment < 0:
                raise InvalidMessage("field 'segment' must be >= 0", field="segment")
        request = Request.from_wire({k: v for k, v in msg.items() if k not in _TASK_FIELDS},
                                    input_required=not segment)
        return cls(request=request, **_checked(own))

    def to_wire(self) -> dict[str, Any]:
        """The task payload (what :meth:`from_wire` reads back to an equal task)."""
        out = self.request.to_wire()
        for name, default in _TASK_DEFAULTS.items():
            value = getattr(self, name)
            if value != default:
                out[name] = thawed(value)
        return out

    def next_segment(self, hops: tuple[Mapping[str, Any], ...], dispatched_at: float) -> Task:
        """The task of the segment after this one: no input inline (it reads its
        activation), the hops so far."""
        assert self.segment is not None
        return replace(self, request=replace(self.request, input=None),
                       segment=self.segment + 1, hops=hops, dispatched_at=dispatched_at)


_TASK_DEFAULTS = {f.name: f.default for f in fields(Task) if f.name != "request"}
"""The task's own fields and their defaults (a field at its default does not travel)."""
_TASK_FIELDS = tuple(_TASK_DEFAULTS)


def _checked(own: dict[str, Any]) -> dict[str, Any]:
    """The task's own fields, type-checked, as the dataclass takes them."""
    if own.get("node") is not None:
        require(own, "node", str)
    at = own.get("dispatched_at")
    if at is not None and (isinstance(at, bool) or not isinstance(at, (int, float))
                           or not math.isfinite(at) or at <= 0):
        raise InvalidMessage("field 'dispatched_at' must be a positive time", field="dispatched_at")
    for name in ("decision", "plan"):
        if own.get(name) is not None:
            require(own, name, dict)
    if "counted" in own:
        require(own, "counted", bool)
    if "attempt" in own:
        if require(own, "attempt", int) < 1:
            raise InvalidMessage("field 'attempt' must be >= 1", field="attempt")
    if "hops" in own:
        hops = require(own, "hops", list)
        if not all(isinstance(h, dict) for h in hops):
            raise InvalidMessage("field 'hops' must be a list of maps", field="hops")
    return {k: frozen(v) for k, v in own.items() if v is not None}
