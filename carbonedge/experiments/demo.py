"""``carbonedge demo``: the paper's mode comparison on the default topology, end to end."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

from carbonedge.broker.client import Client, InferenceHandle
from carbonedge.broker.results import InferenceResult
from carbonedge.carbon.report import format_report
from carbonedge.carbon.report import summarise as summarise_emissions
from carbonedge.compose.local_runner import LocalRuntime
from carbonedge.compose.topology import load_topology
from carbonedge.experiments.workload import ModeSummary, format_table, summarise, synthetic_images
from carbonedge.settings import Settings

MODES = ("performance", "balanced", "green")
WARMUP_PER_NODE = 5


def run_sequential(
    name: str, images: Sequence[bytes], submit: Callable[[bytes], InferenceHandle],
    *, timeout: float, progress: bool = True,
) -> ModeSummary:
    """One request at a time (batch 1, as in the paper), with a progress line."""
    results: list[InferenceResult] = []
    start = time.perf_counter()
    for i, image in enumerate(images, 1):
        results.append(submit(image).result(timeout))
        if progress:
            print(f"\r  {name:<12} {i:>3}/{len(images)}", end="", file=sys.stderr, flush=True)
    wall = time.perf_counter() - start
    if progress:
        print(file=sys.stderr)
    return summarise(name, results, wall)


def compare_modes(
    client: Client, node_ids: Sequence[str], *, model: str, images: Sequence[bytes],
    mono_node: str, timeout: float, progress: bool = True,
) -> list[ModeSummary]:
    """Monolithic on ``mono_node`` (direct, no scheduler), then each scheduling mode."""
    for node in node_ids:  # warm-up: load the model and seed each node's moving average
        for image in images[:WARMUP_PER_NODE]:
            client.submit(model, image, node=node).result(timeout)
    rows = [run_sequential("monolithic", images,
                           lambda im: client.submit_direct(mono_node, model, im),
                           timeout=timeout, progress=progress)]
    for mode in MODES:
        rows.append(run_sequential(mode, images, lambda im, m=mode: client.submit(model, im, mode=m),
                                   timeout=timeout, progress=progress))
    return rows


def run_demo(settings: Settings, *, inferences: int = 50, model: str = "mobilenetv2",
             mono_node: str = "node-medium") -> int:
    """Bring the default topology up, compare the modes, print the table, bring it down."""
    topology = load_topology(settings.compose_file or None)
    topology.node(mono_node)  # fail early on a typo
    images = synthetic_images(inferences)
    runtime = LocalRuntime(topology, settings, preload=(model,), carbon_service=True)
    print(f"bringing up {', '.join(runtime.node_ids)} (compose: {topology.source}) ...",
          file=sys.stderr)
    with runtime:
        limits = "cgroup limits" if runtime.state.constrained else "NO cgroup limits"
        engine = settings.inference_runtime or "each node's declared runtime"
        print(f"ready ({limits}; models run on {engine}); {inferences} {model} inferences "
              "per configuration", file=sys.stderr)
        with Client(settings) as client:
            rows = compare_modes(client, runtime.node_ids, model=model, images=images,
                                 mono_node=mono_node, timeout=settings.result_timeout_s)
    print()
    if settings.inference_runtime:
        print(f"runtime: {settings.inference_runtime} on every node")
    print(format_table(rows, runtime.node_ids, rows[0]))
    print()
    power = rows[-1].power_source
    print(f"monolithic = every request sent straight to {mono_node}'s queue (no scheduler); "
          "latency is end to end (submit to result). gCO2 per task: its agent's cgroup "
          "CPU-seconds times the host's CPU power per busy CPU (from the carbon service's "
          "CodeCarbon tracker), plus RAM at 0.375 W/GB, times the node's carbon intensity."
          + (f" Host power: {power}." if power else ""))
    print()
    print(f"carbon service reconciliation ({runtime.emissions_csv}):")
    print(format_report(summarise_emissions(runtime.emissions_csv)))
    if any(r.random_init for r in rows):
        print("weights: random initialisation (no pretrained weights on this machine); timings "
              "and carbon are those of the real architecture, the class ids are meaningless.")
    return 0
