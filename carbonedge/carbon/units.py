"""Typed units for energy and carbon: values that cannot be mixed up at a boundary.

Each unit is a frozen dataclass holding one finite, non-negative float in a fixed base
unit (kWh, W, gCO2eq/kWh, gCO2eq), built through named constructors. Arithmetic only
exists where the result is a unit too: ``Energy + Energy``, ``Energy * CarbonIntensity
-> Emissions``. A negative, NaN or infinite value raises ``InvalidRequest`` naming the
unit, so a bad figure is refused where it enters rather than where it is summed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from carbonedge.errors import InvalidRequest

__all__ = ["CarbonIntensity", "Emissions", "Energy", "Power", "emissions"]

JOULES_PER_KWH = 3.6e6


def _checked(unit: str, symbol: str, value: object) -> float:
    """``value`` as a finite, non-negative float, or ``InvalidRequest`` naming the unit."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(
            f"{unit} must be a number of {symbol}, got {type(value).__name__} {value!r}",
            field=unit,
        )
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise InvalidRequest(
            f"{unit} must be a finite, non-negative number of {symbol}, got {value!r}",
            field=unit,
        )
    return number


@dataclass(frozen=True, slots=True, order=True)
class Power:
    """Electrical power in watts."""

    watts: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "watts", _checked("power", "W", self.watts))

    @classmethod
    def from_watts(cls, watts: float) -> Power:
        return cls(watts)

    def __add__(self, other: object) -> Power:
        if not isinstance(other, Power):
            return NotImplemented
        return Power(self.watts + other.watts)


@dataclass(frozen=True, slots=True, order=True)
class Energy:
    """Energy in kilowatt-hours."""

    kwh: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwh", _checked("energy", "kWh", self.kwh))

    @classmethod
    def from_kwh(cls, kwh: float) -> Energy:
        return cls(kwh)

    @classmethod
    def from_joules(cls, joules: float) -> Energy:
        return cls(_checked("energy", "J", joules) / JOULES_PER_KWH)

    @classmethod
    def from_power_and_time(cls, power: Power, seconds: float) -> Energy:
        """Energy of ``power`` held for ``seconds``."""
        if not isinstance(power, Power):
            raise TypeError(f"power must be a Power, got {type(power).__name__}")
        return cls.from_joules(power.watts * _checked("duration", "s", seconds))

    @property
    def joules(self) -> float:
        return self.kwh * JOULES_PER_KWH

    def __add__(self, other: object) -> Energy:
        if not isinstance(other, Energy):
            return NotImplemented
        return Energy(self.kwh + other.kwh)

    def __mul__(self, other: object) -> Emissions:
        if not isinstance(other, CarbonIntensity):
            return NotImplemented
        return Emissions(self.kwh * other.g_per_kwh)


@dataclass(frozen=True, slots=True, order=True)
class CarbonIntensity:
    """Grid carbon intensity in grams of CO2-equivalent per kilowatt-hour."""

    g_per_kwh: float

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "g_per_kwh", _checked("carbon intensity", "gCO2eq/kWh", self.g_per_kwh)
        )

    @classmethod
    def from_g_per_kwh(cls, g_per_kwh: float) -> CarbonIntensity:
        return cls(g_per_kwh)

    def __mul__(self, other: object) -> Emissions:
        if not isinstance(other, Energy):
            return NotImplemented
        return Emissions(self.g_per_kwh * other.kwh)


@dataclass(frozen=True, slots=True, order=True)
class Emissions:
    """Emissions in grams of CO2-equivalent."""

    grams: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "grams", _checked("emissions", "gCO2eq", self.grams))

    @classmethod
    def from_grams(cls, grams: float) -> Emissions:
        return cls(grams)

    @property
    def kg(self) -> float:
        return self.grams / 1000.0

    def __add__(self, other: object) -> Emissions:
        if not isinstance(other, Emissions):
            return NotImplemented
        return Emissions(self.grams + other.grams)


def emissions(energy: Energy, intensity: CarbonIntensity, pue: float = 1.0) -> Emissions:
    """C = E · CI · PUE, with PUE (power usage effectiveness) a plain multiplier >= 1."""
    if not isinstance(energy, Energy) or not isinstance(intensity, CarbonIntensity):
        raise TypeError(
            "emissions() takes an Energy and a CarbonIntensity, got "
            f"{type(energy).__name__} and {type(intensity).__name__}"
        )
    factor = _checked("pue", "(dimensionless)", pue)
    if factor < 1.0:
        raise InvalidRequest(f"pue must be >= 1.0, got {pue!r}", field="pue")
    return Emissions((energy * intensity).grams * factor)
