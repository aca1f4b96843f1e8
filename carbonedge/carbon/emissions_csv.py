"""The emissions CSV: CodeCarbon's column names, plus what CarbonEdge knows per task.

Every row names its accounting ``method`` (``device`` or ``measured``). Kinds of row
(``row_type``):

- ``task``, ``idle``, ``startup``: one ledger row (a task, or a stretch of a node's time
  that is no task's), twice: its ``device`` charge and its ``measured`` one (with its
  ``settlement``: ``settled``, or ``unsettled`` when no host samples cover it);
- ``node``: one node over one reconciliation window, per method: the sum of its rows, and
  (``measured``) the host energy its cgroup's CPU time and memory earn it
  (``attributed_cpu_energy``, ``attributed_energy``);
- ``host``: the host over one window, as CodeCarbon measured it and priced at
  ``host_country``/``host_region``, with the energy no node accounts for
  (``unattributed_energy``) split by cause: idle floor, other processes, RAM beyond the
  nodes' shares, GPU.

Units follow CodeCarbon: energy in kWh, power in W, emissions in kg CO2eq, duration in s.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

CODECARBON_COLUMNS = (
    "timestamp", "project_name", "run_id", "duration", "emissions", "emissions_rate",
    "cpu_power", "gpu_power", "ram_power", "cpu_energy", "gpu_energy", "ram_energy",
    "energy_consumed", "country_iso_code", "region", "cpu_count", "cpu_model",
    "tracking_mode", "pue",
)
CARBONEDGE_COLUMNS = (
    "row_type", "method", "settlement", "estimated", "window_start", "node", "task_id",
    "kind", "model", "mode", "status", "tasks", "cpu_seconds", "cpu_model_seconds",
    "cpu_overhead_seconds", "busy_seconds", "intensity_g_per_kwh", "intensity_source",
    "power_source", "attributed_cpu_energy", "attributed_energy", "unattributed_energy",
    "unattributed_idle_energy", "unattributed_other_energy", "unattributed_ram_energy",
    "unattributed_gpu_energy",
)
COLUMNS = CODECARBON_COLUMNS + CARBONEDGE_COLUMNS


class EmissionsCsv:
    """Appends rows to an emissions CSV, writing the header when the file is new."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = self.path.open("a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS, extrasaction="raise")
        if new:
            self._writer.writeheader()
            self._file.flush()

    def write(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Append ``rows`` (missing columns left empty) and flush; returns how many."""
        count = 0
        for row in rows:
            self._writer.writerow({k: _cell(v) for k, v in row.items()})
            count += 1
        self._file.flush()
        return count

    def close(self) -> None:
        self._file.close()


def _cell(value: Any) -> Any:
    return repr(value) if isinstance(value, float) else value


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """Every row of an emissions CSV as a dict of strings."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
