"""Routed MobileNetV2 latency vs in-process inference under the same cgroup quota, and
each agent's peak cgroup memory with the model loaded.

Baseline: a process in a fresh cgroup with the node's CPU quota and memory limit loads
the model and times ``run_inference`` on the image's normalised float input. The agents run
torch too, so that the difference is the routing path's (benchmarks/bench_runtimes.py
compares the runtimes). Routed: the same image's crop submitted as uint8 pixels through the
client, the stream, the dispatcher and the node's queue (the node normalises them: that is
in the overhead), timed from submit to result; and, interleaved with it, the normalised
float tensor itself (four times the bytes, nothing to do on the node). All sequential,
batch 1, the same iterations.

    python benchmarks/bench_inference.py [--iterations 60]

``CARBONEDGE_INLINE_INPUT_MAX_BYTES=262144`` sends the 147 KiB pixels inside the request and
its Celery message instead of under their own key (the claim check, over 64 KiB).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from _runtime import bench_runtime

from carbonedge.cgroups import NodeCgroup
from carbonedge.client import Client, InferenceResult
from carbonedge.client.images import image_pixels, preprocess_image
from carbonedge.experiments.workload import percentile, synthetic_images

MODEL = "mobilenetv2"
MIB = 1 << 20

IN_PROCESS = """
import sys, time, numpy as np, torch
from carbonedge.node_agent.backend import threads_for_quota
from carbonedge.partitioner.models import create_model, run_inference, top_k
quota, n = float(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads_for_quota(quota)); torch.set_num_interop_threads(1)
x = np.load(sys.argv[3])
model = create_model(sys.argv[4])
for _ in range(5):
    top_k(run_inference(model, x))
for _ in range(n):
    t0 = time.perf_counter(); top_k(run_inference(model, x))
    print((time.perf_counter() - t0) * 1e3)
"""


def in_process_ms(node: str, cpus: float, mem: int, x_path: Path, n: int) -> list[float]:
    cgroup = NodeCgroup.create(f"bench-{node}", cpus, mem)
    try:
        out = subprocess.run([sys.executable, "-c", IN_PROCESS, str(cpus), str(n), str(x_path),
                              MODEL], capture_output=True, text=True, check=True, timeout=600,
                             preexec_fn=cgroup.preexec_fn())
    finally:
        cgroup.remove()
    return sorted(float(line) for line in out.stdout.split())


def memory_report(node: str, limit: int) -> str:
    mem_dir = NodeCgroup.attach(node).dirs["memory"]
    stat = dict(line.split() for line in (mem_dir / "memory.stat").read_text().splitlines())
    peak = int((mem_dir / "memory.max_usage_in_bytes").read_text())
    failcnt = int((mem_dir / "memory.failcnt").read_text())
    oom = dict(line.split() for line in (mem_dir / "memory.oom_control").read_text().splitlines())
    return (f"  {node:<12} limit {limit // MIB:5d} MiB  peak charge {peak / MIB:6.0f} MiB  "
            f"anon (rss) now {int(stat['total_rss']) / MIB:5.0f} MiB  page cache now "
            f"{int(stat['total_cache']) / MIB:5.0f} MiB  limit hits {failcnt}  "
            f"OOM kills {oom.get('oom_kill', '?')}")


def _breakdown(results: list[InferenceResult]) -> dict[str, float]:
    """Median ms of each stretch of a routed request, from its own timestamps: submit to
    dispatch (the input stored, the stream, the dispatcher's read and routing), dispatch to
    the task's start (the node queue, Celery's pick-up, the ownership check), the task
    outside the model run (input fetch and decode, normalising, top-5) and back (accounting,
    delivery, pub/sub, parsing)."""
    stretches: dict[str, list[float]] = {"submit->dispatch": [], "dispatch->start": [],
                                         "in task": [], "result back": []}
    for r in results:
        t = r.raw["timings"]
        stretches["submit->dispatch"].append((t["dispatched_at"] - t["submitted_at"]) * 1e3)
        stretches["dispatch->start"].append((t["started_at"] - t["dispatched_at"]) * 1e3)
        stretches["in task"].append((t["finished_at"] - t["started_at"]) * 1e3 - r.exec_ms)
        stretches["result back"].append(r.e2e_ms - (t["finished_at"] - t["submitted_at"]) * 1e3)
    return {name: statistics.median(values) for name, values in stretches.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=60)
    args = parser.parse_args()
    n = args.iterations
    image = synthetic_images(1, seed=7)[0]
    x = preprocess_image(image)
    pixels = image_pixels(image)
    with bench_runtime(preload=(MODEL,), inference_runtime="torch") as runtime:
        import numpy as np

        x_path = runtime.run_dir / "x.npy"
        np.save(x_path, x)
        client = Client(runtime.settings)
        print(f"MobileNetV2, batch 1, {n} sequential requests per node "
              "(random initialisation: no pretrained weights here)")
        print(f"  {'node':<12} {'in-process p50':>15} {'routed p50':>11} {'overhead':>17} "
              f"{'routed p95':>11} {'exec p50':>9}   {'float input p50 (overhead)':>27}")
        paths: dict[str, list[InferenceResult]] = {}
        for spec in runtime.topology.nodes:
            for _ in range(5):
                client.submit(MODEL, pixels, node=spec.name).result(120)
            results, floats = [], []
            for _ in range(n):  # interleaved, so both inputs see the same host conditions
                results.append(client.submit(MODEL, pixels, node=spec.name).result(120))
                floats.append(client.submit(MODEL, x, node=spec.name).result(120))
            routed = sorted(r.e2e_ms for r in results)
            execs = sorted(r.exec_ms for r in results)
            base = in_process_ms(spec.name, spec.cpus, spec.mem_limit_bytes, x_path, n)
            b50, r50 = statistics.median(base), statistics.median(routed)
            f50 = statistics.median(r.e2e_ms for r in floats)
            print(f"  {spec.name:<12} {b50:12.1f} ms {r50:8.1f} ms {r50 - b50:+6.1f} ms "
                  f"{100 * (r50 / b50 - 1):+6.1f}% {percentile(routed, 95):8.1f} ms "
                  f"{statistics.median(execs):6.1f} ms   {f50:14.1f} ms ({f50 - b50:+5.1f} ms)")
            paths[spec.name] = results
        print("target: routed pixels <= 2 ms p50 over in-process on node-high")
        print("where the routed time goes outside the model (pixels, medians, ms):")
        for node, results in paths.items():
            print(f"  {node:<12} " + "  ".join(f"{name} {value:.2f}"
                                               for name, value in _breakdown(results).items()))
        print("peak cgroup memory of each agent (torch, the three paper models loaded) after "
              f"serving {n + 5} MobileNetV2 inferences:")
        for spec in runtime.topology.nodes:
            print(memory_report(spec.name, spec.mem_limit_bytes))
        client.close()


if __name__ == "__main__":
    main()
