"""Energy and carbon: the device and measured accounting methods, intensity providers,
the host tracker, the ledger, reconciliation and the emissions CSV (no Celery)."""

from carbonedge.carbon.device import RAM_WATTS_PER_GB, DevicePower, cpu_watts_per_core
from carbonedge.carbon.power import carbon_grams

__all__ = ["RAM_WATTS_PER_GB", "DevicePower", "carbon_grams", "cpu_watts_per_core"]
