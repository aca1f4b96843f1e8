"""Carbon that holds still: the same work on the same node, quiet host vs loaded host.

Runs the default topology with the carbon service, warms every node, then sends
``--n`` warm MobileNetV2 inferences (batch 1, random weights) pinned to node-green
through the dispatcher with the host quiet, and ``--n`` more while CPU hogs (one busy
process per host CPU, outside every node's cgroup) load the host. Prints the carbon per
inference of both phases by both accounting methods and their difference (target for
the device method: within 3%), and, per node, what the scheduler's S_C predicted for a
pinned task against what the task was charged.

    .venv/bin/python benchmarks/bench_carbon_stability.py [--n 100] [--node node-green]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._runtime import bench_runtime  # noqa: E402
from carbonedge.client import Client  # noqa: E402
from carbonedge.experiments.blocks import (  # noqa: E402
    Arm,
    TaskRecord,
    attach_measured,
    run_blocks,
    warm_up,
)
from carbonedge.experiments.workload import synthetic_images  # noqa: E402

MODEL = "mobilenetv2"


def _spin(stop: multiprocessing.synchronize.Event) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def _phase(client: Client, node: str, n: int, images: list[bytes], label: str,
           timeout: float) -> list[TaskRecord]:
    records, _ = run_blocks(client, [Arm(label, {"node": node})], model=MODEL, images=images,
                            blocks=1, per_block=n, seed=0, timeout=timeout, label=label)
    return records


def _mean(values: list[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.fmean(clean) if clean else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="inferences per phase")
    ap.add_argument("--node", default="node-green")
    ap.add_argument("--hogs", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()

    images = synthetic_images(20, seed=11)
    with bench_runtime(preload=(MODEL,), carbon_service=True) as rt:
        settings = rt.settings
        with Client(settings) as client:
            warm_up(client, rt.node_ids, MODEL, images, per_node=10, timeout=120)
            quiet = _phase(client, args.node, args.n, images, "quiet", 120)
            stop = multiprocessing.Event()
            hogs = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
                    for _ in range(args.hogs)]
            for h in hogs:
                h.start()
            try:
                loaded = _phase(client, args.node, args.n, images, "loaded", 300)
            finally:
                stop.set()
                for h in hogs:
                    h.join(timeout=10)
            plans = {node: _phase(client, node, 20, images, f"plan {node}", 120)
                     for node in rt.node_ids}
        attach_measured(quiet + loaded, settings.redis_url, timeout=60)

    print(f"\n{args.n} warm {MODEL} inferences pinned to {args.node} (random weights), "
          f"quiet host, then with {args.hogs} CPU hog(s) on the host:")
    print(f"{'phase':<8} {'cpu ms/inf':>11} {'e2e ms':>8} {'device g/inf':>13} "
          f"{'measured g/inf':>15}")
    rows = {}
    for label, recs in (("quiet", quiet), ("loaded", loaded)):
        cpu = _mean([1e3 * (r.result.cpu_model_s + r.result.cpu_overhead_s) for r in recs])
        device = _mean([r.result.carbon_g for r in recs])
        measured = _mean([r.measured_g for r in recs])
        rows[label] = (device, measured)
        print(f"{label:<8} {cpu:>11.2f} {_mean([r.result.e2e_ms for r in recs]):>8.1f} "
              f"{device:>13.4e} {measured:>15.4e}")
    d_dev = 100 * (rows["loaded"][0] / rows["quiet"][0] - 1)
    d_mea = 100 * (rows["loaded"][1] / rows["quiet"][1] - 1)
    print(f"loaded vs quiet: device {d_dev:+.2f}% (target within ±3%), measured {d_mea:+.2f}%")

    print("\nplan vs charge (S_C's predicted grams for the pinned node vs the grams charged, "
          "20 warm tasks per node):")
    for node, recs in plans.items():
        predicted = _mean([next(row["carbon_g"] for row in r.result.decision["explain"]
                                if row["node"] == node) for r in recs])
        charged = _mean([r.result.carbon_g for r in recs])
        print(f"  {node:<12} predicted {predicted:.4e} g, charged {charged:.4e} g "
              f"({100 * (predicted / charged - 1):+.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
