"""The ``measured`` accounting method: host energy, as sampled, shared out to ledger rows.

The carbon service samples the host every second (CodeCarbon: RAPL where readable, else
its CPU-load model) and keeps the samples. A ledger row — a task, an idle or a start-up
stretch of one node — is settled once samples cover its whole span, never from a price
cached before it ran:

- CPU: the row's CPU-seconds at the price of a CPU-second in the samples that cover it,
  each sample weighted by its overlap with the row. A sample's price is its energy above
  the host's idle floor divided by the CPU-seconds the host was busy in it (idle power
  is nobody's work: it stays unattributed, named as such in the reconciliation).
- RAM: the host's RAM power times the node's share of host memory (its limit over the
  host's RAM), over the time the row held it — the same time the ``device`` method
  charges RAM for.

A row the samples do not cover (the service was down while it ran) is ``unsettled``:
its ``device`` charge stands and nothing is lost. A charge from CodeCarbon's load model
rather than a hardware counter is marked ``estimated``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from carbonedge.carbon.device import ram_watts
from carbonedge.carbon.ledger import LedgerRow
from carbonedge.carbon.power import carbon_grams
from carbonedge.carbon.units import joules_from_kwh, kwh_from_joules
from carbonedge.errors import InvalidMessage

__all__ = [
    "MIN_BUSY_CPUS",
    "MIN_COVERAGE",
    "HostSample",
    "MeasuredCharge",
    "SampleLog",
    "settle",
]

MIN_BUSY_CPUS = 0.05
"""Floor of the host's busy CPUs when dividing by it: a near-idle host must not turn a few
milliwatts of noise into a huge per-CPU price."""
MIN_COVERAGE = 0.9
"""Share of a row's span that samples must cover for it to be settled."""


@dataclass(frozen=True, slots=True)
class HostSample:
    """What the host used between ``t0`` and ``t1`` (unix seconds)."""

    t0: float
    t1: float
    cpu_j: float
    idle_j: float
    """The part of ``cpu_j`` the host draws doing nothing (CodeCarbon's idle floor)."""
    ram_j: float
    gpu_j: float
    busy_cpu_s: float
    """CPU-seconds the host was busy (``/proc/stat``)."""
    node_cpu_s: Mapping[str, float]
    """CPU-seconds each live node's cgroup used in the sample."""

    @property
    def seconds(self) -> float:
        return max(self.t1 - self.t0, 1e-9)

    @property
    def dynamic_j(self) -> float:
        return max(self.cpu_j - self.idle_j, 0.0)

    @property
    def busy_s(self) -> float:
        """Busy CPU-seconds to divide by: never less than what the nodes used."""
        return max(self.busy_cpu_s, sum(self.node_cpu_s.values()), MIN_BUSY_CPUS * self.seconds)

    @property
    def price_j_per_cpu_s(self) -> float:
        """What one CPU-second of work cost in this sample (J)."""
        return self.dynamic_j / self.busy_s

    def to_fields(self) -> dict[str, str]:
        out = {name: repr(float(getattr(self, name))) for name in _SAMPLE_FLOATS}
        out.update({f"node.{n}": repr(float(v)) for n, v in self.node_cpu_s.items()})
        return out

    @classmethod
    def from_fields(cls, raw: Mapping[bytes | str, bytes | str]) -> HostSample:
        """Decode :meth:`to_fields` (as Redis returns it); InvalidMessage if malformed."""
        try:
            f = {_text(k): float(_text(v)) for k, v in raw.items()}
        except (UnicodeDecodeError, ValueError) as e:
            raise InvalidMessage(f"host sample is malformed: {e}") from e
        if not all(math.isfinite(v) and v >= 0 for v in f.values()):
            raise InvalidMessage("host sample has a negative or non-finite value")
        try:
            values = {name: f[name] for name in _SAMPLE_FLOATS}
        except KeyError as e:
            raise InvalidMessage(f"host sample lacks {e.args[0]}", field=e.args[0]) from e
        nodes = {k[5:]: v for k, v in f.items() if k.startswith("node.")}
        if values["t1"] < values["t0"]:
            raise InvalidMessage("host sample ends before it starts", field="t1")
        return cls(node_cpu_s=nodes, **values)


_SAMPLE_FLOATS = ("t0", "t1", "cpu_j", "idle_j", "ram_j", "gpu_j", "busy_cpu_s")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class MeasuredCharge:
    """One ledger row's ``measured`` charge."""

    settlement: str
    """``settled``, or ``unsettled`` when no samples cover the row."""
    estimated: bool
    """CodeCarbon estimated the host's power from its load (no hardware counter)."""
    cpu_kwh: float = math.nan
    ram_kwh: float = math.nan
    carbon_g: float = math.nan
    coverage: float = 0.0

    @property
    def energy_kwh(self) -> float:
        return self.cpu_kwh + self.ram_kwh


class SampleLog:
    """The host samples of the last ``keep_s`` seconds, in time order."""

    def __init__(self, keep_s: float = 900.0) -> None:
        self.keep_s = keep_s
        self._samples: deque[HostSample] = deque()

    def add(self, sample: HostSample) -> None:
        if self._samples and sample.t0 < self._samples[-1].t1 - 1e-6:
            # overlapping readings (a restarted service reloading its own): keep time order
            sample = HostSample(self._samples[-1].t1, max(sample.t1, self._samples[-1].t1),
                                sample.cpu_j, sample.idle_j, sample.ram_j, sample.gpu_j,
                                sample.busy_cpu_s, sample.node_cpu_s)
        self._samples.append(sample)
        while self._samples and self._samples[0].t1 < sample.t1 - self.keep_s:
            self._samples.popleft()

    def extend(self, samples: Iterable[HostSample]) -> None:
        for sample in sorted(samples, key=lambda s: s.t0):
            self.add(sample)

    @property
    def covered_until(self) -> float:
        """End of the latest sample (0.0 when there is none)."""
        return self._samples[-1].t1 if self._samples else 0.0

    def overlapping(self, start: float, end: float) -> list[tuple[HostSample, float]]:
        """Samples overlapping ``[start, end]`` with the length of each overlap (s); a
        zero-length span takes the sample that contains its instant."""
        out = []
        for s in reversed(self._samples):
            if s.t1 < start:
                break
            overlap = min(s.t1, end) - max(s.t0, start)
            if overlap > 0 or (end <= start and s.t0 <= start <= s.t1):
                out.append((s, max(overlap, 0.0)))
        out.reverse()
        return out

    def __len__(self) -> int:
        return len(self._samples)


def ram_seconds(row: LedgerRow) -> float:
    """How long the row held its node's memory: the time the device method charged RAM
    for (a task: its busy time; an idle stretch: its wall time outside tasks)."""
    ram_w = ram_watts(row.mem_limit_bytes)
    return joules_from_kwh(row.ram_kwh) / ram_w if ram_w > 0 else 0.0


def settle(row: LedgerRow, log: SampleLog, *, host_mem_bytes: float,
           estimated: bool) -> MeasuredCharge:
    """The measured charge of ``row`` from the samples covering it."""
    start, end = row.start, max(row.ts, row.start)
    span = end - start
    covering = log.overlapping(start, end)
    if span > 0:
        coverage = min(sum(o for _, o in covering) / span, 1.0)
    else:
        coverage = 1.0 if covering else 0.0
    if coverage < MIN_COVERAGE or not covering:
        return MeasuredCharge("unsettled", estimated, coverage=coverage)
    if span > 0:
        weights = [o / span for _, o in covering]
    else:
        weights = [1.0 / len(covering)] * len(covering)
    total_w = sum(weights)
    price = sum(w * s.price_j_per_cpu_s for (s, _), w in zip(covering, weights, strict=True))
    ram_w = sum(w * s.ram_j / s.seconds for (s, _), w in zip(covering, weights, strict=True))
    price, ram_w = price / total_w, ram_w / total_w
    share = min(row.mem_limit_bytes / host_mem_bytes, 1.0) if host_mem_bytes > 0 else 0.0
    cpu_kwh = kwh_from_joules(row.cpu_s * price)
    ram_kwh = kwh_from_joules(ram_w * share * ram_seconds(row))
    return MeasuredCharge(
        "settled", estimated, cpu_kwh=cpu_kwh, ram_kwh=ram_kwh,
        carbon_g=carbon_grams(cpu_kwh + ram_kwh, row.intensity_g_per_kwh, row.pue),
        coverage=coverage,
    )
