from __future__ import annotations

from pathlib import Path

import pytest

from carbonedge.carbon.power import PowerModel, carbon_grams
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


def test_power_model_energy_and_carbon() -> None:
    pm = PowerModel.for_host(host_cpu_watts=20.0, host_cpus=2)
    assert pm.cpu_watts_per_cpu == 10.0 and pm.source == "configured-host-cpu-watts"
    # 0.5 CPU-s at 10 W + 1 GB at 0.375 W for 2 s = 5.75 J
    e = pm.task_energy_kwh(cpu_seconds=0.5, wall_s=2.0, mem_limit_bytes=10**9)
    assert e == pytest.approx(5.75 / 3.6e6)
    assert carbon_grams(e, 400.0, pue=1.5) == pytest.approx(e * 600)
    assert pm.active_watts(0.4, 5 * 10**8) == pytest.approx(4.0 + 0.1875)
    assert pm.average_watts(1.0, 4.0, 0) == pytest.approx(2.5)


def test_power_model_fallback_says_so(caplog: pytest.LogCaptureFixture) -> None:
    pm = PowerModel.for_host(host_cpus=8)
    assert pm.source == "codecarbon-default-per-thread" and pm.cpu_watts_per_cpu == 4.0
