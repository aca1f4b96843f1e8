"""Running the topology as Docker containers through the Docker SDK (`up --runtime docker`).

The same topology as :class:`~carbonedge.compose.local_runner.LocalRuntime`, with each agent
in a container limited by ``nano_cpus`` and ``mem_limit`` (swap included) instead of a
cgroup of our own making. Containers share the host's network, so the Redis URL means the
same inside and out, and ``up`` starts a Redis on the host when none answers, as the local
runtime does. Every container carries the project label, which is what ``down`` (this
process or another) stops: no container of anyone else is touched.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from carbonedge.compose.readiness import clear_stale_in_flight, export_models, wait_until_ready
from carbonedge.compose.redis_server import ensure_redis, stop_pid
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


class DockerRuntime:
    """The topology as containers; a context manager that always tears down."""

    def __init__(
        self,
        topology: Topology,
        settings: Settings,
        *,
        scale: dict[str, int] | None = None,
        preload: tuple[str, ...] = (),
        image: str = DEFAULT_IMAGE,
        project: str = "carbonedge",
        volumes: dict[str, dict[str, str]] | None = None,
        environment: dict[str, str] | None = None,
        run_dir: str | Path | None = None,
        client: Any = None,
    ) -> None:
        self.topology = topology
        self.settings = settings
        self.scale = scale or {}
        self.preload = preload
        self.image = image
        self.project = project
        self.volumes = dict(volumes or {})
        self.environment = dict(environment or {})
        self.run_dir = Path(run_dir or settings.run_dir).resolve()
        # exported graphs: made on this host, shared with every container at the same path
        self.export_dir = (Path(settings.export_dir).resolve() if settings.export_dir
                           else self.run_dir / "models")
        self.client = client
        self.redis_pid: int | None = None
        topology.node_ids(self.scale)  # an unknown class fails here, naming the known ones

    @property
    def node_ids(self) -> list[str]:
        return self.topology.node_ids(self.scale)

    # -- up ----------------------------------------------------------------------------

    def up(self, *, wait_s: float = 180.0) -> None:
        """Start Redis if needed, a dispatcher container and one container per agent."""
        state_path = self.run_dir / STATE_FILE
        if state_path.exists():
            raise RuntimeUnavailable(
                f"a docker runtime is already recorded in {state_path}; run `carbonedge down`")
        self.client = self.client or docker_client()
        if self.containers():
            raise RuntimeUnavailable(f"containers of project {self.project!r} already exist; "
                                     "run `carbonedge down` first")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            owned = ensure_redis(self.settings.redis_url, self.run_dir)
            self.redis_pid = owned.pid if owned else None
            self._write_state(state_path)
            clear_stale_in_flight(self.settings.redis_url)
            export_models(self.topology, self.node_ids,
                          self.settings.replace(export_dir=str(self.export_dir)),
                          self.run_dir / "export.log")
            self._run("dispatcher", ["dispatcher"])
            for node_id in self.node_ids:
                spec = self.topology.node(node_id)
                args = ["agent", "--node", node_id]
                for name in self.preload:
                    args += ["--preload", name]
                self._run(node_id, args, nano_cpus=round(spec.cpus * NANO),
                          mem_limit=spec.mem_limit_bytes,
                          healthcheck=self._healthcheck(node_id))
            self.wait_ready(wait_s)
        except BaseException:
            self.down()
            raise

    def _run(self, name: str, args: list[str], **limits: Any) -> None:
        self.export_dir.mkdir(parents=True, exist_ok=True)
        volumes = {str(self.topology.source.resolve()): {"bind": TOPOLOGY_IN_CONTAINER,
                                                         "mode": "ro"},
                   str(self.export_dir): {"bind": str(self.export_dir), "mode": "rw"},
                   **self.volumes}
        environment = {"CARBONEDGE_REDIS_URL": self.settings.redis_url,
                       "CARBONEDGE_COMPOSE_FILE": TOPOLOGY_IN_CONTAINER,
                       "CARBONEDGE_EXPORT_DIR": str(self.export_dir),
                       "CARBONEDGE_HEARTBEAT_INTERVAL_S": str(self.settings.heartbeat_interval_s),
                       "CARBONEDGE_HEARTBEAT_MISSED_BEATS": str(self.settings.heartbeat_missed_beats),
                       # the dispatcher believes heartbeats of this runtime's nodes only
                       "CARBONEDGE_NODE_ALLOWLIST": (self.settings.node_allowlist
                                                     or ",".join(self.node_ids)),
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

    def wait_ready(self, timeout_s: float) -> None:
        """Block until every agent's heartbeat and the dispatcher's beat are visible."""
        wait_until_ready(self.settings.redis_url, self.node_ids, timeout_s,
                         check_started=self._check_started, poll_s=0.25)

    def _check_started(self) -> None:
        for container in self.containers():
            if container.status in ("exited", "dead"):
                tail = container.logs(tail=20).decode(errors="replace")
                raise RuntimeUnavailable(
                    f"container {container.name} exited during start-up; its log ends:\n{tail}")

    def _write_state(self, path: Path) -> None:
        path.write_text(json.dumps({"project": self.project, "redis_pid": self.redis_pid}))

    # -- down --------------------------------------------------------------------------

    def containers(self) -> list[Any]:
        """This project's containers, running or not."""
        return self.client.containers.list(
            all=True, filters={"label": f"{PROJECT_LABEL}={self.project}"})

    def down(self, *, grace_s: int = 10) -> None:
        """Stop agents (they withdraw their heartbeats), then the dispatcher; remove them."""
        if self.client is not None:
            containers = self.containers()
            agents = [c for c in containers if c.labels.get(NODE_LABEL) != "dispatcher"]
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

    def __enter__(self) -> DockerRuntime:
        self.up()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.down()
