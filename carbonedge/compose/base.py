"""What every runtime of the topology does alike, local processes or containers.

:class:`TopologyRuntime` brings the same services up in the same order and takes them down
again: it refuses to start over a recorded runtime, checks the host grid the carbon
service prices with, makes the dispatcher believe this runtime's nodes only (the node
allow-list, unless one is set), makes sure Redis answers (starting one it then owns),
forgets a previous run's in-flight counts, exports the declared models where a node runs
ONNX Runtime, starts the carbon service (if asked), the dispatcher and one agent per node
id, and waits until every heartbeat, the dispatcher's beat and the carbon service's host
reading are visible. A failure anywhere tears down what was started. Subclasses say only
how a service runs: :class:`~carbonedge.compose.local_runner.LocalRuntime` as a process in
its cgroup, :class:`~carbonedge.compose.docker_runner.DockerRuntime` as a container.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, TypedDict, Unpack

from carbonedge.carbon.codecarbon_adapter import check_host_grid
from carbonedge.compose.processes import ProcessSpec
from carbonedge.compose.readiness import clear_stale_in_flight, export_models, wait_until_ready
from carbonedge.compose.redis_server import ensure_redis
from carbonedge.compose.topology import Topology
from carbonedge.errors import RuntimeUnavailable
from carbonedge.settings import Settings

__all__ = ["RuntimeOptions", "TopologyRuntime"]

log = logging.getLogger(__name__)


class RuntimeOptions(TypedDict, total=False):
    """What every runtime takes besides the topology and the settings."""

    scale: dict[str, int] | None
    """Agents per node class (``node-green=3``: node-green-1 .. -3)."""
    preload: tuple[str, ...]
    """Models every agent must serve (each is checked against the declared ones)."""
    run_dir: str | Path | None
    """State, logs, exported graphs and the emissions CSV (default: the settings')."""
    dispatcher_args: tuple[str, ...]
    """Extra `carbonedge dispatcher` options, e.g. ``("--metrics-port", "9808")``."""
    carbon_service: bool
    """Also run `carbonedge carbon` (the host tracker, ledger and reconciliation)."""


class TopologyRuntime(ABC):
    """The topology's services, brought up and down alike whatever runs them; a context
    manager that always tears down."""

    STATE_FILE: ClassVar[str]
    """The file under the run dir that records a started runtime (for `carbonedge down`)."""
    READY_POLL_S: ClassVar[float] = 0.1

    def __init__(self, topology: Topology, settings: Settings,
                 **options: Unpack[RuntimeOptions]) -> None:
        self.topology = topology
        self.scale = options.get("scale") or {}
        self.preload = options.get("preload", ())
        self.dispatcher_args = options.get("dispatcher_args", ())
        self.carbon_service = options.get("carbon_service", False)
        self.run_dir = Path(options.get("run_dir") or settings.run_dir).resolve()
        # every service reads the same compose file (the dispatcher its declared models) and
        # the agents share one store of exported graphs
        self.settings = settings.replace(
            compose_file=str(topology.source.resolve()),
            export_dir=str(Path(settings.export_dir).resolve() if settings.export_dir
                           else self.run_dir / "models"))
        topology.node_ids(self.scale)  # an unknown class fails here, naming the known ones

    @property
    def node_ids(self) -> list[str]:
        return self.topology.node_ids(self.scale)

    @property
    def emissions_csv(self) -> Path:
        """Where the carbon service (if run) writes its emissions CSV."""
        return Path(self.settings.carbon_csv) if self.settings.carbon_csv \
            else self.run_dir / "emissions.csv"

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    # -- up ----------------------------------------------------------------------------

    def up(self, *, wait_s: float = 120.0) -> None:
        """Start Redis if needed, the carbon service (if asked), the dispatcher and every
        agent; wait until all of them are visible in Redis."""
        state_path = self.run_dir / self.STATE_FILE
        if state_path.exists():
            raise RuntimeUnavailable(
                f"a runtime is already recorded in {state_path}; run `carbonedge down` first")
        self._check_free()
        if self.carbon_service:  # a host grid CodeCarbon has no data for stops start-up
            check_host_grid(self.settings.host_country, self.settings.host_region)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        if not self.settings.node_allowlist:  # the dispatcher believes our nodes only
            self.settings = self.settings.replace(node_allowlist=",".join(self.node_ids))
        try:
            owned = ensure_redis(self.settings.redis_url, self.run_dir)
            self.redis_pid = owned.pid if owned else None
            self._save_state(state_path)  # from here on, `carbonedge down` finds it
            clear_stale_in_flight(self.settings.redis_url)
            self._prepare()
            export_models(self.topology, self.node_ids, self.settings,
                          self.logs_dir / "export.log")
            self._start(self.services())
            self._save_state(state_path)
            self.wait_ready(wait_s)
        except BaseException:
            self.down()
            raise

    def services(self) -> list[ProcessSpec]:
        """The carbon service (if asked), the dispatcher, then the agents, in start order."""
        specs = []
        if self.carbon_service:
            specs.append(ProcessSpec("carbon", ("carbon", "--csv", str(self.emissions_csv))))
        specs.append(ProcessSpec("dispatcher", ("dispatcher", *self.dispatcher_args)))
        specs += [ProcessSpec(node_id, self.agent_args(node_id)) for node_id in self.node_ids]
        return specs

    def agent_args(self, node_id: str) -> tuple[str, ...]:
        """`carbonedge agent` arguments of ``node_id``, with the compose file as the agent
        sees it."""
        args = ["agent", "--node", node_id, "--compose", self.compose_in_service]
        for name in self.preload:
            args += ["--preload", name]
        return tuple(args)

    @property
    def compose_in_service(self) -> str:
        """The compose file's path as a service sees it."""
        return str(self.topology.source.resolve())

    def wait_ready(self, timeout_s: float) -> None:
        """Block until every agent's heartbeat, the dispatcher's beat and (if run) the
        carbon service's host reading are visible."""
        wait_until_ready(self.settings.redis_url, self.node_ids, timeout_s,
                         check_started=self._check_started, carbon_service=self.carbon_service,
                         host_id=self.settings.host_id, poll_s=self.READY_POLL_S)

    # -- what each runtime does its own way ----------------------------------------------

    redis_pid: int | None = None
    """The Redis this runtime started (and stops on ``down``), if it started one."""

    def _check_free(self) -> None:  # noqa: B027 (an optional hook)
        """Raise if this runtime's services already run (beyond the recorded state)."""

    def _prepare(self) -> None:  # noqa: B027 (an optional hook)
        """Anything the services need before they start (cgroups, an engine)."""

    @abstractmethod
    def _start(self, specs: Sequence[ProcessSpec]) -> None:
        """Start every service of ``specs``, in order."""

    @abstractmethod
    def _save_state(self, path: Path) -> None:
        """Record what was started in ``path`` (for `carbonedge down` in another process)."""

    @abstractmethod
    def _check_started(self) -> None:
        """Raise, naming it, if a service died during start-up."""

    @abstractmethod
    def down(self) -> None:
        """Stop the agents (they withdraw their heartbeats), then the services; remove what
        was created for them; stop a Redis this runtime started; forget the state."""

    def __enter__(self) -> Any:
        self.up()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.down()
