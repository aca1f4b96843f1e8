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
        ("cpus: 1", "needs deploy.resources.limits.memory"),
        ("cpus: fast\n    mem_limit: 1g", "not a number"),
    ],
)
def test_bad_node_services(tmp_path: Path, service: str, match: str) -> None:
    f = tmp_path / "c.yml"
    f.write_text(f"services:\n  n1:\n    {service}\n    x-carbonedge: {{role: node, "
                 "carbon_intensity: 100}\n")
    with pytest.raises(ConfigError, match=match):
        load_topology(f)


def test_limits_under_deploy_resources_as_compose_v2_and_swarm_read_them(
        tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    f.write_text("services:\n  n1:\n    deploy: {resources: {limits: {cpus: '0.4', "
                 "memory: 512M}}}\n    x-carbonedge: {role: node, carbon_intensity: 100}\n"
                 "  n2:\n    cpus: 0.5\n    mem_limit: 1g\n    deploy: {resources: {limits: "
                 "{cpus: '0.5', memory: 1g}}}\n"
                 "    x-carbonedge: {role: node, carbon_intensity: 100}\n")
    got = {n.name: (n.cpus, n.mem_limit_bytes) for n in load_topology(f).nodes}
    assert got == {"n1": (0.4, 512 << 20), "n2": (0.5, 1 << 30)}
    f.write_text("services:\n  n1:\n    cpus: 0.5\n    deploy: {resources: {limits: "
                 "{cpus: '0.4', memory: 1g}}}\n    x-carbonedge: {role: node, "
                 "carbon_intensity: 100}\n")
    with pytest.raises(ConfigError, match="disagree"):
        load_topology(f)


def test_a_zone_needs_the_matching_placement_constraint(tmp_path: Path) -> None:
    assert {n.zone for n in load_topology().nodes} == {"paper-high", "paper-average",
                                                       "paper-low"}
    f = tmp_path / "c.yml"
    limits = "deploy: {resources: {limits: {cpus: '0.4', memory: 512M}}"
    f.write_text(f"services:\n  n1:\n    {limits}}}\n"
                 "    x-carbonedge: {role: node, zone: FR, carbon_intensity: 60}\n")
    with pytest.raises(ConfigError, match=r"node.labels.carbonedge.zone.FR == true") as info:
        load_topology(f)
    assert info.value.field == "zone"
    f.write_text(f"services:\n  n1:\n    {limits}, placement: {{constraints: "
                 "['node.labels.carbonedge.zone.FR==true']}}\n"
                 "    x-carbonedge: {role: node, zone: FR, carbon_intensity: 60}\n")
    assert load_topology(f).node("n1").zone == "FR"
    f.write_text(f"services:\n  n1:\n    {limits}}}\n"
                 "    x-carbonedge: {role: node, zone: 'F R', carbon_intensity: 60}\n")
    with pytest.raises(ConfigError, match="letters, digits"):
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


def _one_node(tmp_path: Path, intensity: str) -> Path:
    f = tmp_path / "c.yml"
    f.write_text("services:\n  n1:\n    cpus: 1\n    mem_limit: 1g\n"
                 f"    x-carbonedge:\n      role: node\n      carbon_intensity: {intensity}\n")
    return f


def test_a_node_may_take_its_intensity_from_a_provider(tmp_path: Path) -> None:
    import math
    from datetime import UTC, datetime

    spec = load_topology(_one_node(
        tmp_path, "{provider: trace, file: GB_2023_week23, start: '2024-01-01T00:00:00Z', "
                  "speedup: 60}")).nodes[0]
    assert spec.intensity["provider"] == "trace" and math.isnan(spec.carbon_intensity)
    reading = spec.intensity_provider().intensity_at(datetime.now(UTC))
    assert reading.source == "trace:GB_2023_week23" and reading.value.g_per_kwh > 0
    static = load_topology(_one_node(tmp_path, "{value: 250}")).nodes[0]
    assert static.intensity == {"provider": "static", "value": 250}
    assert static.carbon_intensity == 250.0


@pytest.mark.parametrize(("intensity", "match"), [
    ("{provider: sunshine}", "sunshine"),
    ("{provider: trace, file: nowhere}", "start"),
    ("-5", "non-negative"),
    ("true", "not a number"),
])
def test_bad_intensity_specs_are_refused_at_load(tmp_path: Path, intensity: str,
                                                 match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_topology(_one_node(tmp_path, intensity))


def test_a_credential_from_the_agents_environment_need_not_be_set_to_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CE_TEST_EMAPS_TOKEN", raising=False)
    spec = load_topology(_one_node(
        tmp_path, "{provider: electricitymaps, zone: FR, token_env: CE_TEST_EMAPS_TOKEN}")).nodes[0]
    assert spec.intensity["zone"] == "FR"
    with pytest.raises(ConfigError, match="CE_TEST_EMAPS_TOKEN"):
        spec.intensity_provider()


def test_runtime_per_node_and_its_override(tmp_path: Path) -> None:
    from carbonedge.settings import Settings

    compose = tmp_path / "compose.yml"
    compose.write_text("services:\n"
                       "  a: {cpus: 1, mem_limit: 1g, x-carbonedge: {role: node, "
                       "carbon_intensity: 1, runtime: torch}}\n"
                       "  b: {cpus: 1, mem_limit: 1g, x-carbonedge: {role: node, "
                       "carbon_intensity: 1}}\n")
    topo = load_topology(compose)
    assert (topo.node("a").runtime, topo.node("b").runtime) == ("torch", "auto")
    forced = Settings(inference_runtime="onnxruntime")
    assert topo.node("a").runtime_under(forced) == "onnxruntime"
    assert topo.node("b").runtime_under(Settings()) == "auto"
    with pytest.raises(ConfigError) as info:
        topo.node("a").runtime_under(Settings(inference_runtime="tensorflow"))
    assert info.value.field == "inference_runtime"
    compose.write_text("services:\n  a: {cpus: 1, mem_limit: 1g, x-carbonedge: {role: node, "
                       "carbon_intensity: 1, runtime: tvm}}\n")
    with pytest.raises(ConfigError, match="runtime 'tvm'") as info:
        load_topology(compose)
    assert info.value.field == "runtime"
