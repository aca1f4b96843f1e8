"""An agent's charge per task: host reading vs estimate, methods, intensity over time."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import pytest

from carbonedge.carbon.apportion import HostPower
from carbonedge.carbon.intensity import create_provider
from carbonedge.carbon.power import PowerModel
from carbonedge.node_agent.config import AgentConfig, static_intensity
from carbonedge.node_agent.energy import EnergyAccountant, charge_fields

GIB = 1 << 30


def _accountant(method: str = "usage", intensity: float = 380.0,
                pue: float = 1.0) -> EnergyAccountant:
    config = AgentConfig("node-green", 0.4, GIB // 2, static_intensity(intensity), pue=pue)
    return EnergyAccountant(config, PowerModel(4.0, "codecarbon-default-per-thread"),
                            apportioning=method, host_cpus=2)


def test_without_a_host_reading_the_estimate_is_used_and_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    acc = _accountant()
    with caplog.at_level(logging.INFO):
        first = acc.charge(cpu_s=0.1, wall_s=0.2)
        acc.charge(cpu_s=0.1, wall_s=0.2)
    assert first.power_source == "estimate:codecarbon-default-per-thread"
    assert first.cpu_kwh == pytest.approx(0.1 * 4.0 / 3.6e6)
    # RAM: 0.375 W/GB of the 512 MiB limit over the wall time
    assert first.ram_kwh == pytest.approx(0.375 * (GIB // 2) / 1e9 * 0.2 / 3.6e6)
    assert first.carbon_g == pytest.approx(first.energy_kwh * 380.0)
    assert sum("no fresh host power" in r.message for r in caplog.records) == 1


def test_a_fresh_host_reading_is_used_and_a_stale_one_is_not() -> None:
    acc = _accountant()
    host = HostPower(9.0, 1.0, 2.0, 2, "codecarbon:cpu_load", ts=time.time())
    acc.update_host(host.to_fields())
    charge = acc.charge(cpu_s=0.5, wall_s=1.0)
    assert charge.power_source == "host:codecarbon:cpu_load"
    assert charge.cpu_kwh == pytest.approx(0.5 * (9.0 - 1.0) / 2.0 / 3.6e6)
    acc.update_host({**host.to_fields(), "ts": repr(time.time() - 60)})
    assert acc.charge(cpu_s=0.5, wall_s=1.0).power_source.startswith("estimate:")


def test_quota_method_and_pue_are_applied_and_reported() -> None:
    acc = _accountant("quota", intensity=100.0, pue=1.5)
    acc.update_host(HostPower(8.0, 1.0, 1.0, 2, "h", ts=time.time()).to_fields())
    charge = acc.charge(cpu_s=0.0, wall_s=1.0)
    assert charge.cpu_kwh == pytest.approx(8.0 * 0.4 / 2 / 3.6e6)
    assert charge.carbon_g == pytest.approx(charge.energy_kwh * 100.0 * 1.5)
    fields = charge_fields(charge)
    assert fields["apportioning"] == "quota" and fields["pue"] == 1.5
    assert fields["energy_kwh"] == pytest.approx(fields["cpu_energy_kwh"] + fields["ram_energy_kwh"])


def test_malformed_host_readings_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    acc = _accountant()
    with caplog.at_level(logging.WARNING):
        acc.update_host({"cpu_w": "-3", "idle_cpu_w": "0", "busy_cpus": "1",
                         "host_cpus": "2", "source": "x", "ts": repr(time.time())})
    assert acc.host_power().source.startswith("estimate:")
    assert "malformed host power" in caplog.text


def test_a_trace_node_charges_the_intensity_of_the_current_hour() -> None:
    start = datetime.now(UTC) - timedelta(hours=5, minutes=1)
    provider = create_provider({"provider": "trace", "file": "GB_2023_week23",
                                "start": start.isoformat()})
    config = AgentConfig("n", 1.0, GIB, provider)
    acc = EnergyAccountant(config, PowerModel(4.0, "x"), host_cpus=2)
    expected = provider.intensity_at(datetime.now(UTC))
    charge = acc.charge(cpu_s=0.01, wall_s=0.01)
    assert charge.intensity_g_per_kwh == expected.value.g_per_kwh
    assert charge.intensity_source == expected.source == "trace:GB_2023_week23"
