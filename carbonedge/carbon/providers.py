"""The base of carbon-intensity providers: the reading, the protocol, the registry.

A provider answers ``intensity_at(when)`` for a timezone-aware ``when`` with an
:class:`IntensityReading`. Factories register under a name with
``@register_provider(name)``; :mod:`carbonedge.carbon.intensity` registers every shipped
one and builds providers from specs. :class:`StaticProvider` lives here because the
fallback chain ends on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from carbonedge.carbon.units import CarbonIntensity
from carbonedge.errors import ConfigError, InvalidRequest
from carbonedge.registry import Registry

__all__ = [
    "PROVIDERS",
    "IntensityProvider",
    "IntensityReading",
    "StaticProvider",
    "as_utc",
    "build_provider",
    "check_keys",
    "intensity_value",
    "register_provider",
]


@dataclass(frozen=True, slots=True)
class IntensityReading:
    """One carbon-intensity value, where it came from, and the UTC instant it applies to.

    ``trace_time`` is the start of the trace hour used (trace providers only).
    """

    value: CarbonIntensity
    source: str
    timestamp: datetime
    trace_time: datetime | None = None


@runtime_checkable
class IntensityProvider(Protocol):
    def intensity_at(self, when: datetime) -> IntensityReading: ...


ProviderFactory = Callable[[Mapping[str, Any]], IntensityProvider]
PROVIDERS: Registry[ProviderFactory] = Registry("carbon-intensity provider", field="provider")


def register_provider(name: str) -> Callable[[ProviderFactory], ProviderFactory]:
    """Register ``factory(spec) -> IntensityProvider`` under ``name``."""
    return PROVIDERS.register(name)


def build_provider(spec: Mapping[str, Any]) -> IntensityProvider:
    """Build the provider ``spec["provider"]`` names from the rest of ``spec``, from the
    factories registered so far (:func:`carbonedge.carbon.intensity.create_provider`
    registers every shipped one first)."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"a carbon-intensity spec must be a mapping, got {spec!r}")
    return PROVIDERS.get(spec.get("provider"))(spec)


def as_utc(when: object, what: str = "when") -> datetime:
    """``when`` converted to UTC; naive datetimes are refused, never guessed."""
    if not isinstance(when, datetime):
        raise InvalidRequest(f"{what} must be a datetime, got {when!r}", field=what)
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidRequest(
            f"{what} must be timezone-aware (UTC), got naive {when.isoformat()}; "
            "use datetime.now(UTC) or attach tzinfo=UTC",
            field=what,
        )
    return when.astimezone(UTC)


def check_keys(spec: Mapping[str, Any], required: set[str], optional: set[str]) -> None:
    """ConfigError naming a key of ``spec`` that is missing or not allowed."""
    name = spec.get("provider")
    missing = sorted(required - spec.keys())
    if missing:
        raise ConfigError(f"{name} provider needs {', '.join(missing)}", field=missing[0])
    unknown = sorted(set(spec) - required - optional - {"provider"})
    if unknown:
        allowed = ", ".join(sorted(required | optional))
        raise ConfigError(
            f"{name} provider: unknown key(s) {', '.join(unknown)} (allowed: {allowed})",
            field=unknown[0],
        )


def intensity_value(value: object, where: str) -> CarbonIntensity:
    """A configured intensity (gCO2eq/kWh), or ConfigError saying ``where`` it is wrong."""
    try:
        return CarbonIntensity.from_g_per_kwh(value)  # type: ignore[arg-type]
    except InvalidRequest as e:
        raise ConfigError(f"{where}: {e.message}", field="value") from e


@dataclass(frozen=True, slots=True)
class StaticProvider:
    value: CarbonIntensity
    source: str = "static"

    def intensity_at(self, when: datetime) -> IntensityReading:
        return IntensityReading(self.value, self.source, as_utc(when))

    def forecast(self, when: datetime, horizon: timedelta,
                 max_points: int = 48) -> list[tuple[datetime, float]]:
        """A static value does not change: one point."""
        return [(as_utc(when), self.value.g_per_kwh)]


@register_provider("static")
def _static(spec: Mapping[str, Any]) -> StaticProvider:
    check_keys(spec, {"value"}, set())
    return StaticProvider(intensity_value(spec["value"], "static provider"))


