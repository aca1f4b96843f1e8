"""Carbon-intensity providers: where a node's grid gCO2eq/kWh comes from, behind a registry.

A provider is built from a plain mapping (a node's ``x-carbonedge.carbon_intensity`` block)
by ``create_provider(spec)``; ``spec["provider"]`` names a factory registered with
``@register_provider(name)``. Every provider answers ``intensity_at(when)`` for a
timezone-aware ``when`` (naive datetimes are refused) with an ``IntensityReading`` that
says where the value came from.

Shipped providers:

- ``static``: ``{provider: static, value: 380}``, a fixed value.
- ``trace``: ``{provider: trace, file: GB_2023_week23, start: 2024-01-01T00:00:00Z,
  speedup: 1.0, column: direct}`` replays an hourly Electricity Maps CSV (the format of
  ``carbonedge/carbon/traces``). Wall time maps to trace time as
  ``first_row + (when - start) * speedup``; the value is that of the hour containing it
  (floor), and the series repeats after its last hour (and before ``start``).
  ``file`` is a path or the name of a packaged trace; ``column`` is ``direct``
  (operational, the default) or ``lca`` (life-cycle).
- ``codecarbon``: ``{provider: codecarbon, country: FRA}`` or with ``region`` for the
  countries where CodeCarbon ships regional data (USA states, Canadian provinces, Chinese
  provinces, Nordic bidding zones). The data files are read directly from the installed
  ``codecarbon`` package with ``json``; neither pandas nor CodeCarbon's tracker is
  imported. Fields used (all gCO2eq/kWh unless noted):

  - country: ``data/private_infra/global_energy_mix.json`` → ``[ISO3]["carbon_intensity"]``;
  - USA: ``data/private_infra/<year>/usa_emissions.json`` → ``[state]["emissions"]``
    (EPA eGRID, lbs/MWh, converted with 0.45359237);
  - CAN: ``data/private_infra/<year>/canada_energy_mix.json`` → the province's percentage
    mix, weighted as CodeCarbon does (coal, petroleum, naturalGas factors; others 0);
  - CHN: ``data/private_infra/<year>/china_provincial_emissions.json`` →
    ``["data"][code]["emission_factor"]`` (CO2 only, MEE/NBS);
  - SWE/NOR/FIN: ``data/private_infra/nordic_emissions.json`` →
    ``["data"][zone]["emission_factor"]``.
- ``electricitymaps`` and ``watttime``: live APIs behind a cache (``carbon/live.py``);
  ``fallback``: a chain of providers ending in one that cannot fail (``carbon/fallback.py``).

The base (reading, protocol, registry, ``static``) is :mod:`carbonedge.carbon.providers`;
``trace`` is :mod:`carbonedge.carbon.trace`. This module imports every provider module, so
``create_provider`` knows them all; none of them imports this one.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# each provider module registers its factories on import
from carbonedge.carbon import fallback as _fallback  # noqa: F401
from carbonedge.carbon import live as _live  # noqa: F401
from carbonedge.carbon import trace as _trace  # noqa: F401
from carbonedge.carbon.providers import (
    PROVIDERS,
    IntensityProvider,
    StaticProvider,
    build_provider,
    check_keys,
    intensity_value,
    register_provider,
)
from carbonedge.errors import ConfigError

__all__ = ["create_provider", "known_providers"]

log = logging.getLogger(__name__)


def create_provider(spec: Mapping[str, Any]) -> IntensityProvider:
    """Build the provider ``spec["provider"]`` names (any shipped one, or one registered
    with :func:`~carbonedge.carbon.providers.register_provider`) from the rest of ``spec``."""
    return build_provider(spec)


def known_providers() -> list[str]:
    return PROVIDERS.names()


_LBS_PER_MWH_TO_G_PER_KWH = 0.45359237
# CodeCarbon's factors for its Canadian energy-mix files (g/kWh); other sources count 0.
_CANADA_FACTORS = {"coal": 995.725971, "petroleum": 816.6885263, "naturalGas": 743.8415916}
_NORDIC = {"SWE", "NOR", "FIN"}
_CHINA_SUFFIX = re.compile(r"\s+(autonomous region|municipality|province|sheng|shi|zizhiqu)$")


def _codecarbon_data() -> Path:
    """The ``data/private_infra`` folder of the installed codecarbon, without importing it."""
    spec = importlib.util.find_spec("codecarbon")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("codecarbon provider: the codecarbon package is not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "private_infra"
    if not folder.is_dir():
        raise ConfigError(f"codecarbon provider: no data folder at {folder}")
    return folder


def _read_json(folder: Path, name: str) -> tuple[Path, Any]:
    """The newest copy of ``name``: ``folder/name`` or ``folder/<year>/name``."""
    candidates = [folder / name] + sorted(folder.glob(f"*/{name}"), reverse=True)
    for path in candidates:
        if path.is_file():
            with path.open(encoding="utf-8") as f:
                return path, json.load(f)
    raise ConfigError(f"codecarbon provider: {name} not found under {folder}")


def _not_found(what: str, key: str, known: list[str], path: Path) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"codecarbon provider: no {what} {key!r} in {path}{hint}")


def _region_value(country: str, region: str, folder: Path) -> tuple[float, str]:
    """The region's intensity and its canonical name in CodeCarbon's data."""
    key = region.strip().lower()
    if country == "USA":
        path, data = _read_json(folder, "usa_emissions.json")
        states = {k: v for k, v in data.items() if not k.startswith("_")}
        by_code = {str(v.get("regionCode", "")).lower(): k for k, v in states.items()}
        name = key if key in states else by_code.get(key, "")
        if name not in states:
            raise _not_found("US state", key, sorted(states), path)
        return float(states[name]["emissions"]) * _LBS_PER_MWH_TO_G_PER_KWH, name
    if country == "CAN":
        path, data = _read_json(folder, "canada_energy_mix.json")
        if key not in data:
            raise _not_found("Canadian province", key, sorted(data), path)
        mix = data[key]
        value = sum(mix.get(src, 0.0) / mix["total"] * g for src, g in _CANADA_FACTORS.items())
        return value, key
    if country == "CHN":
        path, data = _read_json(folder, "china_provincial_emissions.json")
        name = _CHINA_SUFFIX.sub("", key)
        for code, entry in data["data"].items():
            if key == code.lower() or name in entry["names"]:
                return float(entry["emission_factor"]), code
        raise _not_found("Chinese province", key, [c.lower() for c in data["data"]], path)
    if country in _NORDIC:
        path, data = _read_json(folder, "nordic_emissions.json")
        code = region.strip().upper()
        if code not in data["data"]:
            raise _not_found("Nordic bidding zone", code, list(data["data"]), path)
        return float(data["data"][code]["emission_factor"]), code
    raise ConfigError(
        f"codecarbon provider: CodeCarbon has no regional data for {country}; "
        "regions exist for USA, CAN, CHN, SWE, NOR, FIN (omit region to use the country value)",
        field="region",
    )


def _country_value(country: str, folder: Path) -> float:
    path, data = _read_json(folder, "global_energy_mix.json")
    entry = data.get(country)
    if entry is None:
        hint = " (use ISO 3166-1 alpha-3 codes, e.g. FRA, DEU, USA)" if len(country) != 3 else ""
        raise _not_found(f"country{hint}", country, sorted(data), path)
    if entry.get("carbon_intensity") is None:
        raise ConfigError(f"codecarbon provider: {path} has no carbon_intensity for {country}")
    return float(entry["carbon_intensity"])


@register_provider("codecarbon")
def _codecarbon(spec: Mapping[str, Any]) -> StaticProvider:
    check_keys(spec, {"country"}, {"region"})
    country, region = spec["country"], spec.get("region")
    if not isinstance(country, str) or not country.strip():
        raise ConfigError(f"codecarbon provider: country must be a code, got {country!r}")
    if region is not None and (not isinstance(region, str) or not region.strip()):
        raise ConfigError(f"codecarbon provider: region must be a name, got {region!r}")
    country = country.strip().upper()
    folder = _codecarbon_data()
    if region is None:
        value, source = _country_value(country, folder), f"codecarbon:{country}"
    else:
        value, name = _region_value(country, region, folder)
        source = f"codecarbon:{country}/{name}"
    log.debug("%s: %.1f gCO2eq/kWh from CodeCarbon data in %s", source, value, folder)
    return StaticProvider(intensity_value(value, source), source)
