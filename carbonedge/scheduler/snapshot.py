"""What the scheduler knows about one node, and the fixed references it scores against.

A :class:`NodeSnapshot` is one node agent's last heartbeat as the dispatcher saw it,
already decoded into builtins. It is immutable: the scheduler never changes a snapshot,
it only reads it when a :class:`~carbonedge.scheduler.select.ClusterView` is built.

:class:`References` holds the constants of the ``paper`` normalisation (the fixed
references that turn a time or a mass of CO2 into a score in ``[0, 1]``), the priors
used for a model a node has not run yet, and the noise floor of the ``minmax``
normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from carbonedge.errors import ConfigError, InvalidMessage

__all__ = ["MIB", "MIN_QUOTA", "NodeSnapshot", "References"]

MIB = 1 << 20
MIN_QUOTA = 0.05
"""Smallest CPU quota (cores) the formulas divide by, so a zero quota cannot blow up."""


def _finite_non_negative(node_id: str, name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidMessage(
            f"node {node_id!r}: {name} must be a number, got {type(value).__name__}", field=name
        )
    if not math.isfinite(value) or value < 0:
        raise InvalidMessage(
            f"node {node_id!r}: {name} must be finite and >= 0, got {value!r}", field=name
        )


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """One node's state at its last heartbeat (validated on construction).

    A malformed snapshot raises :class:`~carbonedge.errors.InvalidMessage` naming the
    field, so one corrupt heartbeat can be dropped by the caller without poisoning the
    scores of every other node with NaN.
    """

    node_id: str
    cpu_quota: float
    """Cores granted (e.g. 1.0, 0.6, 0.4)."""
    mem_limit_bytes: int
    mem_used_bytes: int
    cpu_util: float
    """0..1, fraction of its quota used over the last heartbeat interval."""
    power_w: float
    """Average power over the last interval (telemetry only, not scored)."""
    active_power_w: float
    """The node's power as an emulated device while busy: quota x W per core + RAM (S_C's
    P; the same figure its tasks are charged with, so plans predict charges)."""
    carbon_intensity: float
    """gCO2/kWh of the node's grid."""
    in_flight: int
    """Requests dispatched to the node and not finished."""
    exec_ms: Mapping[str, float]
    """Service time per model (median of recent tasks), in milliseconds: how long a task
    keeps the node's emulated device busy (its CPU-seconds over the quota). S_P's and
    S_C's T, and (times the tasks in flight) the node's queued work."""
    heartbeat_ts: float
    """Unix seconds of the last heartbeat."""
    pue: float = 1.0
    work_group: str = ""
    """Nodes that run a model on the same hardware with the same runtime: one CPU cost
    per inference (``ClusterView.service_ms``). Empty: the node's own measurement."""

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, str) or not self.node_id:
            raise InvalidMessage("node_id must be a non-empty string", field="node_id")
        if not isinstance(self.work_group, str):
            raise InvalidMessage("work_group must be a string", field="work_group")
        nid = self.node_id
        for name in (
            "cpu_quota",
            "mem_limit_bytes",
            "mem_used_bytes",
            "cpu_util",
            "power_w",
            "active_power_w",
            "carbon_intensity",
            "in_flight",
            "pue",
        ):
            _finite_non_negative(nid, name, getattr(self, name))
        if isinstance(self.heartbeat_ts, bool) or not isinstance(self.heartbeat_ts, (int, float)):
            raise InvalidMessage(
                f"node {nid!r}: heartbeat_ts must be a number", field="heartbeat_ts"
            )
        if not math.isfinite(self.heartbeat_ts):
            raise InvalidMessage(f"node {nid!r}: heartbeat_ts must be finite", field="heartbeat_ts")
        if self.cpu_quota <= 0:
            raise InvalidMessage(f"node {nid!r}: cpu_quota must be > 0", field="cpu_quota")
        for name in ("exec_ms",):
            per_model = getattr(self, name)
            if not isinstance(per_model, Mapping):
                raise InvalidMessage(f"node {nid!r}: {name} must be a map", field=name)
            for model, value in per_model.items():
                if not isinstance(model, str):
                    raise InvalidMessage(f"node {nid!r}: {name} keys must be strings", field=name)
                _finite_non_negative(nid, name, value)


@dataclass(frozen=True, slots=True)
class References:
    """Fixed references of the ``paper`` normalisation, priors and the ``minmax`` floor."""

    ref_exec_ms: float = 100.0
    """S_P = ref / (ref + T): the time that scores 0.5."""
    ref_carbon_g: float = 1e-4
    """S_C = ref / (ref + C): the grams of CO2 per task that score 0.5.

    With the default power model one MobileNetV2 inference on the paper's nodes emits
    1e-5 to 4e-5 g, so S_C spans about 0.06 across them and S_P about 0.2: the ranges
    the paper reports (0.054 and 0.166), under which Balanced collapses into Performance.
    """
    mem_need_bytes: int = 64 * MIB
    """Free memory at which the memory half of S_R saturates: what one inference of a
    model of this class needs beyond the loaded weights (MobileNetV2's activations and
    buffers are a few tens of MiB). Nodes with that much free score alike."""
    prior_exec_ms: float = 100.0
    """Time of a model a node has not run yet, on 1.0 core (scaled by 1/quota)."""
    resource_floor: float = 0.15
    """``minmax`` floor of S_R: telemetry of idle nodes differs by a few percent of CPU and
    memory from beat to beat, which per-decision rescaling would blow up to 0 vs 1."""
    minmax_floor: float = 0.05
    """Relative spread below which ``minmax`` gives every node 1.0 (noise is not amplified)."""
    noise_band: float = 0.05
    """``minmax``: service times, completion times and carbon estimates within this
    relative band of each other count as equal (:func:`~carbonedge.scheduler.components.
    deadband`). Medians of 15 tasks on replicas of one node class differ by a few
    percent; the paper's nodes differ by 40% in speed and 16-30% in carbon."""

    def __post_init__(self) -> None:
        for name in ("ref_exec_ms", "ref_carbon_g", "mem_need_bytes", "prior_exec_ms"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(
                    f"scheduler reference {name} must be finite and > 0, got {value!r}"
                )
        for name in ("minmax_floor", "resource_floor", "noise_band"):
            floor = getattr(self, name)
            if not (isinstance(floor, (int, float)) and math.isfinite(floor) and 0 <= floor < 1):
                raise ConfigError(f"scheduler {name} must be in [0, 1), got {floor!r}")

    def prior_ms(self, cpu_quota: float) -> float:
        """Predicted time of an unknown model on a node with ``cpu_quota`` cores."""
        return self.prior_exec_ms / max(cpu_quota, MIN_QUOTA)
