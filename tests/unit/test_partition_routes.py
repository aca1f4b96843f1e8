"""Routes, the partition policy and the dispatcher's route building (pure parts)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from carbonedge.client.requests import build_request
from carbonedge.dispatcher.partition_route import PartitionRouter
from carbonedge.errors import InvalidRequest, NoNodeAvailable
from carbonedge.partitioner.plans import BlockCost, Link, PlanNode, monolithic_plan
from carbonedge.partitioner.routing import AUTO_CARBON_MARGIN, choose_route
from carbonedge.protocol.codec import encode_tensor
from carbonedge.protocol.messages import PROTOCOL_VERSION
from carbonedge.protocol.request import Request
from carbonedge.protocol.routes import Route, RouteSegment, check_partition
from carbonedge.scheduler import NodeSnapshot

LINK = Link(bandwidth_bytes_per_ms=1e6, latency_ms=0.5)
BLOCKS = [BlockCost(1.0, 1000) for _ in range(10)]


def _node(node_id: str, speed: float, ci: float, power: float = 10.0) -> PlanNode:
    return PlanNode(node_id, speed=speed, power_w=power, carbon_intensity=ci)


# -- Route ---------------------------------------------------------------------------------


def test_route_round_trips_and_accepts_triples() -> None:
    route = Route.from_wire([("a", 0, 3), {"node": "b", "start": 3, "stop": 10}], 10)
    assert route.segments == (RouteSegment("a", 0, 3), RouteSegment("b", 3, 10))
    assert Route.from_wire(route.to_wire(), 10) == route
    assert route.n_blocks == 10 and len(route) == 2


@pytest.mark.parametrize("wire, needle", [
    ([], "non-empty"),
    ("a", "non-empty"),
    ([("a", 1, 3)], "contiguous from block 0"),
    ([("a", 0, 3), ("b", 4, 10)], "expected start 3"),
    ([("a", 0, 3), ("b", 3, 3)], "non-empty"),
    ([("a", 0, 3), ("a", 3, 10)], "visits a node twice"),
    ([("a", 0, 3.0)], "integers"),
    ([("", 0, 3)], "node id"),
    ([("a", 0, 3)], "has 10 blocks"),
    ([("a", 0)], "{node, start, stop}"),
])
def test_bad_routes_name_the_route_field(wire: object, needle: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        Route.from_wire(wire, 10)
    assert info.value.field == "route"
    assert needle in info.value.message


@pytest.mark.parametrize("value", ["none", "AUTO", "green", 1, 3])
def test_check_partition_accepts(value: object) -> None:
    assert check_partition(value) in ("none", "auto", "green", 1, 3)


@pytest.mark.parametrize("value", ["split", 0, -1, 17, True, 2.0, None])
def test_check_partition_refuses(value: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_partition(value)
    assert info.value.field == "partition"


def test_requests_are_validated_in_the_client() -> None:
    tensor = encode_tensor(np.zeros((1, 3, 224, 224), np.float32))
    request = build_request(model="mobilenetv2", tensor=tensor, partition=2,
                            latency_bound_ms=50)
    assert request["partition"] == 2 and request["latency_bound_ms"] == 50.0
    with pytest.raises(InvalidRequest) as bad:
        build_request(model="mobilenetv2", tensor=tensor, partition="everywhere")
    assert bad.value.field == "partition"
    with pytest.raises(InvalidRequest) as overlap:
        build_request(model="mobilenetv2", tensor=tensor, route=[("a", 0, 5), ("b", 4, 9)])
    assert overlap.value.field == "route"
    with pytest.raises(InvalidRequest) as bound:
        build_request(model="mobilenetv2", tensor=tensor, partition="green",
                      latency_bound_ms=-1)
    assert bound.value.field == "latency_bound_ms"


# -- the policy ----------------------------------------------------------------------------


def test_none_and_one() -> None:
    nodes = [_node("a", 1.0, 500), _node("b", 1.0, 100)]
    assert choose_route("none", BLOCKS, nodes, selected="a", link=LINK)[0] is None
    plan, _ = choose_route(1, BLOCKS, nodes, selected="a", link=LINK)
    assert plan is not None and [(s.node_id, s.start, s.stop) for s in plan.segments] == [
        ("a", 0, 10)]


def test_k_is_the_balanced_plan_over_k_nodes() -> None:
    nodes = [_node("a", 1.0, 500), _node("b", 1.0, 100), _node("c", 1.0, 300)]
    plan, _ = choose_route(3, BLOCKS, nodes, selected="a", link=LINK)
    assert plan is not None and plan.strategy == "balanced"
    assert len({s.node_id for s in plan.segments}) == 3
    with pytest.raises(InvalidRequest):
        choose_route(4, BLOCKS, nodes, selected="a", link=LINK)


def test_auto_splits_only_when_it_saves_enough_carbon() -> None:
    # the scheduler picked a middling node; fast-and-dirty plus slow-and-clean together
    # match its latency with half its carbon
    fast, clean = _node("fast", 2.0, 600), _node("clean", 1.0, 100)
    medium = _node("medium", 1.25, 500)
    plan, reason = choose_route("auto", BLOCKS, [fast, medium, clean], selected="medium",
                                link=LINK)
    whole = monolithic_plan(BLOCKS, medium, link=LINK)
    assert plan is not None, reason
    assert {s.node_id for s in plan.segments} == {"fast", "clean"}
    assert plan.carbon_g <= (1 - AUTO_CARBON_MARGIN) * whole.carbon_g
    assert plan.latency_ms <= whole.latency_ms
    # the fastest node picked: no split is as fast, so the request is served whole
    plan, reason = choose_route("auto", BLOCKS, [fast, medium, clean], selected="fast",
                                link=LINK)
    assert plan is None and reason.startswith("auto")
    # a split that saves under the margin is not worth its hand-offs
    plan, reason = choose_route("auto", BLOCKS, [_node("fast", 2.0, 105), medium,
                                                 _node("clean", 1.0, 100)],
                                selected="fast", latency_bound_ms=9.0, link=LINK)
    assert plan is None and "<" in reason


def test_auto_falls_back_when_no_split_meets_the_bound() -> None:
    nodes = [_node("a", 1.0, 500), _node("b", 1.0, 100)]
    plan, reason = choose_route("auto", BLOCKS, nodes, selected="a", latency_bound_ms=0.1,
                                link=LINK)
    assert plan is None and "no split meets" in reason
    with pytest.raises(InvalidRequest):
        choose_route("green", BLOCKS, nodes, selected="a", latency_bound_ms=0.1, link=LINK)


# -- the dispatcher's router ---------------------------------------------------------------


def _snapshot(node_id: str, exec_ms: dict[str, float], ci: float) -> NodeSnapshot:
    return NodeSnapshot(node_id=node_id, cpu_quota=1.0, mem_limit_bytes=1 << 30,
                        mem_used_bytes=0, cpu_util=0.0, power_w=5.0, active_power_w=10.0,
                        carbon_intensity=ci, in_flight=0, exec_ms=exec_ms,
                        heartbeat_ts=time.time())


def _router(times: dict[str, list[float]]) -> PartitionRouter:
    router = PartitionRouter(link=LINK)
    router._profiles = {"m": {node: [{"time_ms": t, "activation_bytes": 100} for t in ts]
                              for node, ts in times.items()}}
    return router


def test_block_costs_are_mean_time_shares() -> None:
    router = _router({"a": [1.0, 3.0], "b": [2.0, 2.0]})
    costs = router.block_costs("m")
    assert costs is not None
    assert [c.cost for c in costs] == pytest.approx([0.375, 0.625])
    assert router.block_costs("other") is None


def test_node_speed_from_telemetry_else_own_profile() -> None:
    router = _router({"a": [1.0, 3.0], "b": [2.0, 2.0]})
    nodes = router.plan_nodes("m", [_snapshot("a", {"m": 8.0}, 100),
                                     _snapshot("b", {}, 200), _snapshot("c", {}, 300)])
    assert {n.node_id: n.speed for n in nodes} == {"a": 1 / 8.0, "b": 1 / 4.0}


def _request(**fields: object) -> Request:
    return Request.from_wire({"v": PROTOCOL_VERSION, "id": "r", "submitted_at": 1.0,
                              "input": {}, **fields})


def test_apply_adds_route_and_plan() -> None:
    router = _router({"a": [1.0] * 6, "b": [1.0] * 6})
    snaps = [_snapshot("a", {"m": 6.0}, 500), _snapshot("b", {"m": 6.0}, 100)]
    outcome = router.apply(_request(model="m", partition=2), snaps, "a")
    assert outcome.first_node == outcome.fields["route"][0]["node"]
    assert outcome.fields["segment"] == 0 and outcome.fields["plan"]["strategy"] == "balanced"
    assert Route.from_wire(outcome.fields["route"], 6)
    forced = _request(model="m", route=[["b", 0, 2], ["a", 2, 6]])
    assert router.apply(forced, snaps, "a").first_node == "b"
    with pytest.raises(NoNodeAvailable):
        router.apply(_request(model="m", route=[["b", 0, 2], ["x", 2, 6]]), snaps, "a")
    with pytest.raises(InvalidRequest) as missing:
        router.apply(_request(model="n", partition=2), snaps, "a")
    assert "no block profile" in missing.value.message
    whole = router.apply(_request(model="n", partition="auto"), snaps, "a")
    assert whole.first_node is None and not whole.fields
    # a chosen model is planned, not the request's own
    assert router.apply(_request(family="x", partition=2), snaps, "a",
                        model="m").first_node is not None


def test_wants() -> None:
    assert _request(model="m", partition=2).wants_route
    assert _request(model="m", route=[["a", 0, 1]]).wants_route
    assert not _request(model="m", partition="none").wants_route
    assert not _request(model="m").wants_route
    assert not _request(kind="ping", partition=2).wants_route


def test_the_dispatcher_spots_partitioned_requests_without_decoding_them() -> None:
    from carbonedge.dispatcher.partition_route import _MARKERS
    from carbonedge.protocol.messages import pack

    tensor = encode_tensor(np.zeros((1, 3, 224, 224), np.float32))
    for options in ({"partition": 2}, {"partition": "auto"}, {"route": [("a", 0, 21)]}):
        packed = pack(build_request(model="mobilenetv2", tensor=tensor, **options))
        assert any(m in packed for m in _MARKERS)
    plain = pack(build_request(model="mobilenetv2", tensor=tensor))
    assert not any(m in plain for m in _MARKERS)


def test_a_latency_slo_bounds_the_green_plan() -> None:
    router = _router({"a": [1.0] * 6, "b": [1.0] * 6})
    snaps = [_snapshot("a", {"m": 6.0}, 500), _snapshot("b", {"m": 12.0}, 100)]
    loose = _request(model="m", partition="green", latency_slo_ms=100.0)
    assert router.apply(loose, snaps, "a").first_node == "b"  # the clean node alone: 100 ms
    tight = _request(model="m", partition="green", latency_slo_ms=100.0,
                     latency_bound_ms=7.0)
    assert router.apply(tight, snaps, "a").first_node == "a"  # its own bound: a alone (6 ms)
    with pytest.raises(InvalidRequest) as info:
        router.apply(_request(model="m", partition="green", latency_slo_ms=1.0), snaps, "a")
    assert info.value.field == "latency_bound_ms"
