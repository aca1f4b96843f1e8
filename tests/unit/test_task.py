"""The typed task an agent runs: validated once, named errors, an exact round trip."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from carbonedge.client.requests import build_request
from carbonedge.errors import InvalidMessage
from carbonedge.protocol.codec import encode_tensor
from carbonedge.protocol.task import Task

TENSOR = encode_tensor(np.zeros((1, 224, 224, 3), np.uint8))
ROUTE = [["node-a", 0, 4], ["node-b", 4, 21]]


def _routed(**fields: Any) -> dict[str, Any]:
    """A dispatcher's task payload: the request map plus what routing added."""
    wire = build_request(model="mobilenetv2", tensor=TENSOR, tenant="ann", route=ROUTE)
    wire.update(node="node-a", dispatched_at=2.0, decision={"node_id": "node-a"},
                counted=True, attempt=2, segment=0, plan={"reason": "route"})
    wire.update(fields)
    return wire


def test_a_routed_payload_is_typed_and_round_trips() -> None:
    task = Task.from_wire(_routed())
    assert (task.node, task.dispatched_at, task.counted, task.attempt, task.segment) == (
        "node-a", 2.0, True, 2, 0)
    assert task.decision == {"node_id": "node-a"} and task.plan == {"reason": "route"}
    assert task.request.tenant == "ann" and task.model_to_run() == "mobilenetv2"
    assert task.request.input is not None and task.request.input["shape"] == (1, 224, 224, 3)
    assert "node" not in task.request.extra and "counted" not in task.request.extra
    assert Task.from_wire(task.to_wire()) == task


def test_a_direct_payload_has_the_defaults() -> None:
    task = Task.from_wire(build_request(kind="ping"))
    assert (task.node, task.counted, task.attempt, task.segment, task.hops) == (
        None, False, 1, None, ())
    assert "counted" not in task.to_wire() and "hops" not in task.to_wire()


@pytest.mark.parametrize(("fields", "field"), [
    ({"counted": "yes"}, "counted"), ({"attempt": 0}, "attempt"),
    ({"attempt": True}, "attempt"), ({"segment": -1}, "segment"),
    ({"segment": "0"}, "segment"), ({"hops": [1]}, "hops"), ({"hops": {}}, "hops"),
    ({"decision": [1]}, "decision"), ({"node": 7}, "node"), ({"dispatched_at": -1.0},
                                                              "dispatched_at"),
    ({"v": 2}, "v"),
])
def test_a_bad_task_field_is_named(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidMessage) as e:
        Task.from_wire(_routed(**fields))
    assert e.value.field == field


def test_only_a_later_segment_may_come_without_input() -> None:
    bare = {k: v for k, v in _routed().items() if k != "input"}
    with pytest.raises(InvalidMessage) as e:
        Task.from_wire(bare)
    assert e.value.field == "input"
    assert Task.from_wire({**bare, "segment": 1}).request.input is None
    with pytest.raises(InvalidMessage, match="task payload must be a map"):
        Task.from_wire([bare])


def test_the_next_segment_reads_its_activation_and_carries_the_hops() -> None:
    task = Task.from_wire({k: v for k, v in _routed(input_ref=True).items() if k != "input"})
    assert task.input_held  # a partitioned request's stored input stays until it ends
    hop = {"index": 0, "node": "node-a"}
    after = task.next_segment((hop,), 3.0)
    assert after.segment == 1 and after.hops == (hop,) and after.dispatched_at == 3.0
    assert after.request.input is None and after.request.input_ref
    again = Task.from_wire(after.to_wire())
    assert again.hops[0]["node"] == "node-a" and again.segment == 1 and again.attempt == 2
    whole = Task.from_wire({k: v for k, v in _routed(input_ref=True).items()
                            if k not in ("segment", "input")})
    assert not whole.input_held  # a whole-model task consumes its input


def test_a_request_left_to_the_broker_names_no_model_until_routed() -> None:
    task = Task.from_wire(build_request(family="mobilenet", tensor=TENSOR))
    with pytest.raises(InvalidMessage) as e:
        task.model_to_run()
    assert e.value.field == "model"
