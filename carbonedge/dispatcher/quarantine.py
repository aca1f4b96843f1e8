"""Quarantine: nodes whose telemetry jumps implausibly are kept out of scheduling a while.

Every heartbeat value is within :data:`~carbonedge.protocol.telemetry.PLAUSIBLE`, yet a
heartbeat may still be forged or broken: node-high claiming 10 g/kWh for a second wins
every Green decision. A real agent's telemetry moves smoothly, so a dispatcher compares
each new heartbeat of a node with its previous one and quarantines the node when

* its agent's start time goes back (a later life, then an earlier one: two agents under
  one id, or a heartbeat forged as a new life that the real agent contradicts);

* within one agent life (same ``started_at``), its declared resources (CPU quota,
  memory limit, PUE) change: only a restart may;
* a cumulative counter (tasks done, cgroup CPU-seconds) goes backwards;
* its carbon intensity or a model's service time changes by more than ``factor`` (10x)
  between two beats, unless the intensity comes from another source now or the
  previous beat's forecast announced the new value.

A quarantined node is not scheduled for ``hold_s`` after its last jump (the jump rules
keep applying meanwhile); then it is released. If every live node is quarantined they
are all scheduled anyway, with a log line: serving beats refusing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from carbonedge.protocol.telemetry import Heartbeat

log = logging.getLogger(__name__)

DEFAULT_HOLD_S = 30.0
DEFAULT_FACTOR = 10.0
INTENSITY_FLOOR = 10.0
"""g/kWh under which intensities count as equal (10 -> 1 g/kWh is no jump worth a hold)."""
SERVICE_FLOOR_MS = 1.0


@dataclass(frozen=True, slots=True)
class Quarantined:
    """Why a node is out of scheduling, and until when (unix seconds)."""

    node_id: str
    reason: str
    since: float
    until: float

    def to_wire(self) -> dict[str, object]:
        return {"reason": self.reason, "since": self.since, "until": self.until}


class Quarantine:
    """The jump rules and the nodes they hold (one per dispatcher)."""

    def __init__(self, *, hold_s: float = DEFAULT_HOLD_S, factor: float = DEFAULT_FACTOR) -> None:
        self.hold_s = hold_s
        self.factor = factor
        self._last: dict[str, Heartbeat] = {}
        self._held: dict[str, Quarantined] = {}

    def observe(self, beat: Heartbeat, now: float) -> Quarantined | None:
        """Take ``beat`` (already valid); returns the node's quarantine if it is held."""
        previous = self._last.get(beat.node_id)
        if previous is None or beat.ts != previous.ts:
            self._last[beat.node_id] = beat
            jump = self.jump(previous, beat) if previous is not None else None
            if jump is not None:
                held = self._held.get(beat.node_id)
                entry = Quarantined(beat.node_id, jump, held.since if held else now,
                                    now + self.hold_s)
                if held is None:
                    log.error("node %s quarantined for %.0f s: %s", beat.node_id,
                              self.hold_s, jump)
                self._held[beat.node_id] = entry
        held = self._held.get(beat.node_id)
        if held is not None and held.until <= now:
            log.warning("node %s released from quarantine (%s)", beat.node_id, held.reason)
            del self._held[beat.node_id]
            return None
        return held

    def held(self) -> dict[str, Quarantined]:
        """Nodes held right now (as of the last :meth:`observe` of each)."""
        return dict(self._held)

    def forget(self, node_id: str) -> None:
        """The node's heartbeat is gone: its next life starts afresh."""
        self._last.pop(node_id, None)
        self._held.pop(node_id, None)

    def jump(self, before: Heartbeat, after: Heartbeat) -> str | None:
        """The first implausible change from ``before`` to ``after``, described."""
        if after.started_at < before.started_at:
            return (f"agent start time went back from {before.started_at:.3f} to "
                    f"{after.started_at:.3f} (two agents, or a forged heartbeat)")
        if after.started_at > before.started_at:
            return None  # a new agent life may declare anything within bounds
        for name in ("cpu_quota", "mem_limit_bytes", "pue"):
            old, new = getattr(before, name), getattr(after, name)
            if old != new:
                return f"{name} changed from {old:g} to {new:g} without a restart"
        for name in ("tasks_done", "cpu_usage_s"):
            old, new = getattr(before, name), getattr(after, name)
            if new < old:
                return f"{name} went back from {old:g} to {new:g}"
        ci_old, ci_new = before.carbon_intensity, after.carbon_intensity
        if (self._ratio(ci_old, ci_new, INTENSITY_FLOOR) > self.factor
                and after.intensity_source == before.intensity_source
                and not _announced(before, ci_new)):
            return (f"carbon intensity jumped from {ci_old:g} to {ci_new:g} g/kWh "
                    f"({after.intensity_source})")
        for model, new_ms in after.exec_ms.items():
            old_ms = before.exec_ms.get(model)
            if old_ms is not None and self._ratio(old_ms, new_ms, SERVICE_FLOOR_MS) > self.factor:
                return f"service time of {model} jumped from {old_ms:g} to {new_ms:g} ms"
        return None

    @staticmethod
    def _ratio(a: float, b: float, floor: float) -> float:
        low, high = sorted((max(a, floor), max(b, floor)))
        return high / low if low > 0 else math.inf


def _announced(before: Heartbeat, value: float) -> bool:
    """Whether ``before``'s forecast has a step to ``value`` (within 1%)."""
    return any(abs(v - value) <= 0.01 * max(abs(value), 1.0) for _, v in before.ci_forecast)
