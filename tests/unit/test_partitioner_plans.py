"""Partition plans: the formulas, the strategies, and the DP against exhaustive search."""

from __future__ import annotations

import math
import random
from itertools import combinations, permutations

import msgpack
import pytest

from carbonedge.errors import ConfigError, InvalidMessage, InvalidRequest
from carbonedge.partitioner.plans import (
    BlockCost,
    Link,
    Plan,
    PlanNode,
    balanced_plan,
    block_costs,
    green_plan,
    make_plan,
    monolithic_plan,
    plan_strategies,
    speed_from_profile,
)
from carbonedge.scheduler import NodeSnapshot

FREE = Link(bandwidth_bytes_per_ms=1e12, latency_ms=0.0, energy_j_per_byte=0.0)


def uniform(n: int, cost: float = 10.0, nbytes: int = 1000) -> list[BlockCost]:
    return [BlockCost(cost, nbytes) for _ in range(n)]


def node(
    node_id: str, speed: float = 1.0, power: float = 10.0, ci: float = 400.0, pue: float = 1.0
):
    return PlanNode(node_id, speed=speed, power_w=power, carbon_intensity=ci, pue=pue)


def assert_covers(plan: Plan, n: int) -> None:
    assert plan.segments[0].start == 0
    assert plan.segments[-1].stop == n
    for a, b in zip(plan.segments, plan.segments[1:], strict=False):
        assert a.stop == b.start
    assert all(s.start < s.stop for s in plan.segments)
    ids = [s.node_id for s in plan.segments]
    assert len(set(ids)) == len(ids)
    assert plan.segments[-1].transfer_ms_out == 0.0


def evaluate(blocks, order, cuts, link):
    """(bottleneck, latency, carbon) straight from the formulas, independent of the module."""
    stages, carbon = [], 0.0
    for i, nd in enumerate(order):
        start, stop = cuts[i], cuts[i + 1]
        ms = sum(b.cost for b in blocks[start:stop]) / nd.speed
        joules = nd.power_w * ms / 1000
        carbon += joules / 3.6e6 * nd.carbon_intensity * nd.pue
        if stop < len(blocks):
            nbytes = blocks[stop - 1].activation_bytes
            ms += link.latency_ms + nbytes / link.bandwidth_bytes_per_ms
            carbon += nbytes * link.energy_j_per_byte / 3.6e6 * nd.carbon_intensity
        stages.append(ms)
    return max(stages), sum(stages), carbon


def all_plans(blocks, nodes, k, link):
    n = len(blocks)
    for order in permutations(nodes, k):
        for inner in combinations(range(1, n), k - 1):
            cuts = (0, *inner, n)
            yield order, cuts, evaluate(blocks, order, cuts, link)


def random_instance(rng: random.Random):
    n = rng.randint(1, 8)
    blocks = [
        BlockCost(
            rng.choice([0.0, rng.uniform(0, 50), float(rng.randint(1, 5))]), rng.randint(0, 5000)
        )
        for _ in range(n)
    ]
    nodes = [
        node(
            f"n{i}",
            rng.uniform(0.2, 3.0),
            rng.uniform(1, 40),
            rng.uniform(0, 900),
            rng.choice([1.0, 1.4]),
        )
        for i in range(rng.randint(1, 4))
    ]
    link = Link(rng.choice([100.0, 1e3, 1e6]), rng.choice([0.0, 0.5, 5.0]), rng.choice([0.0, 1e-6]))
    return blocks, nodes, link


def test_monolithic_is_one_segment_over_all_blocks():
    blocks = uniform(7, cost=20.0)
    plan = monolithic_plan(blocks, node("a", speed=2.0, power=36.0, ci=500.0, pue=1.2))
    assert [(s.node_id, s.start, s.stop) for s in plan.segments] == [("a", 0, 7)]
    assert plan.latency_ms == plan.bottleneck_ms == pytest.approx(70.0)
    assert plan.energy_j == pytest.approx(36.0 * 70.0 / 1000)
    assert plan.carbon_g == pytest.approx(36.0 * 0.07 / 3.6e6 * 500.0 * 1.2)
    assert plan.segments[0].transfer_ms_out == 0.0


def test_balanced_two_equal_nodes_split_the_cost_in_half():
    rng = random.Random(3)
    blocks = [BlockCost(rng.uniform(1, 10), 100) for _ in range(40)]
    total = sum(b.cost for b in blocks)
    plan = balanced_plan(blocks, [node("a"), node("b")], 2, link=FREE)
    assert_covers(plan, 40)
    assert len(plan.segments) == 2
    assert total / 2 <= plan.bottleneck_ms <= total / 2 + max(b.cost for b in blocks)


def test_balanced_speeds_two_to_one_put_two_thirds_on_the_fast_node():
    blocks = uniform(30, cost=1.0)
    plan = balanced_plan(blocks, [node("slow", speed=1.0), node("fast", speed=2.0)], 2)
    fast = next(s for s in plan.segments if s.node_id == "fast")
    share = (fast.stop - fast.start) / 30
    assert abs(share - 2 / 3) <= 1 / 30
    assert plan.bottleneck_ms == pytest.approx(10.0, abs=1.0)


def test_transfer_costs_push_the_cut_to_a_small_activation():
    blocks = uniform(10, cost=10.0, nbytes=1_000_000)
    blocks[3] = BlockCost(10.0, 10)  # cutting after block 3 ships 10 bytes, elsewhere 1 MB
    slow_link = Link(bandwidth_bytes_per_ms=1e4, latency_ms=0.5)
    plan = balanced_plan(blocks, [node("a"), node("b")], 2, link=slow_link)
    assert plan.segments[0].stop == 4
    assert plan.segments[0].transfer_ms_out == pytest.approx(0.5 + 10 / 1e4)
    # Without transfer costs the same blocks are cut in the middle.
    assert balanced_plan(blocks, [node("a"), node("b")], 2, link=FREE).segments[0].stop == 5


def test_green_runs_monolithically_on_the_low_carbon_node_when_it_meets_the_bound():
    blocks = uniform(12, cost=10.0)
    nodes = [node("dirty", speed=2.0, ci=600.0), node("green", speed=1.0, ci=50.0)]
    plan = green_plan(blocks, nodes, 2, latency_bound_ms=200.0, link=FREE)
    assert [(s.node_id, s.start, s.stop) for s in plan.segments] == [("green", 0, 12)]
    assert plan.latency_ms == pytest.approx(120.0)


def test_green_splits_when_the_bound_forbids_the_slow_green_node_alone():
    blocks = uniform(12, cost=10.0)
    nodes = [node("dirty", speed=4.0, ci=600.0), node("green", speed=1.0, ci=50.0)]
    plan = green_plan(blocks, nodes, 2, latency_bound_ms=100.0)
    assert_covers(plan, 12)
    assert len(plan.segments) == 2
    assert plan.latency_ms <= 100.0
    green = next(s for s in plan.segments if s.node_id == "green")
    # As many blocks as the bound allows on the green node: 9 * 10 + 3 * 2.5 + 0.501 <= 100.
    assert green.stop - green.start == 9
    mono_dirty = monolithic_plan(blocks, nodes[0])
    assert plan.carbon_g < mono_dirty.carbon_g


def test_green_infeasible_bound_names_the_bound_and_the_best_latency():
    blocks = uniform(12, cost=10.0)
    nodes = [node("a", speed=1.0), node("b", speed=2.0)]
    with pytest.raises(InvalidRequest) as info:
        green_plan(blocks, nodes, 2, latency_bound_ms=5.0)
    assert info.value.field == "latency_bound_ms"
    assert "5 ms" in info.value.message
    best = balanced_plan(blocks, nodes, 1).latency_ms  # 60 ms on b alone beats any split
    assert f"{best:.6g} ms" in info.value.message


def test_transfer_energy_is_charged_at_the_senders_intensity_without_pue():
    blocks = [BlockCost(10.0, 1000), BlockCost(10.0, 1000)]
    link = Link(1e6, 0.0, energy_j_per_byte=1e-3)
    plan = balanced_plan(blocks, [node("a", ci=100.0, pue=2.0), node("b", ci=300.0)], 2, link=link)
    first = plan.segments[0]
    sender_ci = 100.0 if first.node_id == "a" else 300.0
    sender_pue = 2.0 if first.node_id == "a" else 1.0
    compute_j = 10.0 * 10.0 / 1000
    assert first.energy_j == pytest.approx(compute_j + 1.0)
    assert first.carbon_g == pytest.approx((compute_j * sender_pue + 1.0) / 3.6e6 * sender_ci)
    assert plan.energy_j == pytest.approx(sum(s.energy_j for s in plan.segments))


def test_plan_to_wire_is_msgpack_able_and_round_trips():
    plan = balanced_plan(uniform(9), [node("a"), node("b", speed=2.0), node("c")], 3)
    wire = plan.to_wire()
    decoded = msgpack.unpackb(msgpack.packb(wire), raw=False)
    assert decoded == wire
    assert Plan.from_wire(decoded) == plan
    with pytest.raises(InvalidMessage):
        Plan.from_wire({"version": 1, "strategy": "x"})
    text = plan.explain()
    assert text.startswith("balanced: 3 segment(s)") and "[0, " in text


def test_dp_matches_exhaustive_search_on_small_random_instances():
    rng = random.Random(20240611)
    for _ in range(150):
        blocks, nodes, link = random_instance(rng)
        for k in range(1, min(3, len(nodes), len(blocks)) + 1):
            plan = balanced_plan(blocks, nodes, k, link=link)
            assert_covers(plan, len(blocks))
            assert len(plan.segments) == k
            order = [next(n for n in nodes if n.node_id == s.node_id) for s in plan.segments]
            cuts = [s.start for s in plan.segments] + [len(blocks)]
            b, lat, carbon = evaluate(blocks, order, cuts, link)
            assert (plan.bottleneck_ms, plan.latency_ms) == (pytest.approx(b), pytest.approx(lat))
            assert plan.carbon_g == pytest.approx(carbon)
            scores = [v for _, _, v in all_plans(blocks, nodes, k, link)]
            best_b = min(v[0] for v in scores)
            best_lat = min(v[1] for v in scores if v[0] <= best_b * (1 + 1e-9) + 1e-9)
            assert plan.bottleneck_ms == pytest.approx(best_b, rel=1e-9, abs=1e-9)
            assert plan.latency_ms == pytest.approx(best_lat, rel=1e-9, abs=1e-9)


def green_instance(rng: random.Random):
    """Slow clean nodes and fast dirty ones on a quick link: splits are often the best."""
    blocks, _, link = random_instance(rng)
    blocks = blocks + [BlockCost(rng.uniform(1, 20), rng.randint(0, 500)) for _ in range(3)]
    speeds = [rng.uniform(0.2, 4.0) for _ in range(rng.randint(2, 4))]
    nodes = [
        node(f"n{i}", v, rng.uniform(5, 40), 900 / v * rng.uniform(0.5, 1.5))
        for i, v in enumerate(speeds)
    ]
    return blocks[:8], nodes, Link(1e4, rng.choice([0.0, 0.1]), link.energy_j_per_byte)


def test_green_matches_exhaustive_search_on_small_random_instances():
    rng = random.Random(0)
    for i in range(400):
        blocks, nodes, link = (green_instance if i % 4 else random_instance)(rng)
        k_max = min(3, len(nodes), len(blocks))
        scores = [v for k in range(1, k_max + 1) for _, _, v in all_plans(blocks, nodes, k, link)]
        latencies = sorted(v[1] for v in scores)
        # Infeasible, or just above one plan's latency (mostly the fast end, where splits win).
        bound = latencies[0] * 0.99
        if rng.random() < 0.8:
            bound = latencies[int(len(latencies) * rng.random() ** 2)] * (1 + 1e-6)
        feasible = [v for v in scores if v[1] <= bound * (1 + 1e-9)]
        if not feasible:
            with pytest.raises(InvalidRequest, match="latency bound"):
                green_plan(blocks, nodes, k_max, bound, link=link)
            continue
        plan = green_plan(blocks, nodes, k_max, bound, link=link)
        assert_covers(plan, len(blocks))
        assert plan.latency_ms <= bound * (1 + 1e-9)
        assert plan.carbon_g == pytest.approx(min(v[2] for v in feasible), rel=1e-9, abs=1e-15)


def test_registry_lists_strategies_and_rejects_unknown_names_and_options():
    assert plan_strategies() == ["balanced", "green", "monolithic"]
    blocks, nodes = uniform(6), [node("a"), node("b", speed=3.0, ci=20.0)]
    assert make_plan("balanced", blocks, nodes, k=2) == balanced_plan(blocks, nodes, 2)
    assert make_plan("monolithic", blocks, nodes, node_id="b").segments[0].node_id == "b"
    green = make_plan("green", blocks, nodes, latency_bound_ms=1e3)
    assert green == green_plan(blocks, nodes, 2, 1e3)
    with pytest.raises(ConfigError, match="balanced, green, monolithic"):
        make_plan("fastest", blocks, nodes)
    with pytest.raises(ConfigError, match="takes no option"):
        make_plan("balanced", blocks, nodes, k_max=2)
    with pytest.raises(InvalidRequest, match="node_id"):
        make_plan("monolithic", blocks, nodes)


def test_inputs_are_validated():
    with pytest.raises(InvalidRequest, match="k=3"):
        balanced_plan(uniform(5), [node("a"), node("b")], 3)
    with pytest.raises(InvalidRequest, match="k=3"):
        balanced_plan(uniform(2), [node("a"), node("b"), node("c")], 3)
    with pytest.raises(InvalidRequest, match="distinct"):
        balanced_plan(uniform(5), [node("a"), node("a")], 2)
    with pytest.raises(InvalidRequest, match="speed"):
        node("a", speed=0.0)
    with pytest.raises(InvalidRequest, match="cost"):
        BlockCost(math.nan, 1)
    with pytest.raises(InvalidRequest, match="block"):
        monolithic_plan([], node("a"))


def test_more_than_three_segments_follow_the_given_node_order():
    nodes = [node(f"n{i}", speed=1.0 + i) for i in range(5)]
    plan = balanced_plan(uniform(20), nodes, 4, link=FREE)
    ids = [s.node_id for s in plan.segments]
    assert ids == sorted(ids)
    assert ids == ["n1", "n2", "n3", "n4"]  # the four fastest, in the given order


class _Profile:
    def __init__(self, layer_cost: int, flops: int, time_ms: float, activation_bytes: int):
        self.layer_cost, self.flops, self.time_ms = layer_cost, flops, time_ms
        self.activation_bytes = activation_bytes


def test_costs_and_nodes_from_profiles_and_snapshots():
    profiles = [_Profile(100, 250, 0.5, 4096), _Profile(300, 700, 1.5, 64)]
    assert block_costs(profiles) == [BlockCost(100.0, 4096), BlockCost(300.0, 64)]
    assert [b.cost for b in block_costs(profiles, "flops")] == [250.0, 700.0]
    with pytest.raises(ConfigError, match="layer_cost"):
        block_costs(profiles, "params")
    assert speed_from_profile(400, 20.0) == 20.0
    snap = NodeSnapshot(
        node_id="edge-1",
        cpu_quota=0.6,
        mem_limit_bytes=512 << 20,
        mem_used_bytes=100 << 20,
        cpu_util=0.1,
        power_w=5.0,
        active_power_w=19.7,
        carbon_intensity=380.0,
        in_flight=0,
        exec_ms={"mobilenetv2": 40.0},
        heartbeat_ts=1.0,
        pue=1.2,
    )
    pn = PlanNode.from_snapshot(snap, "mobilenetv2", total_cost=400.0)
    assert pn == PlanNode("edge-1", speed=10.0, power_w=19.7, carbon_intensity=380.0, pue=1.2)
    # The plan's monolithic time on the node reproduces the node's measured service time.
    assert monolithic_plan(block_costs(profiles), pn).latency_ms == pytest.approx(40.0)
    with pytest.raises(InvalidRequest, match="resnet18"):
        PlanNode.from_snapshot(snap, "resnet18", total_cost=400.0)
