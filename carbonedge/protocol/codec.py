"""The tensor codec: ``{dtype, shape, data}`` maps, little-endian, C order, validated.

No torch here: producers and the dispatcher must not need it. Agents turn the decoded
numpy array into a tensor without a copy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from carbonedge.errors import InvalidTensor

ALLOWED_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "float64": np.dtype("<f8"),
    "uint8": np.dtype("u1"),
}
MAX_RANK = 8


@dataclass(frozen=True, slots=True)
class TensorLimits:
    """What a decoder accepts: element count and, optionally, an exact shape."""

    max_elements: int = 1 << 22
    allow_non_finite: bool = False


def encode_tensor(array: Any) -> dict[str, Any]:
    """Encode a numpy array (or anything with ``.numpy()``, like a CPU torch tensor)."""
    if hasattr(array, "detach"):
        name = str(getattr(array, "dtype", "")).removeprefix("torch.")
        if name not in ALLOWED_DTYPES:  # e.g. bfloat16, which numpy cannot even hold
            raise InvalidTensor(f"dtype {name} is not allowed; use one of "
                                f"{sorted(ALLOWED_DTYPES)} (e.g. tensor.float())",
                                field="dtype")
        array = array.detach().cpu().numpy()
    try:
        arr = np.asarray(array)
    except (TypeError, ValueError) as e:  # ragged nesting, objects numpy cannot convert
        raise InvalidTensor(f"input is not an array of numbers: {e}", field="input") from e
    name = arr.dtype.name
    if name not in ALLOWED_DTYPES:
        raise InvalidTensor(
            f"dtype {name} is not allowed; use one of {sorted(ALLOWED_DTYPES)}", field="dtype"
        )
    arr = np.ascontiguousarray(arr, dtype=ALLOWED_DTYPES[name])
    return {"dtype": name, "shape": list(arr.shape), "data": arr.tobytes()}


def tensor_header(obj: Any, limits: TensorLimits, field: str = "input") -> tuple[str, tuple[int, ...]]:
    """Validate a tensor map's dtype, shape and byte length without copying its data."""
    if not isinstance(obj, Mapping):
        raise InvalidTensor(f"{field} must be a tensor map {{dtype, shape, data}}", field=field)
    dtype = obj.get("dtype")
    if dtype not in ALLOWED_DTYPES:
        raise InvalidTensor(
            f"{field}.dtype {dtype!r} is not allowed; use one of {sorted(ALLOWED_DTYPES)}",
            field=f"{field}.dtype",
        )
    shape = obj.get("shape")
    if (
        not isinstance(shape, Sequence)
        or isinstance(shape, (str, bytes))
        or not 0 < len(shape) <= MAX_RANK
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise InvalidTensor(
            f"{field}.shape must be 1 to {MAX_RANK} positive integers, got {shape!r}",
            field=f"{field}.shape",
        )
    count = 1
    for d in shape:
        count *= d
    if count > limits.max_elements:
        raise InvalidTensor(
            f"{field} has {count} elements, over the limit of {limits.max_elements}",
            field=f"{field}.shape",
        )
    data = obj.get("data")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidTensor(f"{field}.data must be raw bytes", field=f"{field}.data")
    expected = count * ALLOWED_DTYPES[dtype].itemsize
    if len(data) != expected:
        raise InvalidTensor(
            f"{field}.data has {len(data)} bytes but dtype {dtype} and shape {list(shape)} "
            f"need {expected}",
            field=f"{field}.data",
        )
    return dtype, tuple(shape)


def decode_tensor(
    obj: Any,
    limits: TensorLimits = TensorLimits(),
    *,
    expect_shape: Sequence[tuple[int, ...]] | None = None,
    field: str = "input",
) -> np.ndarray:
    """Decode and validate a tensor map into a read-only numpy array."""
    dtype, shape = tensor_header(obj, limits, field)
    if expect_shape is not None and shape not in [tuple(s) for s in expect_shape]:
        raise InvalidTensor(
            f"{field}.shape {list(shape)} does not match the expected "
            f"{' or '.join(str(list(s)) for s in expect_shape)}",
            field=f"{field}.shape",
        )
    arr = np.frombuffer(obj["data"], dtype=ALLOWED_DTYPES[dtype]).reshape(shape)
    if not limits.allow_non_finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InvalidTensor(f"{field} contains NaN or infinite values", field=f"{field}.data")
    return arr
