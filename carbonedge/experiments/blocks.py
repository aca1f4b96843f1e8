"""Comparing configurations fairly: interleaved blocks in a seeded random order.

Every configuration (an *arm*: a scheduling mode, a node pin, custom weights) runs
``per_block`` requests in each block, in an order drawn afresh for every block from a
seeded generator, so that drift on the host (other load, thermal state) lands on every
arm alike. Each request goes through the dispatcher, one at a time (batch 1, as in the
paper). Results are then joined with their ``measured`` charge, settled by the carbon
service, and summarised per arm: shares of nodes, latency, throughput, carbon per
inference by both accounting methods with 95% intervals across blocks, and the change
against a baseline arm, paired by block.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from carbonedge.client import Client
from carbonedge.client.results import InferenceResult
from carbonedge.connections import redis_client
from carbonedge.experiments.stats import Interval, bootstrap_mean_ci, mean_ci
from carbonedge.experiments.workload import percentile
from carbonedge.protocol import keys

__all__ = ["Arm", "ArmSummary", "TaskRecord", "attach_measured", "run_blocks", "summarise_arms"]


@dataclass(frozen=True, slots=True)
class Arm:
    """One configuration: a name and the request options that make it."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class TaskRecord:
    """One request of an experiment, where it ran, and both of its charges."""

    block: int
    order: int
    """The arm's position in its block's order."""
    arm: str
    model: str
    result: InferenceResult
    wall_s: float
    """Submit to result, as the producer saw it."""
    measured_g: float = math.nan
    measured_kwh: float = math.nan
    settlement: str = "pending"
    """``settled`` once every ledger row of the task (one per segment) has its measured
    charge; ``unsettled`` when the carbon service could not cover one; ``pending`` if
    none arrived in time."""
    measured_rows: int = 0

    @property
    def expected_rows(self) -> int:
        """Ledger rows the task leaves: one per segment of a partitioned request, else one."""
        return max(len(self.result.segments), 1)

    @property
    def work_shares(self) -> dict[str, float]:
        """Where the task's work ran: its node, or its segments' nodes by CPU-seconds."""
        segments = self.result.segments
        total = sum(s.cpu_s for s in segments)
        if not segments or not total > 0:
            return {self.result.node: 1.0}
        shares: dict[str, float] = {}
        for s in segments:
            shares[s.node] = shares.get(s.node, 0.0) + s.cpu_s / total
        return shares

    @property
    def score_margin(self) -> float:
        """The chosen node's score minus the best other node's (NaN without a choice):
        how close the decision was."""
        rows = (self.result.decision or {}).get("explain") or []
        if len(rows) < 2:
            return math.nan
        chosen = next((r["score"] for r in rows if r.get("node") == self.result.node),
                      rows[0]["score"])
        return chosen - max(r["score"] for r in rows if r.get("node") != self.result.node)

    @property
    def sched_ms(self) -> float:
        """Time the dispatcher's scheduler spent deciding where the task runs."""
        decision = self.result.decision or {}
        ns = decision.get("duration_ns")
        return ns / 1e6 if isinstance(ns, (int, float)) else math.nan


def run_blocks(client: Client, arms: Sequence[Arm], *, model: str, images: Sequence[Any],
               blocks: int, per_block: int, seed: int, timeout: float,
               progress: bool = True, label: str = "") -> tuple[list[TaskRecord], list[list[str]]]:
    """Run every arm ``per_block`` times in each of ``blocks`` blocks; returns the records
    and each block's order of arms."""
    rng = random.Random(seed)
    records: list[TaskRecord] = []
    orders: list[list[str]] = []
    bar = tqdm(total=blocks * len(arms) * per_block, desc=label or model, unit="inf",
               disable=not progress, leave=False)
    i = 0
    with bar:
        for block in range(blocks):
            order = list(arms)
            rng.shuffle(order)
            orders.append([a.name for a in order])
            for position, arm in enumerate(order):
                for _ in range(per_block):
                    image = images[i % len(images)]
                    i += 1
                    start = time.perf_counter()
                    result = client.submit(model, image, **arm.options).result(timeout)
                    records.append(TaskRecord(block, position, arm.name, model, result,
                                              time.perf_counter() - start))
                    bar.update()
    return records, orders


def warm_up(client: Client, node_ids: Sequence[str], model: str, images: Sequence[Any],
            *, per_node: int, timeout: float) -> None:
    """A few pinned requests per node: every node has run the model and has a service
    time in its heartbeat before anything is measured."""
    for node in node_ids:
        for image in images[:per_node]:
            client.submit(model, image, node=node).result(timeout)


def attach_measured(records: Sequence[TaskRecord], redis_url: str, *,
                    timeout: float = 60.0) -> int:
    """Join each record with its measured charge from ``ce:carbon:settled`` (waiting up to
    ``timeout`` for the carbon service to settle them), summed over the ledger rows of a
    partitioned request's segments; returns how many records were completed."""
    by_id = {r.result.id: r for r in records}
    for r in records:
        r.measured_g = r.measured_kwh = 0.0
        r.measured_rows, r.settlement = 0, "pending"
    client = redis_client(redis_url)
    found: set[str] = set()
    last = "-"
    deadline = time.monotonic() + timeout
    try:
        while len(found) < len(by_id) and time.monotonic() < deadline:
            entries = client.xrange(keys.CARBON_SETTLED,
                                    min=last if last == "-" else f"({last}", count=10_000)
            for entry_id, fields in entries:
                last = entry_id.decode()
                task_id = fields.get(b"task_id", b"").decode(errors="replace")
                record = by_id.get(task_id)
                if record is None or fields.get(b"row_type", b"task") != b"task":
                    continue
                record.measured_rows += 1
                settlement = fields.get(b"settlement", b"?").decode()
                if settlement == "settled":
                    record.measured_g += float(fields[b"carbon_g"])
                    record.measured_kwh += float(fields[b"energy_kwh"])
                elif record.settlement != "unsettled":
                    record.settlement = "unsettled"
                if record.measured_rows >= record.expected_rows:
                    found.add(task_id)
                    if record.settlement == "pending":
                        record.settlement = "settled"
            if not entries:
                time.sleep(0.2)  # the service settles once a host sample covers the task
    finally:
        client.close()
    for r in records:
        if r.settlement != "settled":
            r.measured_g = r.measured_kwh = math.nan
    return len(found)


@dataclass(frozen=True, slots=True)
class ArmSummary:
    """What one arm did over every block."""

    name: str
    count: int
    shares: dict[str, float]
    latency_ms: Interval
    p95_ms: float
    throughput_rps: float
    device_g: Interval
    measured_g: Interval
    device_kwh: float
    delta_device_pct: Interval
    delta_measured_pct: Interval
    unsettled: int
    random_init: bool
    measured_kwh: float = math.nan
    sched_ms: float = math.nan
    """Mean time the scheduler took to decide, per task."""


def _per_block(records: Sequence[TaskRecord], value: Callable[[TaskRecord], float]
               ) -> dict[int, float]:
    blocks: dict[int, list[float]] = {}
    for r in records:
        v = value(r)
        if math.isfinite(v):
            blocks.setdefault(r.block, []).append(v)
    return {b: statistics.fmean(vs) for b, vs in blocks.items()}


def _finite_mean(values: Iterable[float]) -> float:
    clean = [v for v in values if math.isfinite(v)]
    return statistics.fmean(clean) if clean else math.nan


def _delta(arm: dict[int, float], base: dict[int, float], *, seed: int) -> Interval:
    """Per-block change against the baseline in percent, paired by block: the mean with a
    bootstrap interval across blocks."""
    pairs = [100.0 * (arm[b] / base[b] - 1.0) for b in sorted(arm) if base.get(b, 0) > 0]
    return bootstrap_mean_ci(pairs, seed=seed)


def summarise_arms(records: Sequence[TaskRecord], baseline: str, *,
                   seed: int = 0) -> list[ArmSummary]:
    """One summary per arm, in the order the arms first appear."""
    names = list(dict.fromkeys(r.arm for r in records))
    by_arm = {n: [r for r in records if r.arm == n] for n in names}
    base = by_arm.get(baseline, [])
    base_device = _per_block(base, lambda r: r.result.carbon_g)
    base_measured = _per_block(base, lambda r: r.measured_g)
    out = []
    for name in names:
        rs = by_arm[name]
        latencies = sorted(r.result.e2e_ms for r in rs)
        device = _per_block(rs, lambda r: r.result.carbon_g)
        measured = _per_block(rs, lambda r: r.measured_g)
        nodes: Counter[str] = Counter()
        for r in rs:
            nodes.update(r.work_shares)
        wall = sum(r.wall_s for r in rs)
        out.append(ArmSummary(
            name=name, count=len(rs),
            shares={n: c / len(rs) for n, c in sorted(nodes.items())},
            latency_ms=mean_ci(list(_per_block(rs, lambda r: r.result.e2e_ms).values())),
            p95_ms=percentile(latencies, 95),
            throughput_rps=len(rs) / wall if wall > 0 else math.nan,
            device_g=mean_ci(list(device.values())),
            measured_g=mean_ci(list(measured.values())),
            device_kwh=statistics.fmean(r.result.energy_kwh for r in rs),
            delta_device_pct=_delta(device, base_device, seed=seed),
            delta_measured_pct=_delta(measured, base_measured, seed=seed),
            unsettled=sum(r.settlement != "settled" for r in rs),
            random_init=any(r.result.random_init for r in rs),
            measured_kwh=_finite_mean(r.measured_kwh for r in rs),
            sched_ms=_finite_mean(r.sched_ms for r in rs),
        ))
    return out
