"""Agents on two hosts, one killed and one cut off: lost, duplicated, re-dispatch delay.

    python benchmarks/bench_multihost.py [--requests 3000] [--rate 100] [--cut 10]

Host A (this network namespace) runs the dispatcher, node-a and node-b and its carbon
service; host B (a network namespace of its own, joined by a veth pair) runs node-r and
its own carbon service, reaching the TLS-only Redis (ACL user per role, a CA made for
the run) only on a test address. A third of the way in node-b is killed (-9); halfway,
host B's link is taken down for ``--cut`` seconds. Prints submitted / delivered /
duplicated / lost, and the re-dispatch delay per moved request (from its node's fault to
its re-dispatch: heartbeat expiry + watchdog period). Needs root (namespaces, cgroups).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from carbonedge.experiments.multihost_load import Fault, run_multihost_load  # noqa: E402
from tests.faults.two_hosts import REMOTE_NODE, two_hosts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=100.0, help="pings submitted per second")
    parser.add_argument("--cut", type=float, default=10.0, help="seconds host B is cut off")
    args = parser.parse_args()
    parent = os.environ.get("CARBONEDGE_CGROUP_PARENT", "carbonedge-bench")
    with tempfile.TemporaryDirectory(prefix="carbonedge-multihost-") as tmp, \
            two_hosts(Path(tmp), cgroup_parent=parent) as hosts:
        faults = [
            Fault("kill -9 node-b (host A)", "node-b", 1 / 3,
                  start=lambda: hosts.kill_local("node-b")),
            Fault(f"cut host B off for {args.cut:.0f} s", REMOTE_NODE, 1 / 2,
                  start=hosts.host.cut, end=hosts.host.restore, duration_s=args.cut),
        ]
        figures = run_multihost_load(hosts.url("dispatcher"), faults, requests=args.requests,
                                     rate_per_s=args.rate)
    for fault in faults:
        print(f"fault: {fault.name}")
    for line in figures.lines():
        print(line)


if __name__ == "__main__":
    main()
