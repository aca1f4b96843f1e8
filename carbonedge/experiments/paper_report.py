"""From a :class:`~carbonedge.experiments.paper.PaperRun` to its summary and its files.

``results.json`` (provenance and a ``summary`` row per configuration x model x method),
``tasks.csv`` (every task), ``tables.md`` (the paper's tables beside ours), ``fig2.png``
and ``fig3.png``. The oracle is the least carbon per inference any placement could reach
for the same work: the lowest mean charge per inference of any node, measured on the
tasks that ran whole on that node.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from carbonedge.experiments.blocks import ArmSummary, TaskRecord, summarise_arms
from carbonedge.experiments.outputs import (
    machine,
    topology_info,
    versions,
)
from carbonedge.experiments.paper import (
    CONFIG_LABELS,
    IN_PAPER,
    SETTLING,
    PaperRun,
    sweep_weights,
)
from carbonedge.experiments.stats import Interval

__all__ = ["METHODS", "TASK_COLUMNS", "Oracle", "PaperReport", "build_report", "results_json",
           "task_rows"]

METHODS = ("device", "measured")
BASELINE = "monolithic"
TASK_COLUMNS = (
    "model", "block", "order", "config", "node", "nodes", "latency_ms", "queue_ms",
    "exec_ms", "sched_ms", "score_margin", "candidates", "cpu_model_s", "cpu_overhead_s", "busy_s", "intensity_g_per_kwh",
    "device_kwh", "device_g", "measured_kwh", "measured_g", "settlement", "segments",
    "random_init", "task_id")


@dataclass(frozen=True, slots=True)
class Oracle:
    """The least carbon per inference of any node for one model and method."""

    model: str
    method: str
    node: str
    g_per_inf: float
    per_node: dict[str, float]


@dataclass
class PaperReport:
    """A paper run summarised: rows of results.json's ``summary`` and what tables need."""

    run: PaperRun
    arms: dict[str, list[ArmSummary]]
    """Per model, every configuration (in the order of the tables)."""
    oracles: dict[tuple[str, str], Oracle]
    sweep: list[ArmSummary]
    transition_wc: float | None
    summary: list[dict[str, Any]]


def carbon(row: ArmSummary, method: str) -> Interval:
    return row.device_g if method == "device" else row.measured_g


def delta(row: ArmSummary, method: str) -> Interval:
    return row.delta_device_pct if method == "device" else row.delta_measured_pct


def record_g(record: TaskRecord, method: str) -> float:
    return record.result.carbon_g if method == "device" else record.measured_g


def oracle_for(model: str, records: Sequence[TaskRecord], method: str) -> Oracle | None:
    """The node with the least mean carbon per inference over the tasks it ran whole
    (the pinned warm-up after its settling runs, and every configuration's)."""
    per_node: dict[str, list[float]] = {}
    for r in records:
        value = record_g(r, method)
        settling = r.arm == "warm-up" and r.order < SETTLING
        if not r.result.segments and not settling and math.isfinite(value):
            per_node.setdefault(r.result.node, []).append(value)
    if not per_node:
        return None
    means = {n: statistics.fmean(vs) for n, vs in sorted(per_node.items())}
    best = min(means, key=means.__getitem__)
    return Oracle(model, method, best, means[best], means)


def _inverse(interval: Interval) -> dict[str, float]:
    """Inferences per gram from grams per inference (the bounds swap)."""
    def inv(x: float) -> float:
        return 1.0 / x if math.isfinite(x) and x > 0 else math.nan
    return {"mean": inv(interval.mean), "ci_low": inv(interval.high),
            "ci_high": inv(interval.low)}


def _ordered(rows: list[ArmSummary]) -> list[ArmSummary]:
    rank = {name: i for i, name in enumerate(CONFIG_LABELS)}
    return sorted(rows, key=lambda r: rank.get(r.name, len(rank)))


def summary_row(model: str, row: ArmSummary, method: str, oracle: Oracle | None
                ) -> dict[str, Any]:
    """One row of results.json's ``summary``."""
    g = carbon(row, method)
    gap = 100.0 * (g.mean / oracle.g_per_inf - 1.0) if oracle and oracle.g_per_inf > 0 \
        else math.nan
    return {
        "config": row.name,
        "label": CONFIG_LABELS.get(row.name, row.name),
        "in_paper": row.name in IN_PAPER,
        "model": model,
        "method": method,
        "n": row.count,
        "carbon_g_per_inf": g.to_dict(),
        "delta_vs_mono_pct": delta(row, method).to_dict(),
        "latency_ms": {"mean": row.latency_ms.mean, "p95": row.p95_ms,
                       "ci_low": row.latency_ms.low, "ci_high": row.latency_ms.high},
        "shares": row.shares,
        "throughput_rps": row.throughput_rps,
        "energy_kwh_per_inf": row.device_kwh if method == "device" else row.measured_kwh,
        "inf_per_g": _inverse(g),
        "sched_overhead_ms": row.sched_ms,
        "oracle_gap_pct": gap,
        "unsettled": row.unsettled if method == "measured" else 0,
    }


def transition(sweep: Sequence[ArmSummary], green_node: str | None) -> float | None:
    """The smallest w_C at which the least-carbon node takes most of the tasks."""
    for row in sweep:
        if green_node is not None and row.shares.get(green_node, 0.0) > 0.5:
            return float(row.name.removeprefix("wc="))
    return None


def build_report(run: PaperRun) -> PaperReport:
    seed = run.options.seed
    arms = {model: _ordered(summarise_arms(records, BASELINE, seed=seed))
            for model, records in run.records.items()}
    oracles = {}
    for model, records in run.records.items():
        for method in METHODS:
            oracle = oracle_for(model, [*run.pinned.get(model, ()), *records], method)
            if oracle is not None:
                oracles[(model, method)] = oracle
    summary = [summary_row(model, row, method, oracles.get((model, method)))
               for model, rows in arms.items() for row in rows for method in METHODS]
    sweep = summarise_arms(run.sweep, "wc=0.00", seed=seed) if run.sweep else []
    sweep.sort(key=lambda r: float(r.name.removeprefix("wc=")))
    green = oracles.get((run.sweep_model, "device"))
    return PaperReport(run, arms, oracles, sweep, transition(sweep, green and green.node),
                       summary)


def candidates(record: TaskRecord) -> str:
    """Every candidate of the task's decision, best first: ``node:R/L/P/B/C=score``."""
    rows = (record.result.decision or {}).get("explain") or []
    return " ".join(f"{row['node']}:" + "/".join(f"{row[k]:.2f}" for k in "RLPBC")
                    + f"={row['score']:.3f}" for row in rows)


def task_rows(run: PaperRun) -> list[dict[str, Any]]:
    """One row per task: the pinned warm-up (``config`` = ``warm-up``, block -1), the
    configurations, and the sweep (``config`` = ``wc=...``)."""
    rows = []
    for model, records in [*run.pinned.items(), *run.records.items(),
                           (run.sweep_model, run.sweep)]:
        for r in records:
            res = r.result
            rows.append({
                "model": model, "block": r.block, "order": r.order, "config": r.arm,
                "node": res.node,
                "nodes": ";".join(f"{n}:{s:.3f}" for n, s in r.work_shares.items()),
                "latency_ms": res.e2e_ms, "queue_ms": res.queue_ms, "exec_ms": res.exec_ms,
                "sched_ms": r.sched_ms, "score_margin": r.score_margin,
                "candidates": candidates(r),
                "cpu_model_s": res.cpu_model_s,
                "cpu_overhead_s": res.cpu_overhead_s, "busy_s": res.busy_s,
                "intensity_g_per_kwh": res.intensity_g_per_kwh, "device_kwh": res.energy_kwh,
                "device_g": res.carbon_g, "measured_kwh": r.measured_kwh,
                "measured_g": r.measured_g, "settlement": r.settlement,
                "segments": len(res.segments), "random_init": int(res.random_init),
                "task_id": res.id,
            })
    return rows


def results_json(report: PaperReport) -> dict[str, Any]:
    run, options = report.run, report.run.options
    weights = {f"wc={wc:.2f}": (wc, w) for wc, w in sweep_weights(options.sweep_steps)}
    return {
        "experiment": "paper",
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "machine": machine(),
        "versions": versions(),
        "topology": topology_info(run.topology, run.node_ids),
        "cgroup_limits": run.constrained,
        "seed": options.seed,
        "options": {"models": list(options.models), "n_per_block": options.n,
                    "blocks": options.blocks, "mono_node": options.mono_node,
                    "sweep_steps": options.sweep_steps, "sweep_n_per_block":
                    options.per_sweep_step, "warmup_per_node": options.warmup},
        "block_order": run.orders,
        "random_weights": any(r.result.random_init for r in run.all_records),
        "methods": {
            "device": "each node an emulated device (quota x W per core + 0.375 W/GB of its "
                      "memory limit) busy for the task's CPU-seconds / quota, at the node's "
                      "intensity (the paper's Eqs. 1, 2, 4)",
            "measured": "the host's CodeCarbon energy over the samples covering the task, "
                        "shared by cgroup CPU time and memory" + (
                            " (estimated: CodeCarbon's CPU-load model, no hardware counter)"
                            if run.measured_estimated else ""),
        },
        "device_power_sources": sorted({r.result.power_source for r in run.all_records}),
        "measured_settled": {"tasks": len(run.all_records), "settled": run.settled},
        "slo_ms": run.slo_ms,
        "service_ms": run.service_ms,
        "oracle": [{"model": o.model, "method": o.method, "node": o.node,
                    "g_per_inf": o.g_per_inf, "per_node": o.per_node}
                   for o in report.oracles.values()],
        "summary": report.summary,
        "sweep": {
            "model": run.sweep_model,
            "normalisation": "paper",
            "transition_wc": report.transition_wc,
            "steps": [{"wc": weights[row.name][0], "weights": weights[row.name][1],
                       "shares": row.shares, "n": row.count,
                       "carbon_g_per_inf": {m: carbon(row, m).to_dict() for m in METHODS},
                       "latency_ms": {"mean": row.latency_ms.mean, "p95": row.p95_ms}}
                      for row in report.sweep],
        },
    }
