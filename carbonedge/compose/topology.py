"""The topology, read from the compose file: one service per node class.

A node service has its limits under ``deploy.resources.limits`` (what Compose v2 and
Swarm both honour; the older service-level ``cpus`` and ``mem_limit`` are read too) and
an ``x-carbonedge`` block::

    node-green:
      deploy:
        resources:
          limits: {cpus: "0.4", memory: 512M}
        placement:
          constraints: ["node.labels.carbonedge.zone.paper-low == true"]
      x-carbonedge: {role: node, zone: paper-low, carbon_intensity: 380, pue: 1.0}

A ``zone`` names the grid zone the class runs in; Swarm must then place it only on hosts
labelled with that zone (the constraint above), so that its intensity is that zone's.

``carbon_intensity`` is a number (gCO2eq/kWh) or a provider mapping, e.g.
``{provider: trace, file: GB_2023_week23, start: 2024-06-03T00:00:00Z, speedup: 60}``
(see :mod:`carbonedge.carbon.intensity`). ``runtime`` is what runs the node's models:
``torch``, ``onnxruntime``, or ``auto`` (the default: ONNX Runtime where every declared
model exports, else torch). The file's top-level ``x-carbonedge: {models: [...]}`` declares
the models every node serves (:mod:`carbonedge.partitioner.catalog`).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from carbonedge.carbon.intensity import create_provider
from carbonedge.carbon.providers import IntensityProvider
from carbonedge.errors import CarbonEdgeError, ConfigError, UnknownNode
from carbonedge.node_agent.backend import AUTO, RUNTIMES
from carbonedge.partitioner.catalog import Catalogue, load_catalogue
from carbonedge.protocol.telemetry import valid_node_id
from carbonedge.settings import Settings, compose_candidates

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node class as the compose file declares it."""

    name: str
    cpus: float
    mem_limit_bytes: int
    intensity: Mapping[str, Any]
    """The node's carbon-intensity provider spec (a plain number becomes ``static``)."""
    pue: float = 1.0
    replicas: int = 1
    zone: str = ""
    """The grid zone its hosts are labelled with (``carbonedge.zone.<zone>``); empty: any."""
    runtime: str = AUTO
    """``torch``, ``onnxruntime`` or ``auto`` (see the module docstring)."""

    def runtime_under(self, settings: Settings) -> str:
        """The runtime this node uses: ``settings.inference_runtime`` overrides the file's."""
        override = settings.inference_runtime
        if override and override not in RUNTIMES:
            raise ConfigError(f"inference_runtime {override!r} must be one of {list(RUNTIMES)}",
                              field="inference_runtime")
        return override or self.runtime

    @property
    def carbon_intensity(self) -> float:
        """The declared intensity of a static node; NaN where a provider decides over time."""
        if self.intensity.get("provider") == "static":
            return float(self.intensity["value"])
        return math.nan

    def intensity_provider(self) -> IntensityProvider:
        return create_provider(self.intensity)

    def node_ids(self, replicas: int | None = None) -> list[str]:
        """Ids of the agents of this class: the class name alone, or ``name-1..n``."""
        n = self.replicas if replicas is None else replicas
        return [self.name] if n == 1 else [f"{self.name}-{i}" for i in range(1, n + 1)]


@dataclass(frozen=True, slots=True)
class Topology:
    nodes: tuple[NodeSpec, ...]
    source: Path
    version: str
    models: Catalogue
    """The models every node serves (the file's top-level ``x-carbonedge.models``)."""

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

    def node_ids(self, scale: Mapping[str, int] | None = None) -> list[str]:
        """Every agent's id, with ``scale`` giving some classes more than one agent;
        an unknown class in ``scale`` raises UnknownNode listing the known ones."""
        scale = scale or {}
        unknown = sorted(set(scale) - set(self.names))
        if unknown:
            self.node(unknown[0])
        return [i for spec in self.nodes for i in spec.node_ids(scale.get(spec.name))]


def find_compose_file(explicit: str | Path | None = None) -> Path:
    """The compose file: explicit path, else ``compose/docker-compose.yml`` of the checkout."""
    path = Settings(compose_file=str(explicit or "")).compose_path()
    if path is None:
        raise ConfigError("no compose file given and none found at "
                          + " or ".join(str(c) for c in compose_candidates()))
    return path


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
    return Topology(nodes=nodes, source=source, version=hashlib.sha256(raw).hexdigest()[:12],
                    models=load_catalogue(source))


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


def _intensity_spec(value: Any, where: str) -> dict[str, Any]:
    """A provider spec from ``carbon_intensity:`` (a number, or a provider mapping),
    checked by building the provider once."""
    if value is None:
        raise ConfigError(f"{where}: x-carbonedge needs carbon_intensity", field="carbon_intensity")
    if isinstance(value, bool):
        raise ConfigError(f"{where}: carbon_intensity {value!r} is not a number or a provider")
    spec: dict[str, Any] = (dict(value) if isinstance(value, Mapping)
                            else {"provider": "static", "value": value})
    if "provider" not in spec and "value" in spec:
        spec["provider"] = "static"
    try:
        create_provider(spec)
    except CarbonEdgeError as e:
        if (e.field or "").endswith("_env"):
            # a credential comes from the agent's environment: the process reading the
            # topology (CLI, dispatcher) need not hold it; the agent fails clearly if unset
            return spec
        raise ConfigError(f"{where}: carbon_intensity: {e.message}", field="carbon_intensity") from e
    return spec


ZONE_LABEL = "carbonedge.zone"
"""Swarm node label prefix: a host in grid zone Z carries ``carbonedge.zone.Z=true``."""


def zone_constraint(zone: str) -> str:
    """The placement constraint that keeps a class on hosts of ``zone``."""
    return f"node.labels.{ZONE_LABEL}.{zone} == true"


def _limit(svc: dict[str, Any], deploy_key: str, legacy_key: str, where: str) -> Any:
    """A limit from ``deploy.resources.limits`` or the service-level key (they must agree)."""
    deploy = svc.get("deploy") or {}
    limits = ((deploy.get("resources") or {}) if isinstance(deploy, dict) else {}).get(
        "limits") or {}
    new, old = limits.get(deploy_key), svc.get(legacy_key)
    if new is not None and old is not None and str(new).lower() != str(old).lower():
        raise ConfigError(f"{where}: deploy.resources.limits.{deploy_key} {new!r} and "
                          f"{legacy_key} {old!r} disagree; keep deploy.resources.limits")
    return new if new is not None else old


def _zone(ext: dict[str, Any], svc: dict[str, Any], where: str) -> str:
    zone = ext.get("zone")
    if zone is None:
        return ""
    if not isinstance(zone, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", zone):
        raise ConfigError(f"{where}: zone {zone!r} must be letters, digits, '.', '_' or '-'",
                          field="zone")
    constraints = ((svc.get("deploy") or {}).get("placement") or {}).get("constraints") or []
    wanted = zone_constraint(zone)
    if wanted.replace(" ", "") not in {str(c).replace(" ", "") for c in constraints}:
        raise ConfigError(f"{where}: zone {zone} needs deploy.placement.constraints: "
                          f"[\"{wanted}\"], so that Swarm runs it only on hosts of that zone",
                          field="zone")
    return zone


def _node_spec(name: str, svc: dict[str, Any], source: Path) -> NodeSpec:
    where = f"{source}: service {name}"
    if not valid_node_id(name):
        raise ConfigError(f"{where}: name must be letters, digits, '.', '_' or '-'")
    ext = svc["x-carbonedge"]
    raw_cpus = _limit(svc, "cpus", "cpus", where)
    try:
        cpus = float(raw_cpus or 0)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: cpus {raw_cpus!r} is not a number") from e
    if not cpus > 0:
        raise ConfigError(f"{where}: a node needs deploy.resources.limits.cpus > 0")
    memory = _limit(svc, "memory", "mem_limit", where)
    if memory is None:
        raise ConfigError(f"{where}: a node needs deploy.resources.limits.memory")
    intensity = _intensity_spec(ext.get("carbon_intensity"), where)
    try:
        pue = float(ext.get("pue", 1.0))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: pue must be a number") from e
    if not pue >= 1.0:
        raise ConfigError(f"{where}: pue must be >= 1.0")
    replicas = int((svc.get("deploy") or {}).get("replicas", 1))
    runtime = ext.get("runtime", AUTO)
    if runtime not in (AUTO, *RUNTIMES):
        raise ConfigError(f"{where}: runtime {runtime!r} must be one of "
                          f"{[AUTO, *RUNTIMES]}", field="runtime")
    return NodeSpec(
        name=name,
        cpus=cpus,
        mem_limit_bytes=parse_bytes(memory, f"{where} memory limit"),
        intensity=intensity,
        pue=pue,
        replicas=max(replicas, 1),
        zone=_zone(ext, svc, where),
        runtime=runtime,
    )
