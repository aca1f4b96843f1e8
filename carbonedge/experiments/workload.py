"""Inputs for experiments: synthetic images; and the nearest-rank percentile."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image


def synthetic_images(count: int, *, seed: int = 0, size: tuple[int, int] = (320, 240)) -> list[bytes]:
    """``count`` distinct PNG images (smooth gradients plus noise), as encoded bytes.

    ImageNet cannot be downloaded here; these exercise the real decode and preprocessing
    path (Pillow, resize, crop, normalise) with varied content.
    """
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    images = []
    for _ in range(count):
        base = rng.uniform(0, 255, 3)
        slope = rng.uniform(-0.5, 0.5, (3, 2))
        chans = [base[c] + slope[c, 0] * xx + slope[c, 1] * yy for c in range(3)]
        arr = np.stack(chans, axis=-1) + rng.normal(0, 20, (h, w, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="PNG")
        images.append(buf.getvalue())
    return images


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]
