"""The latency-SLO policy over real scheduler decisions."""

from __future__ import annotations

from carbonedge.scheduler import ClusterView, NodeSnapshot, select, weights_for
from carbonedge.scheduler.decision import Decision
from carbonedge.scheduler.slo import apply_latency_slo
from carbonedge.scheduler.weights import COMPONENTS

NOW = 1_000.0
MIB = 1 << 20


def _node(node_id: str, quota: float, intensity: float, exec_ms: float,
          in_flight: int = 0) -> NodeSnapshot:
    limit = 1024 * MIB if quota >= 1 else 512 * MIB
    return NodeSnapshot(node_id=node_id, cpu_quota=quota, mem_limit_bytes=limit,
                        mem_used_bytes=200 * MIB, cpu_util=0.0, power_w=1.0,
                        active_power_w=quota * 4.0 + 0.375 * limit / 1e9,
                        carbon_intensity=intensity, in_flight=in_flight,
                        exec_ms={"m": exec_ms}, heartbeat_ts=NOW)


def _decide(*nodes: NodeSnapshot, mode: str = "green") -> Decision:
    view = ClusterView.build(nodes, now=NOW, ttl_s=3.0)
    return select(view, "m", weights_for(mode))


def test_a_green_node_with_a_queue_too_long_for_the_slo_gives_way() -> None:
    nodes = (_node("high", 1.0, 620, 35), _node("medium", 0.6, 530, 60),
             _node("green", 0.4, 380, 80, in_flight=3))
    decision = _decide(*nodes)
    chosen, slo = apply_latency_slo(decision, 200.0)
    # green would answer in 4 x 80 = 320 ms; of the nodes that meet 200 ms, medium emits least
    assert chosen.node_id == "medium" and slo["met"] is True and slo["meeting"] == 2
    assert slo["predicted_ms"] == 60.0 and slo["scored_choice"] == decision.node_id
    row = next(r for r in decision.explain() if r["node"] == "medium")
    assert chosen.components == {k: row[k] for k in COMPONENTS}


def test_an_slo_everyone_meets_picks_the_least_carbon_node() -> None:
    nodes = (_node("high", 1.0, 620, 35), _node("green", 0.4, 380, 80))
    chosen, slo = apply_latency_slo(_decide(*nodes, mode="performance"), 10_000.0)
    assert chosen.node_id == "green" and slo["met"] is True


def test_when_no_node_can_meet_it_the_fastest_predicted_wins_and_says_so() -> None:
    nodes = (_node("high", 1.0, 620, 35, in_flight=4), _node("green", 0.4, 380, 80))
    chosen, slo = apply_latency_slo(_decide(*nodes), 20.0)
    assert chosen.node_id == "green"  # 80 ms beats 5 x 35 = 175 ms
    assert slo["met"] is False and slo["meeting"] == 0 and slo["predicted_ms"] == 80.0
