"""Carbon from energy: C = E · CI · PUE (the paper's Eq. 2), in one place."""

from __future__ import annotations

from carbonedge.carbon.device import RAM_WATTS_PER_GB

__all__ = ["RAM_WATTS_PER_GB", "carbon_grams"]


def carbon_grams(energy_kwh: float, intensity_g_per_kwh: float, pue: float = 1.0) -> float:
    """C = E · CI · PUE, in grams (energy in kWh, intensity in gCO2eq/kWh)."""
    return energy_kwh * intensity_g_per_kwh * pue
