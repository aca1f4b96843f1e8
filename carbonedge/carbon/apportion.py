"""Sharing a window of the host's measured energy out to nodes, and naming the rest.

Each window the carbon service reconciles: host energy (as CodeCarbon measured it) =
Σ what the nodes' cgroups earned + what no node accounts for, by cause:

- ``idle``: the host's idle floor (power it draws doing nothing);
- ``other``: CPU energy above idle earned by CPU time outside every node's cgroup
  (other processes: Redis, the dispatcher, this service, the rest of the host);
- ``ram``: host RAM energy beyond the nodes' shares (CodeCarbon's RAM model counts all
  of the host's memory; a node's share is its memory limit over the host's RAM);
- ``gpu``: GPU energy (no node runs on a GPU here).

:class:`HostPower` is the host's power at one instant, published every sample for
``carbonedge status`` and readiness checks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from carbonedge.carbon.measured import HostSample

__all__ = ["HostPower", "WindowShares", "reconcile_window"]


@dataclass(frozen=True, slots=True)
class HostPower:
    """The host's CPU power at one instant and what it was doing."""

    cpu_w: float
    idle_cpu_w: float
    busy_cpus: float
    host_cpus: int
    source: str
    ts: float = 0.0

    def to_fields(self) -> dict[str, str]:
        return {
            "cpu_w": repr(self.cpu_w), "idle_cpu_w": repr(self.idle_cpu_w),
            "busy_cpus": repr(self.busy_cpus), "host_cpus": str(self.host_cpus),
            "source": self.source, "ts": repr(self.ts),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[bytes | str, bytes | str]) -> HostPower:
        """Decode :meth:`to_fields` output (as Redis returns it); ValueError if malformed."""
        try:
            f = {_text(k): _text(v) for k, v in fields.items()}
        except UnicodeDecodeError as e:
            raise ValueError(f"host power fields are not UTF-8: {e}") from e
        host = cls(float(f["cpu_w"]), float(f["idle_cpu_w"]), float(f["busy_cpus"]),
                   int(f["host_cpus"]), f["source"], float(f["ts"]))
        numbers = (host.cpu_w, host.idle_cpu_w, host.busy_cpus, host.ts)
        if not all(math.isfinite(x) and x >= 0 for x in numbers) or host.host_cpus < 1:
            raise ValueError(f"host power fields out of range: {f}")
        return host


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class WindowShares:
    """One window's host energy: each node's share, and the rest by cause (J)."""

    host_cpu_j: float
    host_ram_j: float
    host_gpu_j: float
    idle_j: float
    other_j: float
    node_cpu_j: Mapping[str, float]
    node_ram_j: Mapping[str, float]

    @property
    def host_j(self) -> float:
        return self.host_cpu_j + self.host_ram_j + self.host_gpu_j

    @property
    def attributed_j(self) -> float:
        return sum(self.node_cpu_j.values()) + sum(self.node_ram_j.values())

    @property
    def ram_model_j(self) -> float:
        """Host RAM energy beyond the nodes' shares."""
        return max(self.host_ram_j - sum(self.node_ram_j.values()), 0.0)

    @property
    def unattributed_j(self) -> float:
        return self.host_j - self.attributed_j

    def causes_j(self) -> dict[str, float]:
        """The unattributed energy by cause; they add up to :attr:`unattributed_j`."""
        return {"idle": self.idle_j, "other": self.other_j, "ram": self.ram_model_j,
                "gpu": self.host_gpu_j}


def reconcile_window(samples: Sequence[HostSample], node_mem_bytes: Mapping[str, float],
                     host_mem_bytes: float) -> WindowShares:
    """Split a window's samples into per-node shares and the unattributed rest.

    A node earns each sample's energy above idle in proportion to its cgroup's CPU time
    among all busy CPU time, and the sample's RAM energy in proportion to its memory
    limit, for the samples in which it was present (had a CPU reading).
    """
    node_cpu: dict[str, float] = {}
    node_ram: dict[str, float] = {}
    other = 0.0
    for s in samples:
        busy = s.busy_s
        for node, cpu in s.node_cpu_s.items():
            node_cpu[node] = node_cpu.get(node, 0.0) + s.dynamic_j * cpu / busy
            share = min(node_mem_bytes.get(node, 0.0) / host_mem_bytes, 1.0) \
                if host_mem_bytes > 0 else 0.0
            node_ram[node] = node_ram.get(node, 0.0) + s.ram_j * share
        other += s.dynamic_j * max(busy - sum(s.node_cpu_s.values()), 0.0) / busy
    return WindowShares(
        host_cpu_j=sum(s.cpu_j for s in samples),
        host_ram_j=sum(s.ram_j for s in samples),
        host_gpu_j=sum(s.gpu_j for s in samples),
        idle_j=sum(min(s.idle_j, s.cpu_j) for s in samples),
        other_j=other,
        node_cpu_j=node_cpu,
        node_ram_j=node_ram,
    )
