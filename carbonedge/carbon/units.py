"""Typed units for energy and carbon: values that cannot be mixed up at a boundary.

Each unit is a frozen dataclass holding one finite, non-negative float in a fixed base
unit (kWh, W, gCO2eq/kWh, gCO2eq), built through named constructors. Arithmetic only
exists where the result is a unit too: ``Energy + Energy``, ``Energy * CarbonIntensity
-> Emissions`` (with PUE: :func:`carbonedge.carbon.power.emissions`). The J/kWh and
W·ms/kWh conversions live here, once. A negative, NaN or infinite value raises ``InvalidRequest`` naming the
unit, so a bad figure is refused where it enters rather than where it is summed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from carbonedge.errors import InvalidRequest

__all__ = [
    "JOULES_PER_KWH",
    "CarbonIntensity",
    "Emissions",
    "Energy",
    "Power",
    "joules_from_kwh",
    "kwh_from_joules",
    "kwh_from_watt_ms",
    "pue_factor",
]

JOULES_PER_KWH = 3.6e6
WATT_MS_PER_KWH = JOULES_PER_KWH * 1e3


def kwh_from_joules(joules: float) -> float:
    """Joules as kilowatt-hours (floats or numpy arrays: the same IEEE operations)."""
    return joules / JOULES_PER_KWH


def joules_from_kwh(kwh: float) -> float:
    """Kilowatt-hours as joules."""
    return kwh * JOULES_PER_KWH


def kwh_from_watt_ms(watts: float, ms: float) -> float:
    """The energy of ``watts`` held for ``ms`` milliseconds, in kWh (W x ms / 3.6e9)."""
    return watts * ms / WATT_MS_PER_KWH


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
        return cls(kwh_from_joules(_checked("energy", "J", joules)))

    @classmethod
    def from_power_and_time(cls, power: Power, seconds: float) -> Energy:
        """Energy of ``power`` held for ``seconds``."""
        if not isinstance(power, Power):
            raise TypeError(f"power must be a Power, got {type(power).__name__}")
        return cls.from_joules(power.watts * _checked("duration", "s", seconds))

    @property
    def joules(self) -> float:
        return joules_from_kwh(self.kwh)

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


def pue_factor(pue: object) -> float:
    """A power usage effectiveness as a float >= 1, or ``InvalidRequest`` naming it."""
    factor = _checked("pue", "(dimensionless)", pue)
    if factor < 1.0:
        raise InvalidRequest(f"pue must be >= 1.0, got {pue!r}", field="pue")
    return factor
