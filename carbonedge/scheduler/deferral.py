"""Deferral: run a request with a deadline in the lowest-carbon slot before it.

Each live node's carbon intensity ahead is a step function: its heartbeat's forecast
steps where its provider can tell (hourly traces, static values), else its current value
held constant. The greenest intensity reachable at time t is the lowest of the nodes' at
t. A request is released at the earliest instant that reaches the window's lowest value,
provided it beats dispatching now by at least ``min_gain``; otherwise it goes now.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_MIN_GAIN", "DeferralPlan", "plan_deferral"]

DEFAULT_MIN_GAIN = 0.05
"""Defer only for at least 5% lower intensity: smaller gains are within forecast noise."""

Forecast = Sequence[tuple[float, float]]


@dataclass(frozen=True, slots=True)
class DeferralPlan:
    """When to release a request, and the intensities that decided it."""

    release_at: float
    now_g_per_kwh: float
    release_g_per_kwh: float

    @property
    def deferred(self) -> bool:
        return self.release_g_per_kwh < self.now_g_per_kwh


def _value_at(forecast: Forecast, current: float, t: float) -> float:
    """The step in force at ``t`` (the current value before the first step)."""
    times = [p[0] for p in forecast]
    i = bisect.bisect_right(times, t) - 1
    return forecast[i][1] if i >= 0 else current


def plan_deferral(
    now: float,
    deadline: float,
    forecasts: Mapping[str, Forecast],
    current: Mapping[str, float],
    *,
    min_gain: float = DEFAULT_MIN_GAIN,
) -> DeferralPlan:
    """The release time in ``[now, deadline]`` with the lowest reachable intensity.

    ``current`` holds every live node's intensity now; ``forecasts`` the steps of those
    that have any. With no live node, or a deadline already due, the plan is "now".
    """
    if not current:
        return DeferralPlan(now, float("nan"), float("nan"))

    def greenest(t: float) -> float:
        return min(_value_at(forecasts.get(n, ()), v, t) for n, v in current.items())

    now_value = greenest(now)
    candidates = sorted({t for fc in forecasts.values() for t, _ in fc if now < t <= deadline})
    best_t, best_v = now, now_value
    for t in candidates:
        v = greenest(t)
        if v < best_v:
            best_t, best_v = t, v
    if best_v > now_value * (1 - min_gain):
        return DeferralPlan(now, now_value, now_value)
    return DeferralPlan(best_t, now_value, best_v)
