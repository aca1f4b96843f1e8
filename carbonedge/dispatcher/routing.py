"""Routing as a pipeline of small steps: what each step sees, and what routing ends in.

A stream entry goes through the steps in order (see :mod:`carbonedge.dispatcher.steps`:
validate, budget, defer, attempt, select, SLO, partition, enqueue). Each step reads the
typed :class:`~carbonedge.protocol.request.Request` and the batch's :class:`Cluster`,
records what it decided on the entry's :class:`Routing` (never on the request), and either
lets the next step run (returns None) or ends routing with an :data:`Outcome`. A step that
raises refuses the request: the error is answered (:class:`Rejected`) or, for an entry with
no request id to answer, dead-lettered (:class:`DeadLetter`). A new policy is a new step.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from carbonedge.errors import CarbonEdgeError, DispatchFailed, NoNodeAvailable, UnknownNode
from carbonedge.protocol.request import Request
from carbonedge.protocol.untrusted import printable
from carbonedge.scheduler import ClusterView, Decision, NodeSnapshot
from carbonedge.scheduler.budgets import BudgetVerdict

log = logging.getLogger(__name__)

__all__ = ["Cluster", "DeadLetter", "Deferred", "Outcome", "Pipeline", "Rejected", "Routed",
           "Routing", "Step", "for_want_of_a_node"]

MAX_ANSWERED_ID = 1024
"""Longer request ids are not worth an error result (a key named after them): the entry
is dead-lettered instead."""


# -- outcomes ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Routed:
    node: str
    mode: str
    message: bytes
    request_id: str
    request: bytes
    """The request as submitted: what is re-dispatched if the node dies."""
    first: bool
    """Its first dispatch (a re-dispatch after a node died is not a new decision)."""


@dataclass(frozen=True, slots=True)
class Deferred:
    request_id: str
    request: bytes
    """The request to put back on the stream at ``release_at``."""
    release_at: float
    input_key: str | None
    """Its detached input, which must outlive the wait."""


@dataclass(frozen=True, slots=True)
class Rejected:
    request_id: str
    error: CarbonEdgeError


@dataclass(frozen=True, slots=True)
class DeadLetter:
    entry_id: bytes
    error: CarbonEdgeError
    """An entry without a readable request id: nobody can be answered."""


Outcome = Routed | Deferred | Rejected | DeadLetter


def for_want_of_a_node(outcome: object) -> bool:
    """Whether ``outcome`` refused its request because no (or not its pinned) node was
    live in the dispatcher's view."""
    return isinstance(outcome, Rejected) and isinstance(outcome.error,
                                                       (NoNodeAvailable, UnknownNode))


# -- what steps read ---------------------------------------------------------------------

@dataclass(slots=True)
class Cluster:
    """The dispatcher's view of the cluster for one batch (refreshed between batches).

    Steps only read it, except that enqueueing a request counts it in flight on its node
    so the rest of a burst spreads out.
    """

    view: ClusterView | None = None
    view_at: float = 0.0
    snapshots: Mapping[str, NodeSnapshot] = field(default_factory=dict)
    forecasts: Mapping[str, Mapping[str, tuple[tuple[float, float], ...]]] = \
        field(default_factory=dict)
    """Each live node's published intensity steps, by forecaster name."""
    quarantined: Mapping[str, Any] = field(default_factory=dict)
    known_nodes: set[str] = field(default_factory=set)
    spent: Mapping[str, float] = field(default_factory=dict)
    """Tenants' carbon spent this budget period, grams."""
    live: tuple[NodeSnapshot, ...] = ()
    """The live nodes' snapshots, in the view's order."""

    def set_view(self, view: ClusterView, at: float) -> None:
        self.view, self.view_at = view, at
        self.live = tuple(self.snapshots[n] for n in view.node_ids)


@dataclass(slots=True)
class Routing:
    """One entry on its way through the pipeline: its request and what steps decided."""

    entry_id: bytes
    fields: Mapping[Any, Any]
    raw: bytes = b""
    request_id: str | None = None
    """The id to answer an error with, as soon as it is readable (before validation)."""
    request: Request | None = None
    """The request being routed (a step may derive another from it)."""
    submitted: Request | None = None
    """The request as validated, and ``wire``, its map as decoded."""
    wire: Mapping[str, Any] = field(default_factory=dict)
    attempt: int = 1
    budget: BudgetVerdict | None = None
    decision: Decision | None = None
    mode: str = ""
    model: str | None = None
    """The model it runs: its own, or the one chosen for it."""
    model_choice: dict[str, Any] | None = None
    slo: dict[str, Any] | None = None
    node: str | None = None
    """The node its task is queued on (the first segment's, when partitioned)."""
    task: str | None = None
    route: dict[str, Any] = field(default_factory=dict)
    """Route fields for the task payload (``route``, ``segment``, ``plan``)."""

    @property
    def req(self) -> Request:
        """The validated request (a step after validation may rely on it)."""
        assert self.request is not None, "a step ran before the request was validated"
        return self.request


class Step(Protocol):
    """One job of routing: None to go on, an outcome to stop; raise to refuse."""

    def __call__(self, routing: Routing, cluster: Cluster) -> Outcome | None: ...


class Pipeline:
    """Runs an entry through its steps; turns an exception into the refusal it earns."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = tuple(steps)

    def route(self, entry_id: bytes, fields: Mapping[Any, Any], cluster: Cluster) -> Outcome:
        routing = Routing(entry_id, fields)
        try:
            for step in self.steps:
                outcome = step(routing, cluster)
                if outcome is not None:
                    return outcome
        except Exception as e:  # one bad request must not take the dispatcher down
            return _refusal(routing, e)
        return _refusal(routing, DispatchFailed("no step of routing placed the request"))


def _refusal(routing: Routing, e: Exception) -> Rejected | DeadLetter:
    error = e if isinstance(e, CarbonEdgeError) else DispatchFailed(f"{type(e).__name__}: {e}")
    req_id = routing.request_id
    shown = printable(req_id or routing.entry_id)  # ids are the sender's text: escaped
    if not isinstance(e, CarbonEdgeError):
        log.error("request %s could not be dispatched", shown, exc_info=e)
    log.warning("request %s rejected: %s", shown, printable(error, 300))
    if req_id is None or not 0 < len(req_id) <= MAX_ANSWERED_ID:
        return DeadLetter(routing.entry_id, error)
    return Rejected(req_id, error)
