"""An agent's device charge per task and per idle stretch, priced at its intensity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from carbonedge.carbon.device import DevicePower
from carbonedge.carbon.intensity import create_provider
from carbonedge.node_agent.config import AgentConfig, static_intensity
from carbonedge.node_agent.energy import CpuSplit, EnergyAccountant, charge_fields

GIB = 1 << 30


def _accountant(intensity: float = 380.0, pue: float = 1.0,
                quota: float = 0.4) -> EnergyAccountant:
    config = AgentConfig("node-green", quota, GIB // 2, static_intensity(intensity), pue=pue)
    return EnergyAccountant(config, DevicePower(quota, GIB // 2, 4.0, "configured"))


def test_a_task_is_charged_its_cpu_seconds_on_the_emulated_device() -> None:
    acc = _accountant(pue=1.5)
    charge = acc.charge(CpuSplit(0.025, 0.005), acc.intensity())
    assert charge.device.busy_s == pytest.approx(0.03 / 0.4)
    assert charge.cpu_kwh == pytest.approx(4.0 * 0.03 / 3.6e6)
    ram_w = 0.375 * (GIB // 2) / 1e9
    assert charge.ram_kwh == pytest.approx(ram_w * 0.075 / 3.6e6)
    assert charge.carbon_g == pytest.approx(charge.energy_kwh * 380.0 * 1.5)
    fields = charge_fields(charge)
    assert fields["accounting"] == "device" and fields["pue"] == 1.5
    assert (fields["cpu_model_s"], fields["cpu_overhead_s"]) == (0.025, 0.005)
    assert fields["energy_kwh"] == pytest.approx(fields["cpu_energy_kwh"] + fields["ram_energy_kwh"])
    assert fields["power_source"] == "configured"


def test_plan_and_charge_use_one_formula() -> None:
    """The heartbeat's active power times the busy time is exactly the charge."""
    acc = _accountant(intensity=530.0, quota=0.6)
    charge = acc.charge(CpuSplit(0.03, 0.0), acc.intensity())
    predicted = 530.0 * acc.device.watts * charge.device.busy_s / 3.6e6
    assert charge.carbon_g == pytest.approx(predicted)


def test_an_idle_stretch_pays_its_cpu_and_the_ram_not_held_by_tasks() -> None:
    acc = _accountant()
    idle = acc.charge_idle(cpu_s=0.02, wall_s=10.0, busy_s=1.0)
    assert idle.cpu_kwh == pytest.approx(4.0 * 0.02 / 3.6e6)
    assert idle.ram_kwh == pytest.approx(0.375 * (GIB // 2) / 1e9 * 9.0 / 3.6e6)
    assert idle.cpu.model_s == 0.0


def test_a_trace_node_charges_the_intensity_of_the_current_hour() -> None:
    start = datetime.now(UTC) - timedelta(hours=5, minutes=1)
    provider = create_provider({"provider": "trace", "file": "GB_2023_week23",
                                "start": start.isoformat()})
    config = AgentConfig("n", 1.0, GIB, provider)
    acc = EnergyAccountant(config, DevicePower(1.0, GIB, 4.0, "configured"))
    expected = provider.intensity_at(datetime.now(UTC))
    charge = acc.charge(CpuSplit(0.01, 0.0), acc.intensity())
    assert charge.intensity_g_per_kwh == expected.value.g_per_kwh
    assert charge.intensity_source == expected.source == "trace:GB_2023_week23"
