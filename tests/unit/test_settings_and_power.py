from __future__ import annotations

import math
from pathlib import Path

import pytest

from carbonedge.carbon.device import DevicePower, _codecarbon_tdp, cpu_watts_per_core
from carbonedge.carbon.power import carbon_grams
from carbonedge.errors import ConfigError
from carbonedge.settings import Settings


def test_precedence_defaults_file_env_overrides(tmp_path: Path) -> None:
    f = tmp_path / "ce.toml"
    f.write_text('[carbonedge]\nredis_url = "redis://file/1"\nheartbeat_interval_s = 2\n'
                 'dispatch_batch = 7\n')
    env = {"CARBONEDGE_DISPATCH_BATCH": "9", "CARBONEDGE_CONFIG": str(f), "OTHER": "x"}
    s = Settings.load(env=env, log_level="DEBUG")
    assert (s.redis_url, s.heartbeat_interval_s, s.dispatch_batch, s.log_level) == (
        "redis://file/1", 2.0, 9, "DEBUG")
    assert s.heartbeat_ttl_s == 6.0
    assert Settings.load(env={}).redis_url == "redis://127.0.0.1:6379/0"


def test_bad_settings_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dispatch_batch"):
        Settings.load(env={"CARBONEDGE_DISPATCH_BATCH": "lots"})
    f = tmp_path / "bad.toml"
    f.write_text("redis_urll = 'x'\n")
    with pytest.raises(ConfigError, match="unknown setting.*redis_urll"):
        Settings.load(f, env={})
    with pytest.raises(ConfigError, match="not found"):
        Settings.load(tmp_path / "missing.toml", env={})


def test_device_power_energy_and_carbon() -> None:
    # node-green: 0.4 CPU at 4 W per core, 512 MB at 0.375 W/GB
    dev = DevicePower(0.4, 512 * 10**6, 4.0, "configured")
    assert dev.watts == pytest.approx(1.6 + 0.192)
    charge = dev.charge(cpu_s=0.03)
    # busy for 0.03 / 0.4 = 75 ms: CPU 1.6 W (= 4 W x 0.03 CPU-s), RAM 0.192 W
    assert charge.busy_s == pytest.approx(0.075)
    assert charge.cpu_kwh == pytest.approx(4.0 * 0.03 / 3.6e6)
    assert charge.ram_kwh == pytest.approx(0.192 * 0.075 / 3.6e6)
    assert carbon_grams(charge.energy_kwh, 400.0, pue=1.5) == pytest.approx(
        charge.energy_kwh * 600)
    # idle: the CPU it burnt, and RAM for the time it was not busy with tasks
    idle = dev.idle_charge(cpu_s=0.01, wall_s=10.0, busy_s=2.0)
    assert idle.cpu_kwh == pytest.approx(4.0 * 0.01 / 3.6e6)
    assert idle.ram_kwh == pytest.approx(0.192 * 8.0 / 3.6e6)


def test_the_same_cpu_seconds_cost_the_same_on_a_node_whatever_the_wall_time() -> None:
    dev = DevicePower(0.6, 512 << 20, 4.0, "configured")
    assert dev.charge(0.05) == dev.charge(0.05)  # no wall time, no host state in it


def test_watts_per_core_is_configured_or_from_codecarbon_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert cpu_watts_per_core(6.5) == (6.5, "configured")
    watts, source = cpu_watts_per_core()
    assert watts > 0
    assert source.startswith("codecarbon-tdp:") or source == "codecarbon-default-per-thread"
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ConfigError) as info:
            cpu_watts_per_core(bad)
        assert info.value.field == "cpu_watts_per_core"


def test_codecarbon_tdp_table_lookup_is_exact_after_codecarbons_cleanup() -> None:
    assert _codecarbon_tdp("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz") == 150.0
    assert _codecarbon_tdp("AMD EPYC 4124P") == 65.0
    assert _codecarbon_tdp("Some CPU nobody makes") is None


def test_bad_accounting_and_power_settings_stop_start_up_naming_the_field() -> None:
    for env, name in (({"CARBONEDGE_ACCOUNTING": "guess"}, "accounting"),
                      ({"CARBONEDGE_CPU_WATTS_PER_CORE": "-2"}, "cpu_watts_per_core"),
                      ({"CARBONEDGE_CPU_WATTS_PER_CORE": "nan"}, "cpu_watts_per_core")):
        with pytest.raises(ConfigError) as info:
            Settings.load(env=env)
        assert info.value.field == name
    assert Settings.load(env={"CARBONEDGE_ACCOUNTING": "measured"}).accounting == "measured"
