"""Carbon-aware model choice on synthetic telemetry: model x node under accuracy and SLO."""

from __future__ import annotations

import time

import pytest

from carbonedge.client.requests import build_request
from carbonedge.dispatcher.model_choice import choose_model
from carbonedge.errors import InvalidMessage, InvalidRequest
from carbonedge.partitioner.catalog import candidates, default_catalogue
from carbonedge.protocol.messages import validate_request
from carbonedge.protocol.request import Request
from carbonedge.scheduler import ClusterView, NodeSnapshot, select, weights_for

EXEC_MS = {  # measured service time per model on each node (what heartbeats carry)
    "node-high": {"mobilenetv2": 5.0, "mobilenetv4": 3.0, "efficientnet_b0": 8.0},
    "node-green": {"mobilenetv2": 15.0, "mobilenetv4": 8.0, "efficientnet_b0": 25.0},
}


def _view(in_flight: dict[str, int] | None = None) -> ClusterView:
    now = time.time()
    nodes = [
        NodeSnapshot("node-high", 1.0, 1 << 30, 300 << 20, 0.0, 10.0, 10.0, 620.0,
                     (in_flight or {}).get("node-high", 0), EXEC_MS["node-high"], now),
        NodeSnapshot("node-green", 0.4, 512 << 20, 200 << 20, 0.0, 5.0, 5.0, 380.0,
                     (in_flight or {}).get("node-green", 0), EXEC_MS["node-green"], now),
    ]
    return ClusterView(nodes)


def _choose(view: ClusterView | None = None, *, slo_ms: float | None = None,
            **constraints: object):
    specs = candidates(default_catalogue(), **constraints)  # type: ignore[arg-type]
    return choose_model(view or _view(), specs, weights_for("green"), slo_ms=slo_ms)


def test_least_carbon_pair_over_the_accuracy_floor() -> None:
    # carbon ~ intensity x power x time: green's 380 x 5 W beats high's 620 x 10 W
    choice = _choose(min_accuracy=70.0)
    assert (choice.model, choice.decision.node_id) == ("mobilenetv4", "node-green")
    choice = _choose(min_accuracy=75.0)  # only EfficientNet-B0 (77.7%) reaches 75%
    assert (choice.model, choice.decision.node_id) == ("efficientnet_b0", "node-green")
    assert choice.explanation["candidates"][0]["model"] == "efficientnet_b0"
    assert choice.explanation["reason"] == "least estimated carbon"


def test_the_slo_rules_out_slow_pairs() -> None:
    choice = _choose(min_accuracy=75.0, slo_ms=20.0)  # B0 takes 25 ms on node-green
    assert (choice.model, choice.decision.node_id) == ("efficientnet_b0", "node-high")
    rows = select(_view(), "efficientnet_b0", weights_for("green")).explain()
    high = next(r for r in rows if r["node"] == "node-high")  # the decision is node-high's
    assert choice.decision.score == high["score"]
    assert choice.decision.components == {k: high[k] for k in "RLPBC"}
    busy = _choose(_view({"node-green": 3}), min_accuracy=70.0, slo_ms=20.0)
    assert (busy.model, busy.decision.node_id) == ("mobilenetv4", "node-high")  # 4 x 8 ms > 20


def test_no_pair_meets_the_slo_runs_the_fastest_and_says_so() -> None:
    choice = _choose(min_accuracy=70.0, slo_ms=2.0)
    assert (choice.model, choice.decision.node_id) == ("mobilenetv4", "node-high")
    assert choice.explanation["meeting_slo"] == 0
    assert "no pair meets the 2 ms SLO" in choice.explanation["reason"]


def test_family_and_impossible_constraints() -> None:
    assert _choose(family="efficientnet").model == "efficientnet_b0"
    assert {s.name for s in candidates(default_catalogue(), family="mobilenet")} == {
        "mobilenetv2", "mobilenetv4"}
    with pytest.raises(InvalidRequest, match="reaches 80% .*the best is 77.698%") as info:
        candidates(default_catalogue(), min_accuracy=80.0)
    assert info.value.field == "min_accuracy"
    with pytest.raises(InvalidRequest, match="families: efficientnet, mobilenet") as info:
        candidates(default_catalogue(), family="resnet")
    assert info.value.field == "family"
    with pytest.raises(InvalidRequest) as info:
        candidates(default_catalogue(), min_accuracy=70.0, input_shape=[1, 3, 160, 160])
    assert info.value.field == "input_shape"


def test_requests_that_leave_the_model_to_the_broker() -> None:
    tensor = {"dtype": "float32", "shape": [1, 3, 224, 224], "data": b""}
    request = build_request(tensor=tensor, min_accuracy=75.0, family="efficientnet")
    assert Request.from_wire(request).wants_choice and "model" not in request
    assert request["input_shape"] == [1, 3, 224, 224]
    with pytest.raises(InvalidRequest, match="not both") as info:
        build_request(model="mobilenetv2", tensor=tensor, min_accuracy=75.0)
    assert info.value.field == "min_accuracy"
    for bad, field in (({"min_accuracy": 0}, "min_accuracy"), ({"min_accuracy": 101.0},
                       "min_accuracy"), ({"family": ""}, "family"),
                       ({"family": "x", "input_shape": [3, -1, 2]}, "input_shape")):
        with pytest.raises(InvalidRequest) as info:
            validate_request({**request, "family": "x", **bad})
        assert info.value.field == field
    with pytest.raises(InvalidMessage, match="missing field 'model'"):
        build_request(tensor=tensor)
