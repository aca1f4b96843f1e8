"""The typed request: what a producer submits on ``ce:requests``, validated once, immutable.

The wire form is the versioned msgpack map of :mod:`carbonedge.protocol.messages`
(``v`` = :data:`~carbonedge.protocol.messages.PROTOCOL_VERSION`), unchanged, so producers
of the same version interoperate; a map of another version is refused by
:func:`~carbonedge.protocol.messages.check_version` naming ``v``. Decoding validates every
field with :func:`~carbonedge.protocol.messages.validate_request` (the error names the
field) and then nothing reads the map by string key again. Fields this version does not
know travel through untouched (``extra``), so a newer producer's option is not lost.

Nothing mutates a request: a derived one (forced into Green mode by a carbon budget,
released after a deferral) is made with :func:`dataclasses.replace`. What the dispatcher
decides about a request (its node, decision, route) are separate values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from carbonedge.protocol.messages import (
    PROTOCOL_VERSION,
    pack,
    unpack,
    unpack_entry,
    validate_request,
)

__all__ = ["Request", "frozen", "thawed"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})

_CONTAINERS = (list, dict)


def frozen(value: Any) -> Any:
    """Lists as tuples, maps as read-only views (shallow: a tensor's bytes stay bytes)."""
    if isinstance(value, list):
        return tuple(frozen(v) for v in value)
    if isinstance(value, dict):
        return MappingProxyType({k: frozen(v) for k, v in value.items()})
    return value


def thawed(value: Any) -> Any:
    """The wire form of a frozen value: tuples as lists, maps as dicts."""
    if isinstance(value, tuple):
        return [thawed(v) for v in value]
    if isinstance(value, Mapping):
        return {k: thawed(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, slots=True)
class Request:
    """One inference (or ping) request as submitted."""

    id: str
    submitted_at: float
    kind: str = "infer"
    v: int = PROTOCOL_VERSION
    model: str | None = None
    family: str | None = None
    min_accuracy: float | None = None
    input_shape: tuple[int, ...] | None = None
    input: Mapping[str, Any] | None = None
    """The tensor map ``{dtype, shape, data}`` (validated by the agent against its model)."""
    input_ref: bool = False
    """The input waits in ``ce:input:<id>`` (claim check) instead of travelling inline."""
    mode: str | None = None
    weights: tuple[float, ...] | None = None
    normalisation: str | None = None
    node: str | None = None
    """A node the request is pinned to."""
    tenant: str | None = None
    partition: str | int | None = None
    route: tuple[Any, ...] | None = None
    latency_bound_ms: float | None = None
    deadline_s: float | None = None
    forecast: str | None = None
    latency_slo_ms: float | None = None
    deferred_until: float | None = None
    """Set when a deferred request is released: it is not deferred again."""
    deferral: Mapping[str, Any] | None = None
    """Why it was deferred (intensities now and at release, the forecaster)."""
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    """Fields this version does not know, kept for the round trip."""

    # -- decoding ----------------------------------------------------------------------

    @classmethod
    def from_wire(cls, msg: Mapping[str, Any], *, input_required: bool = True) -> Request:
        """Validate a request map and type it; InvalidMessage/InvalidRequest name the field.
        (Without ``input_required``, an inference may carry no input: a later segment's.)"""
        validate_request(msg, input_required=input_required)
        return cls._typed(msg)

    @classmethod
    def unpack(cls, data: bytes, *, max_bytes: int) -> Request:
        """Parse and validate a packed request."""
        return cls.from_wire(unpack(data, max_bytes=max_bytes))

    @classmethod
    def from_entry(cls, fields: Mapping[Any, Any], *, max_bytes: int) -> tuple[bytes, Request]:
        """The request of a ``ce:requests`` stream entry: its raw bytes and the request."""
        raw, msg = unpack_entry(fields, max_bytes=max_bytes)
        return raw, cls.from_wire(msg)

    @classmethod
    def _typed(cls, msg: Mapping[str, Any]) -> Request:
        known = _KNOWN_SET
        values = {k: frozen(v) if type(v) in _CONTAINERS else v
                  for k, v in msg.items() if k in known}
        values["input_ref"] = msg.get("input_ref") is True
        if len(values) - ("input_ref" not in msg) != len(msg):
            values["extra"] = MappingProxyType({k: v for k, v in msg.items() if k not in known})
        return cls(**values)

    # -- encoding ----------------------------------------------------------------------

    def to_wire(self) -> dict[str, Any]:
        """The request map (what :meth:`from_wire` reads back to an equal request)."""
        out: dict[str, Any] = dict(self.extra)
        for name in _KNOWN:
            value = getattr(self, name)
            if value is None:
                continue
            if name == "input_ref":
                if value:
                    out[name] = True
                continue
            out[name] = thawed(value)
        return out

    def input_map(self) -> dict[str, Any] | None:
        """The input's wire map ``{dtype, shape, data}`` (what a claim check stores)."""
        return None if self.input is None else thawed(self.input)

    def pack(self) -> bytes:
        """The request as msgpack (what a producer adds to the stream)."""
        return pack(self.to_wire())

    # -- what it asks for --------------------------------------------------------------

    def label(self, default_mode: str) -> str:
        """The mode it is reported and counted under: ``custom`` when it carries its own
        weights (they win over any mode), else its mode or the default, lower-case."""
        if self.weights is not None:
            return "custom"
        mode = self.mode if isinstance(self.mode, str) else default_mode
        return mode.strip().lower()

    @property
    def wants_deferral(self) -> bool:
        """It has a deadline and was not deferred (and released) already."""
        return self.deadline_s is not None and self.deferred_until is None

    @property
    def wants_choice(self) -> bool:
        """It leaves the model to the broker (``family`` or ``min_accuracy``)."""
        return self.kind == "infer" and self.model is None and (
            self.family is not None or self.min_accuracy is not None)

    @property
    def wants_route(self) -> bool:
        """It asks for a route (``route``, or ``partition`` other than none)."""
        if self.kind != "infer":
            return False
        return self.route is not None or (self.partition is not None
                                          and self.partition != "none")


_KNOWN = tuple(f.name for f in fields(Request) if f.name != "extra")
"""Every field of the wire map this version types: the dataclass's, but ``extra``."""
_KNOWN_SET = frozenset(_KNOWN)
