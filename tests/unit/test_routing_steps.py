"""The dispatcher's routing steps, each on its own, and the pipeline that runs them."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from typing import Any

import msgpack
import pytest

from carbonedge.client.requests import build_request
from carbonedge.dispatcher.partition_route import PartitionRouter
from carbonedge.dispatcher.routing import (
    Cluster,
    DeadLetter,
    Deferred,
    Pipeline,
    Rejected,
    Routed,
    Routing,
    for_want_of_a_node,
)
from carbonedge.dispatcher.steps import (
    Attempt,
    Budget,
    Defer,
    Enqueue,
    Partition,
    Select,
    Slo,
    Validate,
    default_steps,
)
from carbonedge.errors import (
    CarbonBudgetExceeded,
    DispatchFailed,
    InvalidMessage,
    InvalidRequest,
    NoNodeAvailable,
    UnknownModel,
    UnknownNode,
)
from carbonedge.partitioner.catalog import default_catalogue
from carbonedge.protocol import keys
from carbonedge.protocol.messages import pack
from carbonedge.protocol.request import Request
from carbonedge.protocol.task import Task
from carbonedge.scheduler import ClusterView, NodeSnapshot
from carbonedge.settings import Settings
from carbonedge.transport.celery_app import make_celery_app

TENSOR = {"dtype": "float32", "shape": [1, 3, 224, 224], "data": b""}
SETTINGS = Settings.load(env={}, redis_url="redis://127.0.0.1:1/0")  # never connected to


def _snapshot(node_id: str, ci: float, quota: float = 1.0, in_flight: int = 0) -> NodeSnapshot:
    return NodeSnapshot(node_id=node_id, cpu_quota=quota, mem_limit_bytes=1 << 30,
                        mem_used_bytes=0, cpu_util=0.0, power_w=5.0, active_power_w=4 * quota,
                        carbon_intensity=ci, in_flight=in_flight,
                        exec_ms={"mobilenetv2": 45 / quota}, heartbeat_ts=time.time())


def _cluster(*snapshots: NodeSnapshot, **fields: Any) -> Cluster:
    cluster = Cluster(snapshots={s.node_id: s for s in snapshots}, **fields)
    now = time.time()
    cluster.set_view(ClusterView.build(snapshots, now=now, ttl_s=30.0), now)
    return cluster


def _three() -> Cluster:
    return _cluster(_snapshot("node-high", 620.0, 1.0), _snapshot("node-medium", 530.0, 0.6),
                    _snapshot("node-green", 380.0, 0.4))


def _routing(request: dict[str, Any], **fields: bytes) -> Routing:
    routing = Routing(b"1-0", {keys.REQUEST_FIELD.encode(): pack(request), **{
        k.encode(): v for k, v in fields.items()}})
    Validate(1 << 24)(routing, Cluster())
    return routing


def _select() -> Select:
    return Select(default_catalogue(), default_mode="balanced", normalisation="minmax",
                  heartbeat_ttl_s=30.0)


# -- validate ----------------------------------------------------------------------------

def test_validate_decodes_once_and_keeps_the_id_of_an_invalid_request() -> None:
    wire = build_request(kind="ping", mode="green")
    routing = _routing(wire)
    assert routing.request == Request.from_wire(wire) and routing.wire == wire
    assert routing.raw == pack(wire) and routing.request_id == wire["id"]
    bad = Routing(b"1-0", {keys.REQUEST_FIELD.encode(): pack({**wire, "tenant": "a b"})})
    with pytest.raises(InvalidRequest) as info:
        Validate(1 << 24)(bad, Cluster())
    assert info.value.field == "tenant" and bad.request_id == wire["id"]


# -- budget ------------------------------------------------------------------------------

def test_budget_routes_a_tenant_near_it_in_green_mode_without_touching_the_request() -> None:
    routing = _routing(build_request(kind="ping", tenant="ann", mode="performance",
                                     weights=[1, 1, 1, 1, 1]))
    submitted = routing.request
    Budget({"ann": 10.0}, 3600.0)(routing, _cluster(spent={"ann": 9.0}))
    assert routing.req.mode == "green" and routing.req.weights is None
    assert submitted is not None and submitted.mode == "performance"
    assert routing.budget is not None and routing.budget.force_green


def test_budget_refuses_a_tenant_over_it_and_ignores_unbudgeted_ones() -> None:
    over = _routing(build_request(kind="ping", tenant="ann"))
    with pytest.raises(CarbonBudgetExceeded):
        Budget({"ann": 10.0}, 3600.0)(over, _cluster(spent={"ann": 10.5}))
    free = _routing(build_request(kind="ping", tenant="bob"))
    Budget({"ann": 10.0}, 3600.0)(free, _cluster(spent={"bob": 1e9}))
    assert free.budget is None and free.request is free.submitted


# -- defer -------------------------------------------------------------------------------

def test_defer_holds_a_request_for_a_greener_slot_before_its_deadline() -> None:
    now = time.time()
    cluster = _three()
    cluster.forecasts = {"node-green": {"oracle": ((now - 10, 380.0), (now + 600, 50.0))}}
    routing = _routing(build_request(kind="ping", deadline_s=3600.0))
    outcome = Defer(settle_s=1.0)(routing, cluster)
    assert isinstance(outcome, Deferred) and now + 600 < outcome.release_at < now + 610
    held = Request.unpack(outcome.request, max_bytes=1 << 20)
    assert held.deferred_until == outcome.release_at and not held.wants_deferral
    assert held.deferral is not None and held.deferral["release_g_per_kwh"] == 50.0
    assert routing.req.deferred_until is None  # the request itself is unchanged


def test_defer_lets_through_requests_without_a_deadline_or_a_better_slot() -> None:
    assert Defer(1.0)(_routing(build_request(kind="ping")), _three()) is None
    assert Defer(1.0)(_routing(build_request(kind="ping", deadline_s=60.0)), _three()) is None


def test_defer_refuses_an_unknown_forecaster_listing_the_known_ones() -> None:
    routing = _routing(build_request(kind="ping", deadline_s=60.0, forecast="nostradamus"))
    with pytest.raises(Exception, match="persistence"):
        Defer(1.0)(routing, _three())


# -- attempt -----------------------------------------------------------------------------

def test_attempt_counts_redispatches_and_gives_up_after_the_limit() -> None:
    first = _routing(build_request(kind="ping"))
    Attempt(3)(first, Cluster())
    assert first.attempt == 1
    again = _routing(build_request(kind="ping"), a=b"2")
    Attempt(3)(again, Cluster())
    assert again.attempt == 3
    with pytest.raises(DispatchFailed, match="max_attempts=3"):
        Attempt(3)(_routing(build_request(kind="ping"), a=b"3"), Cluster())
    with pytest.raises(InvalidMessage) as info:
        Attempt(3)(_routing(build_request(kind="ping"), a=b"x"), Cluster())
    assert info.value.field == "a"


# -- select ------------------------------------------------------------------------------

def test_select_follows_the_mode() -> None:
    green = _routing(build_request(kind="ping", mode="green"))
    _select()(green, _three())
    assert green.decision is not None and green.decision.node_id == "node-green"
    assert green.mode == "green"
    fast = _routing(build_request(model="mobilenetv2", tensor=TENSOR, mode="performance"))
    _select()(fast, _three())
    assert fast.decision is not None and fast.decision.node_id == "node-high"
    assert fast.model == "mobilenetv2"


def test_select_reports_each_decision() -> None:
    seen: list[tuple[str, float]] = []
    step = Select(default_catalogue(), default_mode="balanced", normalisation="minmax",
                  heartbeat_ttl_s=30.0, on_decision=lambda: lambda m, s: seen.append((m, s)))
    step(_routing(build_request(kind="ping", weights=[1, 0, 0, 0, 0])), _three())
    assert [m for m, _ in seen] == ["custom"] and seen[0][1] >= 0


def test_select_refuses_unknown_models_and_nodes_and_an_empty_cluster() -> None:
    with pytest.raises(UnknownModel):
        _select()(_routing(build_request(model="nope", tensor=TENSOR)), _three())
    with pytest.raises(UnknownNode) as unknown:
        _select()(_routing(build_request(kind="ping", node="node-x")), _three())
    assert unknown.value.field == "node"
    cluster = _three()
    cluster.known_nodes = {"node-dead"}
    with pytest.raises(NoNodeAvailable, match="not alive") as dead:
        _select()(_routing(build_request(kind="ping", node="node-dead")), cluster)
    assert dead.value.field == "node"
    with pytest.raises(NoNodeAvailable, match="no live node agent"):
        _select()(_routing(build_request(kind="ping")), Cluster())


def test_select_honours_a_pinned_node() -> None:
    routing = _routing(build_request(kind="ping", mode="green", node="node-high"))
    _select()(routing, _three())
    assert routing.decision is not None and routing.decision.node_id == "node-high"


def test_select_chooses_the_model_for_a_request_that_leaves_it_to_the_broker() -> None:
    routing = _routing(build_request(tensor=TENSOR, min_accuracy=70.0))
    _select()(routing, _three())
    assert routing.model is not None and routing.model_choice is not None
    assert routing.model_choice["model"] == routing.model and routing.req.model is None


# -- SLO, partition ----------------------------------------------------------------------

def test_slo_retargets_to_a_node_that_meets_it() -> None:
    routing = _routing(build_request(model="mobilenetv2", tensor=TENSOR, mode="green",
                                     latency_slo_ms=60.0))
    _select()(routing, _three())
    Slo()(routing, _three())
    assert routing.decision is not None and routing.decision.node_id == "node-high"
    assert routing.slo is not None and routing.slo["slo_ms"] == 60.0
    plain = _routing(build_request(kind="ping"))
    Slo()(plain, _three())
    assert plain.slo is None


def test_partition_leaves_whole_requests_alone_and_needs_profiles_for_splits() -> None:
    router = PartitionRouter(models=["mobilenetv2"])
    whole = _routing(build_request(model="mobilenetv2", tensor=TENSOR))
    _select()(whole, _three())
    Partition(router)(whole, _three())
    assert whole.node is None and whole.route == {}
    split = _routing(build_request(model="mobilenetv2", tensor=TENSOR, partition=2))
    _select()(split, _three())
    with pytest.raises(InvalidRequest, match="no block profile"):
        Partition(router)(split, _three())


# -- enqueue -----------------------------------------------------------------------------

def _payload(message: bytes) -> dict[str, Any]:
    envelope = json.loads(message)
    args, _, _ = msgpack.unpackb(base64.b64decode(envelope["body"]), raw=False)
    return args[0]


def test_enqueue_builds_the_task_and_counts_it_in_flight() -> None:
    cluster = _three()
    routing = _routing(build_request(kind="ping", mode=" Green "))
    _select()(routing, cluster)
    outcome = Enqueue(make_celery_app(SETTINGS), 8)(routing, cluster)
    assert isinstance(outcome, Routed) and outcome.node == "node-green" and outcome.first
    assert cluster.view is not None and cluster.view.in_flight("node-green") == 1
    task = Task.from_wire(_payload(outcome.message))  # what the agent reads
    assert task.node == "node-green" and task.request.mode == "green"
    assert task.attempt == 1 and task.counted is True and task.segment is None
    assert task.decision is not None and task.decision["node_id"] == "node-green"
    assert task.id == outcome.request_id and task.request.kind == "ping"
    assert outcome.request == routing.raw


def test_enqueue_sends_a_derived_request_and_the_chosen_model() -> None:
    cluster = _three()
    routing = _routing(build_request(tensor=TENSOR, min_accuracy=70.0, tenant="ann",
                                     mode="performance"))
    Budget({"ann": 10.0}, 3600.0)(routing, _cluster(spent={"ann": 9.0}))
    _select()(routing, cluster)
    task = Task.from_wire(_payload(Enqueue(make_celery_app(SETTINGS), 8)(routing, cluster).message))
    assert task.model_to_run() == routing.model and task.request.mode == "green"
    assert task.decision is not None
    assert task.decision["model_choice"]["model"] == routing.model
    assert task.decision["budget"]["force_green"] is True
    assert task.request.tenant == "ann" and task.request.input is not None


# -- the pipeline ------------------------------------------------------------------------

def _entry(request: dict[str, Any]) -> dict[bytes, bytes]:
    return {keys.REQUEST_FIELD.encode(): pack(request)}


def _pipeline(*extra: Any) -> Pipeline:
    steps = default_steps(SETTINGS, models=default_catalogue(), app=make_celery_app(SETTINGS),
                          partitions=PartitionRouter(), budgets={}, on_decision=lambda: None)
    steps[-1:-1] = extra
    return Pipeline(steps)


def test_the_pipeline_routes_refuses_and_dead_letters() -> None:
    pipeline = _pipeline()
    routed = pipeline.route(b"1-0", _entry(build_request(kind="ping", mode="green")), _three())
    assert isinstance(routed, Routed) and routed.node == "node-green"
    wire = build_request(kind="ping")
    refused = pipeline.route(b"1-1", _entry({**wire, "kind": "train"}), _three())
    assert isinstance(refused, Rejected) and refused.request_id == wire["id"]
    assert refused.error.field == "kind"
    anonymous = pipeline.route(b"1-2", {b"junk": b"x"}, _three())
    assert isinstance(anonymous, DeadLetter) and anonymous.entry_id == b"1-2"
    alone = pipeline.route(b"1-3", _entry(build_request(kind="ping")), Cluster())
    assert for_want_of_a_node(alone) and not for_want_of_a_node(refused)


def test_a_policy_plugs_in_as_a_step() -> None:
    def no_pings_for_eve(routing: Routing, cluster: Cluster) -> None:
        if routing.req.tenant == "eve":
            raise InvalidRequest("eve may not ping", field="tenant")

    def always_green(routing: Routing, cluster: Cluster) -> None:
        routing.request = dataclasses.replace(routing.req, mode="green")

    pipeline = _pipeline()
    pipeline = Pipeline([*pipeline.steps[:1], no_pings_for_eve, always_green,
                         *pipeline.steps[1:]])
    refused = pipeline.route(b"1-0", _entry(build_request(kind="ping", tenant="eve")),
                             _three())
    assert isinstance(refused, Rejected) and refused.error.field == "tenant"
    routed = pipeline.route(b"1-1", _entry(build_request(kind="ping", mode="performance")),
                            _three())
    assert isinstance(routed, Routed) and routed.node == "node-green"
    assert _payload(routed.message)["mode"] == "green"


def test_a_step_that_fails_unexpectedly_refuses_only_its_request() -> None:
    def broken(routing: Routing, cluster: Cluster) -> None:
        raise ZeroDivisionError("oops")

    outcome = _pipeline(broken).route(b"1-0", _entry(build_request(kind="ping")), _three())
    assert isinstance(outcome, Rejected) and isinstance(outcome.error, DispatchFailed)
    assert "ZeroDivisionError" in outcome.error.message
