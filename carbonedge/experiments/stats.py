"""Intervals for experiments run in blocks: Student's t across block means, and a paired
bootstrap for differences against a baseline."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "bootstrap_mean_ci", "mean_ci", "t_quantile"]

_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
"""The 0.975 quantile of Student's t for 1 to 30 degrees of freedom (standard tables)."""
_Z975 = 1.959964


@dataclass(frozen=True, slots=True)
class Interval:
    """A mean with a 95% interval (``nan`` bounds when there is too little data)."""

    mean: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high}

    def format(self, spec: str = ".3g", unit: str = "") -> str:
        if math.isnan(self.low):
            return f"{self.mean:{spec}}{unit}"
        half = (self.high - self.low) / 2
        return f"{self.mean:{spec}} ± {half:{spec.lstrip('+')}}{unit}"


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        return math.nan
    return _T975[df - 1] if df <= len(_T975) else _Z975


def mean_ci(values: Sequence[float]) -> Interval:
    """The mean of ``values`` (e.g. one per block) with a 95% Student's t interval."""
    clean = [v for v in values if math.isfinite(v)]
    if not clean:
        return Interval(math.nan, math.nan, math.nan)
    mean = statistics.fmean(clean)
    if len(clean) < 2:
        return Interval(mean, math.nan, math.nan)
    half = t_quantile(len(clean) - 1) * statistics.stdev(clean) / math.sqrt(len(clean))
    return Interval(mean, mean - half, mean + half)


def bootstrap_mean_ci(values: Sequence[float], *, seed: int = 0,
                      resamples: int = 10_000) -> Interval:
    """The mean of ``values`` with a 95% percentile-bootstrap interval (seeded)."""
    clean = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
    if clean.size == 0:
        return Interval(math.nan, math.nan, math.nan)
    if clean.size < 2:
        return Interval(float(clean.mean()), math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = clean[rng.integers(0, clean.size, (resamples, clean.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Interval(float(clean.mean()), float(low), float(high))
