"""The ``trace`` provider: an hourly Electricity Maps CSV replayed against wall time.

``{provider: trace, file: GB_2023_week23, start: 2024-01-01T00:00:00Z, speedup: 1.0,
column: direct}``: wall time maps to trace time as ``first_row + (when - start) *
speedup``; the value is that of the hour containing it (floor), and the series repeats
after its last hour (and before ``start``). ``file`` is a path or the name of a packaged
trace (``carbonedge/carbon/traces``); ``column`` is ``direct`` (operational, the default)
or ``lca`` (life-cycle).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from carbonedge.carbon.providers import (
    IntensityReading,
    as_utc,
    check_keys,
    register_provider,
)
from carbonedge.carbon.units import CarbonIntensity
from carbonedge.errors import ConfigError, InvalidRequest

__all__ = ["TraceProvider", "packaged_traces"]


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
        elapsed_us = (as_utc(when) - self.start) // timedelta(microseconds=1)
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
            timestamp=as_utc(when),
            trace_time=self.trace_start + timedelta(hours=index),
        )

    def forecast(self, when: datetime, horizon: timedelta,
                 max_points: int = 48) -> list[tuple[datetime, float]]:
        """``(from, value)`` for the hour containing ``when`` and each later trace hour
        that begins within ``horizon`` of it (wall time), at most ``max_points``."""
        when = as_utc(when)
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
        return as_utc(value, "start")
    except InvalidRequest as e:
        raise ConfigError(f"trace provider: {e.message}", field="start") from e


@register_provider("trace")
def _trace(spec: Mapping[str, Any]) -> TraceProvider:
    check_keys(spec, {"file", "start"}, {"speedup", "column"})
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
