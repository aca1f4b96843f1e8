"""Running the topology as local processes: each agent in its own cgroup.

What every runtime does (Redis, the allow-list, exported models, the carbon service, the
dispatcher and the agents, readiness, teardown) is :class:`~carbonedge.compose.base.
TopologyRuntime`'s. Here each service is a `carbonedge` process, and each agent runs
inside a cgroup with its service's CPU quota and memory limit (exporting the models runs
outside them: torch needs more memory than a small node has). With ``supervise`` (what
`carbonedge up` does) the processes are started by a detached supervisor that restarts any
that exits (:mod:`carbonedge.compose.supervisor`); otherwise (tests, the demo) by this
process, and nothing restarts them. What it started is written to a state file so that
``carbonedge down`` (another process) can stop exactly that.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Unpack

import redis

from carbonedge.cgroups import DEFAULT_PARENT, NodeCgroup, cgroups_available
from carbonedge.compose.base import RuntimeOptions, TopologyRuntime
from carbonedge.compose.processes import (
    ProcessRecord,
    ProcessSpec,
    launch,
    process_alive,
    signal_pid,
    stop_in_order,
)
from carbonedge.compose.redis_server import stop_pid
from carbonedge.compose.supervisor import read_supervised, write_specs
from carbonedge.compose.topology import Topology
from carbonedge.connections import redis_client
from carbonedge.errors import CarbonEdgeError, RuntimeUnavailable
from carbonedge.protocol import keys
from carbonedge.settings import Settings

__all__ = ["LocalRuntime", "ProcessRecord", "RuntimeState", "process_alive", "stop_processes"]

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
SUPERVISOR = "supervisor"


@dataclass
class RuntimeState:
    redis_url: str
    processes: list[ProcessRecord] = field(default_factory=list)
    redis_pid: int | None = None
    constrained: bool = True
    supervisor_pid: int | None = None
    """The supervisor of a supervised runtime (it owns the processes then)."""
    cgroups: list[str] = field(default_factory=list)
    """``<parent>/<name>`` of every cgroup created for the agents (removed by `down`)."""

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, path: Path) -> RuntimeState:
        data = json.loads(path.read_text())
        data["processes"] = [ProcessRecord(**p) for p in data["processes"]]
        return cls(**data)


class LocalRuntime(TopologyRuntime):
    """The topology as local processes, each agent in its cgroup (see :class:`TopologyRuntime`
    for what every runtime does)."""

    STATE_FILE = STATE_FILE

    def __init__(self, topology: Topology, settings: Settings, *, supervise: bool = False,
                 **options: Unpack[RuntimeOptions]) -> None:
        self.state = RuntimeState(redis_url=settings.redis_url)
        super().__init__(topology, settings, **options)
        self.supervise = supervise
        """Start the processes through a detached supervisor that restarts them."""

    @property
    def redis_pid(self) -> int | None:
        return self.state.redis_pid

    @redis_pid.setter
    def redis_pid(self, pid: int | None) -> None:
        self.state.redis_pid = pid

    # -- how a service runs here: a process, an agent in its cgroup ----------------------

    def _prepare(self) -> None:
        ok, why = cgroups_available(self.settings.cgroup_parent)
        self.state.constrained = ok
        if not ok:
            log.warning("cannot create cgroups (%s): agents run WITHOUT CPU or memory limits",
                        why)

    def _start(self, specs: Sequence[ProcessSpec]) -> None:
        specs = [self._in_cgroup(s) if s.args[:1] == ("agent",) else s for s in specs]
        if self.supervise:
            write_specs(self.run_dir, specs)
            self.state.supervisor_pid = self._launch(ProcessSpec(
                SUPERVISOR, ("supervise", "--run-dir", str(self.run_dir)))).pid
        else:
            for spec in specs:
                self._start_one(spec)

    def _save_state(self, path: Path) -> None:
        self.state.save(path)

    def _in_cgroup(self, spec: ProcessSpec) -> ProcessSpec:
        """An agent's spec with the cgroup of its node (created now) when cgroups can be."""
        if not self.state.constrained:
            return spec
        node = self.topology.node(spec.name)
        made = NodeCgroup.create(spec.name, node.cpus, node.mem_limit_bytes,
                                 self.settings.cgroup_parent)
        cgroup = f"{made.parent}/{made.name}"
        if cgroup not in self.state.cgroups:
            self.state.cgroups.append(cgroup)
        return replace(spec, cgroup=cgroup)

    def _launch(self, spec: ProcessSpec) -> Any:
        env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        return launch(spec, env, self.logs_dir / f"{spec.name}.log")

    def _start_one(self, spec: ProcessSpec) -> None:
        proc = self._launch(spec)
        self.state.processes.append(ProcessRecord(
            name=spec.name, pid=proc.pid, log=str(self.logs_dir / f"{spec.name}.log"),
            cgroup=spec.cgroup))

    def restart_agent(self, node_id: str) -> None:
        """Start ``node_id``'s agent again after it died (same cgroup, same arguments);
        for a runtime that is not supervised (a supervised one restarts it by itself)."""
        self.state.processes = [p for p in self.state.processes if p.name != node_id]
        self._start_one(self._in_cgroup(ProcessSpec(node_id, self.agent_args(node_id))))
        self.state.save(self.run_dir / STATE_FILE)

    def _check_started(self) -> None:
        """Raise if a process died during start-up (supervised: if one had to restart)."""
        if self.state.supervisor_pid is not None:
            if not process_alive(self.state.supervisor_pid):
                raise RuntimeUnavailable("the supervisor exited during start-up; its log ends:"
                                         f"\n{_tail(str(self.run_dir / 'logs' / 'supervisor.log'))}")
            for name in _restarted(self.settings.redis_url):
                log_path = self.run_dir / "logs" / f"{name}.log"
                raise RuntimeUnavailable(
                    f"{name} exited during start-up; its log ends:\n{_tail(str(log_path))}")
        for rec in self.state.processes:
            if not process_alive(rec.pid):
                raise RuntimeUnavailable(
                    f"{rec.name} exited during start-up; its log ends:\n{_tail(rec.log)}")

    # -- down --------------------------------------------------------------------------

    def down(self, *, grace_s: float = 10.0) -> None:
        """Stop agents, then the dispatcher, remove cgroups and stop a Redis we started."""
        stop_processes(self.state, grace_s, self.run_dir)
        (self.run_dir / STATE_FILE).unlink(missing_ok=True)

    @classmethod
    def down_recorded(cls, run_dir: str | Path, grace_s: float = 10.0) -> RuntimeState | None:
        """Stop what a previous ``up`` recorded in ``run_dir`` (for ``carbonedge down``)."""
        path = Path(run_dir).resolve() / STATE_FILE
        if not path.exists():
            return None
        state = RuntimeState.read(path)
        stop_processes(state, grace_s, path.parent)
        path.unlink(missing_ok=True)
        return state


def stop_processes(state: RuntimeState, grace_s: float, run_dir: Path) -> None:
    """Stop the supervisor (which stops its processes), then every recorded process still
    running (agents first; SIGKILL after ``grace_s``), remove the cgroups, stop Redis."""
    supervisor = state.supervisor_pid
    if supervisor is not None and process_alive(supervisor):
        signal_pid(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + 2 * grace_s + 5  # it gives each group grace_s
        while process_alive(supervisor) and time.monotonic() < deadline:
            time.sleep(0.05)
        if process_alive(supervisor):
            log.warning("the supervisor did not stop; killing it and what it ran")
            signal_pid(supervisor, signal.SIGKILL)
    state.supervisor_pid = None
    # what the supervisor left running if it died first, and an unsupervised runtime's
    stop_in_order([*state.processes, *read_supervised(run_dir)], grace_s)
    state.processes.clear()
    for cgroup in state.cgroups:
        parent, _, name = cgroup.rpartition("/")
        try:
            group = NodeCgroup.attach(name, parent or DEFAULT_PARENT)
            if group.exists():
                group.remove()
        except CarbonEdgeError as e:
            log.warning("could not remove cgroup %s: %s", cgroup, e)
    state.cgroups.clear()
    if state.redis_pid:
        stop_pid(state.redis_pid)
        state.redis_pid = None


def _restarted(redis_url: str) -> list[str]:
    """Processes the supervisor reports as having exited at least once."""
    client = redis_client(redis_url, socket_timeout=5)
    try:
        raw = client.hgetall(keys.PROCESSES)
    except redis.RedisError:
        return []
    finally:
        client.close()
    out = []
    for name, value in raw.items():
        try:
            entry = json.loads(value)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("restarts"):
            out.append(name.decode(errors="replace"))
    return sorted(out)


def _tail(path: str, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
