"""From a :class:`~carbonedge.experiments.temporal.TemporalRun` to its summary and files.

Carbon per inference is the device method's (the measured one beside it), with a 95%
interval across blocks: slices of the window by arrival time, which every arm shares, so
that the change against round-robin is paired by block. A deadline is missed when a
request finished after its submission plus its deadline. Waiting is from submission to
the start of the run, over the deferrable requests. The oracles are lower bounds for the
same requests: ``spatial``, the least-carbon node at the hour each request arrived;
``temporal``, the least-carbon node and hour before each deadline (urgent requests: now).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from carbonedge.carbon.power import carbon_grams
from carbonedge.experiments.blocks import ArmSummary, TaskRecord, summarise_arms
from carbonedge.experiments.outputs import (
    machine,
    topology_info,
    versions,
)
from carbonedge.experiments.replay import HOUR
from carbonedge.experiments.stats import Interval, bootstrap_mean_ci
from carbonedge.experiments.temporal import TemporalRun
from carbonedge.experiments.workload import percentile

__all__ = ["TASK_COLUMNS", "TemporalReport", "build_temporal_report", "format_temporal",
           "results_json", "task_rows"]

BASELINE = "agnostic"
TASK_COLUMNS = (
    "arm", "arrival", "block", "order", "tenant", "deadline_h", "submitted_h", "started_h",
    "finished_h", "deferred", "missed", "wait_s", "node", "intensity_g_per_kwh",
    "device_kwh", "device_g", "measured_g", "settlement", "task_id")
FORECASTER_KNEW = {
    "oracle": "the trace itself: every coming hour's real intensity (perfect foresight)",
    "persistence": "only the present hour's intensity, assumed to hold (never defers)",
    "yesterday": "the real intensity of the same hour one trace day earlier",
}


@dataclass
class TemporalReport:
    run: TemporalRun
    arms: list[ArmSummary]
    summary: list[dict[str, Any]]
    oracle: dict[str, float]
    intensity: dict[str, list[tuple[float, float]]]
    zones: dict[str, str]
    releases: dict[str, list[tuple[float, float]]]
    """Per deferral arm: (trace hour the deferred request started, intensity it ran at)."""
    spend: dict[str, dict[str, list[tuple[float, float]]]]
    """Per arm and tenant role: (trace hour, cumulative gCO2) at each finished request."""
    budgets: dict[str, float]
    tenants: list[dict[str, Any]]

    @property
    def window_start(self) -> str:
        return f"{self.run.window.start:%Y-%m-%d %H:%M}"

    @property
    def speedup(self) -> float:
        return self.run.window.speedup


def _timing(record: TaskRecord, name: str) -> float:
    value = (record.result.raw.get("timings") or {}).get(name)
    return float(value) if isinstance(value, (int, float)) else math.nan


def _hour(run: TemporalRun, wall: float) -> float:
    return (wall - run.t0) / run.window.hour_s


def _deadline_h(run: TemporalRun, record: TaskRecord) -> int | None:
    return run.arrivals[run.arrival_of[record.result.id]].deadline_h


def missed(run: TemporalRun, record: TaskRecord) -> bool:
    deadline = _deadline_h(run, record)
    if deadline is None:
        return False
    due = _timing(record, "submitted_at") + deadline * run.window.hour_s
    return _timing(record, "finished_at") > due


def wait_s(record: TaskRecord) -> float:
    return _timing(record, "started_at") - _timing(record, "submitted_at")


def node_kwh(records: Sequence[TaskRecord]) -> dict[str, float]:
    """Each node's mean device kWh per inference over this run's tasks."""
    per: dict[str, list[float]] = {}
    for r in records:
        if math.isfinite(r.result.energy_kwh):
            per.setdefault(r.result.node, []).append(r.result.energy_kwh)
    return {n: statistics.fmean(v) for n, v in per.items()}


def oracles(run: TemporalRun) -> dict[str, float]:
    """Mean gCO2 per inference of the best placement (and, with waiting, the best hour)."""
    kwh = node_kwh(run.records) or run.calibration_kwh
    if not kwh:
        return {"spatial": math.nan, "temporal": math.nan}
    pue = {r.result.node: r.result.pue for r in run.records}

    def best(hour: int) -> float:
        when = run.window.start + hour * HOUR
        return min(carbon_grams(e, run.zones[n].value_at(when), pue.get(n, 1.0))
                   for n, e in kwh.items())

    spatial, temporal = [], []
    for a in run.arrivals:
        now = math.floor(a.at_h)
        spatial.append(best(now))
        last = now if a.deadline_h is None else math.floor(a.at_h + a.deadline_h - 1e-9)
        temporal.append(min(best(h) for h in range(now, last + 1)))
    return {"spatial": statistics.fmean(spatial), "temporal": statistics.fmean(temporal)}


def _paired_delta(records: Sequence[TaskRecord], arm: str, base: str, seed: int) -> Interval:
    def by_block(name: str) -> dict[int, float]:
        blocks: dict[int, list[float]] = {}
        for r in records:
            if r.arm == name and math.isfinite(r.result.carbon_g):
                blocks.setdefault(r.block, []).append(r.result.carbon_g)
        return {b: statistics.fmean(v) for b, v in blocks.items()}

    a, b = by_block(arm), by_block(base)
    return bootstrap_mean_ci([100 * (a[k] / b[k] - 1) for k in sorted(a) if b.get(k, 0) > 0],
                             seed=seed)


def summary_rows(run: TemporalRun, arms: Sequence[ArmSummary], oracle: dict[str, float]
                 ) -> list[dict[str, Any]]:
    """One row per arm of results.json's ``summary`` (an arm whose every request was
    refused has a row too, with no carbon figures)."""
    seed = run.options.seed
    refused = Counter(r["arm"] for r in run.refused)
    by_name = {a.name: a for a in arms}
    nan = Interval(math.nan, math.nan, math.nan)
    rows = []
    for spec in run.arms:
        arm = by_name.get(spec.name)
        rs = [r for r in run.records if r.arm == spec.name]
        deferrable = [r for r in rs if _deadline_h(run, r) is not None]
        waits = sorted(w for w in (wait_s(r) for r in deferrable) if math.isfinite(w))
        latencies = sorted(v for v in (1e3 * (_timing(r, "finished_at")
                                              - _timing(r, "submitted_at")) for r in rs)
                           if math.isfinite(v))
        wait_mean = statistics.fmean(waits) if waits else math.nan
        forced = sum(bool(((r.result.decision or {}).get("budget") or {}).get("force_green"))
                     for r in rs)
        device = arm.device_g if arm else nan
        rows.append({
            "arm": spec.name,
            "forecast": spec.forecast,
            "n": len(rs),
            "refused": refused.get(spec.name, 0),
            "carbon_g_per_inf": device.to_dict(),
            "carbon_g_per_inf_measured": (arm.measured_g if arm else nan).to_dict(),
            "delta_vs_agnostic_pct": (arm.delta_device_pct if arm else nan).to_dict(),
            "delta_vs_green_pct": _paired_delta(run.records, spec.name, "green",
                                                seed).to_dict(),
            "oracle_gap_pct": 100 * (device.mean / oracle["temporal"] - 1)
            if oracle["temporal"] > 0 else math.nan,
            "deadline_requests": len(deferrable),
            "deadline_misses": sum(missed(run, r) for r in rs),
            "deferred": sum(r.result.deferred_until is not None for r in rs),
            "forced_green": forced,
            "wait_s": {"mean": wait_mean, "p95": percentile(waits, 95)},
            "wait_trace_h": {"mean": wait_mean / run.window.hour_s,
                             "p95": percentile(waits, 95) / run.window.hour_s},
            "shares": arm.shares if arm else {},
            "latency_ms": {"mean": statistics.fmean(latencies) if latencies else math.nan,
                           "p95": percentile(latencies, 95)},
        })
    return rows


def _releases(run: TemporalRun) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {a.name: [] for a in run.arms if a.forecast}
    for r in run.records:
        if r.arm in out and r.result.deferred_until is not None:
            out[r.arm].append((_hour(run, _timing(r, "started_at")),
                               r.result.intensity_g_per_kwh))
    return out


def _spend(run: TemporalRun) -> dict[str, dict[str, list[tuple[float, float]]]]:
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for arm in run.arms:
        for role in ("interactive", "batch"):
            done = sorted((_hour(run, _timing(r, "finished_at")), r.result.carbon_g)
                          for r in run.records if r.arm == arm.name
                          and run.arrivals[run.arrival_of[r.result.id]].tenant_role == role)
            total, series = 0.0, [(0.0, 0.0)]
            for hour, grams in done:
                total += grams
                series.append((hour, total))
            out.setdefault(arm.name, {})[role] = series
    return out


def _tenants(run: TemporalRun) -> list[dict[str, Any]]:
    spent: dict[str, float] = {}
    for r in run.records:
        tenant = f"{r.arm}.{run.arrivals[run.arrival_of[r.result.id]].tenant_role}"
        spent[tenant] = spent.get(tenant, 0.0) + r.result.carbon_g
    refused = Counter(r["tenant"] for r in run.refused)
    return [{"tenant": t, "budget_g": budget, "spent_g": spent.get(t, 0.0),
             "spent_recorded_g": run.spent_recorded.get(t, 0.0),
             "share_of_budget": spent.get(t, 0.0) / budget if budget > 0 else math.nan,
             "refused": refused.get(t, 0)}
            for t, budget in run.budgets.items()]


def build_temporal_report(run: TemporalRun) -> TemporalReport:
    arms = summarise_arms(run.records, BASELINE, seed=run.options.seed)
    rank = {a.name: i for i, a in enumerate(run.arms)}
    arms.sort(key=lambda a: rank.get(a.name, len(rank)))
    oracle = oracles(run)
    span = run.window.hours + run.options.deadline_h[1]
    return TemporalReport(
        run=run, arms=arms, summary=summary_rows(run, arms, oracle), oracle=oracle,
        intensity={n: run.window.series(z, span + 1) for n, z in run.zones.items()},
        zones={n: z.name for n, z in run.zones.items()},
        releases=_releases(run), spend=_spend(run), budgets=run.budgets,
        tenants=_tenants(run))


def task_rows(run: TemporalRun) -> list[dict[str, Any]]:
    rows = []
    for r in run.records:
        arrival = run.arrivals[run.arrival_of[r.result.id]]
        res = r.result
        rows.append({
            "arm": r.arm, "arrival": arrival.index, "block": r.block, "order": r.order,
            "tenant": f"{r.arm}.{arrival.tenant_role}", "deadline_h": arrival.deadline_h
            if arrival.deadline_h is not None else "",
            "submitted_h": _hour(run, _timing(r, "submitted_at")),
            "started_h": _hour(run, _timing(r, "started_at")),
            "finished_h": _hour(run, _timing(r, "finished_at")),
            "deferred": int(res.deferred_until is not None), "missed": int(missed(run, r)),
            "wait_s": wait_s(r), "node": res.node,
            "intensity_g_per_kwh": res.intensity_g_per_kwh, "device_kwh": res.energy_kwh,
            "device_g": res.carbon_g, "measured_g": r.measured_g,
            "settlement": r.settlement, "task_id": res.id,
        })
    return rows


def results_json(report: TemporalReport) -> dict[str, Any]:
    run, options = report.run, report.run.options
    assert run.topology is not None
    return {
        "experiment": "temporal",
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "machine": machine(),
        "versions": versions(),
        "topology": topology_info(run.topology, run.node_ids),
        "seed": options.seed,
        "window": {"start": run.window.start.isoformat(), "hours": run.window.hours,
                   "speedup": run.window.speedup, "hour_s": run.window.hour_s,
                   "shift_h": run.shift_h,
                   "end_of_last_deadline": (run.window.start + timedelta(
                       hours=run.window.hours + options.deadline_h[1])).isoformat()},
        "zones": report.zones,
        "options": {"rate_per_hour": options.rate, "deferrable": options.deferrable,
                    "deadline_h": list(options.deadline_h), "blocks": options.blocks,
                    "model": options.model, "forecasters": list(options.forecast)},
        "arrivals": {"count": len(run.arrivals),
                     "deferrable": sum(a.deadline_h is not None for a in run.arrivals)},
        "arm_order": "seeded random order of the arms at each arrival (seed + 1)",
        "blocks": "slices of the window by arrival time; intervals are across them",
        "random_weights": any(r.result.random_init for r in run.records),
        "methods": {"headline": "device", "measured_settled": run.settled,
                    "tasks": len(run.records)},
        "forecasters": {f: FORECASTER_KNEW.get(f, "") for f in options.forecast},
        "calibration_kwh_per_inf": run.calibration_kwh,
        "tenants": report.tenants,
        "refused": run.refused,
        "oracle_g_per_inf": report.oracle,
        "summary": report.summary,
    }



def _pct(d: dict[str, float]) -> str:
    iv = Interval(d["mean"], d["ci_low"], d["ci_high"])
    return "-" if not math.isfinite(iv.mean) else iv.format("+.1f", "%")


def format_temporal(report: TemporalReport) -> str:
    """The printed summary: one line per arm."""
    run = report.run
    nodes = run.node_ids
    head = (f"{'arm':<20} {' / '.join(n.removeprefix('node-') for n in nodes):>20} "
            f"{'gCO2/inf device':>22} {'Δ vs agnostic':>16} {'Δ vs green':>16} "
            f"{'deferred':>8} {'missed':>6} {'wait s mean/p95':>16} {'refused':>7}")
    lines = [head, "-" * len(head)]
    for row in report.summary:
        g = row["carbon_g_per_inf"]
        shares = " / ".join(f"{100 * row['shares'].get(n, 0):.0f}%" for n in nodes)
        lines.append(
            f"{row['arm']:<20} {shares:>20} "
            f"{Interval(g['mean'], g['ci_low'], g['ci_high']).format('.3e'):>22} "
            f"{'-' if row['arm'] == BASELINE else _pct(row['delta_vs_agnostic_pct']):>16} "
            f"{'-' if row['arm'] == 'green' else _pct(row['delta_vs_green_pct']):>16} "
            f"{row['deferred']:>8} {row['deadline_misses']:>6} "
            f"{row['wait_s']['mean']:>7.1f}/{row['wait_s']['p95']:<8.1f} {row['refused']:>7}")
    lines.append("")
    lines.append(f"oracle (least carbon for the same requests): {report.oracle['spatial']:.3e} "
                 f"g/inf placing each at its arrival, {report.oracle['temporal']:.3e} g/inf "
                 "also choosing the hour before its deadline")
    lines.append(f"window: {run.window.hours} trace hours from {report.window_start} UTC, one "
                 f"hour = {run.window.hour_s:.1f} s; blocks = {run.options.blocks} slices by "
                 "arrival; Δ negative = less carbon, ± = 95% interval (paired by block); "
                 "wait = submission to start of the deferrable requests (wall seconds)")
    return "\n".join(lines)
