"""The ``device`` accounting method: each node is an emulated device of fixed power.

A node declared with ``cpus: q`` and ``mem_limit: m`` is charged as a device drawing

    P = q · W_core + 0.375 W/GB · m        (+ GPU, where one is measured)

while it is busy, where ``W_core`` is the host CPU's power per core (a setting; by default
the host CPU's TDP per logical CPU as CodeCarbon's CPU table gives it, else CodeCarbon's
documented fallback of 4 W per thread). A task keeps the device busy for its CPU-seconds
divided by the quota — what the emulated device needs, not the wall time of a shared
host — so its energy is

    E = P · cpu_s / q = W_core · cpu_s + P_ram · cpu_s / q

(the paper's Eq. 1), and its carbon E · CI · PUE (Eq. 2). The same CPU-seconds on the same
node always cost the same grams, whatever else the host is doing, and the scheduler's S_C
(Eq. 4) prices a plan with the very same formula, so a plan predicts its charge.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from carbonedge.carbon.units import kwh_from_joules
from carbonedge.errors import ConfigError

__all__ = [
    "CODECARBON_WATTS_PER_THREAD",
    "RAM_WATTS_PER_GB",
    "DeviceCharge",
    "DevicePower",
    "cpu_watts_per_core",
    "ram_watts",
]

log = logging.getLogger(__name__)

RAM_WATTS_PER_GB = 0.375
"""The paper's RAM power: 0.375 W per GB of the node's memory limit."""
CODECARBON_WATTS_PER_THREAD = 4.0
"""CodeCarbon's power per thread for a CPU missing from its TDP table."""
_GB = 1e9


def ram_watts(mem_limit_bytes: float) -> float:
    """The paper's RAM power of a memory limit: 0.375 W per GB."""
    return RAM_WATTS_PER_GB * mem_limit_bytes / _GB


@dataclass(frozen=True, slots=True)
class DeviceCharge:
    """What one stretch of a node's work costs as an emulated device."""

    busy_s: float
    """How long the device was busy: CPU-seconds ÷ quota."""
    cpu_kwh: float
    ram_kwh: float

    @property
    def energy_kwh(self) -> float:
        return self.cpu_kwh + self.ram_kwh


@dataclass(frozen=True, slots=True)
class DevicePower:
    """One node's power as an emulated device."""

    cpu_quota: float
    mem_limit_bytes: int
    watts_per_core: float
    source: str
    """Where ``watts_per_core`` came from (``configured``, ``codecarbon-tdp:<cpu>``, ...)."""

    def __post_init__(self) -> None:
        for name in ("cpu_quota", "watts_per_core"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}",
                                  field=name)
        if self.mem_limit_bytes < 0:
            raise ConfigError(f"mem_limit_bytes must be >= 0, got {self.mem_limit_bytes}",
                              field="mem_limit_bytes")

    @property
    def cpu_w(self) -> float:
        return self.cpu_quota * self.watts_per_core

    @property
    def ram_w(self) -> float:
        return ram_watts(self.mem_limit_bytes)

    @property
    def watts(self) -> float:
        """The device's power while busy (S_C's P)."""
        return self.cpu_w + self.ram_w

    def busy_s(self, cpu_s: float) -> float:
        return max(cpu_s, 0.0) / self.cpu_quota

    def charge(self, cpu_s: float) -> DeviceCharge:
        """Energy of work that used ``cpu_s`` CPU-seconds on this node."""
        busy = self.busy_s(cpu_s)
        return DeviceCharge(busy, kwh_from_joules(self.cpu_w * busy),
                            kwh_from_joules(self.ram_w * busy))

    def idle_charge(self, cpu_s: float, wall_s: float, busy_s: float) -> DeviceCharge:
        """An idle stretch of ``wall_s`` seconds: the CPU it burnt outside tasks, and RAM
        for the part of it the device was not busy with tasks (``busy_s``)."""
        ram_s = max(wall_s - busy_s, 0.0)
        return DeviceCharge(self.busy_s(cpu_s),
                            kwh_from_joules(self.watts_per_core * max(cpu_s, 0.0)),
                            kwh_from_joules(self.ram_w * ram_s))


def cpu_watts_per_core(configured: float = 0.0) -> tuple[float, str]:
    """The host CPU's power per logical CPU and where it came from.

    ``configured`` (> 0) wins. Otherwise the CPU model in ``/proc/cpuinfo`` is looked up in
    CodeCarbon's CPU table (read as data: importing CodeCarbon would cost an agent ~100 MB)
    and its TDP divided by the logical CPUs; a CPU that is not in the table gets
    CodeCarbon's own fallback, 4 W per thread.
    """
    if configured:
        if not (math.isfinite(configured) and configured > 0):
            raise ConfigError(f"cpu_watts_per_core must be a finite number > 0, got "
                              f"{configured!r}", field="cpu_watts_per_core")
        return float(configured), "configured"
    model = _cpu_model()
    tdp = _codecarbon_tdp(model) if model else None
    if tdp is None:
        log.info("CPU %r is not in CodeCarbon's TDP table: %.1f W per thread (CodeCarbon's "
                 "fallback)", model, CODECARBON_WATTS_PER_THREAD)
        return CODECARBON_WATTS_PER_THREAD, "codecarbon-default-per-thread"
    threads = os.cpu_count() or 1
    return tdp / threads, f"codecarbon-tdp:{model}"


def _cpu_model(path: Path = Path("/proc/cpuinfo")) -> str | None:
    try:
        with path.open() as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip() or None
    except OSError:
        return None
    return None


def _codecarbon_table() -> Path | None:
    spec = importlib.util.find_spec("codecarbon")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data/hardware/cpu_power.csv"
    return path if path.is_file() else None


def _normalise(name: str) -> str:
    """CodeCarbon's clean-up of a CPU name before matching: no (R)/(TM), no clock."""
    name = re.sub(r"\((R|TM)\)", "", name, flags=re.IGNORECASE)
    name = re.sub(r"\s+CPU\b|\s*@\s*[\d.]+\s*GHz", "", name, flags=re.IGNORECASE)
    return " ".join(name.lower().split())


def _codecarbon_tdp(model: str) -> float | None:
    """The TDP (W) of ``model`` in CodeCarbon's table: an exact match after CodeCarbon's
    clean-up, never a guess (an unknown CPU gets the documented fallback instead)."""
    table = _codecarbon_table()
    if table is None:
        return None
    wanted = _normalise(model)
    with table.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if _normalise(row.get("Name", "")) == wanted:
                try:
                    return float(row["TDP"])
                except (KeyError, ValueError):
                    return None
    return None
