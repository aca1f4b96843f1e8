"""Images on the wire: uint8 RGB pixels, ``(1, H, W, 3)``, already resized and cropped.

A producer sends the model's crop of an image as pixels, a quarter of the bytes of the
float32 tensor they become. The node that runs the model turns them into its input
(:func:`normalise_pixels`: scaled to [0, 1], normalised with the model's own mean and
std, laid out as ``(1, 3, H, W)``), so that work is charged to the node that does it and
a producer need not know a model's normalisation. A float input is the model's input as
it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from carbonedge.errors import InvalidTensor

__all__ = ["PIXEL_DTYPE", "model_shape", "normalise_pixels", "pixel_shape"]

PIXEL_DTYPE = "uint8"
"""The dtype that marks an input as pixels (no model takes uint8 input itself)."""


def pixel_shape(shape: Sequence[int], model_shape: Sequence[int],
                field: str = "input") -> tuple[int, int, int, int]:
    """``shape`` as the ``(1, H, W, 3)`` pixels of a model taking ``model_shape``
    (``(C, H, W)`` or ``(1, C, H, W)``); InvalidTensor naming what does not fit."""
    c, h, w = tuple(model_shape)[-3:]
    shape = tuple(shape)
    hwc = shape[1:] if len(shape) == 4 and shape[0] == 1 else shape
    if c != 3 or hwc != (h, w, 3):
        raise InvalidTensor(
            f"{field}.shape {list(shape)}: pixels (dtype {PIXEL_DTYPE}) are sent as "
            f"[1, H, W, 3] RGB, and this model takes {h}x{w} with {c} channel(s), so "
            f"[1, {h}, {w}, 3]" + ("" if c == 3 else " (it takes no RGB image: send floats)"),
            field=f"{field}.shape")
    return (1, h, w, 3)


def model_shape(pixels_shape: Sequence[int]) -> list[int]:
    """The model input ``[1, 3, H, W]`` that pixels of ``pixels_shape`` become."""
    h, w, c = tuple(pixels_shape)[-3:]
    return [1, c, h, w]


def normalise_pixels(pixels: np.ndarray, mean: Sequence[float],
                     std: Sequence[float]) -> np.ndarray:
    """``(1, H, W, 3)`` (or ``(H, W, 3)``) uint8 pixels as a model's normalised
    ``(1, 3, H, W)`` float32 input: torchvision's ``ToTensor()`` then ``Normalize``."""
    planes = pixels.reshape(pixels.shape[-3:]).transpose(2, 0, 1)
    out = np.empty((1, *planes.shape), np.float32)
    x = out[0]
    # the one strided pass reads bytes into the planes; the rest runs on contiguous floats
    # (4-5x faster than normalising HWC floats and transposing them after)
    np.divide(planes, np.float32(255.0), out=x, dtype=np.float32)
    x -= np.asarray(mean, dtype=np.float32)[:, None, None]
    x /= np.asarray(std, dtype=np.float32)[:, None, None]
    return out
