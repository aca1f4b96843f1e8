"""Runs of the paper and temporal experiments made of synthetic results, for testing their
summaries, tables and figures without agents (the integration suite runs them for real)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from carbonedge.client.results import InferenceResult, parse_result
from carbonedge.compose.topology import load_topology
from carbonedge.experiments.arrivals import make_arrivals
from carbonedge.experiments.blocks import TaskRecord
from carbonedge.experiments.paper import CONFIG_LABELS, PaperOptions, PaperRun, sweep_arms
from carbonedge.experiments.replay import Window, assign_zones, load_zone, parse_start
from carbonedge.experiments.temporal import TemporalOptions, TemporalRun, temporal_arms

NODES = ("node-high", "node-medium", "node-green")
G_PER_INF = {"node-high": 1.2e-5, "node-medium": 1.0e-5, "node-green": 0.7e-5}
"""Device grams per inference of each node (the green node is the oracle's)."""
_ids = itertools.count()


def result(node: str, grams: float, *, submitted: float = 1000.0, started: float | None = None,
           finished: float | None = None, deferred_until: float | None = None,
           segments: Sequence[dict[str, Any]] = (), kwh: float | None = None
           ) -> InferenceResult:
    started = submitted + 0.01 if started is None else started
    finished = started + 0.03 if finished is None else finished
    wire = {
        "v": 1, "id": f"task-{next(_ids)}", "status": "ok", "node": node,
        "model": "mobilenetv2", "mode": "green",
        "timings": {"submitted_at": submitted, "started_at": started, "finished_at": finished,
                    "queue_ms": 1.0, "exec_ms": 30.0, "cpu_s": 0.03},
        "energy_kwh": grams / 400 if kwh is None else kwh, "carbon_g": grams,
        "intensity_g_per_kwh": 400.0, "accounting": "device", "random_init": True,
        "decision": {"duration_ns": 30_000}, "segments": list(segments),
        "deferred_until": deferred_until, "cpu_model_s": 0.028, "cpu_overhead_s": 0.002,
        "busy_s": 0.05,
    }
    return parse_result(wire, received_at=finished + 0.005)


# Where each configuration sends its tasks (shares over the three nodes).
_ROUTES = {
    "monolithic": ("node-medium",),
    "amp4ec": ("node-high", "node-medium"),
    "ce-performance": ("node-high",),
    "ce-balanced": ("node-high",),
    "ce-green": ("node-green",),
    "ce-balanced-minmax": ("node-green", "node-high"),
    "ce-slo": ("node-medium",),
}


def paper_run(blocks: int = 3, per_block: int = 4, seed: int = 1) -> PaperRun:
    """Every configuration over ``blocks`` blocks; block b is (1 + b/10) x dearer, so that
    per-block pairing matters; measured = device x 1.02."""
    options = PaperOptions.quick(blocks=blocks, n=per_block)
    topology = load_topology(None)
    run = PaperRun(options, topology, list(NODES), sweep_model="mobilenetv2",
                   slo_ms={"mobilenetv2": 40.0},
                   service_ms={"mobilenetv2": {"node-high": 20.0, "node-medium": 33.0,
                                               "node-green": 50.0}},
                   settled=1, started_at=1.0, finished_at=2.0)
    rng = random.Random(seed)
    records: list[TaskRecord] = []
    orders = []
    for block in range(blocks):
        order = list(CONFIG_LABELS)
        rng.shuffle(order)
        orders.append(order)
        for position, config in enumerate(order):
            for i in range(per_block):
                scale = 1 + block / 10 + rng.uniform(-0.01, 0.01)
                if config == "ce-green-partitioned":
                    segs = [_segment(0, "node-green", 0.02), _segment(1, "node-medium", 0.01)]
                    res = result("node-medium", 0.8e-5 * scale, segments=segs)
                else:
                    node = _ROUTES[config][i % len(_ROUTES[config])]
                    res = result(node, G_PER_INF[node] * scale)
                records.append(_record(block, position, config, res))
    run.records["mobilenetv2"], run.orders["mobilenetv2"] = records, orders
    # the pinned warm-up: the first runs of each node are dear (they only settle it)
    run.pinned["mobilenetv2"] = [
        _record(-1, i, "warm-up", result(node, G_PER_INF[node] * (10 if i < 2 else 1.1)))
        for node in NODES for i in range(4)]
    sweep = []
    for block in range(blocks):
        for position, arm in enumerate(sweep_arms(11)):
            wc = float(arm.name.removeprefix("wc="))
            node = "node-green" if wc >= 0.6 else "node-high"
            for _ in range(2):
                sweep.append(_record(block, position, arm.name,
                                     result(node, G_PER_INF[node] * (1 + block / 10))))
    run.sweep, run.orders["sweep"] = sweep, [[a.name for a in sweep_arms(11)]] * blocks
    return run


def _segment(index: int, node: str, cpu_s: float) -> dict[str, Any]:
    return {"index": index, "node": node, "start": index, "stop": index + 1, "queue_ms": 1.0,
            "exec_ms": 10.0, "cpu_s": cpu_s, "in_bytes": 10, "out_bytes": 10,
            "energy_kwh": 1e-8, "carbon_g": 4e-6}


def _record(block: int, order: int, arm: str, res: InferenceResult) -> TaskRecord:
    record = TaskRecord(block, order, arm, "mobilenetv2", res, 0.05)
    record.measured_g, record.measured_kwh = res.carbon_g * 1.02, res.energy_kwh * 1.02
    record.settlement = "settled"
    return record


def temporal_run(out: Path) -> TemporalRun:
    """Six trace hours of the packaged traces at 4 s an hour; the oracle arm defers every
    deferrable request by half its deadline, and one of them misses its deadline."""
    options = TemporalOptions.quick(out=out)
    zones = assign_zones(list(NODES), [load_zone(z) for z in options.zones])
    window = Window(parse_start(options.start or ""), options.hours, options.speedup)
    arrivals = make_arrivals(options.hours, options.rate, options.deferrable,
                             options.deadline_h, options.seed)
    arms = temporal_arms(options.forecast)
    run = TemporalRun(options, window, zones, arrivals, arms, topology=load_topology(None),
                      node_ids=list(NODES), t0=10_000.0, started_at=1.0, finished_at=2.0)
    hour_s = window.hour_s
    run.budgets = {f"{a.name}.{role}": 5e-4 for a in arms for role in ("interactive", "batch")}
    late = True
    for arm in arms:
        for a in arrivals:
            submitted = run.t0 + a.at_h * hour_s
            node = NODES[a.index % 3] if arm.mode is None else "node-green"
            started, deferred = submitted + 0.01, None
            if arm.name == "defer-oracle" and a.deadline_h is not None:
                started = deferred = submitted + a.deadline_h * hour_s / 2
                if late:  # finishes after its deadline
                    started = submitted + a.deadline_h * hour_s + 0.5
                    late = False
            if arm.name == "agnostic" and a.index == 0:
                run.refused.append({"arm": arm.name, "arrival": a.index,
                                    "tenant": arm.tenant(a), "error": "over budget"})
                continue
            res = result(node, G_PER_INF[node], submitted=submitted, started=started,
                         deferred_until=deferred, kwh=G_PER_INF[node] / 150)
            block = min(int(a.at_h / options.hours * options.blocks), options.blocks - 1)
            record = _record(block, 0, arm.name, res)
            run.records.append(record)
            run.arrival_of[res.id] = a.index
            tenant = arm.tenant(a)
            run.spent_recorded[tenant] = run.spent_recorded.get(tenant, 0.0) + res.carbon_g
    return run
