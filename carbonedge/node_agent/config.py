"""What an agent needs to know about the node it is."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from carbonedge.carbon.providers import IntensityProvider, StaticProvider
from carbonedge.carbon.units import CarbonIntensity


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """A node's declared resources and carbon settings (from the topology)."""

    node_id: str
    cpu_quota: float
    mem_limit_bytes: int
    intensity: IntensityProvider
    pue: float = 1.0
    stats_window: int = 15
    runtime: str = "auto"
    """What runs the node's models: ``torch``, ``onnxruntime`` or ``auto``."""


def work_group(runtime: str, boot_id: Path = Path("/proc/sys/kernel/random/boot_id")) -> str:
    """Which nodes share this one's CPU cost per inference: the host (its kernel's boot
    id, which every container on the host shares) and the runtime running the models."""
    try:
        host = boot_id.read_text().strip().replace("-", "")[:12]
    except OSError:
        host = socket.gethostname()
    return f"{host}:{runtime}"[:64]


def static_intensity(g_per_kwh: float) -> IntensityProvider:
    """A fixed carbon intensity, for nodes declared with a plain number."""
    return StaticProvider(CarbonIntensity.from_g_per_kwh(g_per_kwh))
