"""``carbonedge demo``: the paper's mode comparison on the default topology, end to end.

Monolithic (every request pinned to one node through the dispatcher), Performance,
Balanced and Green run in interleaved blocks in a seeded random order after a per-node
warm-up; the table gives each arm's node shares, latency, throughput and carbon per
inference by both accounting methods, and the change in carbon against Monolithic with
a 95% interval across blocks.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

from carbonedge.carbon.report import format_report
from carbonedge.carbon.report import summarise as summarise_emissions
from carbonedge.client import Client
from carbonedge.compose.local_runner import LocalRuntime
from carbonedge.compose.topology import load_topology
from carbonedge.experiments.blocks import (
    Arm,
    ArmSummary,
    attach_measured,
    run_blocks,
    summarise_arms,
    warm_up,
)
from carbonedge.experiments.outputs import host_estimated
from carbonedge.experiments.workload import synthetic_images
from carbonedge.settings import Settings

MODES = ("performance", "balanced", "green")
WARMUP_PER_NODE = 5


def demo_arms(mono_node: str) -> list[Arm]:
    return [Arm("monolithic", {"node": mono_node}),
            *(Arm(mode, {"mode": mode}) for mode in MODES)]


def format_table(rows: Sequence[ArmSummary], nodes: Sequence[str], baseline: str) -> str:
    """One row per arm; ΔCO2 is the change against ``baseline`` (negative = less)."""
    short = " / ".join(n.removeprefix("node-") for n in nodes)
    width = max([12, *(len(r.name) for r in rows)])
    head = (f"{'mode':<{width}} {short:>22} {'mean ms':>8} {'p95 ms':>7} {'req/s':>6} "
            f"{'gCO2/inf device':>19} {'ΔCO2 device':>15} {'gCO2/inf measured':>19} "
            f"{'ΔCO2 measured':>15}")
    lines = [head, "-" * len(head)]
    for row in rows:
        share = " / ".join(f"{100 * row.shares.get(n, 0):.0f}%" for n in nodes)
        base = row.name == baseline
        lines.append(
            f"{row.name:<{width}} {share:>22} {row.latency_ms.mean:8.1f} {row.p95_ms:7.1f} "
            f"{row.throughput_rps:6.2f} {row.device_g.format('.3e'):>19} "
            f"{'-' if base else row.delta_device_pct.format('+.1f', '%'):>15} "
            f"{row.measured_g.format('.3e'):>19} "
            f"{'-' if base else row.delta_measured_pct.format('+.1f', '%'):>15}")
    return "\n".join(lines)


def run_demo(settings: Settings, *, inferences: int = 50, model: str = "mobilenetv2",
             mono_node: str = "node-medium", blocks: int = 5, seed: int = 0) -> int:
    """Bring the default topology up, compare the modes, print the table, bring it down."""
    topology = load_topology(settings.compose_file or None)
    topology.node(mono_node)  # fail early on a typo
    per_block = max(1, math.ceil(inferences / blocks))
    images = synthetic_images(max(per_block * 4, WARMUP_PER_NODE), seed=seed)
    runtime = LocalRuntime(topology, settings, preload=(model,), carbon_service=True)
    print(f"bringing up {', '.join(runtime.node_ids)} (compose: {topology.source}) ...",
          file=sys.stderr)
    with runtime:
        limits = "cgroup limits" if runtime.state.constrained else "NO cgroup limits"
        engine = settings.inference_runtime or "each node's declared runtime"
        print(f"ready ({limits}; models run on {engine}); {blocks} blocks of {per_block} "
              f"{model} inferences per configuration, in a random order per block (seed "
              f"{seed})", file=sys.stderr)
        arms = demo_arms(mono_node)
        with Client(runtime.settings) as client:
            warm_up(client, runtime.node_ids, model, images, per_node=WARMUP_PER_NODE,
                    timeout=settings.result_timeout_s)
            records, _ = run_blocks(client, arms, model=model, images=images,
                                    blocks=blocks, per_block=per_block, seed=seed,
                                    timeout=settings.result_timeout_s, label="demo")
        found = attach_measured(records, runtime.settings.redis_url, timeout=30.0)
        print(f"measured charges settled for {found} of {len(records)} inferences",
              file=sys.stderr)
    order = [arm.name for arm in arms]  # the table reads as the arms are declared
    rows = sorted(summarise_arms(records, "monolithic", seed=seed),
                  key=lambda row: order.index(row.name))
    print()
    if settings.inference_runtime:
        print(f"runtime: {settings.inference_runtime} on every node")
    print(format_table(rows, runtime.node_ids, "monolithic"))
    print()
    print(f"monolithic = every request pinned to {mono_node} through the dispatcher. Latency "
          "is end to end (submit to result). ΔCO2 = change in carbon per inference against "
          f"monolithic: negative = less carbon; ± = 95% interval across the {blocks} blocks "
          "(paired by block). device: each node an emulated device (quota x W per core + "
          "0.375 W/GB) busy for the task's CPU-seconds / quota, at its grid's intensity — "
          "the same work costs the same grams. measured: the host's CodeCarbon energy over "
          "the samples covering the task, shared by CPU time and memory"
          + (" (estimated from CPU load: no hardware counter here)."
             if host_estimated(runtime.emissions_csv) else "."))
    print()
    print(f"carbon service reconciliation ({runtime.emissions_csv}):")
    print(format_report(summarise_emissions(runtime.emissions_csv), settings.accounting))
    if any(r.random_init for r in rows):
        print("weights: random initialisation (no pretrained weights on this machine); timings "
              "and carbon are those of the real architecture, the class ids are meaningless.")
    return 0
