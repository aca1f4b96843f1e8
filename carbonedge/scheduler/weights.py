"""Scoring weights, the named modes, and how a request picks one.

A mode is a named :class:`Weights`; a request may instead carry five custom weights,
which win over the mode. Mode names are case-insensitive; an unknown one raises
:class:`~carbonedge.errors.UnknownMode` listing the modes that exist.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from carbonedge.errors import InvalidRequest, UnknownMode

__all__ = ["COMPONENTS", "DEFAULT_MODE", "MODES", "Weights", "weights_for"]

COMPONENTS = ("R", "L", "P", "B", "C")
"""Component names, in the order of the weights: resources, load, performance, balance, carbon."""
DEFAULT_MODE = "balanced"


def _check_weight(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(
            f"weights must be numbers, got {type(value).__name__} for {name}", field="weights"
        )
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise InvalidRequest(
            f"weights must be finite and >= 0, got {value!r} for {name}", field="weights"
        )
    return value


@dataclass(frozen=True, slots=True)
class Weights:
    """Weights of the five components R, L, P, B, C (non-negative, not all zero)."""

    r: float
    l: float  # noqa: E741 (the paper's name for the load weight)
    p: float
    b: float
    c: float

    def __post_init__(self) -> None:
        values = [_check_weight(n, getattr(self, n)) for n in ("r", "l", "p", "b", "c")]
        if sum(values) <= 0:
            raise InvalidRequest("weights must not all be zero", field="weights")

    @classmethod
    def from_sequence(cls, values: Sequence[float]) -> Weights:
        """Five finite non-negative numbers, not all zero, normalised to sum to 1."""
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise InvalidRequest(
                f"weights must be a list of 5 numbers, got {type(values).__name__}",
                field="weights",
            )
        if len(values) != len(COMPONENTS):
            raise InvalidRequest(
                f"weights must be 5 numbers (R, L, P, B, C), got {len(values)}", field="weights"
            )
        checked = [_check_weight(n, v) for n, v in zip(COMPONENTS, values, strict=True)]
        total = math.fsum(checked)
        if total <= 0:
            raise InvalidRequest("weights must not all be zero", field="weights")
        return cls(*(v / total for v in checked))

    def as_tuple(self) -> tuple[float, float, float, float, float]:
        """The weights in component order (R, L, P, B, C)."""
        return (self.r, self.l, self.p, self.b, self.c)

    def to_wire(self) -> dict[str, float]:
        """The weights as a plain map keyed by component name."""
        return dict(zip(COMPONENTS, self.as_tuple(), strict=True))


MODES: Mapping[str, Weights] = MappingProxyType(
    {
        "performance": Weights(0.25, 0.25, 0.30, 0.15, 0.05),
        "green": Weights(0.15, 0.15, 0.10, 0.10, 0.50),
        "balanced": Weights(0.20, 0.20, 0.15, 0.15, 0.30),
    }
)
"""The named modes of the paper (read-only)."""


def _lookup(mode: object) -> Weights:
    key = mode.strip().lower() if isinstance(mode, str) else None
    if key is None or key not in MODES:
        raise UnknownMode(
            f"unknown mode {mode!r}; known modes: {', '.join(sorted(MODES))}", field="mode"
        )
    return MODES[key]


def weights_for(
    mode: str | None,
    custom: Sequence[float] | None = None,
    default_mode: str = DEFAULT_MODE,
) -> Weights:
    """The weights a request asks for: custom weights win, then the mode, then the default."""
    if custom is not None:
        return Weights.from_sequence(custom)
    return _lookup(default_mode if mode is None else mode)
