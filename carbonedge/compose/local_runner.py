"""Running the topology as local processes: each agent in its own cgroup.

``LocalRuntime.up()`` makes sure Redis answers (starting one it then owns), exports the
declared models to ONNX if a node runs ONNX Runtime and the shared store lacks them (in a
process of its own, outside every node's cgroup: torch needs more memory than a small node
has), starts the dispatcher and one agent per node id, each inside a cgroup with the
service's CPU quota and memory limit, and waits for every heartbeat. What it started is written to a state
file so that ``carbonedge down`` (another process) can stop exactly that.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from carbonedge.compose.cgroups import DEFAULT_PARENT, NodeCgroup, cgroups_available
from carbonedge.compose.readiness import clear_stale_in_flight, export_models, wait_until_ready
from carbonedge.compose.redis_server import ensure_redis, stop_pid
from carbonedge.compose.topology import Topology
from carbonedge.errors import CarbonEdgeError, RuntimeUnavailable
from carbonedge.settings import Settings

log = logging.getLogger(__name__)

STATE_FILE = "state.json"


@dataclass
class ProcessRecord:
    """One process the runtime started."""

    name: str
    pid: int
    log: str
    cgroup: str | None = None


@dataclass
class RuntimeState:
    redis_url: str
    processes: list[ProcessRecord] = field(default_factory=list)
    redis_pid: int | None = None
    constrained: bool = True

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
    ) -> None:
        self.topology = topology
        self.settings = settings
        self.scale = scale or {}
        self.preload = preload
        self.dispatcher_args = dispatcher_args
        """Extra `carbonedge dispatcher` options, e.g. ``("--metrics-port", "9808")``."""
        self.carbon_service = carbon_service
        """Also run `carbonedge carbon` (the host tracker, ledger and reconciliation)."""
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
            if self.carbon_service:
                self._start("carbon", ["carbon", "--csv", str(self.emissions_csv)], None)
            self._start("dispatcher", ["dispatcher", *self.dispatcher_args], None)
            for node_id in self.node_ids:
                self._start_agent(node_id)
            self.state.save(state_path)
            self.wait_ready(wait_s)
        except BaseException:
            self.down()
            raise

    def _export_models(self) -> None:
        export_models(self.topology, self.node_ids, self.settings,
                      self.run_dir / "logs" / "export.log")

    def _start_agent(self, node_id: str) -> None:
        spec = self.topology.node(node_id)
        cgroup = None
        if self.state.constrained:
            cgroup = NodeCgroup.create(node_id, spec.cpus, spec.mem_limit_bytes,
                                       self.settings.cgroup_parent)
        args = ["agent", "--node", node_id, "--compose", str(self.topology.source)]
        for name in self.preload:
            args += ["--preload", name]
        self._start(node_id, args, cgroup)

    def _start(self, name: str, args: list[str], cgroup: NodeCgroup | None) -> None:
        log_path = self.run_dir / "logs" / f"{name}.log"
        env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "carbonedge.cli", *args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # Ctrl-C reaches us; we stop them in order
                preexec_fn=cgroup.preexec_fn() if cgroup else None,
            )
        self.state.processes.append(
            ProcessRecord(name=name, pid=proc.pid, log=str(log_path),
                          cgroup=f"{cgroup.parent}/{cgroup.name}" if cgroup else None))
        log.info("started %s (pid %d%s)", name, proc.pid,
                 f", cgroup {cgroup.name}" if cgroup else ", unconstrained")

    def restart_agent(self, node_id: str) -> None:
        """Start ``node_id``'s agent again after it died (same cgroup, same arguments)."""
        self.state.processes = [p for p in self.state.processes if p.name != node_id]
        self._start_agent(node_id)
        self.state.save(self.run_dir / STATE_FILE)

    def wait_ready(self, timeout_s: float) -> None:
        """Block until every agent's heartbeat and the dispatcher's beat are visible."""
        wait_until_ready(self.settings.redis_url, self.node_ids, timeout_s,
                         check_started=self._check_started, carbon_service=self.carbon_service)

    def _check_started(self) -> None:
        for rec in self.state.processes:
            if not process_alive(rec.pid):
                raise RuntimeUnavailable(
                    f"{rec.name} exited during start-up; its log ends:\n{_tail(rec.log)}")

    # -- down --------------------------------------------------------------------------

    def down(self, *, grace_s: float = 10.0) -> None:
        """Stop agents, then the dispatcher, remove cgroups and stop a Redis we started."""
        stop_processes(self.state, grace_s)
        (self.run_dir / STATE_FILE).unlink(missing_ok=True)

    @classmethod
    def down_recorded(cls, run_dir: str | Path, grace_s: float = 10.0) -> RuntimeState | None:
        """Stop what a previous ``up`` recorded in ``run_dir`` (for ``carbonedge down``)."""
        path = Path(run_dir).resolve() / STATE_FILE
        if not path.exists():
            return None
        state = RuntimeState.read(path)
        stop_processes(state, grace_s)
        path.unlink(missing_ok=True)
        return state

    def __enter__(self) -> LocalRuntime:
        self.up()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.down()


def stop_processes(state: RuntimeState, grace_s: float) -> None:
    """SIGTERM every recorded process (agents first), SIGKILL stragglers, clean up."""
    services = ("dispatcher", "carbon")  # after the agents: the ledger must be drained
    agents = [p for p in state.processes if p.name not in services]
    others = [p for p in state.processes if p.name in services]
    for group in (agents, others):
        for rec in group:
            _signal(rec.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for rec in group:
            while process_alive(rec.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if process_alive(rec.pid):
                log.warning("%s did not stop in %.0f s; killing it", rec.name, grace_s)
                _signal(rec.pid, signal.SIGKILL)
        for rec in group:
            _reap(rec.pid)
            if rec.cgroup:
                try:
                    parent, _, name = rec.cgroup.rpartition("/")
                    NodeCgroup.attach(name, parent or DEFAULT_PARENT).remove()
                except CarbonEdgeError as e:
                    log.warning("could not remove cgroup %s: %s", rec.cgroup, e)
    state.processes.clear()
    if state.redis_pid:
        stop_pid(state.redis_pid)
        state.redis_pid = None


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone; our own children are reaped)."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie we cannot reap (not our child) counts as dead
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _tail(path: str, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
