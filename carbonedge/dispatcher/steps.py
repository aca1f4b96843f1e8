"""The steps of routing, one job each (see :mod:`carbonedge.dispatcher.routing`).

validate -> budget -> defer -> attempt -> select -> SLO -> partition -> enqueue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from celery import Celery

from carbonedge.carbon.forecast import DEFAULT_FORECASTER, get_forecaster
from carbonedge.dispatcher.deferral import plan_for
from carbonedge.dispatcher.model_choice import choose_model
from carbonedge.dispatcher.partition_route import PartitionRouter
from carbonedge.dispatcher.routing import Cluster, Deferred, Routed, Routing, Step
from carbonedge.errors import DispatchFailed, InvalidMessage, NoNodeAvailable, UnknownNode
from carbonedge.partitioner.catalog import Catalogue, candidates
from carbonedge.protocol import keys
from carbonedge.protocol.messages import CHOICE_FIELDS, unpack_entry
from carbonedge.protocol.request import Request
from carbonedge.protocol.untrusted import parse_count
from carbonedge.scheduler import ClusterView, Decision, Weights, select, weights_for
from carbonedge.scheduler.budgets import judge, period_index
from carbonedge.scheduler.slo import apply_latency_slo
from carbonedge.settings import Settings
from carbonedge.transport.publish import TaskEncoder

log = logging.getLogger(__name__)

__all__ = ["Attempt", "Budget", "Defer", "Enqueue", "Partition", "Select", "Slo", "Validate",
           "default_steps"]


@dataclass(frozen=True, slots=True)
class Validate:
    """Decode the entry's request once and type it; its id is known before validation,
    so even an invalid request is answered."""

    max_bytes: int

    def __call__(self, routing: Routing, cluster: Cluster) -> None:
        raw, msg = unpack_entry(routing.fields, max_bytes=self.max_bytes)
        req_id = msg.get("id")
        routing.request_id = req_id if isinstance(req_id, str) else None
        routing.raw = raw
        routing.request = routing.submitted = Request.from_wire(msg)
        routing.wire = msg


@dataclass(frozen=True, slots=True)
class Budget:
    """Refuse a tenant over its carbon budget; route one near it in Green mode."""

    budgets: Mapping[str, float]
    period_s: float

    def __call__(self, routing: Routing, cluster: Cluster) -> None:
        request = routing.req
        if request.tenant is None or not self.budgets:
            return
        period_ends_at = (period_index(time.time(), self.period_s) + 1) * self.period_s
        verdict = judge(request.tenant, self.budgets, cluster.spent,
                        period_ends_at=period_ends_at)
        routing.budget = verdict
        if verdict is not None and verdict.force_green:
            routing.request = replace(request, mode="green", weights=None)


@dataclass(frozen=True, slots=True)
class Defer:
    """Hold a request with a deadline for a lower-carbon slot before it, if there is one."""

    settle_s: float
    """How long after its slot begins a held request is released (telemetry catches up)."""

    def __call__(self, routing: Routing, cluster: Cluster) -> Deferred | None:
        request = routing.req
        if not request.wants_deferral:
            return None
        forecaster = request.forecast or DEFAULT_FORECASTER
        get_forecaster(forecaster)  # an unknown name is refused, listing the known ones
        live = cluster.live
        plan = plan_for(request, time.time(),
                        {s.node_id: cluster.forecasts.get(s.node_id, {}).get(forecaster, ())
                         for s in live},
                        {s.node_id: s.carbon_intensity for s in live}, settle_s=self.settle_s)
        if not plan.deferred:
            return None
        held = replace(request, deferred_until=plan.release_at,
                       deferral={"now_g_per_kwh": plan.now_g_per_kwh,
                                 "release_g_per_kwh": plan.release_g_per_kwh,
                                 "forecast": forecaster})
        log.info("request %s deferred %.0f s: %.0f -> %.0f g/kWh", request.id,
                 plan.release_at - time.time(), plan.now_g_per_kwh, plan.release_g_per_kwh)
        input_key = keys.input_key(request.id) if request.input_ref else None
        return Deferred(request.id, held.pack(), plan.release_at, input_key)


@dataclass(frozen=True, slots=True)
class Attempt:
    """Which dispatch of the request this is (1 unless its node died while holding it);
    give up after ``max_attempts``."""

    max_attempts: int

    def __call__(self, routing: Routing, cluster: Cluster) -> None:
        raw = routing.fields.get(b"a")
        if raw is None:  # (most requests: their first dispatch)
            return
        count = parse_count(raw)
        if count is None or count < 0:
            raise InvalidMessage("stream entry field 'a' (attempt) must be an integer",
                                 field="a")
        attempt = count + 1
        if attempt > self.max_attempts:
            raise DispatchFailed(f"request given up after {attempt - 1} node(s) died while "
                                 f"holding it (max_attempts={self.max_attempts})")
        routing.attempt = attempt


class Select:
    """The node (and, for a request that leaves it to the broker, the model)."""

    def __init__(self, models: Catalogue, *, default_mode: str, normalisation: str,
                 heartbeat_ttl_s: float,
                 on_decision: Callable[[], Callable[[str, float], None] | None] = lambda: None
                 ) -> None:
        self.models = models
        self.default_mode = default_mode
        self.normalisation = normalisation
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.on_decision = on_decision
        """Returns the callback given (mode, seconds) after each decision, if any."""
        self._weights: dict[str | None, Weights] = {}
        """Weights by mode: looked up once, not per request."""

    def __call__(self, routing: Routing, cluster: Cluster) -> None:
        request = routing.req
        started = time.perf_counter()
        routing.decision = self._decide(routing, request, cluster)
        routing.mode = request.label(self.default_mode)
        callback = self.on_decision()
        if callback is not None:
            callback(routing.mode, time.perf_counter() - started)

    def _weights_of(self, request: Request) -> Weights:
        if request.weights is not None:
            return weights_for(request.mode, request.weights, default_mode=self.default_mode)
        mode = request.mode
        weights = self._weights.get(mode) if isinstance(mode, str) or mode is None else None
        if weights is None:
            weights = weights_for(mode, None, default_mode=self.default_mode)
            if len(self._weights) < 64 and (mode is None or isinstance(mode, str)):
                # a bounded cache: modes are few, garbage is not
                self._weights[mode] = weights
        return weights

    def _decide(self, routing: Routing, request: Request, cluster: Cluster) -> Decision:
        choosing = request.wants_choice
        if request.kind == "infer" and not choosing:
            self.models.get(request.model or "")  # UnknownModel listing the declared ones
        weights = self._weights_of(request)
        view = cluster.view
        if view is None or len(view) == 0:
            raise NoNodeAvailable("no live node agent: every heartbeat has expired or none "
                                  "was ever received (is `carbonedge up` running?)")
        pinned = request.node
        if pinned is not None:
            view = self._pinned(pinned, view, cluster)
        normalisation = request.normalisation or self.normalisation
        if choosing:  # the model too: least carbon under the accuracy floor and the SLO
            choice = choose_model(
                view, candidates(self.models, family=request.family,
                                 min_accuracy=request.min_accuracy,
                                 input_shape=(list(request.input_shape)
                                              if request.input_shape is not None else None)),
                weights, normalisation, slo_ms=request.latency_slo_ms)
            routing.model, routing.model_choice = choice.model, choice.explanation
            return choice.decision
        routing.model = request.model
        return select(view, request.model or "", weights, normalisation)

    def _pinned(self, pinned: str, view: ClusterView, cluster: Cluster) -> ClusterView:
        if pinned not in view.node_ids:
            held = cluster.quarantined.get(pinned)
            if held is not None:
                raise NoNodeAvailable(f"node {pinned!r} is quarantined until "
                                      f"{time.strftime('%H:%M:%S', time.localtime(held.until))}"
                                      f": {held.reason}", field="node")
            if pinned in cluster.known_nodes:
                raise NoNodeAvailable(f"node {pinned!r} is not alive (heartbeat expired)",
                                      field="node")
            raise UnknownNode(f"unknown node {pinned!r}; live nodes: {view.node_ids}",
                              field="node")
        return ClusterView.build([cluster.snapshots[pinned]], now=cluster.view_at,
                                 ttl_s=self.heartbeat_ttl_s)


@dataclass(frozen=True, slots=True)
class Slo:
    """Re-target the decision to the least-carbon node predicted to meet the latency SLO."""

    def __call__(self, routing: Routing, cluster: Cluster) -> None:
        slo_ms = routing.req.latency_slo_ms
        if slo_ms is not None and routing.decision is not None:
            routing.decision, routing.slo = apply_latency_slo(routing.decision, float(slo_ms))


@dataclass(frozen=True, slots=True)
class Partition:
    """Split a request that asks for it across nodes: its task goes to the first segment's."""

    router: PartitionRouter

    def __call__(self, routing: Routing, cluster: Cluster) -> None:
        request = routing.req
        if not request.wants_route or routing.decision is None:
            return
        outcome = self.router.apply(request, cluster.live, routing.decision.node_id,
                                    model=routing.model)
        routing.route = dict(outcome.fields)
        if outcome.first_node is not None:
            routing.node, routing.task = outcome.first_node, keys.TASK_INFER_SEGMENT


class Enqueue:
    """Build the node's task message and count the request in flight there."""

    def __init__(self, app: Celery, explain_max_nodes: int) -> None:
        self.encode = TaskEncoder(app)
        self.explain_max_nodes = explain_max_nodes

    def __call__(self, routing: Routing, cluster: Cluster) -> Routed:
        request, decision = routing.req, routing.decision
        if decision is None or cluster.view is None:
            raise DispatchFailed("no node was selected")
        wire = decision.to_wire(explain=decision.candidates <= self.explain_max_nodes)
        if routing.model_choice is not None:
            wire["model_choice"] = routing.model_choice
        if routing.slo is not None:
            wire["slo"] = routing.slo
        if routing.budget is not None:
            wire["budget"] = routing.budget.to_wire()
        # the map as decoded while the request is the one submitted: not encoded again
        payload = dict(routing.wire) if request is routing.submitted else request.to_wire()
        if routing.model is not None:  # the task runs the chosen model (the decision says why)
            for name in (*CHOICE_FIELDS, "input_shape"):
                payload.pop(name, None)
            payload["model"] = routing.model
        payload.update(node=decision.node_id, dispatched_at=time.time(), decision=wire,
                       counted=True, mode=routing.mode, attempt=routing.attempt)
        payload.update(routing.route)
        node = routing.node or decision.node_id
        task = routing.task or keys.TASK_BY_KIND[request.kind]
        message = self.encode(task, payload, task_id=request.id, queue=keys.node_queue(node))
        cluster.view.add_in_flight(node, 1)
        return Routed(node, routing.mode, message, request.id, routing.raw,
                      first=routing.attempt == 1)


def default_steps(settings: Settings, *, models: Catalogue, app: Celery,
                  partitions: PartitionRouter, budgets: Mapping[str, float],
                  on_decision: Callable[[], Callable[[str, float], None] | None]
                  ) -> list[Step]:
    """The dispatcher's routing, in order."""
    return [
        Validate(settings.max_payload_bytes),
        Budget(budgets, settings.carbon_budget_period_s),
        Defer(settle_s=settings.heartbeat_interval_s + settings.view_refresh_s),
        Attempt(settings.max_attempts),
        Select(models, default_mode=settings.default_mode, normalisation=settings.normalisation,
               heartbeat_ttl_s=settings.heartbeat_ttl_s, on_decision=on_decision),
        Slo(),
        Partition(partitions),
        Enqueue(app, settings.explain_max_nodes),
    ]
