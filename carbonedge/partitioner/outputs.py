"""What a classifier's output becomes in a result: the top-k classes (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["top_k"]


def top_k(logits: Any, k: int = 5) -> tuple[list[int], list[float]]:
    """The ``k`` most probable class ids and their softmax probabilities, most probable first.

    ``logits`` is one image's scores, shape ``(C,)`` or ``(1, C)``: a numpy array, or
    anything with ``.numpy()`` after ``.detach()`` (a CPU torch tensor).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if hasattr(logits, "detach"):
        logits = logits.detach().cpu().double().numpy()
    arr = np.asarray(logits, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"top_k takes one image's logits, shape (C,) or (1, C); got {arr.shape}")
    exp = np.exp(arr - arr.max())
    probs = exp / exp.sum()
    k = min(k, probs.size)
    ids = np.argsort(-probs, kind="stable")[:k]
    return [int(i) for i in ids], [float(probs[i]) for i in ids]
