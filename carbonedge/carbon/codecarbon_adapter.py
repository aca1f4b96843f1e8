"""The few things CarbonEdge asks CodeCarbon beyond its tracker's public interface.

The host tracker uses CodeCarbon's ``OfflineEmissionsTracker`` through its public
output-handler interface. Two facts it needs are not in that interface: which power
model CodeCarbon runs (a hardware counter, or its CPU-load model) and the CPU's TDP,
whose 10% is that model's idle floor. They come from ``codecarbon.core.cpu``'s public
names, in this one module, for the pinned version range below; ``check_supported``
fails loudly when the installed CodeCarbon is outside it, and the tests exercise every
function here against the installed version.
"""

from __future__ import annotations

import importlib.metadata
import logging
from datetime import UTC, datetime

from carbonedge.errors import ConfigError, RuntimeUnavailable

__all__ = [
    "LOAD_MODEL_IDLE_SHARE",
    "SUPPORTED",
    "check_host_grid",
    "check_supported",
    "cpu_power_mode",
    "cpu_tdp_w",
]

log = logging.getLogger(__name__)

SUPPORTED = ((3, 3), (3, 4))
"""CodeCarbon versions ``[low, high)`` whose internals this module was checked against;
pyproject.toml pins the same range."""
LOAD_MODEL_IDLE_SHARE = 0.1
"""CodeCarbon's CPU-load model: power = TDP · (0.1 + 0.9 · load³), so 10% of TDP idle."""


def installed_version() -> tuple[int, int]:
    try:
        text = importlib.metadata.version("codecarbon")
    except importlib.metadata.PackageNotFoundError as e:
        raise RuntimeUnavailable("the carbon service needs codecarbon, which is not "
                                 "installed") from e
    major, minor, *_ = (int(p) if p.isdigit() else 0 for p in text.split(".") + ["0"])
    return major, minor


def check_supported() -> None:
    """RuntimeUnavailable unless the installed CodeCarbon is in :data:`SUPPORTED`."""
    version = installed_version()
    low, high = SUPPORTED
    if not low <= version < high:
        raise RuntimeUnavailable(
            f"codecarbon {version[0]}.{version[1]} is installed; CarbonEdge's host tracker "
            f"was checked against >={low[0]}.{low[1]},<{high[0]}.{high[1]} "
            "(carbonedge/carbon/codecarbon_adapter.py)")


def cpu_power_mode() -> str:
    """``rapl`` when CodeCarbon reads a hardware energy counter, else ``cpu_load`` (its
    load model on the CPU's TDP), else ``constant`` (a fixed share of TDP)."""
    from codecarbon.core import cpu

    if cpu.is_rapl_available():
        return "rapl"
    return "cpu_load" if cpu.is_psutil_available() else "constant"


def cpu_tdp_w() -> float:
    """The host CPU's TDP as CodeCarbon finds it (its fallback for an unknown CPU)."""
    from codecarbon.core.cpu import TDP

    return float(TDP().tdp)


def check_host_grid(country: str, region: str = "") -> tuple[float, str]:
    """The intensity (g/kWh) CodeCarbon prices the host's energy at, and its source;
    ConfigError naming ``host_country``/``host_region`` when CodeCarbon has no data."""
    from carbonedge.carbon.intensity import create_provider

    spec = {"provider": "codecarbon", "country": country}
    if region:
        spec["region"] = region
    try:
        provider = create_provider(spec)
    except ConfigError as e:
        raise ConfigError(f"host_country={country!r} host_region={region!r}: {e.message}",
                          field="host_region" if region else "host_country") from e
    reading = provider.intensity_at(datetime.now(UTC))
    return reading.value.g_per_kwh, reading.source
