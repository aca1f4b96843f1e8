"""torch vs ONNX Runtime on the paper's topology, both in one run.

For each runtime the default topology comes up with every node on it (warm agents: the
three paper models loaded, warmed up and profiled before each reports ready). Then:

- warm agents: node-high's agent is restarted ``--restarts`` times; each time the first
  request after it reports ready is timed against the median of the warm requests after it
  (end to end, MobileNetV2), all paced :data:`PACE_S` apart so that each meets the
  dispatcher in the same state (it re-reads node telemetry when 0.2 s old);
- per node and model, ``--iterations`` sequential requests pinned to the node: the model
  run's CPU-seconds (the agent's cgroup), end-to-end latency and the carbon charged;
- each agent's peak cgroup memory charge and OOM kills over the whole run.

Ratios are ONNX Runtime / torch from the same run. Carbon is what the agents charge (no
carbon service here: a linear per-CPU host power estimate, the same for both runtimes).
Random initialisation (no pretrained weights on this machine).

    python benchmarks/bench_runtimes.py [--iterations 30] [--restarts 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
from _runtime import bench_runtime

from carbonedge.cgroups import NodeCgroup
from carbonedge.client import Client
from carbonedge.compose.local_runner import LocalRuntime, process_alive
from carbonedge.partitioner.catalog import DEFAULT_MODELS
from carbonedge.protocol import keys

RUNTIMES = ("torch", "onnxruntime")
MIB = 1 << 20
FIRST_NODE = "node-high"
FIRST_MODEL = "mobilenetv2"
PACE_S = 0.5


@dataclass
class Cell:
    """One (runtime, node, model): per-inference medians."""

    cpu_ms: float
    e2e_ms: float
    carbon_mg: float


@dataclass(frozen=True)
class Trip:
    """Where one request's end-to-end time went (ms)."""

    e2e: float
    dispatch: float
    """submitted -> dispatched (the stream and the dispatcher)"""
    queue: float
    """dispatched -> the agent starts it (Celery)"""
    agent: float
    """the agent's task (input fetch, decode, model run, accounting)"""
    model: float

    @classmethod
    def of(cls, result: Any) -> Trip:
        t = result.raw["timings"]
        return cls(e2e=result.e2e_ms, dispatch=(t["dispatched_at"] - t["submitted_at"]) * 1e3,
                   queue=result.queue_ms, agent=(t["finished_at"] - t["started_at"]) * 1e3,
                   model=result.exec_ms)

    @classmethod
    def median(cls, trips: list[Trip]) -> Trip:
        return cls(*(statistics.median(getattr(t, f) for t in trips)
                     for f in ("e2e", "dispatch", "queue", "agent", "model")))

    def line(self) -> str:
        return (f"e2e {self.e2e:5.1f} (dispatch {self.dispatch:4.1f}, queue {self.queue:4.1f}, "
                f"agent {self.agent:4.1f} of which model {self.model:4.1f})")


@dataclass
class RuntimeRun:
    runtime: str
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    first_vs_warm: list[tuple[Trip, Trip]] = field(default_factory=list)
    memory: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    """node -> (limit, peak charge, OOM kills)"""


def _restart_and_time_first(runtime: LocalRuntime, client: Client, x: np.ndarray,
                            warm_n: int) -> tuple[Trip, Trip]:
    """Restart node-high's agent; (the first request's trip, the median of the next
    ``warm_n``)."""
    proc = next(p for p in reversed(runtime.state.processes) if p.name == FIRST_NODE)
    os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while process_alive(proc.pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{FIRST_NODE} did not stop")
        time.sleep(0.05)
    r = redis.Redis.from_url(runtime.settings.redis_url)
    try:
        r.delete(keys.node_key(FIRST_NODE))
        runtime.restart_agent(FIRST_NODE)
        deadline = time.monotonic() + 300
        while not r.exists(keys.node_key(FIRST_NODE)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{FIRST_NODE} did not come back")
            time.sleep(0.02)
    finally:
        r.close()
    trips = []
    for _ in range(1 + warm_n):
        time.sleep(PACE_S)
        trips.append(Trip.of(client.submit(FIRST_MODEL, x, node=FIRST_NODE).result(120)))
    return trips[0], Trip.median(trips[1:])


def _memory(runtime: LocalRuntime) -> dict[str, tuple[int, int, str]]:
    out = {}
    for spec in runtime.topology.nodes:
        mem = NodeCgroup.attach(spec.name, runtime.settings.cgroup_parent).dirs["memory"]
        oom = dict(line.split() for line in (mem / "memory.oom_control").read_text().splitlines())
        out[spec.name] = (spec.mem_limit_bytes, int((mem / "memory.max_usage_in_bytes").read_text()),
                          oom.get("oom_kill", "?"))
    return out


def measure(runtime_name: str, iterations: int, restarts: int) -> RuntimeRun:
    run = RuntimeRun(runtime_name)
    x = np.random.default_rng(7).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with bench_runtime(inference_runtime=runtime_name) as runtime, \
            Client(runtime.settings) as client:
        if not runtime.state.constrained:
            raise SystemExit("this benchmark needs cgroups (run as root)")
        for _ in range(restarts):
            run.first_vs_warm.append(_restart_and_time_first(runtime, client, x, 10))
        for spec in runtime.topology.nodes:
            for model in DEFAULT_MODELS:
                for _ in range(3):
                    client.submit(model, x, node=spec.name).result(120)
                results = [client.submit(model, x, node=spec.name).result(120)
                           for _ in range(iterations)]
                assert all(r.runtime == runtime_name for r in results)
                run.cells[(spec.name, model)] = Cell(
                    cpu_ms=statistics.median(r.cpu_s * 1e3 for r in results),
                    e2e_ms=statistics.median(r.e2e_ms for r in results),
                    carbon_mg=statistics.median(r.carbon_g * 1e3 for r in results))
        run.memory = _memory(runtime)
    return run


def report(runs: dict[str, RuntimeRun], iterations: int) -> None:
    torch_run, ort_run = runs["torch"], runs["onnxruntime"]
    print(f"\nper inference, medians of {iterations} sequential requests per cell (batch 1; "
          "random initialisation)")
    print(f"  {'node':<12} {'model':<16} {'CPU ms torch':>12} {'ORT':>7} {'ratio':>6} "
          f"{'e2e ms torch':>12} {'ORT':>7} {'ratio':>6} {'mgCO2 torch':>11} {'ORT':>8} "
          f"{'ratio':>6}")
    for (node, model), t in torch_run.cells.items():
        o = ort_run.cells[(node, model)]
        print(f"  {node:<12} {model:<16} {t.cpu_ms:12.1f} {o.cpu_ms:7.1f} "
              f"{o.cpu_ms / t.cpu_ms:6.2f} {t.e2e_ms:12.1f} {o.e2e_ms:7.1f} "
              f"{o.e2e_ms / t.e2e_ms:6.2f} {t.carbon_mg:11.5f} {o.carbon_mg:8.5f} "
              f"{o.carbon_mg / t.carbon_mg:6.2f}")
    base = torch_run.cells[("node-medium", "mobilenetv2")].carbon_mg
    print("\nMobileNetV2 carbon per inference against torch on node-medium (the monolithic "
          "baseline):")
    for label, run, node in (("routing only (torch, node-green)", torch_run, "node-green"),
                             ("runtime only (onnxruntime, node-medium)", ort_run, "node-medium"),
                             ("both (onnxruntime, node-green)", ort_run, "node-green")):
        mg = run.cells[(node, "mobilenetv2")].carbon_mg
        print(f"  {label:<42} {mg:.5f} mg  {100 * (mg / base - 1):+6.1f}%")
    print(f"\nwarm agents: first request to {FIRST_NODE} after it reports ready vs the median "
          f"of the 10 after it ({FIRST_MODEL}, end to end, {PACE_S} s apart)")
    for name, run in runs.items():
        ratios = [f.e2e / w.e2e for f, w in run.first_vs_warm]
        print(f"  {name:<12} first / warm e2e: {', '.join(f'{q:.2f}' for q in ratios)} "
              f"(median {statistics.median(ratios):.2f})")
        for first, warm in run.first_vs_warm:
            print(f"    first {first.line()}\n    warm  {warm.line()}")
    print("\nagent peak cgroup memory charge over the run (limit; OOM kills)")
    for node in torch_run.memory:
        cells = []
        for name, run in runs.items():
            limit, peak, oom = run.memory[node]
            cells.append(f"{name} {peak / MIB:5.0f} MiB (limit {limit / MIB:.0f}; OOM {oom})")
        print(f"  {node:<12} " + "   ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--restarts", type=int, default=3)
    args = parser.parse_args()
    runs = {}
    for name in RUNTIMES:  # torch first: the baseline
        print(f"measuring {name} ...", flush=True)
        runs[name] = measure(name, args.iterations, args.restarts)
    report(runs, args.iterations)


if __name__ == "__main__":
    main()
