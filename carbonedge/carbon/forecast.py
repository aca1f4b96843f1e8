"""Intensity forecasters: what deferral planning believes about a node's intensity ahead.

A forecaster turns a node's intensity provider into steps ``(from, gCO2/kWh)`` over a
horizon. The first step is always the provider's reading now (a forecaster knows the
present); later steps are its belief about the future. An agent publishes every
registered forecaster's steps in its heartbeat, and the dispatcher plans a request's
deferral with the one the request names (``forecast``, default ``oracle``).

- ``oracle``: the provider's own steps ahead; for a trace, the trace itself (perfect
  knowledge of the future). A provider that cannot look ahead (live APIs) gives only now.
- ``persistence``: now's value, held: the future looks like the present, so a request is
  never deferred for a better hour (only routed to the greenest node now).
- ``yesterday``: the same hour one day earlier, at each future hour boundary; for a trace
  replayed at ``speedup`` x real time, a day is 24 trace hours (24 h / speedup of wall
  time). Needs a provider that can look back (traces, static values).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from carbonedge.carbon.providers import IntensityProvider
from carbonedge.errors import InvalidRequest
from carbonedge.protocol.telemetry import ORACLE_FORECAST
from carbonedge.registry import Registry

__all__ = [
    "DEFAULT_FORECASTER",
    "FORECASTERS",
    "Steps",
    "forecast_steps",
    "get_forecaster",
    "known_forecasters",
    "register_forecaster",
]

Steps = list[tuple[datetime, float]]
Forecaster = Callable[[IntensityProvider, datetime, timedelta, float], Steps]
"""``forecaster(provider, now, horizon, current)``: steps from ``now``, the first being
``(now, current)``, the node's intensity as last read."""

DEFAULT_FORECASTER = ORACLE_FORECAST
"""What a request without ``forecast`` plans with: the provider's own forecast."""

FORECASTERS: Registry[Forecaster] = Registry("intensity forecaster", unknown=InvalidRequest,
                                              field="forecast")

DAY = timedelta(days=1)


@runtime_checkable
class _LooksAhead(Protocol):
    def forecast(self, when: datetime, horizon: timedelta,
                 max_points: int = 48) -> list[tuple[datetime, float]]: ...


@runtime_checkable
class _TimeScaled(Protocol):
    def wall_time(self, trace: timedelta) -> timedelta: ...


def register_forecaster(name: str) -> Callable[[Forecaster], Forecaster]:
    """Register ``forecaster(provider, now, horizon, current) -> steps`` under ``name``."""
    return FORECASTERS.register(name)


def known_forecasters() -> list[str]:
    return FORECASTERS.names()


def get_forecaster(name: object) -> Forecaster:
    """The forecaster called ``name``; an unknown name is an InvalidRequest listing the known."""
    return FORECASTERS.get(name)


def forecast_steps(name: str, provider: IntensityProvider, now: datetime,
                   horizon: timedelta, current: float) -> Steps:
    """``name``'s steps for ``provider`` from ``now`` over ``horizon``."""
    return get_forecaster(name)(provider, now, horizon, current)


@register_forecaster(ORACLE_FORECAST)
def _oracle(provider: IntensityProvider, now: datetime, horizon: timedelta,
            current: float) -> Steps:
    if not isinstance(provider, _LooksAhead):
        return [(now, current)]
    return [(now, current)] + list(provider.forecast(now, horizon)[1:])


@register_forecaster("persistence")
def _persistence(provider: IntensityProvider, now: datetime, horizon: timedelta,
                 current: float) -> Steps:
    return [(now, current)]


@register_forecaster("yesterday")
def _yesterday(provider: IntensityProvider, now: datetime, horizon: timedelta,
               current: float) -> Steps:
    if not isinstance(provider, _LooksAhead):
        return [(now, current)]
    day = provider.wall_time(DAY) if isinstance(provider, _TimeScaled) else DAY
    # the provider's own step boundaries ahead, each valued as it was a day before
    boundaries = [t for t, _ in provider.forecast(now, horizon)[1:]]
    return [(now, current)] + [
        (t, provider.intensity_at(t - day).value.g_per_kwh) for t in boundaries]
