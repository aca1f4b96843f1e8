"""CodeCarbon beyond its tracker's public interface, checked against the installed version:
when CodeCarbon changes, these fail here rather than the carbon service in the field."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest

from carbonedge.carbon import codecarbon_adapter as adapter
from carbonedge.errors import ConfigError, RuntimeUnavailable

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_codecarbon_is_the_checked_range_and_pyproject_pins_it() -> None:
    adapter.check_supported()
    (low_major, low_minor), (high_major, high_minor) = adapter.SUPPORTED
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(d for d in deps if d.startswith("codecarbon"))
    assert pin == f"codecarbon>={low_major}.{low_minor},<{high_major}.{high_minor}"
    version = importlib.metadata.version("codecarbon")
    assert re.match(rf"{low_major}\.{low_minor}\.", version), version


def test_an_unchecked_version_is_refused_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapter, "installed_version", lambda: (4, 0))
    with pytest.raises(RuntimeUnavailable, match="checked against"):
        adapter.check_supported()


def test_power_mode_and_tdp_come_from_codecarbon() -> None:
    assert adapter.cpu_power_mode() in ("rapl", "cpu_load", "constant")
    assert adapter.cpu_tdp_w() > 0


def test_host_grid_is_codecarbons_and_an_unknown_country_is_named() -> None:
    value, source = adapter.check_host_grid("USA")
    assert value > 0 and source == "codecarbon:USA"
    with pytest.raises(ConfigError) as info:
        adapter.check_host_grid("XXX")
    assert info.value.field == "host_country"
    with pytest.raises(ConfigError) as info:
        adapter.check_host_grid("USA", "atlantis")
    assert info.value.field == "host_region"
