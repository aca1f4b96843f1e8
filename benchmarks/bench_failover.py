"""Redis Sentinel failover under load: the primary killed (-9) mid-run.

    python benchmarks/bench_failover.py [--requests 2000] [--rate 100]

Three sentinels, a primary and a replica (local redis-server processes, made for the
run); two small agents and a dispatcher given only the sentinel URL. A third of the way
in the primary is killed; once the sentinels have promoted the replica, the old server
comes back as the new primary's replica. A request counts as acknowledged once a replica
holds it (``replica_acks=1``). Prints lost (of the acknowledged), duplicated, the
failover time and the submissions refused meanwhile.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from carbonedge.compose.local_runner import LocalRuntime  # noqa: E402
from carbonedge.compose.topology import load_topology  # noqa: E402
from carbonedge.experiments.failover_load import run_failover_load  # noqa: E402
from carbonedge.settings import Settings  # noqa: E402
from tests.faults.servers import SentinelGroup  # noqa: E402
from tests.integration.conftest import SMALL_TOPOLOGY  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0, help="pings submitted per second")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="carbonedge-failover-") as tmp:
        group = SentinelGroup(Path(tmp) / "sentinel", secrets.token_hex(8)).start()
        try:
            compose = Path(tmp) / "compose.yml"
            compose.write_text(SMALL_TOPOLOGY)
            settings = Settings.load(
                env={}, redis_url=group.url, run_dir=str(Path(tmp) / "run"),
                cgroup_parent=os.environ.get("CARBONEDGE_CGROUP_PARENT", "carbonedge-bench"))
            runtime = LocalRuntime(load_topology(compose), settings)
            runtime.up(wait_s=180)
            try:
                def kill() -> float:
                    at = time.time()
                    group.primary.kill()  # type: ignore[union-attr]
                    return at

                figures = run_failover_load(
                    group.url, kill, lambda: group.rejoin(group.primary),  # type: ignore[arg-type]
                    requests=args.requests, rate_per_s=args.rate)
            finally:
                runtime.down()
        finally:
            group.stop()
    for line in figures.lines():
        print(line)


if __name__ == "__main__":
    main()
