"""What an agent needs to know about the node it is."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """A node's declared resources and carbon settings (from the topology)."""

    node_id: str
    cpu_quota: float
    mem_limit_bytes: int
    carbon_intensity: float
    pue: float = 1.0
    intensity_source: str = "static"
    stats_window: int = 15
