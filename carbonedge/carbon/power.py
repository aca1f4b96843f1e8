"""A simple per-node power model: the node's share of host CPU power plus RAM power.

CPU energy of a task is its cgroup CPU-seconds times the host's power per CPU; RAM power
is 0.375 W per GB of the node's memory limit (the paper's figure) over the task's wall
time. Where no host CPU power is configured and RAPL is not readable, the host CPU power
is CodeCarbon's fallback for an unknown CPU (4 W per thread), and the result says so.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

RAM_WATTS_PER_GB = 0.375
CODECARBON_WATTS_PER_THREAD = 4.0
_GB = 1e9
_JOULES_PER_KWH = 3.6e6


@dataclass(frozen=True, slots=True)
class PowerModel:
    """Host CPU power per CPU and where that figure came from."""

    cpu_watts_per_cpu: float
    source: str

    @classmethod
    def for_host(cls, host_cpu_watts: float = 0.0, host_cpus: int | None = None) -> PowerModel:
        """The configured host CPU power, else CodeCarbon's per-thread fallback."""
        cpus = host_cpus or os.cpu_count() or 1
        if host_cpu_watts > 0:
            return cls(host_cpu_watts / cpus, "configured-host-cpu-watts")
        log.info(
            "no host CPU power configured and no RAPL reading used: estimating %.1f W per CPU "
            "(CodeCarbon's default for an unknown CPU)",
            CODECARBON_WATTS_PER_THREAD,
        )
        return cls(CODECARBON_WATTS_PER_THREAD, "codecarbon-default-per-thread")

    def ram_watts(self, mem_limit_bytes: int) -> float:
        return RAM_WATTS_PER_GB * mem_limit_bytes / _GB

    def active_watts(self, cpu_quota: float, mem_limit_bytes: int) -> float:
        """Power of a node running flat out within its CPU quota."""
        return cpu_quota * self.cpu_watts_per_cpu + self.ram_watts(mem_limit_bytes)

    def average_watts(self, cpu_seconds: float, wall_s: float, mem_limit_bytes: int) -> float:
        """Average power over an interval in which the node used ``cpu_seconds`` of CPU."""
        if wall_s <= 0:
            return self.ram_watts(mem_limit_bytes)
        return cpu_seconds / wall_s * self.cpu_watts_per_cpu + self.ram_watts(mem_limit_bytes)

    def task_energy_kwh(self, cpu_seconds: float, wall_s: float, mem_limit_bytes: int) -> float:
        """Energy of one task: its CPU-seconds at the per-CPU power plus RAM over its wall time."""
        joules = cpu_seconds * self.cpu_watts_per_cpu + self.ram_watts(mem_limit_bytes) * wall_s
        return joules / _JOULES_PER_KWH


def carbon_grams(energy_kwh: float, intensity_g_per_kwh: float, pue: float = 1.0) -> float:
    """C = E · CI · PUE."""
    return energy_kwh * intensity_g_per_kwh * pue
