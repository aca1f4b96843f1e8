"""Versioned msgpack maps that cross process boundaries: requests, task payloads, results.

Everything is a plain map with a ``v`` field. Decoding never trusts its input: a
malformed message raises :class:`~carbonedge.errors.InvalidMessage` naming the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import msgpack

from carbonedge.errors import CarbonEdgeError, InvalidMessage, InvalidRequest
from carbonedge.protocol import keys
from carbonedge.protocol.routes import Route, check_partition
from carbonedge.protocol.telemetry import FORECASTER_RE

PROTOCOL_VERSION = 1
MAX_WEIGHT_SUM = 1e300
"""Custom weights are divided by their sum: it must not overflow to infinity."""
KINDS = ("infer", "ping")
"""``infer`` runs a model; ``ping`` runs nothing and measures the path itself."""
_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def valid_tenant(tenant: object) -> bool:
    """Whether ``tenant`` is a tenant name: 1 to 64 letters, digits, '.', '_' or '-'."""
    return isinstance(tenant, str) and bool(_TENANT_RE.match(tenant))


def pack(obj: Mapping[str, Any]) -> bytes:
    """Serialise a message map (bytes stay msgpack bin, never base64 or lists)."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes, *, max_bytes: int) -> dict[str, Any]:
    """Parse one msgpack map, refusing oversize or non-map payloads."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidMessage(f"message must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise InvalidMessage(
            f"message of {len(data)} bytes is over the limit of {max_bytes}", field="payload"
        )
    if len(data) == 0:
        raise InvalidMessage("message is empty (0 bytes): not a msgpack map")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=max_bytes)
    except (ValueError, msgpack.UnpackException, TypeError) as e:
        raise InvalidMessage(f"message is not valid msgpack: {_unpack_reason(e)}") from e
    if not isinstance(obj, dict):
        raise InvalidMessage(f"message must be a msgpack map, got {type(obj).__name__}")
    return obj


_UNPACK_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (msgpack.exceptions.StackError, "nested more deeply than msgpack allows (a nesting bomb?)"),
    (msgpack.exceptions.FormatError, "a byte that starts no msgpack value"),
    (msgpack.exceptions.ExtraData, "extra bytes after the message"),
)


def _unpack_reason(error: BaseException) -> str:
    """msgpack's errors, named (some of them carry no message at all)."""
    for kind, reason in _UNPACK_REASONS:
        if isinstance(error, kind):
            return reason
    text = str(error).removeprefix("Unpack failed: ")
    return text or type(error).__name__


def unpack_entry(fields: Mapping[Any, Any], *, max_bytes: int) -> tuple[bytes, dict[str, Any]]:
    """The request of a ``ce:requests`` stream entry: its raw bytes and the parsed map."""
    name = keys.REQUEST_FIELD.encode()
    raw = fields.get(name)
    if raw is None:
        present = ", ".join(repr(k)[:40] for k in list(fields)[:5]) or "none"
        raise InvalidMessage(f"stream entry has no request field {keys.REQUEST_FIELD!r} "
                             f"(fields: {present})", field=keys.REQUEST_FIELD)
    return raw, unpack(raw, max_bytes=max_bytes)


def require(msg: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """Fetch a required field of a given type or raise an error that names it."""
    if name not in msg:
        raise InvalidMessage(f"missing field {name!r}", field=name)
    value = msg[name]
    if not isinstance(value, kind) or isinstance(value, bool) and bool not in _as_tuple(kind):
        names = "/".join(k.__name__ for k in _as_tuple(kind))
        raise InvalidMessage(
            f"field {name!r} must be {names}, got {type(value).__name__}", field=name
        )
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def check_version(msg: Mapping[str, Any]) -> None:
    version = msg.get("v")
    if version != PROTOCOL_VERSION:
        raise InvalidMessage(
            f"protocol version {version!r} is not supported (expected {PROTOCOL_VERSION})",
            field="v",
        )


def validate_request(msg: Mapping[str, Any], *, input_required: bool = True) -> None:
    """Check a request's envelope (not its tensor: the agent validates that against the
    model). Without ``input_required`` an inference may carry no input (a later segment of
    a partitioned request reads its activation instead)."""
    check_version(msg)
    req_id = require(msg, "id", str)
    if not 0 < len(req_id) <= 128:
        raise InvalidMessage("field 'id' must be 1 to 128 characters", field="id")
    kind = msg.get("kind", "infer")
    if kind not in KINDS:
        raise InvalidRequest(f"unknown request kind {kind!r}; known: {list(KINDS)}", field="kind")
    if kind == "infer":
        _validate_model_choice(msg)
        if msg.get("input_ref") is True:
            if "input" in msg:
                raise InvalidMessage("a request has either 'input' or 'input_ref', not both",
                                     field="input")
        elif input_required or "input" in msg:
            require(msg, "input", dict)
    require(msg, "submitted_at", (float, int))
    _validate_partition(msg)
    _validate_deferral(msg)
    slo = msg.get("latency_slo_ms")
    if slo is not None and (not isinstance(slo, (int, float)) or isinstance(slo, bool)
                            or not math.isfinite(slo) or slo <= 0):
        raise InvalidRequest("latency_slo_ms must be a positive number of milliseconds",
                             field="latency_slo_ms")
    tenant = msg.get("tenant")
    if tenant is not None and not valid_tenant(tenant):
        raise InvalidRequest("tenant must be 1 to 64 letters, digits, '.', '_' or '-'",
                             field="tenant")
    weights = msg.get("weights")
    if weights is not None:
        if (
            not isinstance(weights, list)
            or len(weights) != 5
            or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)
            or not all(math.isfinite(w) and w >= 0 for w in weights)
            or sum(weights) <= 0
        ):
            raise InvalidRequest(
                "weights must be five finite non-negative numbers (R, L, P, B, C), not all zero",
                field="weights",
            )
        if not sum(float(w) for w in weights) <= MAX_WEIGHT_SUM:
            raise InvalidRequest(f"weights must add up to a finite number (at most "
                                 f"{MAX_WEIGHT_SUM:g}); they are normalised to sum to 1",
                                 field="weights")


MAX_DEADLINE_S = 7 * 24 * 3600.0
CHOICE_FIELDS = ("family", "min_accuracy")


def _validate_model_choice(msg: Mapping[str, Any]) -> None:
    """An inference names its ``model``, or leaves it to the broker with a ``family`` and/or
    a ``min_accuracy`` (ImageNet top-1, %) and the ``input_shape`` it sends."""
    choice = [f for f in CHOICE_FIELDS if f in msg]
    if not choice or "model" in msg:
        require(msg, "model", str)
        if choice:
            raise InvalidRequest(f"a request names a model or leaves it to the broker "
                                 f"({' / '.join(CHOICE_FIELDS)}), not both", field=choice[0])
        return
    family = msg.get("family")
    if "family" in msg and not (isinstance(family, str) and 0 < len(family) <= 64):
        raise InvalidRequest("family must be a name of 1 to 64 characters", field="family")
    floor = msg.get("min_accuracy")
    if "min_accuracy" in msg and (not isinstance(floor, (int, float)) or isinstance(floor, bool)
                                  or not math.isfinite(floor) or not 0 < floor <= 100):
        raise InvalidRequest("min_accuracy must be an ImageNet top-1 percentage in (0, 100]",
                             field="min_accuracy")
    shape = msg.get("input_shape")
    if shape is not None and not (
            isinstance(shape, list) and 3 <= len(shape) <= 4
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise InvalidRequest("input_shape must be the input's [C, H, W] or [1, C, H, W]",
                             field="input_shape")


def _validate_deferral(msg: Mapping[str, Any]) -> None:
    """``deadline_s``: the result may come up to this many seconds after submission, so
    the request may wait for a lower-carbon slot; ``deferred_until`` is set on release;
    ``forecast`` names the intensity forecaster the wait is planned with (the dispatcher
    refuses a name it does not know)."""
    forecast = msg.get("forecast")
    if forecast is not None and (not isinstance(forecast, str)
                                 or not FORECASTER_RE.match(forecast)):
        raise InvalidRequest(f"forecast must be a forecaster's name (e.g. oracle, "
                             f"persistence, yesterday), got {forecast!r}", field="forecast")
    for name, upper in (("deadline_s", MAX_DEADLINE_S), ("deferred_until", float("inf"))):
        value = msg.get(name)
        if value is not None and (
            not isinstance(value, (int, float)) or isinstance(value, bool)
            or not math.isfinite(value) or not 0 < value <= upper
        ):
            raise InvalidRequest(f"{name} must be a positive number of seconds"
                                 + (f" up to {upper:.0f}" if math.isfinite(upper) else ""),
                                 field=name)


def _validate_partition(msg: Mapping[str, Any]) -> None:
    """The options of a partitioned request: ``partition``, ``route``, ``latency_bound_ms``."""
    if "partition" in msg:
        check_partition(msg["partition"])
    if "route" in msg:
        Route.from_wire(msg["route"])
    bound = msg.get("latency_bound_ms")
    if bound is not None and (
        not isinstance(bound, (int, float)) or isinstance(bound, bool)
        or not math.isfinite(bound) or bound <= 0
    ):
        raise InvalidRequest("latency_bound_ms must be a positive number of milliseconds",
                             field="latency_bound_ms")


def error_result(
    request_id: str, error: CarbonEdgeError, *, node: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The result map for a request that failed, naming the problem."""
    return {
        "v": PROTOCOL_VERSION,
        "id": request_id,
        "status": "error",
        "node": node,
        "error": error.to_wire(),
        **extra,
    }
