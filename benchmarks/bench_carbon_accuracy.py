"""Carbon accounting accuracy: the ledger rows' measured energy (tasks, idle and start-up
stretches, each settled from the host samples that cover it) against the host energy the
nodes' cgroups earned over the same windows.

Runs the default topology with the carbon service (CodeCarbon on the host), keeps every
node busy with MobileNetV2 (batch 1, random weights) for ``--seconds``, stops everything
(the service settles the ledger and closes its windows) and reads the emissions CSV.

    .venv/bin/python benchmarks/bench_carbon_accuracy.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._runtime import bench_runtime  # noqa: E402
from carbonedge.carbon.report import format_report, summarise  # noqa: E402
from carbonedge.client import Client  # noqa: E402
from carbonedge.experiments.workload import synthetic_images  # noqa: E402
from carbonedge.settings import Settings  # noqa: E402

MODEL = "mobilenetv2"


def _load(settings: Settings, node: str, until: float, model_cpu_s: list[float]) -> None:
    """Keep ``node`` busy until ``until``; count each result's model-run CPU-seconds."""
    images = synthetic_images(4, seed=7)
    i = 0
    with Client(settings) as client:  # a client per thread: its connections are its own
        while time.monotonic() < until:
            result = client.submit_direct(node, MODEL, images[i % len(images)]).result(120)
            model_cpu_s.append(result.cpu_s)
            i += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--keep-csv", help="copy the emissions CSV here")
    args = ap.parse_args()

    keep = Path(args.keep_csv) if args.keep_csv else None
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "emissions.csv"
        with bench_runtime(preload=(MODEL,), carbon_service=True, carbon_csv=str(csv_path),
                           carbon_window_s=args.window) as rt:
            model_cpu_s: list[float] = []
            until = time.monotonic() + args.seconds
            print(f"loading {', '.join(rt.node_ids)} with {MODEL} for {args.seconds:.0f} s "
                  "(random weights) ...", flush=True)
            # two producers per node keep each agent's queue from running dry
            threads = [threading.Thread(target=_load, args=(rt.settings, node, until, model_cpu_s))
                       for node in rt.node_ids for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            print(f"{len(model_cpu_s)} inferences; stopping (the carbon service closes its windows)")
        report = summarise(csv_path)
        if keep:
            shutil.copy(csv_path, keep)
    print(format_report(report))
    ratio = report.measured_vs_attributed
    print(f"\nrows' measured energy vs the host energy the nodes' cgroups earned: "
          f"{(ratio - 1) * 100:+.1f}% (target within ±5%)")
    print(f"unattributed share of host energy: {report.unattributed_kwh / report.host_kwh:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
