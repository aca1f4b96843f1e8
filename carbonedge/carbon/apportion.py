"""Sharing the host's measured power out to nodes and tasks.

The carbon service samples the host (CodeCarbon: RAPL where readable, else its load-based
estimate) and publishes a :class:`HostPower` every second. Agents turn it into per-task
CPU energy with one of two apportioning methods:

- ``usage`` (default): the host's CPU power above idle, per busy CPU, times the task's
  measured cgroup CPU-seconds. Idle power is no one's work; it stays unattributed.
- ``quota`` (the paper's method): the host's CPU power times the node's share of host
  CPUs (its quota), times the task's wall time, whether the task used the quota or not.

:func:`reconcile_window` applies the same rule to a whole window of host readings and
per-node cgroup CPU time, so that host energy = attributed per node + unattributed, and
the per-task ledger can be checked against it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from carbonedge.errors import ConfigError

__all__ = [
    "APPORTIONING_METHODS",
    "HostPower",
    "WindowShares",
    "check_method",
    "reconcile_window",
    "task_cpu_energy_j",
]

APPORTIONING_METHODS = ("usage", "quota")
MIN_BUSY_CPUS = 0.05
"""Floor of the host's busy CPUs when dividing by it: a near-idle host must not turn a few
milliwatts of noise into a huge per-CPU figure."""


def check_method(method: str) -> str:
    """``method`` if it is a known apportioning method, else a ConfigError naming them."""
    if method not in APPORTIONING_METHODS:
        raise ConfigError(
            f"apportioning {method!r} is not one of {', '.join(APPORTIONING_METHODS)}",
            field="apportioning",
        )
    return method


@dataclass(frozen=True, slots=True)
class HostPower:
    """The host's CPU power at one instant and what it was doing."""

    cpu_w: float
    """Host CPU power (W), as measured or estimated by ``source``."""
    idle_cpu_w: float
    """The part of ``cpu_w`` the host draws doing nothing (W)."""
    busy_cpus: float
    """CPUs busy on average over the sample (from /proc/stat)."""
    host_cpus: int
    source: str
    ts: float = 0.0

    @classmethod
    def estimate(cls, watts_per_cpu: float, host_cpus: int, source: str) -> HostPower:
        """A linear model with no idle floor, for when no host tracker is publishing."""
        return cls(watts_per_cpu * host_cpus, 0.0, float(host_cpus), host_cpus, source)

    @property
    def dynamic_w_per_busy_cpu(self) -> float:
        """CPU power above idle per busy CPU: what one CPU-second of work costs."""
        return max(self.cpu_w - self.idle_cpu_w, 0.0) / max(self.busy_cpus, MIN_BUSY_CPUS)

    def to_fields(self) -> dict[str, str]:
        return {
            "cpu_w": repr(self.cpu_w), "idle_cpu_w": repr(self.idle_cpu_w),
            "busy_cpus": repr(self.busy_cpus), "host_cpus": str(self.host_cpus),
            "source": self.source, "ts": repr(self.ts),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[bytes | str, bytes | str]) -> HostPower:
        """Decode :meth:`to_fields` output (as Redis returns it); ValueError if malformed."""
        f = {_text(k): _text(v) for k, v in fields.items()}
        host = cls(float(f["cpu_w"]), float(f["idle_cpu_w"]), float(f["busy_cpus"]),
                   int(f["host_cpus"]), f["source"], float(f["ts"]))
        numbers = (host.cpu_w, host.idle_cpu_w, host.busy_cpus, host.ts)
        if not all(math.isfinite(x) and x >= 0 for x in numbers) or host.host_cpus < 1:
            raise ValueError(f"host power fields out of range: {f}")
        return host


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def task_cpu_energy_j(
    method: str, host: HostPower, *, cpu_s: float, wall_s: float, cpu_quota: float
) -> float:
    """CPU energy (J) of one task under ``method``."""
    if method == "usage":
        return cpu_s * host.dynamic_w_per_busy_cpu
    if method == "quota":
        return wall_s * host.cpu_w * min(cpu_quota / host.host_cpus, 1.0)
    raise ConfigError(f"unknown apportioning method {method!r}", field="apportioning")


@dataclass(frozen=True, slots=True)
class WindowShares:
    """One window's host CPU energy split between nodes and everything else (J)."""

    host_j: float
    idle_j: float
    per_node_j: Mapping[str, float]

    @property
    def attributed_j(self) -> float:
        return sum(self.per_node_j.values())

    @property
    def unattributed_j(self) -> float:
        """Idle power, other processes, and what rounding left over."""
        return self.host_j - self.attributed_j


@dataclass(frozen=True, slots=True)
class HostSample:
    """One host reading over ``seconds``: energy, and CPU time per node and in total."""

    seconds: float
    cpu_j: float
    idle_j: float
    busy_cpu_s: float
    node_cpu_s: Mapping[str, float]


def reconcile_window(
    samples: list[HostSample], method: str, quotas: Mapping[str, float], host_cpus: int
) -> WindowShares:
    """Split a window's host CPU energy into per-node shares and the unattributed rest.

    ``usage``: each sample's energy above idle, in proportion to the node's CPU time among
    all busy CPU time. ``quota``: each sample's whole energy times the node's quota share,
    for the samples in which the node was present (had a CPU reading).
    """
    check_method(method)
    per_node: dict[str, float] = {}
    for s in samples:
        if method == "usage":
            dynamic = max(s.cpu_j - s.idle_j, 0.0)
            busy = max(s.busy_cpu_s, sum(s.node_cpu_s.values()), MIN_BUSY_CPUS * s.seconds)
            shares = {n: dynamic * cpu / busy for n, cpu in s.node_cpu_s.items()}
        else:
            shares = {n: s.cpu_j * min(quotas.get(n, 0.0) / host_cpus, 1.0)
                      for n in s.node_cpu_s}
        for node, joules in shares.items():
            per_node[node] = per_node.get(node, 0.0) + joules
    return WindowShares(
        host_j=sum(s.cpu_j for s in samples),
        idle_j=sum(s.idle_j for s in samples),
        per_node_j=per_node,
    )
