from __future__ import annotations

import msgpack
import pytest

from carbonedge.errors import (
    InvalidMessage,
    InvalidRequest,
    NoNodeAvailable,
    UnknownModel,
    from_wire,
)
from carbonedge.protocol.messages import error_result, pack, unpack, validate_request


def _request(**changes: object) -> dict:
    req = {"v": 1, "id": "abc", "kind": "infer", "model": "mobilenetv2",
           "input": {"dtype": "float32", "shape": [1], "data": b"\0" * 4}, "submitted_at": 1.0}
    req.update(changes)
    return {k: v for k, v in req.items() if v is not None}


def test_valid_request_passes() -> None:
    validate_request(_request())
    validate_request(_request(kind="ping", model=None, input=None))
    validate_request(_request(weights=[1, 0, 0, 0, 1]))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"v": 2}, "v"),
        ({"v": None}, "v"),
        ({"id": None}, "id"),
        ({"id": ""}, "id"),
        ({"id": 7}, "id"),
        ({"id": "x" * 129}, "id"),
        ({"kind": "train"}, "kind"),
        ({"model": None}, "model"),
        ({"model": 3}, "model"),
        ({"input": None}, "input"),
        ({"input": [1, 2]}, "input"),
        ({"submitted_at": "now"}, "submitted_at"),
        ({"submitted_at": True}, "submitted_at"),
        ({"weights": [1, 2]}, "weights"),
        ({"weights": [0, 0, 0, 0, 0]}, "weights"),
        ({"weights": [1, 1, 1, 1, -1]}, "weights"),
        ({"weights": [1, 1, 1, 1, float("nan")]}, "weights"),
        ({"weights": "green"}, "weights"),
    ],
)
def test_bad_requests_name_their_field(changes: dict, field: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        validate_request(_request(**changes))
    assert e.value.field == field


def test_unpack_rejects_non_msgpack_non_map_and_oversize() -> None:
    with pytest.raises(InvalidMessage, match="not valid msgpack"):
        unpack(b"\xc1\xc1\xc1", max_bytes=100)
    with pytest.raises(InvalidMessage, match="must be a msgpack map"):
        unpack(msgpack.packb([1, 2, 3]), max_bytes=100)
    with pytest.raises(InvalidMessage, match="over the limit"):
        unpack(pack({"a": b"x" * 200}), max_bytes=100)
    with pytest.raises(InvalidMessage, match="must be bytes"):
        unpack("text", max_bytes=100)  # type: ignore[arg-type]


def test_error_results_round_trip_to_the_same_exception() -> None:
    wire = unpack(pack(error_result("r1", UnknownModel("no such model", field="model"))),
                  max_bytes=1000)
    assert wire["status"] == "error"
    exc = from_wire(wire["error"])
    assert isinstance(exc, UnknownModel) and exc.field == "model"
    assert str(exc) == "no such model"
    assert isinstance(from_wire({"code": "no_node_available", "message": "m"}), NoNodeAvailable)
    assert type(from_wire({"code": "???", "message": "m"})).__name__ == "CarbonEdgeError"
