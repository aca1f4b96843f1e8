"""Running the topology as Docker containers through the Docker SDK (`up --runtime docker`).

The same services as :class:`~carbonedge.compose.local_runner.LocalRuntime`, brought up and
down by the same :class:`~carbonedge.compose.base.TopologyRuntime` (Redis, the node
allow-list, exported models, the carbon service if asked, the dispatcher, the agents,
readiness), with each agent in a container limited by ``nano_cpus`` and ``mem_limit`` (swap
included) instead of a cgroup of our own making. Containers share the host's network, so
the Redis URL means the same inside and out; they get the same settings as local processes,
the compose file mounted read-only, and the run dir and export store at their host paths.
Every container carries the project label, which is what ``down`` (this process or
another) stops: no container of anyone else is touched.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Unpack

from carbonedge.compose.base import RuntimeOptions, TopologyRuntime
from carbonedge.compose.processes import SERVICES, ProcessSpec
from carbonedge.compose.redis_server import stop_pid
from carbonedge.compose.topology import Topology
from carbonedge.errors import RuntimeUnavailable
from carbonedge.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "carbonedge:latest"
PROJECT_LABEL = "org.carbonedge.project"
NODE_LABEL = "org.carbonedge.node"
STATE_FILE = "docker-state.json"
TOPOLOGY_IN_CONTAINER = "/etc/carbonedge/docker-compose.yml"
NANO = 1_000_000_000


def docker_client() -> Any:
    """A Docker SDK client from the environment, or RuntimeUnavailable saying why not."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError as e:
        raise RuntimeUnavailable("the `docker` package is not installed") from e
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except DockerException as e:
        raise RuntimeUnavailable(f"no Docker engine answers (is dockerd running?): {e}") from e
    return client


class DockerRuntime(TopologyRuntime):
    """The topology as containers (see :class:`TopologyRuntime` for what every runtime
    does): each service a container of ``image`` on the host's network, an agent's limited
    by its service's ``nano_cpus`` and ``mem_limit``."""

    STATE_FILE = STATE_FILE
    READY_POLL_S = 0.25

    def __init__(self, topology: Topology, settings: Settings, *, image: str = DEFAULT_IMAGE,
                 project: str = "carbonedge", volumes: dict[str, dict[str, str]] | None = None,
                 environment: dict[str, str] | None = None, client: Any = None,
                 **options: Unpack[RuntimeOptions]) -> None:
        super().__init__(topology, settings, **options)
        self.image = image
        self.project = project
        self.volumes = dict(volumes or {})
        self.environment = dict(environment or {})
        self.client = client

    @property
    def export_dir(self) -> Path:
        """Exported graphs: made on this host, shared with every container at the same path."""
        return Path(self.settings.export_dir)

    @property
    def compose_in_service(self) -> str:
        return TOPOLOGY_IN_CONTAINER

    # -- how a service runs here: a container ------------------------------------------

    def _check_free(self) -> None:
        self.client = self.client or docker_client()
        if self.containers():
            raise RuntimeUnavailable(f"containers of project {self.project!r} already exist; "
                                     "run `carbonedge down` first")

    def _start(self, specs: Sequence[ProcessSpec]) -> None:
        for spec in specs:
            limits: dict[str, Any] = {}
            if spec.args[:1] == ("agent",):
                node = self.topology.node(spec.name)
                limits = dict(nano_cpus=round(node.cpus * NANO), mem_limit=node.mem_limit_bytes,
                              healthcheck=self._healthcheck(spec.name))
            self._run(spec.name, list(spec.args), **limits)

    def _run(self, name: str, args: list[str], **limits: Any) -> None:
        self.export_dir.mkdir(parents=True, exist_ok=True)
        # the run dir (the carbon service's CSV) and the export store keep their host paths
        volumes = {str(self.topology.source.resolve()): {"bind": TOPOLOGY_IN_CONTAINER,
                                                         "mode": "ro"},
                   str(self.export_dir): {"bind": str(self.export_dir), "mode": "rw"},
                   str(self.run_dir): {"bind": str(self.run_dir), "mode": "rw"},
                   **self.volumes}
        if self.settings.model_dir:
            model_dir = str(Path(self.settings.model_dir).resolve())
            volumes.setdefault(model_dir, {"bind": model_dir, "mode": "ro"})
        # the same settings as a local process gets (the node allow-list among them), with
        # the compose file where the containers see it
        environment = {**self.settings.to_env(),
                       "CARBONEDGE_COMPOSE_FILE": TOPOLOGY_IN_CONTAINER,
                       "PYTHONUNBUFFERED": "1", **self.environment}
        if "mem_limit" in limits:  # swap must not dodge the node's memory limit
            limits["memswap_limit"] = limits["mem_limit"]
        container = self.client.containers.run(
            self.image, ["carbonedge", *args], name=f"{self.project}-{name}", detach=True,
            init=True, network_mode="host", environment=environment, volumes=volumes,
            labels={PROJECT_LABEL: self.project, NODE_LABEL: name}, **limits)
        log.info("started container %s (%s)", container.name, container.short_id)

    def _healthcheck(self, node_id: str) -> dict[str, Any]:
        return {"test": ["CMD", "carbonedge", "agent", "--node", node_id, "--check"],
                "interval": 10 * NANO, "timeout": 10 * NANO, "retries": 3,
                "start_period": 120 * NANO}

    def _check_started(self) -> None:
        for container in self.containers():
            if container.status in ("exited", "dead"):
                tail = container.logs(tail=20).decode(errors="replace")
                raise RuntimeUnavailable(
                    f"container {container.name} exited during start-up; its log ends:\n{tail}")

    def _save_state(self, path: Path) -> None:
        path.write_text(json.dumps({"project": self.project, "redis_pid": self.redis_pid}))

    # -- down --------------------------------------------------------------------------

    def containers(self) -> list[Any]:
        """This project's containers, running or not."""
        return self.client.containers.list(
            all=True, filters={"label": f"{PROJECT_LABEL}={self.project}"})

    def down(self, *, grace_s: int = 10) -> None:
        """Stop agents (they withdraw their heartbeats), then the services; remove them."""
        if self.client is not None:
            containers = self.containers()
            agents = [c for c in containers if c.labels.get(NODE_LABEL) not in SERVICES]
            for group in (agents, [c for c in containers if c not in agents]):
                for container in group:
                    container.stop(timeout=grace_s)
                for container in group:
                    container.remove(force=True)
        if self.redis_pid:
            stop_pid(self.redis_pid)
            self.redis_pid = None
        (self.run_dir / STATE_FILE).unlink(missing_ok=True)

    @classmethod
    def down_recorded(cls, run_dir: str | Path) -> bool:
        """Stop what a previous ``up --runtime docker`` recorded in ``run_dir``."""
        path = Path(run_dir).resolve() / STATE_FILE
        if not path.exists():
            return False
        state = json.loads(path.read_text())
        runtime = cls.__new__(cls)
        runtime.project, runtime.redis_pid = state["project"], state.get("redis_pid")
        runtime.run_dir = Path(run_dir).resolve()
        runtime.client = docker_client()
        runtime.down()
        return True
