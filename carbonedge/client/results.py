"""What a producer gets back: :class:`InferenceResult`, or the error a result names."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from carbonedge.errors import InferenceFailed, InvalidMessage, from_wire
from carbonedge.protocol.codec import TensorLimits, decode_tensor


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """Where one segment of a partitioned request ran, how long, what moved, its carbon."""

    index: int
    node: str
    start: int
    stop: int
    queue_ms: float
    """From the hand-off by the previous segment (or the dispatcher) to this one's start."""
    exec_ms: float
    cpu_s: float
    in_bytes: int
    out_bytes: int
    """Bytes of the activation handed on (0 for the last segment)."""
    energy_kwh: float
    carbon_g: float
    runtime: str = ""
    """What ran the segment on its node: ``torch`` or ``onnxruntime``."""

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> SegmentInfo:
        try:
            return cls(index=int(wire["index"]), node=str(wire["node"]),
                       start=int(wire["start"]), stop=int(wire["stop"]),
                       queue_ms=float(wire["queue_ms"]), exec_ms=float(wire["exec_ms"]),
                       cpu_s=float(wire["cpu_s"]), in_bytes=int(wire["in_bytes"]),
                       out_bytes=int(wire["out_bytes"]),
                       energy_kwh=float(wire.get("energy_kwh", math.nan)),
                       carbon_g=float(wire.get("carbon_g", math.nan)),
                       runtime=str(wire.get("runtime") or ""))
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidMessage(f"malformed segment in result: {e}", field="segments") from e


@dataclass(frozen=True, slots=True)
class InferenceResult:
    """One finished request: output, where it ran and why, how long, and its carbon."""

    id: str
    node: str
    model: str | None
    mode: str | None
    top5: list[tuple[int, float]]
    queue_ms: float
    exec_ms: float
    e2e_ms: float
    cpu_s: float
    energy_kwh: float
    carbon_g: float
    intensity_g_per_kwh: float
    intensity_source: str
    accounting: str
    """The method of :attr:`energy_kwh` and :attr:`carbon_g`: ``device`` (the node as an
    emulated device, busy for the task's CPU-seconds over its quota). The ``measured``
    charge is settled later by the carbon service (``ce:carbon:settled``, emissions CSV)."""
    random_init: bool
    decision: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False)
    segments: tuple[SegmentInfo, ...] = ()
    """Per segment of a partitioned request, in order; empty for a whole-model one."""
    logits: np.ndarray | None = field(default=None, repr=False)
    """The model's output scores, where the result carries them (partitioned requests)."""

    @property
    def top1(self) -> int | None:
        return self.top5[0][0] if self.top5 else None

    @property
    def runtime(self) -> str:
        """What ran the model: ``torch`` or ``onnxruntime`` (a partitioned request's last
        segment's; each segment names its own)."""
        return str(self.raw.get("runtime") or "unknown")

    @property
    def cpu_energy_kwh(self) -> float:
        """The CPU part of :attr:`energy_kwh`."""
        return float(self.raw.get("cpu_energy_kwh", math.nan))

    @property
    def cpu_model_s(self) -> float:
        """CPU-seconds of the model run (the rest of the task's CPU is overhead)."""
        return float(self.raw.get("cpu_model_s", math.nan))

    @property
    def cpu_overhead_s(self) -> float:
        """CPU-seconds around the model run: message hand-off, input fetch, decode,
        preprocessing."""
        return float(self.raw.get("cpu_overhead_s", math.nan))

    @property
    def busy_s(self) -> float:
        """How long the task kept its node's emulated device busy (CPU-seconds / quota)."""
        return float(self.raw.get("busy_s", math.nan))

    @property
    def ram_energy_kwh(self) -> float:
        """The RAM part of :attr:`energy_kwh` (0.375 W/GB of the node's limit)."""
        return float(self.raw.get("ram_energy_kwh", math.nan))

    @property
    def power_source(self) -> str:
        """Where the device's power per core came from (``configured``,
        ``codecarbon-tdp:<cpu>`` or ``codecarbon-default-per-thread``)."""
        return str(self.raw.get("power_source", "unknown"))

    @property
    def pue(self) -> float:
        return float(self.raw.get("pue", 1.0))

    @property
    def deferred_until(self) -> float | None:
        """When a deferrable request was released to run (None: it ran at once)."""
        value = self.raw.get("deferred_until")
        return float(value) if isinstance(value, (int, float)) else None


def parse_result(result: Any, *, received_at: float) -> InferenceResult:
    """Turn a result map into an :class:`InferenceResult`, raising the error it names."""
    if not isinstance(result, dict) or "status" not in result:
        raise InvalidMessage(f"malformed result: {result!r:.200}")
    if result["status"] != "ok":
        error = result.get("error")
        raise from_wire(error) if isinstance(error, dict) else InferenceFailed(str(error))
    timings = result.get("timings") or {}
    output = result.get("output") or {}
    submitted = timings.get("submitted_at", math.nan)
    return InferenceResult(
        id=result["id"],
        node=result.get("node") or "",
        model=result.get("model"),
        mode=result.get("mode"),
        top5=list(zip(output.get("top5_ids", []), output.get("top5_scores", []), strict=False)),
        queue_ms=float(timings.get("queue_ms", math.nan)),
        exec_ms=float(timings.get("exec_ms", math.nan)),
        e2e_ms=(received_at - submitted) * 1e3,
        cpu_s=float(timings.get("cpu_s", math.nan)),
        energy_kwh=float(result.get("energy_kwh", math.nan)),
        carbon_g=float(result.get("carbon_g", math.nan)),
        intensity_g_per_kwh=float(result.get("intensity_g_per_kwh", math.nan)),
        intensity_source=str(result.get("intensity_source", "unknown")),
        accounting=str(result.get("accounting", "unknown")),
        random_init=bool(result.get("random_init", False)),
        decision=result.get("decision"),
        raw=result,
        segments=tuple(SegmentInfo.from_wire(s) for s in result.get("segments") or ()),
        logits=decode_tensor(output["logits"], TensorLimits(), field="logits")
        if isinstance(output.get("logits"), dict) else None,
    )

