"""What a task costs in energy and carbon on this node, and the reading it was based on.

CPU energy comes from the host's power as the carbon service last published it, shared
out by the configured apportioning method; when no fresh host reading exists (no carbon
service running) a static per-CPU estimate stands in and every result says so. RAM is
0.375 W per GB of the node's memory limit over the task's wall time (the paper's figure).
Carbon uses the node's intensity provider at the time the task finished.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from carbonedge.carbon.apportion import HostPower, check_method, task_cpu_energy_j
from carbonedge.carbon.intensity import IntensityReading
from carbonedge.carbon.ledger import LedgerRow
from carbonedge.carbon.power import PowerModel, carbon_grams
from carbonedge.carbon.units import JOULES_PER_KWH
from carbonedge.node_agent.config import AgentConfig

log = logging.getLogger(__name__)

HOST_READING_MAX_AGE_S = 5.0
INTENSITY_REFRESH_S = 1.0
FORECAST_HORIZON = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class TaskCharge:
    """The energy and carbon charged to one task, and where each figure came from."""

    cpu_kwh: float
    ram_kwh: float
    carbon_g: float
    intensity_g_per_kwh: float
    intensity_source: str
    pue: float
    power_source: str
    apportioning: str

    @property
    def energy_kwh(self) -> float:
        return self.cpu_kwh + self.ram_kwh


class EnergyAccountant:
    """Charges tasks from the latest host power reading and the node's intensity."""

    def __init__(self, config: AgentConfig, power: PowerModel, *, apportioning: str = "usage",
                 host_cpus: int | None = None) -> None:
        self.config = config
        self.power = power
        self.apportioning = check_method(apportioning)
        cpus = host_cpus or os.cpu_count() or 1
        self._estimate = HostPower.estimate(power.cpu_watts_per_cpu, cpus,
                                            f"estimate:{power.source}")
        self._host: HostPower | None = None
        self._lock = threading.Lock()
        self._reading: IntensityReading | None = None
        self._reading_at = 0.0
        self._warned_stale = False

    # -- inputs, refreshed by the heartbeat thread ----------------------------------------

    def update_host(self, fields: Mapping[bytes | str, bytes | str] | None) -> None:
        """Take the carbon service's latest host reading (an empty hash means none)."""
        if not fields:
            return
        try:
            self._host = HostPower.from_fields(fields)
        except (KeyError, ValueError) as e:
            log.warning("ignoring a malformed host power reading: %s", e)

    def host_power(self, now: float | None = None) -> HostPower:
        """The host reading to charge with: the published one if fresh, else the estimate."""
        now = time.time() if now is None else now
        host = self._host
        if host is not None and now - host.ts <= HOST_READING_MAX_AGE_S:
            self._warned_stale = False
            return host
        if not self._warned_stale:
            log.info("no fresh host power reading from a carbon service: charging tasks "
                     "with the %s", self._estimate.source)
            self._warned_stale = True
        return self._estimate

    def intensity(self) -> IntensityReading:
        """The node's carbon intensity now (re-read at most once a second)."""
        now = time.monotonic()
        with self._lock:
            if self._reading is None or now - self._reading_at >= INTENSITY_REFRESH_S:
                self._reading = self.config.intensity.intensity_at(datetime.now(UTC))
                self._reading_at = now
            return self._reading

    def forecast(self) -> tuple[tuple[float, float], ...]:
        """The node's intensity steps ahead, as (unix time, g/kWh), where its provider
        can forecast (a trace, a static value); empty where it cannot (live APIs)."""
        forecast = getattr(self.config.intensity, "forecast", None)
        if forecast is None:
            return ()
        return tuple((t.timestamp(), v) for t, v in forecast(datetime.now(UTC),
                                                              FORECAST_HORIZON))

    # -- charging -------------------------------------------------------------------------

    def charge(self, *, cpu_s: float, wall_s: float) -> TaskCharge:
        """Energy and carbon of a task that used ``cpu_s`` CPU-seconds over ``wall_s``."""
        cfg = self.config
        host = self.host_power()
        cpu_j = task_cpu_energy_j(self.apportioning, host, cpu_s=cpu_s, wall_s=wall_s,
                                  cpu_quota=cfg.cpu_quota)
        ram_j = self.power.ram_watts(cfg.mem_limit_bytes) * wall_s
        reading = self.intensity()
        cpu_kwh, ram_kwh = cpu_j / JOULES_PER_KWH, ram_j / JOULES_PER_KWH
        intensity = reading.value.g_per_kwh
        return TaskCharge(
            cpu_kwh=cpu_kwh,
            ram_kwh=ram_kwh,
            carbon_g=carbon_grams(cpu_kwh + ram_kwh, intensity, cfg.pue),
            intensity_g_per_kwh=intensity,
            intensity_source=reading.source,
            pue=cfg.pue,
            power_source=host.source if host is self._estimate else f"host:{host.source}",
            apportioning=self.apportioning,
        )


def charge_fields(charge: TaskCharge) -> dict[str, Any]:
    """The result-map fields that report a task's charge."""
    return {
        "energy_kwh": charge.energy_kwh,
        "cpu_energy_kwh": charge.cpu_kwh,
        "ram_energy_kwh": charge.ram_kwh,
        "carbon_g": charge.carbon_g,
        "intensity_g_per_kwh": charge.intensity_g_per_kwh,
        "intensity_source": charge.intensity_source,
        "pue": charge.pue,
        "power_source": charge.power_source,
        "apportioning": charge.apportioning,
    }


def ledger_row(result: Mapping[str, Any], charge: TaskCharge, *, cpu_s: float,
               wall_s: float, tenant: str = "") -> LedgerRow:
    """The ledger row of a finished task (its result map already built)."""
    return LedgerRow(
        task_id=str(result.get("id") or "unknown"),
        node=str(result.get("node") or ""),
        kind=str(result.get("kind") or "infer"),
        model=str(result.get("model") or ""),
        mode=str(result.get("mode") or ""),
        status=str(result.get("status") or "error"),
        ts=time.time(),
        wall_s=wall_s,
        cpu_s=cpu_s,
        cpu_kwh=charge.cpu_kwh,
        ram_kwh=charge.ram_kwh,
        energy_kwh=charge.energy_kwh,
        carbon_g=charge.carbon_g,
        intensity_g_per_kwh=charge.intensity_g_per_kwh,
        intensity_source=charge.intensity_source,
        pue=charge.pue,
        power_source=charge.power_source,
        apportioning=charge.apportioning,
        tenant=tenant,
    )
