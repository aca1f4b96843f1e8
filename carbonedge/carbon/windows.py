"""Reconciliation windows and the emissions-CSV rows the carbon service writes from them.

Pure bookkeeping, no I/O: :class:`Settler` holds ledger rows until the host samples cover
them and settles their ``measured`` charge; :class:`Window` gathers one window's samples
and settled rows; the ``*_rows`` functions turn them into CSV rows (CodeCarbon's column
names, units and sign conventions: kWh, W, kg, s).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from carbonedge.carbon.apportion import WindowShares, reconcile_window
from carbonedge.carbon.ledger import LedgerRow
from carbonedge.carbon.measured import HostSample, MeasuredCharge, SampleLog, settle
from carbonedge.carbon.units import joules_from_kwh, kwh_from_joules

__all__ = ["Settler", "Window", "host_row", "ledger_rows", "node_rows"]

GIVE_UP_S = 30.0
"""A row no sample has covered this long after it ended (the tracker stalled) is settled
as ``unsettled`` rather than held forever."""


@dataclass(frozen=True, slots=True)
class Settled:
    entry_id: Any
    row: LedgerRow
    measured: MeasuredCharge


class Settler:
    """Ledger rows waiting for host samples to cover them."""

    def __init__(self, log: SampleLog, *, host_mem_bytes: float, estimated: bool) -> None:
        self.log = log
        self.host_mem_bytes = host_mem_bytes
        self.estimated = estimated
        self._pending: list[tuple[Any, LedgerRow]] = []

    def add(self, entry_id: Any, row: LedgerRow) -> None:
        self._pending.append((entry_id, row))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def oldest_pending_end(self) -> float:
        """End of the oldest row still waiting (``inf`` when none waits)."""
        return min((max(r.ts, r.start) for _, r in self._pending), default=math.inf)

    def ready(self, now: float, *, force: bool = False) -> list[Settled]:
        """Settle every row the samples now cover (all of them with ``force``)."""
        covered = self.log.covered_until
        out, keep = [], []
        for entry_id, row in self._pending:
            end = max(row.ts, row.start)
            if force or covered >= end or now - end > GIVE_UP_S:
                out.append(Settled(entry_id, row, settle(
                    row, self.log, host_mem_bytes=self.host_mem_bytes,
                    estimated=self.estimated)))
            else:
                keep.append((entry_id, row))
        self._pending = keep
        return out


@dataclass(slots=True)
class NodeWindow:
    """One node over one window: its ledger rows summed, per method."""

    rows: int = 0
    tasks: int = 0
    cpu_s: float = 0.0
    device_cpu_kwh: float = 0.0
    device_ram_kwh: float = 0.0
    device_carbon_g: float = 0.0
    measured_cpu_kwh: float = 0.0
    measured_ram_kwh: float = 0.0
    measured_carbon_g: float = 0.0
    unsettled: int = 0
    mem_limit_bytes: float = 0.0
    pue: float = 1.0
    intensity: float = math.nan
    intensity_sources: set[str] = field(default_factory=set)

    def add(self, row: LedgerRow, measured: MeasuredCharge) -> None:
        self.rows += 1
        self.tasks += row.row_type == "task"
        self.cpu_s += row.cpu_s
        self.device_cpu_kwh += row.cpu_kwh
        self.device_ram_kwh += row.ram_kwh
        self.device_carbon_g += row.carbon_g
        if measured.settlement == "settled":
            self.measured_cpu_kwh += measured.cpu_kwh
            self.measured_ram_kwh += measured.ram_kwh
            self.measured_carbon_g += measured.carbon_g
        else:
            self.unsettled += 1
        self.mem_limit_bytes = row.mem_limit_bytes or self.mem_limit_bytes
        self.pue = row.pue
        self.intensity = row.intensity_g_per_kwh
        self.intensity_sources.add(row.intensity_source)


@dataclass(slots=True)
class Window:
    index: int
    start: float
    end: float
    samples: list[HostSample] = field(default_factory=list)
    emissions_kg: float = 0.0
    nodes: dict[str, NodeWindow] = field(default_factory=dict)

    def node(self, node_id: str) -> NodeWindow:
        return self.nodes.setdefault(node_id, NodeWindow())

    @property
    def duration(self) -> float:
        return sum(s.seconds for s in self.samples) or (self.end - self.start)

    def shares(self, host_mem_bytes: float) -> WindowShares:
        mem = {n: nw.mem_limit_bytes for n, nw in self.nodes.items()}
        return reconcile_window(self.samples, mem, host_mem_bytes)


@dataclass(frozen=True, slots=True)
class RowContext:
    """What every CSV row of one service shares."""

    run_id: str
    window_s: float
    country: str
    region: str
    cpu_count: int
    cpu_model: str
    host_source: str
    """The host tracker's power source (``codecarbon:<mode>``)."""

    def common(self, ts: float, duration: float) -> dict[str, Any]:
        return {
            "timestamp": datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds"),
            "window_start": datetime.fromtimestamp(
                (ts // self.window_s) * self.window_s, UTC).isoformat(),
            "project_name": "carbonedge", "run_id": self.run_id, "duration": duration,
            "country_iso_code": self.country, "region": self.region,
            "cpu_count": self.cpu_count, "cpu_model": self.cpu_model,
            "tracking_mode": "machine",
        }


def _energy_columns(cpu_kwh: float, ram_kwh: float, carbon_g: float,
                    duration: float) -> dict[str, Any]:
    duration = max(duration, 1e-9)
    return {
        "cpu_energy": cpu_kwh, "ram_energy": ram_kwh, "gpu_energy": 0.0,
        "energy_consumed": cpu_kwh + ram_kwh,
        "cpu_power": joules_from_kwh(cpu_kwh) / duration,
        "ram_power": joules_from_kwh(ram_kwh) / duration, "gpu_power": 0.0,
        "emissions": carbon_g / 1000, "emissions_rate": carbon_g / 1000 / duration,
    }


def ledger_rows(ctx: RowContext, settled: Settled) -> list[dict[str, Any]]:
    """A ledger row's two CSV rows: its ``device`` charge and its ``measured`` one."""
    row, measured = settled.row, settled.measured
    duration = max(row.wall_s, 1e-9)
    base = {
        **ctx.common(row.ts, row.wall_s), "row_type": row.row_type, "node": row.node,
        "task_id": row.task_id, "kind": row.kind, "model": row.model, "mode": row.mode,
        "status": row.status, "tasks": int(row.row_type == "task"), "pue": row.pue,
        "cpu_seconds": row.cpu_s, "cpu_model_seconds": row.cpu_model_s,
        "cpu_overhead_seconds": row.cpu_overhead_s, "busy_seconds": row.busy_s,
        "intensity_g_per_kwh": row.intensity_g_per_kwh,
        "intensity_source": row.intensity_source,
    }
    device = {**base, "method": "device", "power_source": f"device:{row.power_source}",
              **_energy_columns(row.cpu_kwh, row.ram_kwh, row.carbon_g, duration)}
    measured_row = {**base, "method": "measured", "settlement": measured.settlement,
                    "estimated": int(measured.estimated), "power_source": ctx.host_source}
    if measured.settlement == "settled":
        measured_row.update(_energy_columns(measured.cpu_kwh, measured.ram_kwh,
                                            measured.carbon_g, duration))
    return [device, measured_row]


def node_rows(ctx: RowContext, window: Window, shares: WindowShares) -> list[dict[str, Any]]:
    """Per node, a ``device`` row (its rows' device charges) and a ``measured`` row (its
    rows' measured charges beside the host energy its cgroup earned)."""
    duration = window.duration
    rows: list[dict[str, Any]] = []
    for node_id in sorted(set(window.nodes) | set(shares.node_cpu_j)):
        nw = window.nodes.get(node_id) or NodeWindow()
        base = {
            **ctx.common(window.start, duration), "row_type": "node", "node": node_id,
            "tasks": nw.tasks, "cpu_seconds": nw.cpu_s, "pue": nw.pue,
            "intensity_g_per_kwh": nw.intensity,
            "intensity_source": "|".join(sorted(nw.intensity_sources)),
        }
        rows.append({**base, "method": "device",
                     **_energy_columns(nw.device_cpu_kwh, nw.device_ram_kwh,
                                       nw.device_carbon_g, duration)})
        attributed_cpu = kwh_from_joules(shares.node_cpu_j.get(node_id, 0.0))
        attributed_ram = kwh_from_joules(shares.node_ram_j.get(node_id, 0.0))
        rows.append({**base, "method": "measured",
                     "settlement": "unsettled" if nw.unsettled else "settled",
                     "estimated": "", "power_source": ctx.host_source,
                     **_energy_columns(nw.measured_cpu_kwh, nw.measured_ram_kwh,
                                       nw.measured_carbon_g, duration),
                     "attributed_cpu_energy": attributed_cpu,
                     "attributed_energy": attributed_cpu + attributed_ram})
    return rows


def host_row(ctx: RowContext, window: Window, shares: WindowShares, *,
             intensity: tuple[float, str], estimated: bool) -> dict[str, Any]:
    """The host over the window as CodeCarbon measured it, and what no node accounts for."""
    duration = window.duration
    kwh: Mapping[str, float] = {k: kwh_from_joules(v) for k, v in shares.causes_j().items()}
    cpu, ram, gpu = (kwh_from_joules(shares.host_cpu_j), kwh_from_joules(shares.host_ram_j),
                     kwh_from_joules(shares.host_gpu_j))
    return {
        **ctx.common(window.start, duration), "row_type": "host", "method": "measured",
        "estimated": int(estimated), "node": "",
        "tasks": sum(nw.tasks for nw in window.nodes.values()),
        "cpu_seconds": sum(s.busy_cpu_s for s in window.samples),
        "cpu_energy": cpu, "ram_energy": ram, "gpu_energy": gpu,
        "energy_consumed": cpu + ram + gpu,
        "cpu_power": shares.host_cpu_j / duration, "ram_power": shares.host_ram_j / duration,
        "gpu_power": shares.host_gpu_j / duration,
        "emissions": window.emissions_kg,
        "emissions_rate": window.emissions_kg / duration, "pue": 1.0,
        "intensity_g_per_kwh": intensity[0], "intensity_source": intensity[1],
        "power_source": ctx.host_source,
        "attributed_cpu_energy": kwh_from_joules(sum(shares.node_cpu_j.values())),
        "attributed_energy": kwh_from_joules(shares.attributed_j),
        "unattributed_energy": kwh_from_joules(shares.unattributed_j),
        "unattributed_idle_energy": kwh["idle"], "unattributed_other_energy": kwh["other"],
        "unattributed_ram_energy": kwh["ram"], "unattributed_gpu_energy": kwh["gpu"],
    }
