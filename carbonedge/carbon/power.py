"""Carbon from energy: C = E · CI · PUE (the paper's Eq. 2), in one place.

Every charge (device and measured methods), the scheduler's S_C and the partitioner's
plans price energy with :func:`carbon_grams`, so a plan predicts what will be charged.
"""

from __future__ import annotations

from carbonedge.carbon.units import CarbonIntensity, Emissions, Energy, pue_factor

__all__ = ["carbon_grams", "emissions"]


def carbon_grams(energy_kwh: float, intensity_g_per_kwh: float, pue: float = 1.0) -> float:
    """C = E · CI · PUE, in grams (energy in kWh, intensity in gCO2eq/kWh); floats or numpy
    arrays alike (the same IEEE operations in the same order)."""
    return energy_kwh * intensity_g_per_kwh * pue


def emissions(energy: Energy, intensity: CarbonIntensity, pue: float = 1.0) -> Emissions:
    """:func:`carbon_grams` on typed units; PUE (power usage effectiveness) is >= 1."""
    if not isinstance(energy, Energy) or not isinstance(intensity, CarbonIntensity):
        raise TypeError(
            "emissions() takes an Energy and a CarbonIntensity, got "
            f"{type(energy).__name__} and {type(intensity).__name__}"
        )
    return Emissions(carbon_grams(energy.kwh, intensity.g_per_kwh, pue_factor(pue)))
