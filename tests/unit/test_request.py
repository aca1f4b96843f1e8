"""The typed request: validated once, immutable, the same wire map both ways."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from carbonedge.client.requests import build_request
from carbonedge.errors import InvalidMessage, InvalidRequest
from carbonedge.protocol import keys
from carbonedge.protocol.messages import PROTOCOL_VERSION, pack
from carbonedge.protocol.request import Request

TENSOR = {"dtype": "float32", "shape": [1, 3, 2, 2], "data": b"\0" * 48}


def test_round_trips_through_the_wire_map_and_msgpack() -> None:
    wire = build_request(model="mobilenetv2", tensor=TENSOR, mode="green", tenant="t1",
                         weights=[1, 0, 0, 0, 1], route=[("a", 0, 2), ("b", 2, 4)],
                         deadline_s=60.0, latency_slo_ms=50.0)
    request = Request.from_wire(wire)
    assert request.to_wire() == wire
    assert Request.unpack(request.pack(), max_bytes=1 << 20) == request
    assert msgpack.unpackb(request.pack(), raw=False) == wire
    assert request.model == "mobilenetv2" and request.weights == (1.0, 0, 0, 0, 1.0)
    assert request.input is not None and request.input["shape"] == (1, 3, 2, 2)


def test_fields_it_does_not_know_travel_through() -> None:
    wire = {**build_request(kind="ping"), "future_option": [1, 2]}
    request = Request.from_wire(wire)
    assert request.extra == {"future_option": [1, 2]}
    assert request.to_wire() == wire


def test_it_is_immutable_and_derived_requests_are_new_values() -> None:
    request = Request.from_wire(build_request(kind="ping", mode="performance",
                                              weights=[1, 1, 1, 1, 1]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.mode = "green"  # type: ignore[misc]
    with pytest.raises(TypeError):
        request.extra["x"] = 1  # type: ignore[index]
    green = dataclasses.replace(request, mode="green", weights=None)
    assert (request.mode, green.mode, green.weights) == ("performance", "green", None)
    assert request.label("balanced") == "custom" and green.label("balanced") == "green"


@pytest.mark.parametrize(("change", "error", "field"), [
    ({"v": 2}, InvalidMessage, "v"),
    ({"v": None}, InvalidMessage, "v"),
    ({"id": 7}, InvalidMessage, "id"),
    ({"kind": "train"}, InvalidRequest, "kind"),
    ({"tenant": "not a tenant!"}, InvalidRequest, "tenant"),
    ({"latency_slo_ms": -1}, InvalidRequest, "latency_slo_ms"),
    ({"weights": [1, 2]}, InvalidRequest, "weights"),
    ({"forecast": "Bad Name"}, InvalidRequest, "forecast"),
])
def test_bad_input_is_refused_naming_the_field(change: dict, error: type, field: str) -> None:
    wire = {**build_request(kind="ping"), **change}
    with pytest.raises(error) as info:
        Request.from_wire(wire)
    assert info.value.field == field
    with pytest.raises(error):
        Request.unpack(pack(wire), max_bytes=1 << 20)


def test_an_old_version_is_refused_with_the_version_it_expects() -> None:
    with pytest.raises(InvalidMessage, match=f"expected {PROTOCOL_VERSION}") as info:
        Request.from_wire({**build_request(kind="ping"), "v": 0})
    assert info.value.field == "v"


def test_what_a_request_asks_for() -> None:
    ping = Request.from_wire(build_request(kind="ping", deadline_s=30.0))
    assert ping.wants_deferral and not ping.wants_choice and not ping.wants_route
    released = dataclasses.replace(ping, deferred_until=1.0)
    assert not released.wants_deferral
    chooser = Request.from_wire(build_request(tensor=TENSOR, min_accuracy=70.0))
    assert chooser.wants_choice and chooser.input_shape == (1, 3, 2, 2)
    split = Request.from_wire(build_request(model="m", tensor=TENSOR, partition="auto"))
    assert split.wants_route
    whole = Request.from_wire(build_request(model="m", tensor=TENSOR, partition="none"))
    assert not whole.wants_route


def test_an_entry_without_the_request_field_names_it() -> None:
    with pytest.raises(InvalidMessage) as info:
        Request.from_entry({b"other": b"x"}, max_bytes=1 << 20)
    assert info.value.field == keys.REQUEST_FIELD
    raw = pack(build_request(kind="ping"))
    got_raw, request = Request.from_entry({keys.REQUEST_FIELD.encode(): raw},
                                          max_bytes=1 << 20)
    assert got_raw == raw and request.kind == "ping"
