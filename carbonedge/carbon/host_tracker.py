"""The host's energy as CodeCarbon measures it, plus the host's busy CPU time.

One CodeCarbon ``OfflineEmissionsTracker`` samples the host every second (RAPL where
readable; otherwise its CPU-load model on the CPU's TDP, or 4 W per thread for an unknown
CPU). :meth:`HostTracker.sample` flushes it through CodeCarbon's public output-handler
interface and returns what the host used since the previous sample. CodeCarbon (and
pandas, which it imports) is loaded here only: agents never import this module.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carbonedge.carbon import codecarbon_adapter
from carbonedge.carbon.units import joules_from_kwh
from carbonedge.errors import RuntimeUnavailable

log = logging.getLogger(__name__)

_IDLE_FIELDS = (3, 4)  # idle and iowait columns of the "cpu" line of /proc/stat


def read_proc_stat_cpu_s(path: Path = Path("/proc/stat")) -> tuple[float, float]:
    """(busy, total) CPU-seconds of the whole host since boot, from ``/proc/stat``."""
    tick = os.sysconf("SC_CLK_TCK")
    with path.open() as f:
        for line in f:
            if line.startswith("cpu "):
                # guest time is already counted in user/nice: only the first 8 columns add up
                ticks = [int(x) for x in line.split()[1:9]]
                idle = sum(ticks[i] for i in _IDLE_FIELDS)
                total = sum(ticks)
                return (total - idle) / tick, total / tick
    raise RuntimeUnavailable(f"{path} has no aggregate 'cpu' line")


@dataclass(frozen=True, slots=True)
class HostReading:
    """What the host used between two samples."""

    seconds: float
    cpu_j: float
    ram_j: float
    gpu_j: float
    cpu_w: float
    busy_cpu_s: float
    emissions_kg: float = 0.0
    """CodeCarbon's own emissions figure for the interval (its country's intensity)."""


class _Collector:
    """A CodeCarbon output handler that keeps the latest cumulative totals."""

    def __init__(self) -> None:
        self.total: Any = None

    def out(self, total: Any, delta: Any) -> None:
        self.total = total

    def live_out(self, total: Any, delta: Any) -> None:
        self.total = total

    def task_out(self, data: Any, experiment_name: str) -> None:
        pass


class HostTracker:
    """CodeCarbon on the host, sampled on demand."""

    def __init__(self, *, country_iso_code: str = "USA", region: str | None = None,
                 measure_power_secs: float = 1.0) -> None:
        codecarbon_adapter.check_supported()
        try:
            from codecarbon import OfflineEmissionsTracker
            from codecarbon.output_methods.base_output import BaseOutput
        except ImportError as e:  # pragma: no cover - codecarbon is a dependency
            raise RuntimeUnavailable(f"the host tracker needs codecarbon: {e}") from e
        collector_cls = type("CarbonEdgeCollector", (_Collector, BaseOutput), {})
        self._collector = collector_cls()
        kwargs: dict[str, Any] = {}
        if region:
            kwargs["region"] = region
        self._tracker = OfflineEmissionsTracker(
            country_iso_code=country_iso_code, measure_power_secs=measure_power_secs,
            save_to_file=False, output_handlers=[self._collector], log_level="error",
            tracking_mode="machine", project_name="carbonedge", **kwargs,
        )
        self._last = (0.0, 0.0, 0.0, 0.0)
        self._last_busy = 0.0
        self._last_t = 0.0
        self.cpu_model = "unknown"
        self.source = "codecarbon"
        self.estimated = True
        """No hardware counter: CodeCarbon estimates the host's power from its load."""
        self.ram_total_bytes = 0.0
        self._tdp_idle_w: float | None = None
        self._min_cpu_w = float("inf")

    def start(self) -> None:
        self._tracker.start()
        hardware = self._tracker.get_detected_hardware()
        self.cpu_model = str(hardware.get("cpu_model", "unknown"))
        self.ram_total_bytes = float(hardware.get("ram_total_size") or 0.0) * 1e9
        mode = codecarbon_adapter.cpu_power_mode()
        self.source = f"codecarbon:{mode}"
        self.estimated = mode != "rapl"
        if mode == "cpu_load":
            # CodeCarbon's load model floors at 10% of TDP: that is its idle power
            self._tdp_idle_w = codecarbon_adapter.LOAD_MODEL_IDLE_SHARE * \
                codecarbon_adapter.cpu_tdp_w()
        if not hardware.get("gpu_count"):
            log.info("no GPU found through NVML: GPU power is not tracked")
        self._last_busy, _ = read_proc_stat_cpu_s()
        self._last_t = time.monotonic()
        log.info("host tracker started: CPU %s, power source %s%s", self.cpu_model, self.source,
                 " (estimated from load: no hardware counter)" if self.estimated else "")

    def sample(self) -> HostReading:
        """Energy and busy CPU time since the previous call."""
        self._tracker.flush()
        total = self._collector.total
        busy, _ = read_proc_stat_cpu_s()
        now = time.monotonic()
        if total is None:
            raise RuntimeUnavailable("CodeCarbon produced no reading")
        cumulative = (float(total.cpu_energy), float(total.ram_energy),
                      float(total.gpu_energy), float(total.emissions))
        cpu_kwh, ram_kwh, gpu_kwh, kg = (max(c - p, 0.0) for c, p in zip(cumulative, self._last,
                                                                           strict=True))
        seconds = max(now - self._last_t, 1e-6)
        reading = HostReading(
            seconds=seconds, cpu_j=joules_from_kwh(cpu_kwh), ram_j=joules_from_kwh(ram_kwh),
            gpu_j=joules_from_kwh(gpu_kwh), cpu_w=joules_from_kwh(cpu_kwh) / seconds,
            busy_cpu_s=max(busy - self._last_busy, 0.0), emissions_kg=kg,
        )
        self._last, self._last_busy, self._last_t = cumulative, busy, now
        if seconds >= 0.5:  # a short flush interval makes a noisy power figure
            self._min_cpu_w = min(self._min_cpu_w, reading.cpu_w)
        return reading

    @property
    def idle_cpu_w(self) -> float:
        """Host CPU power at idle: CodeCarbon's model floor, else the lowest power seen."""
        if self._tdp_idle_w is not None:
            return self._tdp_idle_w
        return 0.0 if self._min_cpu_w == float("inf") else self._min_cpu_w

    def stop(self) -> None:
        try:
            self._tracker.stop()
        except Exception as e:  # CodeCarbon's stop is best-effort on shutdown
            log.warning("host tracker did not stop cleanly: %s", e)
