"""``carbonedge report``: a summary of an emissions CSV written by the carbon service.

Per node and accounting method: the tasks, the idle and start-up stretches, their energy
and carbon; for the ``measured`` method, how many rows could not be settled and the host
energy the node's cgroup earned. For the host: what CodeCarbon measured, and the part no
node accounts for, by cause.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from carbonedge.carbon.emissions_csv import read_rows
from carbonedge.errors import ConfigError
from carbonedge.settings import ACCOUNTING_METHODS

__all__ = ["MethodTotals", "NodeTotals", "Report", "format_report", "summarise"]

_STRETCHES = ("task", "idle", "startup")


@dataclass(slots=True)
class MethodTotals:
    """One node's rows under one accounting method."""

    tasks: int = 0
    task_kwh: float = 0.0
    task_carbon_g: float = 0.0
    idle_kwh: float = 0.0
    """Idle and start-up stretches together."""
    idle_carbon_g: float = 0.0
    unsettled: int = 0
    estimated: int = 0

    @property
    def carbon_g(self) -> float:
        return self.task_carbon_g + self.idle_carbon_g

    @property
    def g_per_task(self) -> float:
        return self.task_carbon_g / self.tasks if self.tasks else math.nan


@dataclass(slots=True)
class NodeTotals:
    methods: dict[str, MethodTotals] = field(
        default_factory=lambda: {m: MethodTotals() for m in ACCOUNTING_METHODS})
    cpu_model_s: float = 0.0
    cpu_overhead_s: float = 0.0
    attributed_kwh: float = 0.0
    """Host energy (CPU share and RAM share) the node's cgroup earned, over the windows."""
    window_measured_kwh: float = 0.0
    """Its rows' measured energy, over the same windows (the like-for-like comparison)."""
    startup_measured_kwh: float = 0.0
    """Its start-up rows' measured energy: CPU burnt before its first heartbeat, which the
    carbon service sees no cgroup counter of (so no share of the host's energy)."""
    intensity_sources: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Report:
    nodes: dict[str, NodeTotals]
    windows: int = 0
    seconds: float = 0.0
    host_kwh: float = 0.0
    attributed_kwh: float = 0.0
    unattributed: dict[str, float] = field(
        default_factory=lambda: {"idle": 0.0, "other": 0.0, "ram": 0.0, "gpu": 0.0})
    host_intensity: set[str] = field(default_factory=set)
    power_sources: set[str] = field(default_factory=set)

    @property
    def unattributed_kwh(self) -> float:
        return sum(self.unattributed.values())

    @property
    def measured_vs_attributed(self) -> float:
        """Σ rows' measured energy (start-up excepted: no heartbeat counts its CPU) over the
        host energy the nodes' cgroups earned, over the reconciled windows (1.0: the
        per-row charges add up to the nodes' shares)."""
        rows = sum(n.window_measured_kwh - n.startup_measured_kwh for n in self.nodes.values())
        return rows / self.attributed_kwh if self.attributed_kwh > 0 else math.nan


def _float(row: dict[str, str], name: str) -> float:
    try:
        return float(row.get(name) or 0.0)
    except ValueError:
        return math.nan


def summarise(path: str | Path) -> Report:
    """Totals per node and method, and for the host, from every row of ``path``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no emissions CSV at {path} (the carbon service writes one: "
                          "`carbonedge carbon`)", field="csv")
    report = Report(defaultdict(NodeTotals))
    for row in read_rows(path):
        kind, method = row.get("row_type"), row.get("method", "")
        if kind in _STRETCHES and method in ACCOUNTING_METHODS:
            n = report.nodes[row["node"]]
            m = n.methods[method]
            if row.get("settlement") == "unsettled":
                m.unsettled += 1
                continue
            m.estimated += row.get("estimated") == "1"
            kwh, grams = _float(row, "energy_consumed"), _float(row, "emissions") * 1000
            if kind == "task":
                m.tasks += 1
                m.task_kwh += kwh
                m.task_carbon_g += grams
                if method == "device":
                    n.cpu_model_s += _float(row, "cpu_model_seconds")
                    n.cpu_overhead_s += _float(row, "cpu_overhead_seconds")
                    n.intensity_sources.add(row.get("intensity_source", ""))
            else:
                m.idle_kwh += kwh
                m.idle_carbon_g += grams
                if kind == "startup" and method == "measured":
                    n.startup_measured_kwh += kwh
        elif kind == "node" and method == "measured":
            n = report.nodes[row["node"]]
            n.attributed_kwh += _float(row, "attributed_energy")
            n.window_measured_kwh += _float(row, "energy_consumed")
        elif kind == "host":
            report.windows += 1
            report.seconds += _float(row, "duration")
            report.host_kwh += _float(row, "energy_consumed")
            report.attributed_kwh += _float(row, "attributed_energy")
            for cause in report.unattributed:
                report.unattributed[cause] += _float(row, f"unattributed_{cause}_energy")
            report.host_intensity.add(f"{row.get('intensity_source', '')} "
                                      f"{_float(row, 'intensity_g_per_kwh'):.0f} g/kWh")
            report.power_sources.add(row.get("power_source", ""))
    return report


def format_report(report: Report, headline: str = "device") -> str:
    """The report as text; ``headline`` is the method listed first."""
    methods = [headline, *(m for m in ACCOUNTING_METHODS if m != headline)]
    lines = [f"{'node':<14} {'method':<9} {'tasks':>6} {'task kWh':>10} {'gCO2/task':>10} "
             f"{'idle kWh':>10} {'total gCO2':>11} {'unsettled':>9}"]
    for name in sorted(report.nodes):
        n = report.nodes[name]
        for method in methods:
            m = n.methods[method]
            lines.append(f"{name:<14} {method:<9} {m.tasks:>6} {m.task_kwh:>10.3e} "
                         f"{m.g_per_task:>10.3e} {m.idle_kwh:>10.3e} {m.carbon_g:>11.4f} "
                         f"{m.unsettled:>9}")
    cpu_model = sum(n.cpu_model_s for n in report.nodes.values())
    cpu_over = sum(n.cpu_overhead_s for n in report.nodes.values())
    share = cpu_over / (cpu_model + cpu_over) if cpu_model + cpu_over else math.nan
    estimated = any(n.methods["measured"].estimated for n in report.nodes.values())
    causes = ", ".join(f"{k} {v:.3e}" for k, v in report.unattributed.items())
    unattributed_share = (report.unattributed_kwh / report.host_kwh if report.host_kwh
                          else math.nan)
    lines += [
        "",
        f"task CPU: model runs {cpu_model:.2f} s, overhead {cpu_over:.2f} s ({share:.1%})",
        f"windows: {report.windows} ({report.seconds:.0f} s); host energy "
        f"{report.host_kwh:.3e} kWh ({', '.join(sorted(report.host_intensity)) or '-'}); "
        f"power source {', '.join(sorted(report.power_sources - {''})) or '-'}"
        + (" (estimated from CPU load: no hardware counter)" if estimated else ""),
        f"host energy earned by the nodes' cgroups: {report.attributed_kwh:.3e} kWh; "
        f"unattributed {report.unattributed_kwh:.3e} kWh ({unattributed_share:.1%}): {causes}",
        f"rows' measured energy (start-up excepted) / the nodes' cgroup shares: "
        f"{report.measured_vs_attributed:.3f}",
    ]
    return "\n".join(lines)
