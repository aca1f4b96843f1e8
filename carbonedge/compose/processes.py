"""Starting and stopping the topology's processes: one `carbonedge` command each.

Shared by the local runtime (which starts them itself, for tests and the demo) and the
supervisor of `carbonedge up` (which starts them, restarts them and stops them).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from carbonedge.cgroups import DEFAULT_PARENT, NodeCgroup
from carbonedge.errors import CarbonEdgeError

log = logging.getLogger(__name__)

SERVICES = ("dispatcher", "carbon")
"""Processes stopped after the agents (the ledger must be drained)."""


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One process of the topology: its name, `carbonedge` arguments and cgroup."""

    name: str
    args: tuple[str, ...]
    cgroup: str | None = None
    """``<parent>/<name>`` of the cgroup it runs in (created beforehand), or None."""

    def to_wire(self) -> dict[str, object]:
        return {"name": self.name, "args": list(self.args), "cgroup": self.cgroup}

    @classmethod
    def from_wire(cls, wire: Mapping[str, object]) -> ProcessSpec:
        cgroup = wire.get("cgroup")
        return cls(name=str(wire["name"]), args=tuple(str(a) for a in wire["args"]),  # type: ignore[union-attr]
                   cgroup=str(cgroup) if cgroup else None)


@dataclass
class ProcessRecord:
    """One process the runtime started."""

    name: str
    pid: int
    log: str
    cgroup: str | None = None
    restarts: int = field(default=0)


def launch(spec: ProcessSpec, env: Mapping[str, str], log_path: Path) -> subprocess.Popen:
    """Start ``carbonedge <args>`` in its own session (and cgroup), output to ``log_path``."""
    cgroup = _attach(spec.cgroup) if spec.cgroup else None
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "carbonedge.cli", *spec.args],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=dict(env),
            start_new_session=True,  # Ctrl-C reaches its starter; it stops them in order
            preexec_fn=cgroup.preexec_fn() if cgroup else None,
        )
    log.info("started %s (pid %d%s)", spec.name, proc.pid,
             f", cgroup {spec.cgroup}" if spec.cgroup else ", unconstrained")
    return proc


def _attach(path: str) -> NodeCgroup:
    parent, _, name = path.rpartition("/")
    return NodeCgroup.attach(name, parent or DEFAULT_PARENT)


def stop_in_order(records: Iterable[ProcessRecord], grace_s: float) -> None:
    """SIGTERM agents, wait, SIGKILL stragglers; then the services; remove cgroups."""
    records = list(records)
    agents = [p for p in records if p.name not in SERVICES]
    others = [p for p in records if p.name in SERVICES]
    for group in (agents, others):
        for rec in group:
            signal_pid(rec.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for rec in group:
            while process_alive(rec.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if process_alive(rec.pid):
                log.warning("%s did not stop in %.0f s; killing it", rec.name, grace_s)
                signal_pid(rec.pid, signal.SIGKILL)
        for rec in group:
            reap(rec.pid)
            if rec.cgroup:
                try:
                    _attach(rec.cgroup).remove()
                except CarbonEdgeError as e:
                    log.warning("could not remove cgroup %s: %s", rec.cgroup, e)


def signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone; our own children are reaped)."""
    reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie we cannot reap (not our child) counts as dead
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def describe_exit(returncode: int) -> str:
    """``exit 2`` or ``killed by SIGKILL``, from a Popen return code."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit {returncode}"
