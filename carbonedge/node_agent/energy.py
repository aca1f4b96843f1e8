"""What a task costs on this node: its ``device`` charge and the intensity it is priced at.

The node is an emulated device (:class:`~carbonedge.carbon.device.DevicePower`); a task
is charged for the time its CPU-seconds keep that device busy, at the node's carbon
intensity when the task started. The host tracker's ``measured`` charge of the same task
is settled later by the carbon service from the ledger row this module builds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from carbonedge.carbon.device import DeviceCharge, DevicePower
from carbonedge.carbon.forecast import forecast_steps, known_forecasters
from carbonedge.carbon.ledger import LedgerRow
from carbonedge.carbon.power import carbon_grams
from carbonedge.carbon.providers import IntensityReading
from carbonedge.node_agent.config import AgentConfig

log = logging.getLogger(__name__)

INTENSITY_REFRESH_S = 1.0
FORECAST_HORIZON = timedelta(hours=24)
METHOD = "device"


@dataclass(frozen=True, slots=True)
class CpuSplit:
    """A task's CPU-seconds: the model run and everything around it."""

    model_s: float
    overhead_s: float

    @property
    def total_s(self) -> float:
        return self.model_s + self.overhead_s


@dataclass(frozen=True, slots=True)
class TaskCharge:
    """The ``device`` energy and carbon of one task, and where each figure came from."""

    device: DeviceCharge
    cpu: CpuSplit
    carbon_g: float
    intensity_g_per_kwh: float
    intensity_source: str
    pue: float
    power_source: str

    @property
    def cpu_kwh(self) -> float:
        return self.device.cpu_kwh

    @property
    def ram_kwh(self) -> float:
        return self.device.ram_kwh

    @property
    def energy_kwh(self) -> float:
        return self.device.energy_kwh


class EnergyAccountant:
    """Charges this node's tasks and idle stretches as an emulated device."""

    def __init__(self, config: AgentConfig, device: DevicePower) -> None:
        self.config = config
        self.device = device
        self._lock = threading.Lock()
        self._reading: IntensityReading | None = None
        self._reading_at = 0.0

    def intensity(self) -> IntensityReading:
        """The node's carbon intensity now (re-read at most once a second)."""
        now = time.monotonic()
        with self._lock:
            if self._reading is None or now - self._reading_at >= INTENSITY_REFRESH_S:
                self._reading = self.config.intensity.intensity_at(datetime.now(UTC))
                self._reading_at = now
            return self._reading

    def forecasts(self) -> dict[str, tuple[tuple[float, float], ...]]:
        """The node's intensity steps ahead by every registered forecaster, as (unix time,
        g/kWh), starting from its reading now (see :mod:`carbonedge.carbon.forecast`)."""
        reading = self.intensity()
        now = datetime.now(UTC)
        return {name: tuple((t.timestamp(), v) for t, v in forecast_steps(
                    name, self.config.intensity, now, FORECAST_HORIZON,
                    reading.value.g_per_kwh))
                for name in known_forecasters()}

    def charge(self, cpu: CpuSplit, reading: IntensityReading) -> TaskCharge:
        """The device charge of a task that used ``cpu``, priced at ``reading`` (the
        node's intensity when the task started)."""
        return self._priced(self.device.charge(cpu.total_s), cpu, reading)

    def charge_idle(self, cpu_s: float, wall_s: float, busy_s: float) -> TaskCharge:
        """An idle stretch: the CPU burnt outside tasks and the RAM held while not busy."""
        return self._priced(self.device.idle_charge(cpu_s, wall_s, busy_s),
                            CpuSplit(0.0, cpu_s), self.intensity())

    def _priced(self, device: DeviceCharge, cpu: CpuSplit,
                reading: IntensityReading) -> TaskCharge:
        intensity = reading.value.g_per_kwh
        return TaskCharge(
            device=device, cpu=cpu,
            carbon_g=carbon_grams(device.energy_kwh, intensity, self.config.pue),
            intensity_g_per_kwh=intensity, intensity_source=reading.source,
            pue=self.config.pue, power_source=self.device.source,
        )


def charge_fields(charge: TaskCharge) -> dict[str, Any]:
    """The result-map fields that report a task's charge (its ``measured`` charge is
    settled later by the carbon service and is not in the result)."""
    return {
        "accounting": METHOD,
        "energy_kwh": charge.energy_kwh,
        "cpu_energy_kwh": charge.cpu_kwh,
        "ram_energy_kwh": charge.ram_kwh,
        "carbon_g": charge.carbon_g,
        "busy_s": charge.device.busy_s,
        "cpu_model_s": charge.cpu.model_s,
        "cpu_overhead_s": charge.cpu.overhead_s,
        "intensity_g_per_kwh": charge.intensity_g_per_kwh,
        "intensity_source": charge.intensity_source,
        "pue": charge.pue,
        "power_source": charge.power_source,
    }


def ledger_row(result: Mapping[str, Any], charge: TaskCharge, *, started_at: float,
               wall_s: float, device: DevicePower, tenant: str = "") -> LedgerRow:
    """The ledger row of a finished task (its result map already built)."""
    return LedgerRow(
        task_id=str(result.get("id") or "unknown"),
        node=str(result.get("node") or ""),
        kind=str(result.get("kind") or "infer"),
        model=str(result.get("model") or ""),
        mode=str(result.get("mode") or ""),
        status=str(result.get("status") or "error"),
        **_charge_columns(charge, started_at=started_at, wall_s=wall_s, device=device),
        tenant=tenant,
    )


def stretch_row(row_type: str, node: str, charge: TaskCharge, *, started_at: float,
                wall_s: float, device: DevicePower) -> LedgerRow:
    """The ledger row of an ``idle`` or ``startup`` stretch of a node."""
    return LedgerRow(task_id=f"{row_type}:{node}:{started_at:.3f}", node=node, kind=row_type,
                     model="", mode="", status="ok", row_type=row_type,
                     **_charge_columns(charge, started_at=started_at, wall_s=wall_s,
                                       device=device))


def _charge_columns(charge: TaskCharge, *, started_at: float, wall_s: float,
                    device: DevicePower) -> dict[str, Any]:
    return {
        "ts": started_at + wall_s, "started_at": started_at, "wall_s": wall_s,
        "cpu_s": charge.cpu.total_s, "cpu_model_s": charge.cpu.model_s,
        "cpu_overhead_s": charge.cpu.overhead_s, "busy_s": charge.device.busy_s,
        "cpu_quota": device.cpu_quota, "mem_limit_bytes": float(device.mem_limit_bytes),
        "cpu_kwh": charge.cpu_kwh, "ram_kwh": charge.ram_kwh, "energy_kwh": charge.energy_kwh,
        "carbon_g": charge.carbon_g, "intensity_g_per_kwh": charge.intensity_g_per_kwh,
        "intensity_source": charge.intensity_source, "pue": charge.pue,
        "power_source": charge.power_source, "method": METHOD,
    }
