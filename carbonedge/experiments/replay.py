"""Replaying hourly intensity traces on the nodes, compressed in time.

Each node gets one zone's trace (a packaged trace's name or a CSV path in the Electricity
Maps format). Every trace is aligned so that the same UTC hour plays on every node at the
same wall instant: the window's first hour ``start`` begins at wall time ``t0``, and one
trace hour lasts ``3600 / speedup`` wall seconds. The replay topology is the base
topology's nodes (same quotas and limits) with their intensities replaced by the traces,
written as a compose file the agents read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from carbonedge.carbon.intensity import create_provider
from carbonedge.carbon.trace import TraceProvider
from carbonedge.compose.topology import Topology
from carbonedge.errors import ConfigError

__all__ = ["DEFAULT_ZONES", "Window", "Zone", "assign_zones", "load_zone", "write_compose"]

DEFAULT_ZONES = ("US-CAL-CISO_2023_week23", "GB_2023_week23")
HOUR = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Zone:
    """One trace: its name, the ``file`` a provider spec names it by, and its hours."""

    name: str
    file: str
    first: datetime
    values: tuple[float, ...]

    @property
    def end(self) -> datetime:
        """The end of the trace's last hour."""
        return self.first + len(self.values) * HOUR

    def value_at(self, when: datetime) -> float:
        """The intensity of the trace hour containing ``when`` (which must lie in it)."""
        index = math.floor((when - self.first) / HOUR)
        if not 0 <= index < len(self.values):
            raise ConfigError(f"{when:%Y-%m-%d %H:%M} UTC is outside trace {self.name} "
                              f"({self.first:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M})",
                              field="start")
        return self.values[index]


def load_zone(zone: str) -> Zone:
    """A packaged trace by name, or a trace CSV by path (a ConfigError names a bad one)."""
    path = Path(zone)
    file = str(path.resolve()) if path.is_file() else zone
    provider = create_provider({"provider": "trace", "file": file,
                                "start": "2000-01-01T00:00:00+00:00"})
    assert isinstance(provider, TraceProvider)
    return Zone(provider.name, file, provider.trace_start, provider.values)


def assign_zones(node_ids: Sequence[str], zones: Sequence[Zone]) -> dict[str, Zone]:
    """Zones to nodes in order, cycled; more zones than nodes is an error."""
    if not zones:
        raise ConfigError("give at least one zone", field="zones")
    if len(zones) > len(node_ids):
        raise ConfigError(f"{len(zones)} zones for {len(node_ids)} nodes "
                          f"({', '.join(node_ids)}): give at most one zone per node",
                          field="zones")
    return {node: zones[i % len(zones)] for i, node in enumerate(node_ids)}


@dataclass(frozen=True, slots=True)
class Window:
    """The replayed stretch of trace time and its compression."""

    start: datetime
    """The trace hour (UTC) the replay starts at."""
    hours: int
    speedup: float
    """Trace seconds per wall second."""

    @property
    def hour_s(self) -> float:
        """Wall seconds per trace hour."""
        return 3600.0 / self.speedup

    def check(self, zones: Mapping[str, Zone], *, before_h: int, after_h: int) -> None:
        """Every trace must cover ``before_h`` hours before the window (what yesterday's
        forecaster looks back on) to ``after_h`` hours after it (the last deadlines)."""
        need_from = self.start - before_h * HOUR
        need_to = self.start + (self.hours + after_h) * HOUR
        for zone in {z.name: z for z in zones.values()}.values():
            if need_from < zone.first or need_to > zone.end:
                raise ConfigError(
                    f"trace {zone.name} covers {zone.first:%Y-%m-%d %H:%M} to "
                    f"{zone.end:%Y-%m-%d %H:%M} UTC; the replay needs {need_from:%Y-%m-%d %H:%M}"
                    f" to {need_to:%Y-%m-%d %H:%M} ({before_h} h before the start for the "
                    f"forecasters, {self.hours} h replayed, {after_h} h for the last "
                    "deadlines): choose another --start or fewer --hours", field="start")

    def series(self, zone: Zone, hours: int) -> list[tuple[float, float]]:
        """(hour from the window start, intensity) for ``hours`` hours, for plotting."""
        return [(float(h), zone.value_at(self.start + h * HOUR)) for h in range(hours)]


def default_start(zones: Sequence[Zone]) -> datetime:
    """The traces' second common day: a day of history for the ``yesterday`` forecaster."""
    first = max(z.first for z in zones)
    day = first.replace(hour=0, minute=0, second=0, microsecond=0)
    return day + timedelta(days=1) + (timedelta(days=1) if day < first else timedelta())


def parse_start(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"--start {text!r} is not an ISO datetime (e.g. 2023-06-06T00:00Z)",
                          field="start") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    when = when.astimezone(UTC)
    if when != when.replace(minute=0, second=0, microsecond=0):
        raise ConfigError(f"--start {text!r} must be a whole hour", field="start")
    return when


def trace_spec(zone: Zone, window: Window, t0: float) -> dict[str, Any]:
    """The provider spec that plays ``window.start`` of ``zone`` at wall time ``t0``."""
    offset_s = (window.start - zone.first).total_seconds() / window.speedup
    start = datetime.fromtimestamp(t0 - offset_s, UTC)
    return {"provider": "trace", "file": zone.file, "start": start.isoformat(),
            "speedup": window.speedup}


def write_compose(base: Topology, zones: Mapping[str, Zone], window: Window, t0: float,
                  path: Path) -> Path:
    """A compose file of ``base``'s nodes with their intensities replaced by the traces."""
    services: dict[str, Any] = {}
    for node in base.nodes:
        zone = zones[node.name]
        services[node.name] = {
            "cpus": node.cpus,
            "mem_limit": node.mem_limit_bytes,
            "x-carbonedge": {"role": "node", "pue": node.pue,
                             "carbon_intensity": trace_spec(zone, window, t0)},
        }
    header = (f"# Replay of {window.hours} trace hours from {window.start:%Y-%m-%d %H:%M} UTC at "
              f"{window.speedup:g}x, written by `carbonedge experiment temporal`\n")
    path.write_text(header + yaml.safe_dump({"services": services}, sort_keys=False),
                    encoding="utf-8")
    return path
