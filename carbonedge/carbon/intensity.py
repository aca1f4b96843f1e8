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
"""

from __future__ import annotations

import csv
import difflib
import importlib.util
import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from carbonedge.carbon.units import CarbonIntensity
from carbonedge.errors import ConfigError, InvalidRequest
from carbonedge.registry import Registry

__all__ = [
    "IntensityProvider",
    "IntensityReading",
    "create_provider",
    "known_providers",
    "packaged_traces",
    "register_provider",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IntensityReading:
    """One carbon-intensity value, where it came from, and the UTC instant it applies to.

    ``trace_time`` is the start of the trace hour used (trace providers only).
    """

    value: CarbonIntensity
    source: str
    timestamp: datetime
    trace_time: datetime | None = None


@runtime_checkable
class IntensityProvider(Protocol):
    def intensity_at(self, when: datetime) -> IntensityReading: ...


ProviderFactory = Callable[[Mapping[str, Any]], IntensityProvider]
PROVIDERS: Registry[ProviderFactory] = Registry("carbon-intensity provider", field="provider")


def register_provider(name: str) -> Callable[[ProviderFactory], ProviderFactory]:
    """Register ``factory(spec) -> IntensityProvider`` under ``name``."""
    return PROVIDERS.register(name)


def known_providers() -> list[str]:
    return PROVIDERS.names()


def create_provider(spec: Mapping[str, Any]) -> IntensityProvider:
    """Build the provider ``spec["provider"]`` names from the rest of ``spec``."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"a carbon-intensity spec must be a mapping, got {spec!r}")
    return PROVIDERS.get(spec.get("provider"))(spec)


def _utc(when: object, what: str = "when") -> datetime:
    """``when`` converted to UTC; naive datetimes are refused, never guessed."""
    if not isinstance(when, datetime):
        raise InvalidRequest(f"{what} must be a datetime, got {when!r}", field=what)
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidRequest(
            f"{what} must be timezone-aware (UTC), got naive {when.isoformat()}; "
            "use datetime.now(UTC) or attach tzinfo=UTC",
            field=what,
        )
    return when.astimezone(UTC)


def _check_keys(spec: Mapping[str, Any], required: set[str], optional: set[str]) -> None:
    name = spec.get("provider")
    missing = sorted(required - spec.keys())
    if missing:
        raise ConfigError(f"{name} provider needs {', '.join(missing)}", field=missing[0])
    unknown = sorted(set(spec) - required - optional - {"provider"})
    if unknown:
        allowed = ", ".join(sorted(required | optional))
        raise ConfigError(
            f"{name} provider: unknown key(s) {', '.join(unknown)} (allowed: {allowed})",
            field=unknown[0],
        )


def _intensity(value: object, where: str) -> CarbonIntensity:
    try:
        return CarbonIntensity.from_g_per_kwh(value)  # type: ignore[arg-type]
    except InvalidRequest as e:
        raise ConfigError(f"{where}: {e.message}", field="value") from e


# --- static -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StaticProvider:
    value: CarbonIntensity
    source: str = "static"

    def intensity_at(self, when: datetime) -> IntensityReading:
        return IntensityReading(self.value, self.source, _utc(when))

    def forecast(self, when: datetime, horizon: timedelta,
                 max_points: int = 48) -> list[tuple[datetime, float]]:
        """A static value does not change: one point."""
        return [(_utc(when), self.value.g_per_kwh)]


@register_provider("static")
def _static(spec: Mapping[str, Any]) -> StaticProvider:
    _check_keys(spec, {"value"}, set())
    return StaticProvider(_intensity(spec["value"], "static provider"))


# --- trace --------------------------------------------------------------------------------

_TRACE_COLUMNS = {
    "direct": "Carbon Intensity gCO₂eq/kWh (direct)",
    "lca": "Carbon Intensity gCO₂eq/kWh (LCA)",
}
_TIME_COLUMN = "Datetime (UTC)"
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_HOUR_US = 3_600_000_000


def packaged_traces() -> list[str]:
    """Names of the traces shipped in ``carbonedge/carbon/traces`` (without ``.csv``)."""
    folder = resources.files("carbonedge.carbon").joinpath("traces")
    return sorted(p.name[: -len(".csv")] for p in folder.iterdir() if p.name.endswith(".csv"))


def _trace_path(file: object) -> Path:
    if not isinstance(file, (str, Path)) or not str(file):
        raise ConfigError(f"trace provider: file must be a path or a name, got {file!r}")
    path = Path(file)
    if path.is_file():
        return path
    packaged = resources.files("carbonedge.carbon").joinpath("traces", f"{file}.csv")
    if packaged.is_file():
        return Path(str(packaged))
    raise ConfigError(
        f"trace provider: no file {str(file)!r} and no packaged trace of that name; "
        f"packaged: {', '.join(packaged_traces())}",
        field="file",
    )


def _header_key(name: str) -> str:
    return name.strip().replace("₂", "2").lower()


def _load_trace(path: Path, column: str) -> tuple[datetime, tuple[float, ...]]:
    """First hour and hourly values of a trace CSV; rows must be consecutive hours."""
    wanted = _TRACE_COLUMNS[column]
    values: list[float] = []
    first: datetime | None = None
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ConfigError(f"{path}: empty trace file", field="file")
            keys = [_header_key(h) for h in header]
            try:
                t_idx, v_idx = (
                    keys.index(_header_key(_TIME_COLUMN)),
                    keys.index(_header_key(wanted)),
                )
            except ValueError:
                raise ConfigError(
                    f"{path}: header needs {_TIME_COLUMN!r} and {wanted!r}; found {header}",
                    field="column",
                ) from None
            for row in reader:
                if not row:
                    continue
                where = f"{path}: row {reader.line_num}"
                if len(row) <= max(t_idx, v_idx):
                    raise ConfigError(f"{where}: {len(row)} fields, need {max(t_idx, v_idx) + 1}")
                try:
                    stamp = datetime.strptime(row[t_idx].strip(), _TIME_FORMAT).replace(tzinfo=UTC)
                except ValueError:
                    raise ConfigError(
                        f"{where}: {_TIME_COLUMN} {row[t_idx]!r} is not 'YYYY-MM-DD HH:MM:SS'"
                    ) from None
                try:
                    value = float(row[v_idx])
                except ValueError:
                    value = math.nan
                if not math.isfinite(value) or value < 0:
                    raise ConfigError(f"{where}: {wanted} {row[v_idx]!r} is not a number >= 0")
                if first is None:
                    first = stamp
                expected = first + timedelta(hours=len(values))
                if stamp != expected:
                    raise ConfigError(
                        f"{where}: {stamp:%Y-%m-%d %H:%M:%S} where the next hour "
                        f"{expected:%Y-%m-%d %H:%M:%S} was expected (rows must be consecutive hours)"
                    )
                values.append(value)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason})", field="file") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read trace ({e.strerror})", field="file") from e
    if first is None:
        raise ConfigError(f"{path}: trace has a header but no rows", field="file")
    return first, tuple(values)


@dataclass(frozen=True, slots=True)
class TraceProvider:
    """Replays an hourly trace against wall time, periodically, at ``speedup`` x real time."""

    name: str
    trace_start: datetime
    values: tuple[float, ...]
    start: datetime
    speedup: float = 1.0

    def hour_index(self, when: datetime) -> int:
        elapsed_us = (_utc(when) - self.start) // timedelta(microseconds=1)
        # Round to whole microseconds of trace time first, so that float error in the
        # product cannot push an exact hour boundary into the previous hour.
        trace_us = round(elapsed_us * self.speedup)
        return (trace_us // _HOUR_US) % len(self.values)

    def wall_time(self, trace: timedelta) -> timedelta:
        """How long ``trace`` (a stretch of trace time) lasts in wall time at this speed-up."""
        return trace / self.speedup

    def intensity_at(self, when: datetime) -> IntensityReading:
        index = self.hour_index(when)
        return IntensityReading(
            value=CarbonIntensity(self.values[index]),
            source=f"trace:{self.name}",
            timestamp=_utc(when),
            trace_time=self.trace_start + timedelta(hours=index),
        )

    def forecast(self, when: datetime, horizon: timedelta,
                 max_points: int = 48) -> list[tuple[datetime, float]]:
        """``(from, value)`` for the hour containing ``when`` and each later trace hour
        that begins within ``horizon`` of it (wall time), at most ``max_points``."""
        when = _utc(when)
        end = when + horizon
        points = [(when, self.values[self.hour_index(when)])]
        elapsed_us = (when - self.start) // timedelta(microseconds=1)
        hour = round(elapsed_us * self.speedup) // _HOUR_US
        while len(points) < max_points:
            hour += 1
            # the first wall microsecond whose trace time is in the next hour
            boundary = self.start + timedelta(microseconds=math.ceil(
                hour * _HOUR_US / self.speedup))
            if boundary > end:
                break
            points.append((boundary, self.values[self.hour_index(boundary)]))
        return points


def _parse_start(value: object) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ConfigError(
                f"trace provider: start {value!r} is not an ISO datetime "
                "(e.g. 2024-01-01T00:00:00Z)",
                field="start",
            ) from None
    try:
        return _utc(value, "start")
    except InvalidRequest as e:
        raise ConfigError(f"trace provider: {e.message}", field="start") from e


@register_provider("trace")
def _trace(spec: Mapping[str, Any]) -> TraceProvider:
    _check_keys(spec, {"file", "start"}, {"speedup", "column"})
    column = spec.get("column", "direct")
    if column not in _TRACE_COLUMNS:
        raise ConfigError(
            f"trace provider: column {column!r} is not one of {', '.join(_TRACE_COLUMNS)}",
            field="column",
        )
    speedup = spec.get("speedup", 1.0)
    if (
        isinstance(speedup, bool)
        or not isinstance(speedup, (int, float))
        or not (math.isfinite(speedup) and speedup > 0)
    ):
        raise ConfigError(
            f"trace provider: speedup must be a number > 0, got {speedup!r}", field="speedup"
        )
    path = _trace_path(spec["file"])
    start = _parse_start(spec["start"])
    first, values = _load_trace(path, column)
    name = path.name.removesuffix(".csv").removesuffix("_hourly")
    if column != "direct":
        name = f"{name}:{column}"
    return TraceProvider(name, first, values, start, float(speedup))


# --- codecarbon ---------------------------------------------------------------------------

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
    _check_keys(spec, {"country"}, {"region"})
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
    return StaticProvider(_intensity(value, source), source)


# The live providers (electricitymaps, watttime) and the fallback chain register themselves
# in PROVIDERS on import; they live in their own modules, imported last to avoid a cycle.
from carbonedge.carbon import fallback as _fallback_providers  # noqa: E402,F401
from carbonedge.carbon import live as _live_providers  # noqa: E402,F401
