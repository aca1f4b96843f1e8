"""``select`` on the paper's three-node topology (Table V) and on edge cases."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import msgpack
import pytest

from carbonedge.errors import InvalidRequest, NoNodeAvailable, UnknownNode
from carbonedge.scheduler import (
    MODES,
    ClusterView,
    Decision,
    NodeSnapshot,
    References,
    Weights,
    select,
    weights_for,
)

MIB = 1 << 20
GIB = 1 << 30
NOW = 1_000.0
TTL = 10.0
MODEL = "mobilenetv2"

# (node_id, cpu_quota, mem_limit, gCO2/kWh, MobileNetV2 ms on that quota)
PAPER_NODES = [
    ("node-high", 1.0, GIB, 620.0, 30.0),
    ("node-medium", 0.6, 512 * MIB, 530.0, 50.0),
    ("node-green", 0.4, 512 * MIB, 380.0, 75.0),
]


def snap(
    node_id: str,
    quota: float = 1.0,
    limit: int = GIB,
    intensity: float = 400.0,
    exec_ms: dict[str, float] | None = None,
    *,
    util: float = 0.02,
    used: int = 400_000_000,
    in_flight: int = 0,
    age: float = 1.0,
    pue: float = 1.0,
    group: str = "",
) -> NodeSnapshot:
    """A node snapshot with the default power model: 4 W per CPU + 0.375 W per GiB."""
    exec_ms = {MODEL: 30.0} if exec_ms is None else exec_ms
    ram_w = limit / GIB * 0.375
    return NodeSnapshot(
        node_id=node_id,
        cpu_quota=quota,
        mem_limit_bytes=limit,
        mem_used_bytes=used,
        cpu_util=util,
        power_w=3.0,
        active_power_w=quota * 4.0 + ram_w,
        carbon_intensity=intensity,
        in_flight=in_flight,
        exec_ms=exec_ms,
        heartbeat_ts=NOW - age,
        pue=pue,
        work_group=group,
    )


def paper_view(scale: float = 1.0, refs: References | None = None) -> ClusterView:
    nodes = [snap(n, q, lim, ci, {MODEL: ms * scale}) for n, q, lim, ci, ms in PAPER_NODES]
    return ClusterView.build(nodes, NOW, TTL, refs)


# --- the paper's Table V ------------------------------------------------------------

EXPECTED = {
    # (normalisation, mode): chosen node
    ("minmax", "performance"): "node-high",
    ("minmax", "green"): "node-green",
    ("paper", "performance"): "node-high",
    ("paper", "balanced"): "node-high",  # Balanced collapses into Performance
    ("paper", "green"): "node-green",
}


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
@pytest.mark.parametrize(("normalisation", "mode"), sorted(EXPECTED))
def test_table_v_outcomes(scale: float, normalisation: str, mode: str) -> None:
    decision = select(paper_view(scale), MODEL, MODES[mode], normalisation)
    assert decision.node_id == EXPECTED[(normalisation, mode)]


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_minmax_balanced_does_not_collapse_into_performance(scale: float) -> None:
    decision = select(paper_view(scale), MODEL, MODES["balanced"], "minmax")
    assert decision.node_id != "node-high"
    assert decision.node_id == "node-green"


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_paper_margins_are_not_razor_thin(scale: float) -> None:
    """Every paper-normalisation outcome wins by more than 0.002 of score (see References).

    The fixed form is fragile by nature: at half the task time Green wins by ~0.003.
    """
    view = paper_view(scale)
    for (normalisation, mode), node in EXPECTED.items():
        if normalisation != "paper":
            continue
        rows = select(view, MODEL, MODES[mode], "paper").explain()
        assert rows[0]["node"] == node
        assert rows[0]["score"] - rows[1]["score"] > 0.002


def test_minmax_is_invariant_to_scaling_all_task_times() -> None:
    for mode in MODES:
        scores = {
            scale: [r["score"] for r in select(paper_view(scale), MODEL, MODES[mode]).explain()]
            for scale in (0.5, 1.0, 2.0)
        }
        assert scores[0.5] == pytest.approx(scores[1.0])
        assert scores[2.0] == pytest.approx(scores[1.0])


def test_idle_equal_components_are_floored_to_one_under_minmax() -> None:
    rows = select(paper_view(), MODEL, MODES["balanced"], "minmax").explain()
    for row in rows:
        assert row["R"] == row["L"] == row["B"] == 1.0
    by_node = {r["node"]: r for r in rows}
    assert by_node["node-high"]["P"] == 1.0 and by_node["node-green"]["P"] == 0.0
    assert by_node["node-green"]["C"] == 1.0 and by_node["node-high"]["C"] == 0.0


def test_pure_weights_pick_the_extremes() -> None:
    view = paper_view()
    only_p = Weights(0, 0, 1, 0, 0)
    only_c = Weights(0, 0, 0, 0, 1)
    for normalisation in ("paper", "minmax"):
        assert select(view, MODEL, only_p, normalisation).node_id == "node-high"
        assert select(view, MODEL, only_c, normalisation).node_id == "node-green"


def test_unknown_model_uses_the_prior_scaled_by_quota() -> None:
    view = paper_view()
    rows = {r["node"]: r for r in select(view, "resnet50", MODES["performance"]).explain()}
    assert rows["node-high"]["exec_ms"] == pytest.approx(100.0)
    assert rows["node-green"]["exec_ms"] == pytest.approx(250.0)


# --- liveness -----------------------------------------------------------------------


def test_stale_node_is_never_chosen_even_if_it_would_score_best() -> None:
    fresh = snap("a-slow", 0.4, intensity=900.0, exec_ms={MODEL: 300.0}, util=0.9)
    stale = snap("b-best", 1.0, intensity=10.0, exec_ms={MODEL: 5.0}, age=TTL + 0.001)
    view = ClusterView.build([fresh, stale], NOW, TTL)
    assert view.node_ids == ("a-slow",)
    assert view.stale_ids == ("b-best",)
    assert "b-best" not in view
    for mode in MODES:
        for normalisation in ("paper", "minmax"):
            assert select(view, MODEL, MODES[mode], normalisation).node_id == "a-slow"


def test_heartbeat_exactly_at_ttl_is_still_live() -> None:
    view = ClusterView.build([snap("a", age=TTL)], NOW, TTL)
    assert view.node_ids == ("a",)


def test_no_live_node_raises_no_node_available() -> None:
    view = ClusterView.build([snap("a", age=60.0), snap("b", age=61.0)], NOW, TTL)
    assert len(view) == 0
    with pytest.raises(NoNodeAvailable, match="no live node agent"):
        select(view, MODEL, MODES["green"])
    with pytest.raises(NoNodeAvailable, match="no live node agent"):
        select(ClusterView.build([], NOW, TTL), MODEL, MODES["green"])


def test_duplicate_node_keeps_the_newer_heartbeat() -> None:
    old = snap("a", intensity=100.0, age=5.0)
    new = snap("a", intensity=700.0, age=1.0)
    view = ClusterView.build([new, old], NOW, TTL)
    assert len(view) == 1
    assert view.snapshot("a").carbon_intensity == 700.0


# --- requests -----------------------------------------------------------------------


def test_unknown_normalisation_is_invalid_request() -> None:
    with pytest.raises(InvalidRequest) as info:
        select(paper_view(), MODEL, MODES["green"], "zscore")
    assert info.value.field == "normalisation"
    assert "minmax" in str(info.value) and "paper" in str(info.value)


def test_custom_weights_flow_through() -> None:
    w = weights_for("performance", [0, 0, 0, 0, 1])
    decision = select(paper_view(), MODEL, w, "paper")
    assert decision.node_id == "node-green"
    assert decision.weights is w


# --- bursts and in-flight updates ---------------------------------------------------


def _burst(view: ClusterView, mode: str, normalisation: str, n: int = 30) -> Counter[str]:
    chosen: Counter[str] = Counter()
    for _ in range(n):
        decision = select(view, MODEL, MODES[mode], normalisation)
        view.add_in_flight(decision.node_id)
        chosen[decision.node_id] += 1
    return chosen


@pytest.mark.parametrize("normalisation", ["paper", "minmax"])
def test_performance_burst_spreads_with_most_on_the_fastest_node(normalisation: str) -> None:
    view = paper_view()
    chosen = _burst(view, "performance", normalisation)
    assert set(chosen) == {"node-high", "node-medium", "node-green"}
    assert chosen.most_common(1)[0][0] == "node-high"
    assert chosen["node-high"] <= 20
    assert sum(view.in_flight(n) for n in view.node_ids) == 30


def test_balanced_minmax_burst_evens_out_queued_time_not_counts() -> None:
    """Load is seen in time: the faster node takes more requests, so that the work
    queued on each node comes out about even."""
    view = paper_view()
    chosen = _burst(view, "balanced", "minmax")
    service = {n: ms for n, *_, ms in PAPER_NODES}
    queued_ms = {n: chosen[n] * service[n] for n in service}
    assert chosen["node-high"] > chosen["node-medium"] > chosen["node-green"] > 0
    assert max(queued_ms.values()) <= 1.5 * min(queued_ms.values())


def test_performance_never_leaves_a_node_idle_behind_a_backlog() -> None:
    view = paper_view()
    view.add_in_flight("node-high", 5)  # 150 ms queued on the fastest node
    decision = select(view, MODEL, MODES["performance"], "minmax")
    assert decision.node_id == "node-medium"  # done in 50 ms, not 180
    row = {r["node"]: r for r in decision.explain()}
    assert row["node-high"]["predicted_ms"] == pytest.approx(180.0)


def test_deadband_merges_noise_but_not_real_differences() -> None:
    from carbonedge.scheduler.components import deadband

    assert deadband([72.0, 75.0, 30.0, 73.5], 0.1) == [72.0, 72.0, 30.0, 72.0]
    assert deadband([30.0, 50.0, 75.0], 0.1) == [30.0, 50.0, 75.0]
    # anchored at the first of a group: a run of near neighbours does not chain
    assert deadband([100.0, 109.0, 118.0, 127.0], 0.1) == [100.0, 100.0, 118.0, 118.0]
    assert deadband([0.0, 0.0, 5.0], 0.1) == [0.0, 0.0, 5.0]


def _replicas(rng: random.Random, group: str, n_green: int = 3) -> ClusterView:
    """The paper's topology with ``n_green`` node-green replicas whose measured service
    times differ by up to ±5% (what medians of 15 tasks on identical replicas do)."""
    nodes = [snap(n, q, lim, ci, {MODEL: ms * rng.uniform(0.95, 1.05)}, group=group)
             for n, q, lim, ci, ms in PAPER_NODES if n != "node-green"]
    nodes += [snap(f"node-green-{i}", 0.4, 512 * MIB, 380.0,
                   {MODEL: 75.0 * rng.uniform(0.95, 1.05)}, group=group,
                   util=rng.uniform(0.0, 0.05), used=rng.randint(380, 420) * MIB // 2)
              for i in range(n_green)]
    return ClusterView.build(nodes, NOW, TTL)


@pytest.mark.parametrize("group", ["", "host:torch"])
@pytest.mark.parametrize("seed", range(50))
def test_a_green_burst_spreads_over_replicas_within_noise(seed: int, group: str) -> None:
    """With or without a work group (without one, each replica's own measurement)."""
    view = _replicas(random.Random(seed), group)
    chosen = _burst(view, "green", "minmax", n=60)
    green = {n: c for n, c in chosen.items() if n.startswith("node-green-")}
    total = sum(green.values())
    assert total >= 50 and "node-high" not in chosen
    for node, count in green.items():
        assert 0.20 <= count / total <= 0.45, (node, chosen)


def test_like_work_is_priced_alike_and_other_hardware_keeps_its_own() -> None:
    """Nodes of one work group (same hardware, same runtime) cost one CPU per inference,
    their group's median; they then differ by quota, power and intensity only. A node of
    no group keeps what it measured; a node that never ran the model gets the prior."""
    nodes = [snap("a", 1.0, exec_ms={MODEL: 20.0}, group="h1:torch"),
             snap("b", 0.5, exec_ms={MODEL: 44.0}, group="h1:torch"),
             snap("c", 0.4, exec_ms={MODEL: 45.0}, group="h1:torch"),
             snap("d", 1.0, exec_ms={MODEL: 7.0}, group="h1:onnxruntime"),
             snap("e", 1.0, exec_ms={MODEL: 40.0}),
             snap("f", 0.5, exec_ms={}, group="h1:torch")]
    view = ClusterView.build(nodes, NOW, TTL)
    # group h1:torch: works 20, 22, 18: median 20
    assert view.service_ms(MODEL) == pytest.approx(
        [20.0, 40.0, 50.0, 7.0, 40.0, References().prior_ms(0.5)])


@pytest.mark.parametrize("seed", range(50))
def test_table_v_holds_under_noisy_telemetry(seed: int) -> None:
    """The CPU-seconds of an inference differ from node to node with the host's load
    (18.1, 19.6 and 21.3 ms measured on the paper's nodes of one busy host; ±40% here),
    and idle nodes report a little background CPU: warm Green still goes to node-green,
    Performance to node-high."""
    rng = random.Random(seed)
    nodes = [snap(n, q, lim, ci, {MODEL: 18.0 * rng.uniform(0.6, 1.4) / q},
                  util=rng.uniform(0.0, 0.1), group="host:torch")
             for n, q, lim, ci, _ in PAPER_NODES]
    view = ClusterView.build(nodes, NOW, TTL)
    assert select(view, MODEL, MODES["green"]).node_id == "node-green"
    assert select(view, MODEL, MODES["performance"]).node_id == "node-high"


def test_green_minmax_burst_herds_onto_the_greenest_node_known_limitation() -> None:
    """Pins current behaviour: a bounded load term cannot outweigh minmax carbon.

    Under minmax the greenest node keeps C = 1 and the dirtiest C = 0 whatever the
    queue, so with w_C = 0.5 > w_L + w_B + w_P the greenest node takes almost every
    request of a burst.
    Bounding queues needs an admission cap or the latency-SLO policy, not new weights.
    """
    chosen = _burst(paper_view(), "green", "minmax")
    assert chosen["node-green"] >= 28 and "node-high" not in chosen
    # under the paper normalisation, load does push work elsewhere
    assert len(_burst(paper_view(), "green", "paper")) == 3


def test_add_in_flight_changes_the_next_choice_and_floors_at_zero() -> None:
    view = paper_view()
    assert select(view, MODEL, MODES["performance"]).node_id == "node-high"
    view.add_in_flight("node-high", 5)
    assert view.in_flight("node-high") == 5
    assert select(view, MODEL, MODES["performance"]).node_id != "node-high"
    view.add_in_flight("node-high", -100)
    assert view.in_flight("node-high") == 0
    assert select(view, MODEL, MODES["performance"]).node_id == "node-high"


def test_add_in_flight_on_a_node_not_in_the_view_raises() -> None:
    with pytest.raises(UnknownNode):
        paper_view().add_in_flight("node-ghost")


# --- ties ---------------------------------------------------------------------------


def test_ties_go_to_fewer_in_flight_then_node_id() -> None:
    same: dict[str, Any] = {"quota": 1.0, "intensity": 400.0, "exec_ms": {MODEL: 30.0}}
    view = ClusterView.build([snap("c", **same), snap("a", **same), snap("b", **same)], NOW, TTL)
    only_p = Weights(0, 0, 1, 0, 0)  # in_flight does not enter the score
    assert select(view, MODEL, only_p).node_id == "a"
    view.add_in_flight("a")
    assert select(view, MODEL, only_p).node_id == "b"
    view.add_in_flight("b")
    view.add_in_flight("c")
    assert select(view, MODEL, only_p).node_id == "a"


def test_near_tie_within_1e_12_goes_to_fewer_in_flight_and_explain_leads_with_it() -> None:
    a = snap("a", exec_ms={MODEL: 30.0 + 1e-10}, in_flight=0)  # ~6e-13 worse on S_P
    b = snap("b", exec_ms={MODEL: 30.0}, in_flight=1)
    view = ClusterView.build([a, b], NOW, TTL)
    only_p = Weights(0, 0, 1, 0, 0)
    for vectorised in (False, True):
        decision = select(view, MODEL, only_p, "paper", _vectorised=vectorised)
        assert decision.node_id == "a"
        rows = decision.explain()
        assert rows[0]["node"] == "a"
        assert 0 < rows[1]["score"] - rows[0]["score"] < 1e-12


# --- the decision -------------------------------------------------------------------


def test_decision_fields_and_explain_list_every_candidate() -> None:
    view = paper_view()
    decision = select(view, MODEL, MODES["green"], "minmax")
    assert isinstance(decision, Decision)
    assert decision.candidates == 3
    assert decision.normalisation == "minmax"
    assert decision.duration_ns > 0
    assert set(decision.components) == {"R", "L", "P", "B", "C"}
    for value in decision.components.values():
        assert 0.0 <= value <= 1.0
    w = decision.weights
    expected = sum(
        getattr(w, k.lower()) * decision.components[k] for k in ("R", "L", "P", "B", "C")
    )
    assert decision.score == pytest.approx(expected)
    rows = decision.explain()
    assert sorted(r["node"] for r in rows) == sorted(view.node_ids)
    assert rows[0]["node"] == decision.node_id
    assert rows[0]["score"] == decision.score
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    for row in rows:
        assert {"node", "R", "L", "P", "B", "C", "score"} <= set(row)


def test_explain_reflects_the_state_at_decision_time() -> None:
    view = paper_view()
    decision = select(view, MODEL, MODES["performance"])
    view.add_in_flight(decision.node_id, 7)
    row = next(r for r in decision.explain() if r["node"] == decision.node_id)
    assert row["in_flight"] == 0


def test_to_wire_is_msgpack_able_and_round_trips() -> None:
    decision = select(paper_view(), MODEL, MODES["balanced"], "paper")
    for wire in (decision.to_wire(), decision.to_wire(explain=True)):
        back = msgpack.unpackb(msgpack.packb(wire, use_bin_type=True), raw=False)
        assert back == wire
    wire = decision.to_wire()
    assert wire["node_id"] == decision.node_id
    assert wire["weights"] == MODES["balanced"].to_wire()
    assert wire["candidates"] == 3
    assert len(decision.to_wire(explain=True)["explain"]) == 3


def test_to_wire_from_the_vectorised_path_has_only_builtins() -> None:
    decision = select(paper_view(), MODEL, MODES["green"], _vectorised=True)
    wire = decision.to_wire(explain=True)
    msgpack.packb(wire, use_bin_type=True)
    assert type(wire["score"]) is float
    assert all(type(v) is float for v in wire["components"].values())
    assert all(type(r["score"]) is float for r in wire["explain"])


def test_pue_raises_carbon() -> None:
    a = snap("a", intensity=400.0, pue=1.0)
    b = snap("b", intensity=400.0, pue=1.6)
    view = ClusterView.build([a, b], NOW, TTL)
    rows = {r["node"]: r for r in select(view, MODEL, MODES["green"], "paper").explain()}
    assert rows["b"]["carbon_g"] == pytest.approx(1.6 * rows["a"]["carbon_g"])
    assert select(view, MODEL, MODES["green"], "paper").node_id == "a"
