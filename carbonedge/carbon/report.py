"""``carbonedge report``: a summary of an emissions CSV written by the carbon service."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from carbonedge.carbon.emissions_csv import read_rows
from carbonedge.errors import ConfigError


@dataclass(slots=True)
class NodeTotals:
    tasks: int = 0
    cpu_s: float = 0.0
    """CPU-seconds charged to its tasks."""
    cpu_kwh: float = 0.0
    ram_kwh: float = 0.0
    carbon_g: float = 0.0
    attributed_cpu_kwh: float = 0.0
    """Host CPU energy the node's cgroup CPU time earned, over the windows."""
    window_task_cpu_kwh: float = 0.0
    """Its task rows' CPU energy, over the same windows (the like-for-like comparison)."""
    intensity_sources: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Report:
    nodes: dict[str, NodeTotals]
    windows: int
    host_cpu_kwh: float
    host_energy_kwh: float
    attributed_cpu_kwh: float
    unattributed_kwh: float
    seconds: float
    power_sources: set[str]
    apportioning: set[str]

    @property
    def ledger_vs_cgroup(self) -> float:
        """Σ per-task CPU energy over the host CPU energy attributed to the nodes by
        their cgroups' CPU time, both over the reconciled windows (1.0 = they agree)."""
        tasks = sum(n.window_task_cpu_kwh for n in self.nodes.values())
        return tasks / self.attributed_cpu_kwh if self.attributed_cpu_kwh > 0 else math.nan

    @property
    def unattributed_share(self) -> float:
        return self.unattributed_kwh / self.host_energy_kwh if self.host_energy_kwh else math.nan


def _float(row: dict[str, str], name: str) -> float:
    try:
        return float(row.get(name) or 0.0)
    except ValueError:
        return math.nan


def summarise(path: str | Path) -> Report:
    """Totals per node and for the host, from every row of ``path``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no emissions CSV at {path} (the carbon service writes one: "
                          "`carbonedge carbon`)", field="csv")
    rows = read_rows(path)
    nodes: dict[str, NodeTotals] = defaultdict(NodeTotals)
    report = Report(nodes, 0, 0.0, 0.0, 0.0, 0.0, 0.0, set(), set())
    for row in rows:
        kind = row.get("row_type")
        if kind == "task":
            n = nodes[row["node"]]
            n.tasks += 1
            n.cpu_s += _float(row, "cpu_seconds")
            n.cpu_kwh += _float(row, "cpu_energy")
            n.ram_kwh += _float(row, "ram_energy")
            n.carbon_g += _float(row, "emissions") * 1000
            n.intensity_sources.add(row.get("intensity_source", ""))
        elif kind == "node":
            n = nodes[row["node"]]
            n.attributed_cpu_kwh += _float(row, "attributed_cpu_energy")
            n.window_task_cpu_kwh += _float(row, "cpu_energy")
        elif kind == "host":
            report.windows += 1
            report.host_cpu_kwh += _float(row, "cpu_energy")
            report.host_energy_kwh += _float(row, "energy_consumed")
            report.attributed_cpu_kwh += _float(row, "attributed_cpu_energy")
            report.unattributed_kwh += _float(row, "unattributed_energy")
            report.seconds += _float(row, "duration")
            report.power_sources.add(row.get("power_source", ""))
            report.apportioning.add(row.get("apportioning", ""))
    return report


def format_report(report: Report) -> str:
    lines = [f"{'node':<14} {'tasks':>7} {'CPU kWh':>11} {'RAM kWh':>11} {'gCO2':>10} "
             f"{'g/task':>10} {'cgroup kWh':>11}  intensity source"]
    for name in sorted(report.nodes):
        n = report.nodes[name]
        per_task = n.carbon_g / n.tasks if n.tasks else math.nan
        lines.append(f"{name:<14} {n.tasks:>7} {n.cpu_kwh:>11.3e} {n.ram_kwh:>11.3e} "
                     f"{n.carbon_g:>10.4f} {per_task:>10.3e} {n.attributed_cpu_kwh:>11.3e}  "
                     f"{'|'.join(sorted(n.intensity_sources - {''})) or '-'}")
    lines += [
        "",
        f"windows: {report.windows} ({report.seconds:.0f} s); host energy "
        f"{report.host_energy_kwh:.3e} kWh, of which CPU {report.host_cpu_kwh:.3e}",
        f"host CPU energy attributed to nodes by cgroup CPU time: "
        f"{report.attributed_cpu_kwh:.3e} kWh; unattributed (idle, services, RAM and GPU "
        f"beyond the nodes'): {report.unattributed_kwh:.3e} kWh "
        f"({report.unattributed_share:.1%} of host energy)",
        f"per-task CPU energy / cgroup-attributed CPU energy: {report.ledger_vs_cgroup:.3f}",
        f"host power source: {', '.join(sorted(report.power_sources - {''})) or '-'}; "
        f"apportioning: {', '.join(sorted(report.apportioning - {''})) or '-'}",
    ]
    return "\n".join(lines)
