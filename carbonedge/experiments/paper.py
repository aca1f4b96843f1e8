"""``carbonedge experiment paper``: the paper's evaluation (Tables II, IV, V; Figs. 2, 3).

Every configuration runs through the dispatcher on the topology of the compose file, in
interleaved blocks whose order is drawn from a seeded generator, after a per-node warm-up
of every model (see :mod:`carbonedge.experiments.blocks`). Then the weight sweep of
Fig. 3 runs the same way on one model. What was run is a :class:`PaperRun`; the tables,
figures and files are made from it by :mod:`carbonedge.experiments.paper_report`.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import redis
from tqdm import tqdm

from carbonedge.client import Client
from carbonedge.compose.local_runner import LocalRuntime
from carbonedge.compose.topology import Topology, load_topology
from carbonedge.errors import ConfigError, RuntimeUnavailable
from carbonedge.experiments.blocks import Arm, TaskRecord, attach_measured, run_blocks
from carbonedge.experiments.outputs import host_estimated
from carbonedge.experiments.workload import synthetic_images
from carbonedge.partitioner.catalog import MODEL_NAMES
from carbonedge.protocol import keys
from carbonedge.protocol.telemetry import Heartbeat
from carbonedge.scheduler.weights import MODES
from carbonedge.settings import Settings

__all__ = ["AMP4EC_WEIGHTS", "CONFIG_LABELS", "PAPER_MODELS", "PaperOptions", "PaperRun",
           "configurations", "run_paper", "sweep_arms"]

log = logging.getLogger(__name__)

PAPER_MODELS = ("mobilenetv2", "mobilenetv4", "efficientnet_b0")
AMP4EC_WEIGHTS = (0.2, 0.2, 0.1, 0.5, 0.0)
"""AMP4EC's published scoring: resources, load, performance, balance; no carbon term."""
SWEEP_BASE = MODES["balanced"].as_tuple()[:4]
"""The non-carbon weights of the sweep, in Balanced's proportions, scaled to 1 - w_C."""

CONFIG_LABELS = {
    "monolithic": "Monolithic",
    "amp4ec": "AMP4EC",
    "ce-performance": "CE-Performance",
    "ce-balanced": "CE-Balanced",
    "ce-green": "CE-Green",
    "ce-balanced-minmax": "CE-Balanced (min-max)",
    "ce-slo": "CE-SLO",
    "ce-green-partitioned": "CE-Green (partitioned)",
}
"""Every configuration, in the order of the tables: the paper's five, then ours."""
IN_PAPER = ("monolithic", "amp4ec", "ce-performance", "ce-balanced", "ce-green")
SERVICE_TIME_WAIT_S = 60.0
SETTLING = 2
"""Warm-up inferences per node that only settle it (first runs allocate buffers)."""


@dataclass(frozen=True, slots=True)
class PaperOptions:
    """What to run; ``quick()`` is the smallest run that exercises everything."""

    models: tuple[str, ...] = PAPER_MODELS
    n: int = 50
    """Inferences per configuration per block."""
    blocks: int = 5
    seed: int = 0
    out: Path = Path("results/paper")
    mono_node: str = "node-medium"
    slo_ms: float | None = None
    """CE-SLO's latency bound and CE-Green (partitioned)'s plan bound; None: per model,
    halfway between the fastest and slowest node's warm service time."""
    sweep_steps: int = 11
    sweep_n: int | None = None
    """Inferences per sweep step per block; None: max(2, n // 5)."""
    warmup: int = 8
    """Pinned inferences per node and model before anything is measured; all but the
    first :data:`SETTLING` of each node also measure the node for the oracle."""
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in MODEL_NAMES]
        if unknown or not self.models:
            raise ConfigError(f"unknown model(s) {unknown or '(none given)'}; known: "
                              f"{', '.join(sorted(MODEL_NAMES))}", field="models")
        for name, value, low in (("n", self.n, 1), ("blocks", self.blocks, 2),
                                 ("sweep_steps", self.sweep_steps, 11),
                                 ("warmup", self.warmup, SETTLING + 1)):
            if value < low:
                raise ConfigError(f"{name} must be at least {low}, got {value}", field=name)
        if self.sweep_n is not None and self.sweep_n < 1:
            raise ConfigError(f"sweep_n must be at least 1, got {self.sweep_n}", field="sweep_n")
        if self.slo_ms is not None and not (math.isfinite(self.slo_ms) and self.slo_ms > 0):
            raise ConfigError(f"slo_ms must be a positive number, got {self.slo_ms}",
                              field="slo_ms")

    @classmethod
    def quick(cls, **changes: object) -> PaperOptions:
        """One model, two blocks of two inferences, one per sweep step."""
        base = cls(models=("mobilenetv2",), n=2, blocks=2, sweep_n=1, warmup=SETTLING + 1)
        return replace(base, **changes)  # type: ignore[arg-type]

    @property
    def per_sweep_step(self) -> int:
        return self.sweep_n if self.sweep_n is not None else max(2, self.n // 5)


def configurations(mono_node: str, slo_ms: float) -> list[Arm]:
    """The configurations of Table II and ours, as request options (see the README)."""
    return [
        Arm("monolithic", {"node": mono_node}),
        Arm("amp4ec", {"weights": list(AMP4EC_WEIGHTS), "normalisation": "paper"}),
        Arm("ce-performance", {"mode": "performance", "normalisation": "paper"}),
        Arm("ce-balanced", {"mode": "balanced", "normalisation": "paper"}),
        Arm("ce-green", {"mode": "green", "normalisation": "paper"}),
        Arm("ce-balanced-minmax", {"mode": "balanced", "normalisation": "minmax"}),
        Arm("ce-slo", {"mode": "balanced", "normalisation": "minmax", "latency_slo_ms": slo_ms}),
        Arm("ce-green-partitioned", {"mode": "green", "normalisation": "paper",
                                     "partition": "green", "latency_bound_ms": slo_ms}),
    ]


def sweep_weights(steps: int) -> list[tuple[float, list[float]]]:
    """(w_C, [R, L, P, B, C]) from w_C = 0 to 1; the rest in Balanced's proportions."""
    total = sum(SWEEP_BASE)
    out = []
    for i in range(steps):
        wc = i / (steps - 1)
        out.append((wc, [w / total * (1 - wc) for w in SWEEP_BASE] + [wc]))
    return out


def sweep_arms(steps: int) -> list[Arm]:
    return [Arm(f"wc={wc:.2f}", {"weights": weights, "normalisation": "paper"})
            for wc, weights in sweep_weights(steps)]


@dataclass
class PaperRun:
    """Everything a paper run measured, before any summary."""

    options: PaperOptions
    topology: Topology
    node_ids: list[str]
    records: dict[str, list[TaskRecord]] = field(default_factory=dict)
    """Per model, every measured task."""
    pinned: dict[str, list[TaskRecord]] = field(default_factory=dict)
    """Per model, the warm-up: each node pinned (arm ``warm-up``, order = the node's
    run number), what the oracle measures every node by."""
    orders: dict[str, list[list[str]]] = field(default_factory=dict)
    """Per model (and ``sweep``), each block's order of configurations."""
    sweep: list[TaskRecord] = field(default_factory=list)
    sweep_model: str = ""
    slo_ms: dict[str, float] = field(default_factory=dict)
    service_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per model, each node's warm service time (device busy ms) after warm-up."""
    constrained: bool = True
    measured_estimated: bool = True
    settled: int = 0
    emissions_csvs: list[Path] = field(default_factory=list)
    """The carbon service's emissions CSV of each model's runtime (copied to the output)."""
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def all_records(self) -> list[TaskRecord]:
        return ([r for rs in self.records.values() for r in rs] + self.sweep
                + [r for rs in self.pinned.values() for r in rs])


def run_paper(settings: Settings, options: PaperOptions) -> PaperRun:
    """For each model, bring the topology up serving that model alone (as the paper
    deployed one model per experiment, and so that the other models' memory does not
    weigh on the 512 MiB nodes' resource scores), run every configuration (and, for the
    first model, the sweep), settle the measured charges, bring it down."""
    topology = load_topology(settings.compose_file or None)
    topology.node(options.mono_node)  # fail early on a typo
    run = PaperRun(options, topology, topology.node_ids(), started_at=time.time(),
                   sweep_model=options.models[0])
    images = synthetic_images(max(options.n, options.warmup, 8) * 2, seed=options.seed)
    options.out.mkdir(parents=True, exist_ok=True)
    for i, model in enumerate(options.models):
        runtime = LocalRuntime(topology, settings, preload=(model,), carbon_service=True)
        print(f"bringing up {', '.join(runtime.node_ids)} serving {model} "
              f"(compose: {topology.source}) ...", file=sys.stderr)
        with runtime:
            run.constrained = run.constrained and runtime.state.constrained
            _run_model(run, runtime, model, i, images)
            print("waiting for the carbon service to settle the measured charges ...",
                  file=sys.stderr)
            records = run.pinned[model] + run.records[model] + (run.sweep if i == 0 else [])
            run.settled += attach_measured(records, runtime.settings.redis_url, timeout=60.0)
        if runtime.emissions_csv.exists():
            copy = options.out / f"emissions-{model}.csv"
            shutil.copyfile(runtime.emissions_csv, copy)
            run.emissions_csvs.append(copy)
            run.measured_estimated = host_estimated(copy)
    run.finished_at = time.time()
    return run


def _run_model(run: PaperRun, runtime: LocalRuntime, model: str, index: int,
               images: Sequence[bytes]) -> None:
    """Warm-up, every configuration in blocks, and (first model) the sweep."""
    options = run.options
    timeout = runtime.settings.result_timeout_s
    with Client(runtime.settings) as client:
        run.pinned[model] = _warm_up(client, runtime.node_ids, model, images, options)
        run.service_ms[model] = service_times(runtime.settings.redis_url, runtime.node_ids,
                                              model)
        run.slo_ms[model] = options.slo_ms or _auto_slo(run.service_ms[model])
        arms = configurations(options.mono_node, run.slo_ms[model])
        run.records[model], run.orders[model] = run_blocks(
            client, arms, model=model, images=images, blocks=options.blocks,
            per_block=options.n, seed=options.seed * 1000 + index, timeout=timeout,
            progress=options.progress, label=f"{model} ({index + 1}/{len(options.models)})")
        if model == run.sweep_model:
            run.sweep, run.orders["sweep"] = run_blocks(
                client, sweep_arms(options.sweep_steps), model=model, images=images,
                blocks=options.blocks, per_block=options.per_sweep_step,
                seed=options.seed * 1000 + 999, timeout=timeout, progress=options.progress,
                label=f"weight sweep ({model})")


def _warm_up(client: Client, node_ids: Sequence[str], model: str, images: Sequence[bytes],
             options: PaperOptions) -> list[TaskRecord]:
    """Pinned requests on every node: each has run the model, published a service time
    and profiled its blocks (for partitioned plans) before anything is measured."""
    bar = tqdm(total=len(node_ids) * options.warmup, desc=f"warm-up {model}", unit="inf",
               disable=not options.progress, leave=False)
    records = []
    with bar:
        for node in node_ids:
            for i in range(options.warmup):
                start = time.perf_counter()
                result = client.submit(model, images[i % len(images)], node=node).result(
                    client.settings.result_timeout_s)
                records.append(TaskRecord(-1, i, "warm-up", model, result,
                                          time.perf_counter() - start))
                bar.update()
    return records


def service_times(redis_url: str, node_ids: Sequence[str], model: str, *,
                  timeout: float = SERVICE_TIME_WAIT_S) -> dict[str, float]:
    """Each node's warm service time for ``model`` (ms of device time per task), from its
    heartbeat; waits until every node publishes one and its block profile is stored."""
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            times: dict[str, float] = {}
            profiled = 0
            for node in node_ids:
                raw = client.hgetall(keys.node_key(node))
                fields = {k.decode(): v.decode() for k, v in raw.items()}
                if fields and model in (beat := Heartbeat.from_fields(fields, now=time.time())
                                        ).exec_ms:
                    times[node] = beat.exec_ms[model]
                profiled += bool(client.exists(keys.block_profile_key(model, node)))
            if len(times) == len(node_ids) and profiled == len(node_ids):
                return times
            if time.monotonic() > deadline:
                if len(times) == len(node_ids):
                    log.warning("only %d of %d nodes profiled %s's blocks: partitioned plans "
                                "use those", profiled, len(node_ids), model)
                    return times
                raise RuntimeUnavailable(
                    f"after warm-up, {sorted(set(node_ids) - set(times))} published no "
                    f"service time for {model} within {timeout:.0f} s")
            time.sleep(0.25)  # heartbeats come once a second
    finally:
        client.close()


def _auto_slo(service_ms: dict[str, float]) -> float:
    """Halfway between the fastest and the slowest node: the slowest cannot meet it."""
    return (min(service_ms.values()) + max(service_ms.values())) / 2
