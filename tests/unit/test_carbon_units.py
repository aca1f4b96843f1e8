"""Typed energy and carbon units: constructors, arithmetic and rejection."""

from __future__ import annotations

import math

import pytest

from carbonedge.carbon.power import emissions
from carbonedge.carbon.units import CarbonIntensity, Emissions, Energy, Power
from carbonedge.errors import InvalidRequest


def test_energy_constructors_agree() -> None:
    assert Energy.from_joules(3.6e6).kwh == pytest.approx(1.0)
    assert Energy.from_kwh(2.0).joules == pytest.approx(7.2e6)
    # 100 W for an hour is 0.1 kWh.
    e = Energy.from_power_and_time(Power.from_watts(100), 3600)
    assert e.kwh == pytest.approx(0.1)
    assert e == Energy.from_joules(360_000)


def test_energy_adds_only_energy() -> None:
    total = Energy.from_kwh(0.25) + Energy.from_joules(1.8e6)
    assert total.kwh == pytest.approx(0.75)
    with pytest.raises(TypeError):
        Energy.from_kwh(1) + Power.from_watts(1)  # type: ignore[operator]
    with pytest.raises(TypeError):
        Energy.from_kwh(1) + 1.0  # type: ignore[operator]


def test_energy_times_intensity_is_emissions_both_ways() -> None:
    e, ci = Energy.from_kwh(0.5), CarbonIntensity.from_g_per_kwh(400)
    assert e * ci == Emissions.from_grams(200)
    assert ci * e == Emissions.from_grams(200)
    with pytest.raises(TypeError):
        e * e  # type: ignore[operator]
    with pytest.raises(TypeError):
        e * 2.0  # type: ignore[operator]


def test_emissions_applies_pue_and_adds() -> None:
    e, ci = Energy.from_kwh(0.5), CarbonIntensity.from_g_per_kwh(400)
    assert emissions(e, ci).grams == pytest.approx(200)
    assert emissions(e, ci, pue=1.5).grams == pytest.approx(300)
    assert (Emissions(1.5) + Emissions(2.5)).kg == pytest.approx(0.004)
    with pytest.raises(TypeError):
        emissions(0.5, ci)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "380", True])
@pytest.mark.parametrize(
    ("make", "unit"),
    [
        (Energy.from_kwh, "energy"),
        (Energy.from_joules, "energy"),
        (Power.from_watts, "power"),
        (CarbonIntensity.from_g_per_kwh, "carbon intensity"),
        (Emissions.from_grams, "emissions"),
    ],
)
def test_bad_values_are_rejected_naming_the_unit(make, unit: str, bad: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        make(bad)
    assert info.value.field == unit
    assert unit in str(info.value)


def test_bad_duration_and_pue_are_rejected() -> None:
    with pytest.raises(InvalidRequest, match="duration"):
        Energy.from_power_and_time(Power.from_watts(10), -1)
    e, ci = Energy.from_kwh(1), CarbonIntensity.from_g_per_kwh(1)
    for bad in (0.9, math.nan, -2.0):
        with pytest.raises(InvalidRequest, match="pue"):
            emissions(e, ci, pue=bad)


def test_units_are_frozen_and_ordered() -> None:
    ci = CarbonIntensity.from_g_per_kwh(100)
    with pytest.raises(AttributeError):
        ci.g_per_kwh = 5  # type: ignore[misc]
    assert min(CarbonIntensity(300), ci, CarbonIntensity(200)) == ci
    assert Power.from_watts(3) + Power.from_watts(4) == Power(7.0)
