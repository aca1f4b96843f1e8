"""A request's input as its model's float32 batch: pixels normalised here, floats checked."""

from __future__ import annotations

from typing import Any

import numpy as np

from carbonedge.errors import InvalidTensor
from carbonedge.node_agent.backend import ServedModel
from carbonedge.protocol.codec import TensorLimits, decode_tensor, tensor_header
from carbonedge.protocol.pixels import PIXEL_DTYPE, normalise_pixels, pixel_shape

__all__ = ["model_input"]


def model_input(tensor: Any, served: ServedModel, limits: TensorLimits) -> np.ndarray:
    """The ``(1, C, H, W)`` float32 input of ``served`` for a request's tensor map.

    uint8 pixels (:mod:`carbonedge.protocol.pixels`) are normalised with the model's own
    mean and std, on this node and so charged to it; a float32 tensor is the model's input
    as it is. Anything else raises InvalidTensor naming the field.
    """
    dtype, shape = tensor_header(tensor, limits)
    if dtype == PIXEL_DTYPE:
        expected = pixel_shape(shape, served.spec.input_shape)
        pixels = decode_tensor(tensor, limits, expect_shape=[expected, expected[1:]])
        prep = served.spec.preprocess
        return normalise_pixels(pixels, prep.mean, prep.std)
    if dtype != "float32":
        raise InvalidTensor(
            f"input.dtype {dtype!r}: a model takes float32 input, or an image as "
            f"{PIXEL_DTYPE} pixels [1, H, W, 3]", field="input.dtype")
    x = decode_tensor(tensor, limits, expect_shape=served.input_shapes)
    return x.reshape(served.spec.batch_shape)
