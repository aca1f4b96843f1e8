"""Running the topology as local processes: each agent in its own cgroup.

``LocalRuntime.up()`` makes sure Redis answers (starting one it then owns), exports the
declared models to ONNX if a node runs ONNX Runtime and the shared store lacks them (in a
process of its own, outside every node's cgroup: torch needs more memory than a small node
has), starts the dispatcher, the carbon service if asked, and one agent per node id, each
inside a cgroup with the service's CPU quota and memory limit, and waits for every
heartbeat. With ``supervise`` (what `carbonedge up` does) the processes are started by a
detached supervisor that restarts any that exits (:mod:`carbonedge.compose.supervisor`);
otherwise (tests, the demo) by this process, and nothing restarts them. What it started
is written to a state file so that ``carbonedge down`` (another process) can stop
exactly that.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from carbonedge.carbon.codecarbon_adapter import check_host_grid
from carbonedge.cgroups import DEFAULT_PARENT, NodeCgroup, cgroups_available
from carbonedge.compose.processes import (
    ProcessRecord,
    ProcessSpec,
    launch,
    process_alive,
    signal_pid,
    stop_in_order,
)
from carbonedge.compose.readiness import clear_stale_in_flight, export_models, wait_until_ready
from carbonedge.compose.redis_server import ensure_redis, stop_pid
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


class LocalRuntime:
    """The topology as local processes; a context manager that always tears down."""

    def __init__(
        self,
        topology: Topology,
        settings: Settings,
        *,
        scale: dict[str, int] | None = None,
        preload: tuple[str, ...] = (),
        run_dir: str | Path | None = None,
        dispatcher_args: tuple[str, ...] = (),
        carbon_service: bool = False,
        supervise: bool = False,
    ) -> None:
        self.topology = topology
        self.settings = settings
        self.scale = scale or {}
        self.preload = preload
        self.dispatcher_args = dispatcher_args
        """Extra `carbonedge dispatcher` options, e.g. ``("--metrics-port", "9808")``."""
        self.carbon_service = carbon_service
        """Also run `carbonedge carbon` (the host tracker, ledger and reconciliation)."""
        self.supervise = supervise
        """Start the processes through a detached supervisor that restarts them."""
        self.run_dir = Path(run_dir or settings.run_dir).resolve()
        # every process reads the same compose file (the dispatcher its declared models) and
        # the agents share one store of exported graphs
        self.settings = settings.replace(
            compose_file=str(topology.source.resolve()),
            export_dir=str(Path(settings.export_dir).resolve() if settings.export_dir
                           else self.run_dir / "models"))
        self.state = RuntimeState(redis_url=settings.redis_url)
        topology.node_ids(self.scale)  # an unknown class fails here, naming the known ones

    @property
    def emissions_csv(self) -> Path:
        """Where the carbon service (if run) writes its emissions CSV."""
        return Path(self.settings.carbon_csv) if self.settings.carbon_csv \
            else self.run_dir / "emissions.csv"

    @property
    def node_ids(self) -> list[str]:
        return self.topology.node_ids(self.scale)

    # -- up ----------------------------------------------------------------------------

    def up(self, *, wait_s: float = 120.0) -> None:
        """Start Redis if needed, the dispatcher and every agent; wait for their heartbeats."""
        state_path = self.run_dir / STATE_FILE
        if state_path.exists():
            raise RuntimeUnavailable(
                f"a runtime is already recorded in {state_path}; run `carbonedge down` first")
        if self.carbon_service:  # a host grid CodeCarbon has no data for stops start-up
            check_host_grid(self.settings.host_country, self.settings.host_region)
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        if not self.settings.node_allowlist:  # the dispatcher believes our nodes only
            self.settings = self.settings.replace(node_allowlist=",".join(self.node_ids))
        try:
            owned = ensure_redis(self.settings.redis_url, self.run_dir)
            self.state.redis_pid = owned.pid if owned else None
            clear_stale_in_flight(self.settings.redis_url)
            ok, why = cgroups_available(self.settings.cgroup_parent)
            self.state.constrained = ok
            if not ok:
                log.warning("cannot create cgroups (%s): agents run WITHOUT CPU or memory limits",
                            why)
            self._export_models()
            specs = self._specs()
            if self.supervise:
                write_specs(self.run_dir, specs)
                self.state.supervisor_pid = self._launch(ProcessSpec(
                    SUPERVISOR, ("supervise", "--run-dir", str(self.run_dir)))).pid
            else:
                for spec in specs:
                    self._start(spec)
            self.state.save(state_path)
            self.wait_ready(wait_s)
        except BaseException:
            self.down()
            raise

    def _specs(self) -> list[ProcessSpec]:
        """The carbon service (if asked), the dispatcher, then the agents in their cgroups."""
        specs = []
        if self.carbon_service:
            specs.append(ProcessSpec("carbon", ("carbon", "--csv", str(self.emissions_csv))))
        specs.append(ProcessSpec("dispatcher", ("dispatcher", *self.dispatcher_args)))
        specs += [self._agent_spec(node_id) for node_id in self.node_ids]
        return specs

    def _export_models(self) -> None:
        export_models(self.topology, self.node_ids, self.settings,
                      self.run_dir / "logs" / "export.log")

    def _agent_spec(self, node_id: str) -> ProcessSpec:
        spec = self.topology.node(node_id)
        cgroup = None
        if self.state.constrained:
            made = NodeCgroup.create(node_id, spec.cpus, spec.mem_limit_bytes,
                                     self.settings.cgroup_parent)
            cgroup = f"{made.parent}/{made.name}"
            if cgroup not in self.state.cgroups:
                self.state.cgroups.append(cgroup)
        args = ["agent", "--node", node_id, "--compose", str(self.topology.source)]
        for name in self.preload:
            args += ["--preload", name]
        return ProcessSpec(node_id, tuple(args), cgroup)

    def _launch(self, spec: ProcessSpec) -> Any:
        env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        return launch(spec, env, self.run_dir / "logs" / f"{spec.name}.log")

    def _start(self, spec: ProcessSpec) -> None:
        proc = self._launch(spec)
        self.state.processes.append(ProcessRecord(
            name=spec.name, pid=proc.pid, log=str(self.run_dir / "logs" / f"{spec.name}.log"),
            cgroup=spec.cgroup))

    def restart_agent(self, node_id: str) -> None:
        """Start ``node_id``'s agent again after it died (same cgroup, same arguments);
        for a runtime that is not supervised (a supervised one restarts it by itself)."""
        self.state.processes = [p for p in self.state.processes if p.name != node_id]
        self._start(self._agent_spec(node_id))
        self.state.save(self.run_dir / STATE_FILE)

    def wait_ready(self, timeout_s: float) -> None:
        """Block until every agent's heartbeat and the dispatcher's beat are visible."""
        wait_until_ready(self.settings.redis_url, self.node_ids, timeout_s,
                         check_started=self._check_started, carbon_service=self.carbon_service,
                         host_id=self.settings.host_id)

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

    def __enter__(self) -> LocalRuntime:
        self.up()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.down()


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
