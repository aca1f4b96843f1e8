"""Building a producer's request: the options it may carry, its input tensor (an image is
resized and cropped here and sent as uint8 pixels; its node normalises them), and the
claim check that moves a large input to its own key."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypedDict

from PIL import Image

from carbonedge.client.images import image_pixels
from carbonedge.errors import InvalidRequest
from carbonedge.partitioner.catalog import Preprocess
from carbonedge.protocol import keys
from carbonedge.protocol.codec import TensorLimits, encode_tensor, tensor_header
from carbonedge.protocol.messages import PROTOCOL_VERSION, pack
from carbonedge.protocol.pixels import PIXEL_DTYPE, model_shape
from carbonedge.protocol.request import Request
from carbonedge.settings import Settings

__all__ = ["IMAGE_TYPES", "RequestOptions", "build_request", "check_timeout", "detach_input",
           "make_request", "to_tensor_map"]

IMAGE_TYPES = (str, Path, bytes, bytearray, Image.Image)


def to_tensor_map(x: Any, limits: TensorLimits,
                  preprocess: Preprocess | None = None) -> dict[str, Any]:
    """An image (path, bytes, PIL) becomes uint8 pixels, resized and cropped (ImageNet's
    256/224 unless the model declares otherwise; its node normalises them); an array or
    tensor is validated as is."""
    if isinstance(x, IMAGE_TYPES):
        p = preprocess or Preprocess()
        x = image_pixels(x, resize=p.resize, crop=p.crop)
    tensor = encode_tensor(x)
    tensor_header(tensor, limits)
    return tensor


class RequestOptions(TypedDict, total=False):
    """The options a request may carry (see :func:`build_request`)."""

    mode: str
    weights: Sequence[float]
    normalisation: str
    node: str
    partition: str | int
    route: Sequence[Any]
    latency_bound_ms: float
    deadline_s: float
    forecast: str
    tenant: str
    latency_slo_ms: float
    family: str
    min_accuracy: float


def build_request(**options: Any) -> dict[str, Any]:
    """The wire map of :func:`make_request` (what goes on the stream, for callers that
    send maps of their own)."""
    return make_request(**options).to_wire()


def make_request(
    *,
    kind: str = "infer",
    model: str | None = None,
    family: str | None = None,
    min_accuracy: float | None = None,
    tensor: dict[str, Any] | None = None,
    mode: str | None = None,
    weights: Sequence[float] | None = None,
    normalisation: str | None = None,
    node: str | None = None,
    partition: str | int | None = None,
    route: Sequence[Any] | None = None,
    latency_bound_ms: float | None = None,
    deadline_s: float | None = None,
    forecast: str | None = None,
    tenant: str | None = None,
    latency_slo_ms: float | None = None,
) -> Request:
    """A validated request with a fresh id.

    ``deadline_s`` lets the request wait, up to that many seconds after submission, for
    the lowest-carbon slot the nodes' intensity forecasts show (carbon-aware deferral);
    ``forecast`` names the forecaster it plans with (``oracle``, the default: the nodes'
    providers' own forecasts; ``persistence``; ``yesterday``).
    ``tenant`` charges the request's carbon to that tenant's budget (if one is set).
    ``latency_slo_ms`` picks the least-carbon node predicted to answer within it.

    Without a ``model``, a ``family`` and/or ``min_accuracy`` (ImageNet top-1, %) let the
    broker choose the model too: the (model, node) pair of least estimated carbon that meets
    them and the latency SLO (see :mod:`carbonedge.dispatcher.model_choice`).

    ``partition`` (``"none"``, ``"auto"``, ``"green"`` or a segment count ``k``) or an
    explicit ``route`` (``[(node, start, stop), ...]`` over the model's blocks) split the
    model across nodes; ``latency_bound_ms`` bounds the ``green``/``auto`` plans.
    """
    request: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "id": uuid.uuid4().hex,
        "kind": kind,
        "submitted_at": time.time(),
    }
    for name, value in (("model", model), ("input", tensor), ("mode", mode),
                        ("normalisation", normalisation), ("node", node), ("tenant", tenant),
                        ("family", family), ("min_accuracy", min_accuracy),
                        ("forecast", forecast)):
        if value is not None:
            request[name] = value
    if model is None and tensor is not None and (family is not None or min_accuracy is not None):
        shape = tensor["shape"]
        request["input_shape"] = (model_shape(shape) if tensor.get("dtype") == PIXEL_DTYPE
                                  else list(shape))
    if weights is not None:
        request["weights"] = _weights(weights)
    if partition is not None:
        request["partition"] = partition
    if route is not None:
        request["route"] = [list(s) if isinstance(s, (tuple, list)) else s for s in route]
    if latency_bound_ms is not None:
        request["latency_bound_ms"] = float(latency_bound_ms)
    if deadline_s is not None:
        request["deadline_s"] = deadline_s
    if latency_slo_ms is not None:
        request["latency_slo_ms"] = latency_slo_ms
    return Request.from_wire(request)


def _weights(weights: Any) -> list[float]:
    """Five custom weights as floats; a string or any other non-sequence is refused (a
    string of five digits would otherwise read as five weights)."""
    if isinstance(weights, (str, bytes, bytearray, dict)) or not hasattr(weights, "__len__"):
        raise InvalidRequest(f"weights must be a list of 5 numbers (R, L, P, B, C), got "
                             f"{type(weights).__name__}", field="weights")
    try:
        return [float(w) for w in weights]
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidRequest(f"weights must be numbers: {e}", field="weights") from e


def check_timeout(timeout: float | None) -> float | None:
    """A caller's result timeout: None (the default), or a number of seconds >= 0."""
    if timeout is None:
        return None
    if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout) or timeout < 0):
        raise InvalidRequest(f"timeout must be a finite number of seconds >= 0 or None, got "
                             f"{timeout!r}", field="timeout")
    return float(timeout)


def detach_input(request: Request, pipe: Any, settings: Settings) -> Request:
    """The request with a large input moved out into ``ce:input:<id>`` (claim check),
    queued on ``pipe``; a small one as it is.

    The request then stays small through the stream, the dispatcher and the Celery
    message (whose Redis transport would base64 the tensor: +33%), and the agent reads
    the raw bytes once.
    """
    tensor = request.input
    if tensor is None or len(tensor["data"]) <= settings.inline_input_max_bytes:
        return request
    pipe.set(keys.input_key(request.id), pack(request.input_map()), ex=settings.input_ttl_s)
    return replace(request, input=None, input_ref=True)
