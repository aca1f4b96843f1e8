"""The five score components, as pure functions on floats and on numpy arrays.

Each fixed form maps one node's raw state to a score in ``[0, 1]``, higher is better:

- S_R, resources: ``0.5·(1 - cpu_util) + 0.5·min(1, free_mem / mem_need)``, each half
  clipped to ``[0, 1]``;
- S_L, load: ``1 / (1 + in_flight)``;
- S_B, balance: ``1 / (1 + in_flight / cpu_quota)``, load per core, so that fairness is
  proportional to capacity;
- S_P, performance: ``ref_exec_ms / (ref_exec_ms + T)``;
- S_C, carbon: ``ref_carbon_g / (ref_carbon_g + C)`` with
  ``C = CI · PUE · P_active · T / 3.6e9`` grams (W x ms → kWh is ``/ 3.6e9``).

The ``minmax`` normalisation rescales a component's "goodness" across the candidates of
one decision to ``[0, 1]``, unless its spread is below a relative noise floor, in which
case every candidate gets 1.0. Before that, :func:`deadband` merges costs that lie within
a relative noise band of each other (replicas of one node class, whose measured service
times differ by a few percent): min-max would otherwise stretch that noise to 0 vs 1.

The float and array forms perform the same IEEE operations in the same order, so the
scalar and the vectorised scheduler paths give bit-identical component values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from carbonedge.carbon.power import carbon_grams
from carbonedge.carbon.units import kwh_from_watt_ms
from carbonedge.scheduler.snapshot import MIN_QUOTA

__all__ = [
    "balance_score",
    "balance_scores",
    "carbon_g",
    "carbon_score",
    "carbon_scores",
    "deadband",
    "deadband_array",
    "load_score",
    "load_scores",
    "minmax",
    "minmax_array",
    "perf_score",
    "perf_scores",
    "resource_score",
    "resource_scores",
]

Array = npt.NDArray[np.float64]

# --- scalar forms ---------------------------------------------------------------------


def carbon_g(intensity: float, pue: float, active_power_w: float, t_ms: float) -> float:
    """Grams of CO2 of one task of ``t_ms`` at ``active_power_w`` on a grid of ``intensity``
    (the carbon accounting's own formula: floats here, arrays in the vectorised path)."""
    return carbon_grams(kwh_from_watt_ms(active_power_w, t_ms), intensity, pue)


def resource_score(cpu_util: float, mem_free_bytes: float, mem_need_bytes: float) -> float:
    """S_R: half idle CPU, half free memory relative to what a task needs."""
    cpu = min(1.0, max(0.0, 1.0 - cpu_util))
    mem = min(1.0, max(0.0, mem_free_bytes / mem_need_bytes))
    return 0.5 * cpu + 0.5 * mem


def load_score(in_flight: float) -> float:
    """S_L: fewer requests in flight is better."""
    return 1.0 / (1.0 + in_flight)


def balance_score(in_flight: float, cpu_quota: float) -> float:
    """S_B: fewer requests in flight per granted core is better."""
    return 1.0 / (1.0 + in_flight / max(cpu_quota, MIN_QUOTA))


def perf_score(t_ms: float, ref_exec_ms: float) -> float:
    """S_P (paper form): a faster predicted execution is better."""
    return ref_exec_ms / (ref_exec_ms + t_ms)


def carbon_score(grams: float, ref_carbon_g: float) -> float:
    """S_C (paper form): less CO2 for the task is better."""
    return ref_carbon_g / (ref_carbon_g + grams)


def minmax(values: Sequence[float], floor: float) -> list[float]:
    """Rescale ``values`` to ``[0, 1]``; all 1.0 when the spread is within the noise floor."""
    lo = min(values)
    hi = max(values)
    span = hi - lo
    if span <= floor * max(abs(hi), abs(lo), 1e-12):
        return [1.0] * len(values)
    return [(v - lo) / span for v in values]


def deadband(costs: Sequence[float], band: float) -> list[float]:
    """``costs`` (>= 0) with values within ``band`` (relative) of a smaller one merged.

    Walking the costs in ascending order, each one joins the current group when it lies
    within ``band`` of the group's first (smallest) cost, and takes that cost; otherwise it
    starts a group of its own. Groups are anchored at their first member, so noise cannot
    chain a long run of near neighbours into one group.
    """
    out = list(costs)
    anchor = -1.0
    for i in sorted(range(len(out)), key=out.__getitem__):
        v = out[i]
        if anchor >= 0.0 and v - anchor <= band * v:
            out[i] = anchor
        else:
            anchor = v
    return out


# --- array forms (same operations, same order) ----------------------------------------


def deadband_array(costs: Array, band: float) -> Array:
    """:func:`deadband` for an array (the same walk, so the same result)."""
    out = costs.copy()
    anchor = -1.0
    for i in np.argsort(costs, kind="stable").tolist():
        v = float(out[i])
        if anchor >= 0.0 and v - anchor <= band * v:
            out[i] = anchor
        else:
            anchor = v
    return out



def resource_scores(cpu_util: Array, mem_free_bytes: Array, mem_need_bytes: float) -> Array:
    """S_R for many nodes."""
    cpu = np.minimum(1.0, np.maximum(0.0, 1.0 - cpu_util))
    mem = np.minimum(1.0, np.maximum(0.0, mem_free_bytes / mem_need_bytes))
    return 0.5 * cpu + 0.5 * mem


def load_scores(in_flight: Array) -> Array:
    """S_L for many nodes."""
    return 1.0 / (1.0 + in_flight)


def balance_scores(in_flight: Array, quota: Array) -> Array:
    """S_B for many nodes (``quota`` already floored at :data:`MIN_QUOTA`)."""
    return 1.0 / (1.0 + in_flight / quota)


def perf_scores(t_ms: Array, ref_exec_ms: float) -> Array:
    """S_P (paper form) for many nodes."""
    return ref_exec_ms / (ref_exec_ms + t_ms)


def carbon_scores(grams: Array, ref_carbon_g: float) -> Array:
    """S_C (paper form) for many nodes."""
    return ref_carbon_g / (ref_carbon_g + grams)


def minmax_array(values: Array, floor: float) -> Array:
    """:func:`minmax` for an array."""
    lo = float(values.min())
    hi = float(values.max())
    span = hi - lo
    if span <= floor * max(abs(hi), abs(lo), 1e-12):
        return np.ones_like(values)
    return (values - lo) / span
