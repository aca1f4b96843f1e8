"""The topology, read from the compose file: one service per node class.

A node service has ``cpus``, ``mem_limit`` and an ``x-carbonedge`` block::

    node-green:
      cpus: 0.4
      mem_limit: 512m
      x-carbonedge: {role: node, carbon_intensity: 380, pue: 1.0}
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from carbonedge.errors import ConfigError, UnknownNode
from carbonedge.protocol.telemetry import valid_node_id

COMPOSE_RELATIVE = Path("compose") / "docker-compose.yml"
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node class as the compose file declares it."""

    name: str
    cpus: float
    mem_limit_bytes: int
    carbon_intensity: float
    pue: float = 1.0
    intensity_source: str = "static"
    replicas: int = 1

    def node_ids(self, replicas: int | None = None) -> list[str]:
        """Ids of the agents of this class: the class name alone, or ``name-1..n``."""
        n = self.replicas if replicas is None else replicas
        return [self.name] if n == 1 else [f"{self.name}-{i}" for i in range(1, n + 1)]


@dataclass(frozen=True, slots=True)
class Topology:
    nodes: tuple[NodeSpec, ...]
    source: Path
    version: str

    def node(self, name: str) -> NodeSpec:
        """The node class called ``name`` (or the class of a scaled id like ``node-green-2``)."""
        for spec in self.nodes:
            if spec.name == name:
                return spec
        base = re.sub(r"-\d+$", "", name)
        for spec in self.nodes:
            if spec.name == base:
                return spec
        raise UnknownNode(
            f"unknown node {name!r}; the topology in {self.source} has "
            f"{[n.name for n in self.nodes]}",
            field="node",
        )

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]


def find_compose_file(explicit: str | Path | None = None) -> Path:
    """The compose file: explicit path, else ``compose/docker-compose.yml`` of the checkout."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"compose file not found: {path}")
        return path
    candidates = [Path.cwd() / COMPOSE_RELATIVE, Path(__file__).resolve().parents[2] / COMPOSE_RELATIVE]
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(
        "no compose file given and none found at " + " or ".join(str(c) for c in candidates)
    )


def load_topology(path: str | Path | None = None) -> Topology:
    """Read and validate the node services of a compose file."""
    source = find_compose_file(path)
    raw = source.read_bytes()
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {e}") from e
    services = (doc or {}).get("services")
    if not isinstance(services, dict):
        raise ConfigError(f"{source} has no 'services' map")
    nodes = tuple(
        _node_spec(name, svc, source)
        for name, svc in services.items()
        if isinstance(svc, dict) and (svc.get("x-carbonedge") or {}).get("role") == "node"
    )
    if not nodes:
        raise ConfigError(f"{source} declares no node service (x-carbonedge: {{role: node}})")
    return Topology(nodes=nodes, source=source, version=hashlib.sha256(raw).hexdigest()[:12])


def parse_bytes(value: Any, where: str) -> int:
    """Compose byte values: ``512m``, ``1g``, ``1073741824``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"{where}: {value!r} is not a size like 512m or 1g")
    size = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if size <= 0:
        raise ConfigError(f"{where}: size must be positive")
    return size


def _node_spec(name: str, svc: dict[str, Any], source: Path) -> NodeSpec:
    where = f"{source}: service {name}"
    if not valid_node_id(name):
        raise ConfigError(f"{where}: name must be letters, digits, '.', '_' or '-'")
    ext = svc["x-carbonedge"]
    try:
        cpus = float(svc.get("cpus", 0))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: cpus {svc.get('cpus')!r} is not a number") from e
    if not cpus > 0:
        raise ConfigError(f"{where}: a node needs cpus > 0")
    if "mem_limit" not in svc:
        raise ConfigError(f"{where}: a node needs mem_limit")
    intensity = ext.get("carbon_intensity")
    if isinstance(intensity, dict):
        if intensity.get("provider", "static") != "static":
            raise ConfigError(f"{where}: only static carbon intensity is supported here")
        intensity = intensity.get("value")
    try:
        ci = float(intensity)
        pue = float(ext.get("pue", 1.0))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: carbon_intensity and pue must be numbers") from e
    if ci < 0 or pue < 1.0:
        raise ConfigError(f"{where}: carbon_intensity must be >= 0 and pue >= 1.0")
    replicas = int((svc.get("deploy") or {}).get("replicas", 1))
    return NodeSpec(
        name=name,
        cpus=cpus,
        mem_limit_bytes=parse_bytes(svc["mem_limit"], f"{where} mem_limit"),
        carbon_intensity=ci,
        pue=pue,
        replicas=max(replicas, 1),
    )
