"""Inputs that used to slip through or fail with a raw error, each refused by name."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
import torch

from carbonedge.client import Client
from carbonedge.client.requests import build_request, make_request
from carbonedge.errors import InvalidMessage, InvalidRequest, InvalidTensor
from carbonedge.protocol.codec import encode_tensor
from carbonedge.protocol.messages import unpack, unpack_entry, validate_request
from carbonedge.settings import Settings


def test_weights_as_a_string_are_not_five_digits() -> None:
    with pytest.raises(InvalidRequest, match="list of 5 numbers.*str") as e:
        build_request(kind="ping", weights="12345")  # type: ignore[arg-type]
    assert e.value.field == "weights"
    with pytest.raises(InvalidRequest, match="weights"):
        build_request(kind="ping", weights=b"12345")  # type: ignore[arg-type]


def test_weights_that_overflow_their_sum_are_refused_before_sending() -> None:
    with pytest.raises(InvalidRequest, match="finite") as e:
        build_request(kind="ping", weights=[1e308] * 5)
    assert e.value.field == "weights"
    request = {"v": 1, "id": "r", "kind": "ping", "submitted_at": 1.0, "weights": [1e308] * 5}
    with pytest.raises(InvalidRequest, match="finite"):  # the dispatcher's check, too
        validate_request(request)
    build_request(kind="ping", weights=[1e299] * 5)  # large but summable: fine


def test_custom_weights_are_labelled_custom_whatever_the_mode() -> None:
    def label(**options: object) -> str:
        return make_request(kind="ping", **options).label("balanced")  # type: ignore[arg-type]

    assert label(weights=[1, 0, 0, 0, 0], mode="performance") == "custom"
    assert label(weights=[1, 0, 0, 0, 0]) == "custom"
    assert label(mode=" Green ") == "green"
    assert label() == "balanced"


def test_bfloat16_tensor_is_an_invalid_tensor_not_a_type_error() -> None:
    with pytest.raises(InvalidTensor, match="bfloat16") as e:
        encode_tensor(torch.zeros((1, 3, 224, 224), dtype=torch.bfloat16))
    assert e.value.field == "dtype"
    with pytest.raises(InvalidTensor, match="not an array"):
        encode_tensor([[1.0, 2.0], [3.0]])


@pytest.mark.parametrize("timeout", [math.nan, -1.0, math.inf, "10"])
def test_a_result_timeout_that_is_no_duration_is_refused(timeout: object) -> None:
    settings = Settings.load(env={}, redis_url="redis://127.0.0.1:1/0")  # never reached
    client = Client(settings)
    try:
        with pytest.raises(InvalidRequest, match="timeout") as e:
            client.result_for("some-id", timeout)  # type: ignore[arg-type]
        assert e.value.field == "timeout"
    finally:
        client.close()


def test_stream_entry_without_its_payload_field_says_so() -> None:
    with pytest.raises(InvalidMessage, match="no request field 'p'") as e:
        unpack_entry({b"q": b"x"}, max_bytes=1000)
    assert e.value.field == "p"
    with pytest.raises(InvalidMessage, match="empty"):
        unpack_entry({b"p": b""}, max_bytes=1000)
    raw, request = unpack_entry({b"p": msgpack.packb({"v": 1})}, max_bytes=1000)
    assert request == {"v": 1} and raw == msgpack.packb({"v": 1})


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x91" * 100_000, "nested more deeply"),  # a nesting bomb: msgpack says nothing
        (b"\xc1", "starts no msgpack value"),
        (msgpack.packb({"v": 1}) + b"\x01", "extra bytes"),
        (b"\x92\x01", "incomplete input"),
    ],
)
def test_unpack_names_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage, match=reason) as e:
        unpack(data, max_bytes=1 << 20)
    assert not str(e.value).endswith(": ")


def test_numpy_object_arrays_are_refused() -> None:
    with pytest.raises(InvalidTensor, match="dtype object"):
        encode_tensor(np.array([object()]))
