from __future__ import annotations

import numpy as np
import pytest

from carbonedge.errors import InvalidTensor
from carbonedge.protocol.codec import TensorLimits, decode_tensor, encode_tensor
from carbonedge.protocol.messages import pack, unpack


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "uint8"])
def test_round_trip_keeps_values_shape_and_dtype(dtype: str) -> None:
    x = (np.arange(2 * 3 * 4) % 7).reshape(2, 3, 4).astype(dtype)
    wire = unpack(pack({"t": encode_tensor(x)}), max_bytes=1 << 20)["t"]
    assert isinstance(wire["data"], bytes)  # raw bin, not a list or base64
    y = decode_tensor(wire)
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_array_equal(x, y)


def test_torch_tensor_is_encoded_like_numpy() -> None:
    torch = pytest.importorskip("torch")
    t = torch.ones(1, 3, 2, 2)
    assert encode_tensor(t) == encode_tensor(t.numpy())


def test_encoding_is_little_endian_c_order() -> None:
    x = np.asfortranarray(np.arange(6, dtype=">f4").reshape(2, 3))
    wire = encode_tensor(x)
    assert wire["data"] == np.arange(6, dtype="<f4").tobytes()


def test_disallowed_dtype_named() -> None:
    with pytest.raises(InvalidTensor, match="int64") as e:
        encode_tensor(np.zeros(3, dtype=np.int64))
    assert e.value.field == "dtype"
    with pytest.raises(InvalidTensor, match="complex") as e:
        decode_tensor({"dtype": "complex64", "shape": [1], "data": b"\0" * 8})
    assert e.value.field == "input.dtype"


@pytest.mark.parametrize(
    "shape", [[], [0, 3], [-1], ["3"], [1.5], [True], "abc", [1] * 9, None],
)
def test_bad_shapes_rejected(shape: object) -> None:
    with pytest.raises(InvalidTensor) as e:
        decode_tensor({"dtype": "float32", "shape": shape, "data": b""})
    assert e.value.field == "input.shape"


def test_element_limit_checked_before_reading_data() -> None:
    limits = TensorLimits(max_elements=100)
    with pytest.raises(InvalidTensor, match="over the limit of 100"):
        decode_tensor({"dtype": "uint8", "shape": [10, 11], "data": b"\0" * 110}, limits)


def test_truncated_data_named() -> None:
    wire = encode_tensor(np.zeros((2, 2), np.float32))
    wire["data"] = wire["data"][:-1]
    with pytest.raises(InvalidTensor, match="15 bytes .* need 16") as e:
        decode_tensor(wire)
    assert e.value.field == "input.data"


def test_data_must_be_bytes() -> None:
    with pytest.raises(InvalidTensor, match="raw bytes"):
        decode_tensor({"dtype": "float32", "shape": [1], "data": [0.0]})


def test_expected_shape_enforced() -> None:
    wire = encode_tensor(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(InvalidTensor, match=r"\[1, 3, 8, 8\] does not match"):
        decode_tensor(wire, expect_shape=[(1, 3, 224, 224)])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_rejected(bad: float) -> None:
    x = np.zeros(4, np.float32)
    x[2] = bad
    with pytest.raises(InvalidTensor, match="NaN or infinite"):
        decode_tensor(encode_tensor(x))


def test_decoded_array_is_a_view_not_a_copy() -> None:
    wire = encode_tensor(np.ones(1000, np.float32))
    assert not decode_tensor(wire).flags.owndata
