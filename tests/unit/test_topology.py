from __future__ import annotations

from pathlib import Path

import pytest

from carbonedge.compose.topology import load_topology, parse_bytes
from carbonedge.errors import ConfigError, UnknownNode


def test_default_topology_is_the_papers_three_nodes() -> None:
    topo = load_topology()
    got = {n.name: (n.cpus, n.mem_limit_bytes >> 20, n.carbon_intensity) for n in topo.nodes}
    assert got == {"node-high": (1.0, 1024, 620.0), "node-medium": (0.6, 512, 530.0),
                   "node-green": (0.4, 512, 380.0)}
    assert topo.node("node-green-2").name == "node-green"
    assert len(topo.version) == 12


def test_unknown_node_lists_known_ones() -> None:
    with pytest.raises(UnknownNode, match="node-high"):
        load_topology().node("node-purple")


@pytest.mark.parametrize(("value", "expected"), [("512m", 512 << 20), ("1g", 1 << 30),
                                                 ("1GiB", 1 << 30), (4096, 4096), ("1.5g", 3 << 29)])
def test_sizes(value: object, expected: int) -> None:
    assert parse_bytes(value, "x") == expected


@pytest.mark.parametrize("value", ["lots", "-1m", "0", "12q", True])
def test_bad_sizes(value: object) -> None:
    with pytest.raises(ConfigError):
        parse_bytes(value, "x")


@pytest.mark.parametrize(
    ("service", "match"),
    [
        ("cpus: 0\n    mem_limit: 1g", "cpus > 0"),
        ("cpus: 1", "needs mem_limit"),
        ("cpus: fast\n    mem_limit: 1g", "not a number"),
    ],
)
def test_bad_node_services(tmp_path: Path, service: str, match: str) -> None:
    f = tmp_path / "c.yml"
    f.write_text(f"services:\n  n1:\n    {service}\n    x-carbonedge: {{role: node, "
                 "carbon_intensity: 100}\n")
    with pytest.raises(ConfigError, match=match):
        load_topology(f)


def test_no_nodes_and_bad_yaml(tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    f.write_text("services:\n  redis:\n    image: redis\n")
    with pytest.raises(ConfigError, match="no node service"):
        load_topology(f)
    f.write_text("services: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_topology(f)
    with pytest.raises(ConfigError, match="not found"):
        load_topology(tmp_path / "missing.yml")


def test_replicas_give_numbered_ids(tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    f.write_text("services:\n  g:\n    cpus: 0.2\n    mem_limit: 256m\n    deploy: {replicas: 3}\n"
                 "    x-carbonedge: {role: node, carbon_intensity: {provider: static, value: 50}}\n")
    spec = load_topology(f).node("g")
    assert spec.node_ids() == ["g-1", "g-2", "g-3"] and spec.carbon_intensity == 50
