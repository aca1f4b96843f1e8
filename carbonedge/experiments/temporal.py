"""``carbonedge experiment temporal``: deferral, forecasters and budgets over real traces.

Hourly intensity traces play on the nodes, compressed in time (see
:mod:`carbonedge.experiments.replay`). One stream of arrivals (urgent and deferrable
requests, :mod:`carbonedge.experiments.arrivals`) is sent to every arm at once, in a
seeded order per arrival, so that every arm meets the same hours:

- ``agnostic``: carbon-agnostic round-robin (each request pinned to the next node);
- ``green``: task-level Green (the dispatcher's normalisation), never deferred;
- ``defer-<forecaster>``: Green, deferrable requests planned with that forecaster.

Each arm's urgent and deferrable requests belong to its own two tenants
(``<arm>.interactive``, ``<arm>.batch``), each with a carbon budget. By default a budget
is 1.5 x the spend the tenant's requests would have under round-robin, projected from a
calibration run (each node's device energy per inference, pinned and warm) and the
traces; the dispatcher enforces it (Green past 80%, refused past 100%).
"""

from __future__ import annotations

import logging
import math
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import redis
from tqdm import tqdm

from carbonedge.carbon.forecast import get_forecaster
from carbonedge.client import Client, InferenceHandle
from carbonedge.client.images import preprocess_image
from carbonedge.compose.local_runner import LocalRuntime
from carbonedge.compose.topology import Topology, load_topology
from carbonedge.errors import CarbonBudgetExceeded, CarbonEdgeError, ConfigError
from carbonedge.experiments.arrivals import Arrival, make_arrivals
from carbonedge.experiments.blocks import TaskRecord, attach_measured
from carbonedge.experiments.replay import (
    DEFAULT_ZONES,
    Window,
    Zone,
    assign_zones,
    default_start,
    load_zone,
    parse_start,
    write_compose,
)
from carbonedge.experiments.workload import synthetic_images
from carbonedge.partitioner.catalog import MODEL_NAMES
from carbonedge.protocol import keys
from carbonedge.scheduler.budgets import period_index
from carbonedge.settings import Settings

__all__ = ["TemporalArm", "TemporalOptions", "TemporalRun", "run_temporal", "temporal_arms"]

log = logging.getLogger(__name__)

FORECASTERS = ("oracle", "persistence", "yesterday")
BUDGET_PERIOD_S = 1e9
"""One budget period spans the whole run (periods are aligned to the epoch)."""
BUDGET_HEADROOM = 1.5
ROLES = ("interactive", "batch")


@dataclass(frozen=True, slots=True)
class TemporalOptions:
    """What to replay; ``quick()`` is the smallest replay that exercises everything."""

    zones: tuple[str, ...] = DEFAULT_ZONES
    start: str | None = None
    """Trace hour (ISO, UTC) the replay starts at; None: the traces' second day."""
    hours: int = 24
    speedup: float = 360.0
    forecast: tuple[str, ...] = FORECASTERS
    rate: float = 6.0
    """Requests per trace hour (every arm gets each one)."""
    deferrable: float = 0.5
    deadline_h: tuple[int, int] = (1, 8)
    blocks: int = 6
    budget_g: float | None = None
    """Each tenant's budget (grams); None: 1.5 x its projected round-robin spend."""
    seed: int = 0
    out: Path = Path("results/temporal")
    model: str = "mobilenetv2"
    warmup: int = 3
    progress: bool = True

    def __post_init__(self) -> None:
        for name in self.forecast:
            get_forecaster(name)  # an unknown name lists the known ones
        if self.model not in MODEL_NAMES:
            raise ConfigError(f"unknown model {self.model!r}; known: "
                              f"{', '.join(sorted(MODEL_NAMES))}", field="model")
        if self.hours < 1 or self.blocks < 2 or self.blocks > self.hours:
            raise ConfigError(f"need hours >= 1 and 2 <= blocks <= hours, got hours "
                              f"{self.hours}, blocks {self.blocks}", field="blocks")
        if not (math.isfinite(self.speedup) and self.speedup > 0):
            raise ConfigError(f"speedup must be > 0, got {self.speedup}", field="speedup")
        if 3600.0 / self.speedup < 3.0:
            raise ConfigError(f"speedup {self.speedup:g} makes a trace hour "
                              f"{3600 / self.speedup:.1f} s: deferral needs at least 3 s (a "
                              "deferred request is released a heartbeat after its hour "
                              "begins and 2 s before its deadline)", field="speedup")
        if self.budget_g is not None and not (math.isfinite(self.budget_g)
                                              and self.budget_g > 0):
            raise ConfigError(f"budget_g must be > 0 grams, got {self.budget_g}",
                              field="budget_g")

    @classmethod
    def quick(cls, **changes: object) -> TemporalOptions:
        """Six trace hours of 4 s each, deadlines of 1-3 hours, from the hour the default
        traces start falling towards their solar dip (so that deferral has a reason)."""
        base = cls(start="2023-06-06T10:00:00+00:00", hours=6, speedup=900.0, rate=4.0,
                   deadline_h=(1, 3), blocks=3)
        return replace(base, **changes)  # type: ignore[arg-type]

    @property
    def hour_s(self) -> float:
        return 3600.0 / self.speedup


@dataclass(frozen=True, slots=True)
class TemporalArm:
    name: str
    mode: str | None
    """``green``, or None for round-robin pinning."""
    forecast: str | None = None
    """The forecaster deferrable requests are planned with; None: never deferred."""

    def tenant(self, arrival: Arrival) -> str:
        return f"{self.name}.{arrival.tenant_role}"

    def options(self, arrival: Arrival, node_ids: Sequence[str], hour_s: float
                ) -> dict[str, Any]:
        opts: dict[str, Any] = {"tenant": self.tenant(arrival)}
        if self.mode is None:
            opts["node"] = node_ids[arrival.index % len(node_ids)]
        else:
            opts["mode"] = self.mode
        if self.forecast is not None and arrival.deadline_h is not None:
            opts.update(deadline_s=arrival.deadline_h * hour_s, forecast=self.forecast)
        return opts


def temporal_arms(forecasters: Sequence[str]) -> list[TemporalArm]:
    return [TemporalArm("agnostic", None), TemporalArm("green", "green"),
            *(TemporalArm(f"defer-{f}", "green", f) for f in forecasters)]


@dataclass
class TemporalRun:
    """Everything a temporal replay measured, before any summary."""

    options: TemporalOptions
    window: Window
    zones: dict[str, Zone]
    """Per node id."""
    arrivals: list[Arrival]
    arms: list[TemporalArm]
    topology: Topology | None = None
    node_ids: list[str] = field(default_factory=list)
    t0: float = 0.0
    """Wall time at which the window's first hour began."""
    shift_h: int = 0
    """Trace hours the window slid because start-up took longer than planned."""
    records: list[TaskRecord] = field(default_factory=list)
    arrival_of: dict[str, int] = field(default_factory=dict)
    """Task id -> arrival index."""
    refused: list[dict[str, Any]] = field(default_factory=list)
    calibration_kwh: dict[str, float] = field(default_factory=dict)
    budgets: dict[str, float] = field(default_factory=dict)
    spent_recorded: dict[str, float] = field(default_factory=dict)
    settled: int = 0
    compose: Path | None = None
    started_at: float = 0.0
    finished_at: float = 0.0


def _tensors(count: int, seed: int) -> list[np.ndarray]:
    return [preprocess_image(img) for img in synthetic_images(count, seed=seed)]


def calibrate(settings: Settings, topology: Topology, model: str, tensors: Sequence[Any],
              per_node: int, *, progress: bool) -> tuple[dict[str, float], float]:
    """Each node's device kWh per warm inference (pinned), and how long start-up took."""
    began = time.monotonic()
    runtime = LocalRuntime(topology, settings, preload=(model,))
    print(f"calibrating: {', '.join(runtime.node_ids)} with static intensities ...",
          file=sys.stderr)
    kwh: dict[str, float] = {}
    with runtime:
        up_s = time.monotonic() - began
        with Client(runtime.settings) as client:
            bar = tqdm(total=len(runtime.node_ids) * (per_node + 2), desc="calibration",
                       unit="inf", disable=not progress, leave=False)
            with bar:
                for node in runtime.node_ids:
                    values = []
                    for i in range(per_node + 2):  # the first two settle the node
                        result = client.submit(model, tensors[i % len(tensors)], node=node
                                               ).result(settings.result_timeout_s)
                        values.append(result.energy_kwh)
                        bar.update()
                    kwh[node] = statistics.median(values[2:])
    return kwh, up_s


def project_budgets(arms: Sequence[TemporalArm], arrivals: Sequence[Arrival],
                    node_ids: Sequence[str], kwh: dict[str, float],
                    zones: dict[str, Zone], window: Window) -> dict[str, float]:
    """1.5 x what each tenant's requests would emit under round-robin, per tenant."""
    projected = dict.fromkeys(ROLES, 0.0)
    for a in arrivals:
        node = node_ids[a.index % len(node_ids)]
        ci = zones[node].value_at(window.start + timedelta(hours=a.at_h))
        projected[a.tenant_role] += kwh[node] * ci
    return {f"{arm.name}.{role}": BUDGET_HEADROOM * max(projected[role], 1e-12)
            for arm in arms for role in ROLES}


def run_temporal(settings: Settings, options: TemporalOptions) -> TemporalRun:
    """Calibrate (unless budgets are given), replay the traces on every arm, settle."""
    base = load_topology(settings.compose_file or None)
    classes = [n.name for n in base.nodes]
    by_class = assign_zones(classes, [load_zone(z) for z in options.zones])
    start = parse_start(options.start) if options.start else default_start(
        list(by_class.values()))
    window = Window(start, options.hours, options.speedup)
    before_h = 24 if "yesterday" in options.forecast else 0
    window.check(by_class, before_h=before_h, after_h=options.deadline_h[1])
    arrivals = make_arrivals(options.hours, options.rate, options.deferrable,
                             options.deadline_h, options.seed)
    arms = temporal_arms(options.forecast)
    tensors = _tensors(16, options.seed)
    node_ids = base.node_ids()
    zones = {n: by_class[base.node(n).name] for n in node_ids}
    run = TemporalRun(options, window, zones, arrivals, arms, started_at=time.time())

    up_s = 30.0
    if options.budget_g is None:
        run.calibration_kwh, up_s = calibrate(settings, base, options.model, tensors,
                                              options.warmup, progress=options.progress)
        run.budgets = project_budgets(arms, arrivals, node_ids, run.calibration_kwh, zones,
                                      window)
    else:
        run.budgets = {f"{arm.name}.{role}": options.budget_g for arm in arms for role in ROLES}
    replay_settings = settings.replace(
        carbon_budgets=",".join(f"{t}={g!r}" for t, g in run.budgets.items()),
        carbon_budget_period_s=BUDGET_PERIOD_S)

    options.out.mkdir(parents=True, exist_ok=True)
    lead_s = 1.2 * up_s + len(node_ids) * options.warmup * 0.5 + 5.0
    planned_t0 = time.time() + lead_s
    run.compose = write_compose(base, by_class, window, planned_t0,
                                options.out / "replay-compose.yml")
    topology = load_topology(run.compose)
    runtime = LocalRuntime(topology, replay_settings, preload=(options.model,),
                           carbon_service=True)
    run.topology, run.node_ids = topology, runtime.node_ids
    print(f"replaying {window.hours} trace hours from {window.start:%Y-%m-%d %H:%M} UTC on "
          f"{', '.join(f'{n}={z.name}' for n, z in zones.items())}, one hour = "
          f"{window.hour_s:.1f} s ...", file=sys.stderr)
    with runtime:
        _reset_spend(runtime.settings.redis_url, run.budgets)
        with Client(runtime.settings) as client:
            for node in runtime.node_ids:  # warm, with a service time, before the window
                for tensor in tensors[:options.warmup]:
                    client.submit(options.model, tensor, node=node).result(
                        settings.result_timeout_s)
            run.shift_h = max(0, math.ceil((time.time() - planned_t0) / window.hour_s))
            if run.shift_h:
                log.warning("start-up took %.0f s longer than planned: the replay starts "
                            "%d trace hour(s) later", time.time() - planned_t0, run.shift_h)
                run.window = replace(window, start=window.start + timedelta(hours=run.shift_h))
                run.window.check(by_class, before_h=before_h, after_h=options.deadline_h[1])
            run.t0 = planned_t0 + run.shift_h * window.hour_s
            handles = _submit_all(client, run, tensors)
            _collect(client, run, handles)
        print("waiting for the carbon service to settle the measured charges ...",
              file=sys.stderr)
        run.settled = attach_measured(run.records, runtime.settings.redis_url, timeout=60.0)
        run.spent_recorded = _recorded_spend(runtime.settings.redis_url)
    run.finished_at = time.time()
    return run


def _block(run: TemporalRun, arrival: Arrival) -> int:
    blocks = run.options.blocks
    return min(int(arrival.at_h / run.options.hours * blocks), blocks - 1)


_Pending = tuple[TemporalArm, Arrival, int, InferenceHandle, float]


def _submit_all(client: Client, run: TemporalRun, tensors: Sequence[Any]) -> list[_Pending]:
    """Every arrival to every arm at its wall time, arms in a seeded order per arrival."""
    rng = random.Random(run.options.seed + 1)
    hour_s = run.window.hour_s
    pending: list[_Pending] = []
    bar = tqdm(total=len(run.arrivals), desc="replay (arrivals)", unit="req",
               disable=not run.options.progress, leave=False)
    with bar:
        for arrival in run.arrivals:
            due = run.t0 + arrival.at_h * hour_s
            # pacing the producer: the trace is replayed in wall time
            time.sleep(max(0.0, due - time.time()))
            order = list(run.arms)
            rng.shuffle(order)
            tensor = tensors[arrival.index % len(tensors)]
            for position, arm in enumerate(order):
                options = arm.options(arrival, run.node_ids, hour_s)
                handle = client.submit(run.options.model, tensor, **options)
                pending.append((arm, arrival, position, handle, time.time()))
            bar.update()
    return pending


def _collect(client: Client, run: TemporalRun, pending: Sequence[_Pending]) -> None:
    """Wait for every result (deferred ones come up to their deadline later)."""
    timeout = client.settings.result_timeout_s
    bar = tqdm(total=len(pending), desc="replay (results)", unit="req",
               disable=not run.options.progress, leave=False)
    with bar:
        for arm, arrival, position, handle, submitted in pending:
            deadline_s = (arrival.deadline_h or 0) * run.window.hour_s
            try:
                result = handle.result(timeout + deadline_s)
            except CarbonBudgetExceeded as e:
                run.refused.append({"arm": arm.name, "arrival": arrival.index,
                                    "tenant": arm.tenant(arrival), "error": e.message})
            except CarbonEdgeError as e:
                raise CarbonEdgeError(f"request of arm {arm.name} (arrival {arrival.index}) "
                                      f"failed: {e}") from e
            else:
                finished = float(result.raw.get("timings", {}).get("finished_at", math.nan))
                run.records.append(TaskRecord(_block(run, arrival), position, arm.name,
                                              run.options.model, result, finished - submitted))
                run.arrival_of[result.id] = arrival.index
            bar.update()


def _reset_spend(redis_url: str, tenants: Sequence[str]) -> None:
    """Forget what an earlier run on this Redis spent under the same tenant names."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.hdel(keys.budget_spend_key(period_index(time.time(), BUDGET_PERIOD_S)),
                    *tenants)
    finally:
        client.close()


def _recorded_spend(redis_url: str) -> dict[str, float]:
    """What the agents counted against each tenant's budget this period."""
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.hgetall(keys.budget_spend_key(period_index(time.time(), BUDGET_PERIOD_S)))
    finally:
        client.close()
    return {k.decode(): float(v) for k, v in raw.items()}
