"""The Kubernetes manifests, validated offline: core objects against Kubernetes' own
OpenAPI schemas (kubernetes-validate, strict), KEDA's objects against a schema written from
KEDA's documentation, and both against the compose file and the CLI they must agree with.
No cluster is involved."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from carbonedge.cli import _parser
from carbonedge.compose.topology import load_topology
from carbonedge.protocol import keys
from carbonedge.transport.allowlist import node_allowed
from tests.unit.keda_schema import SCHEMAS

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "compose" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
"""The oldest release the manifests target (the pod-index label needs 1.28 or later)."""
URL_KEYS = {"producer", "dispatcher", "agent", "monitor"}
_QUANTITY = {"": 1, "m": 1e-3, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}


def _documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


DOCS = _documents()


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in DOCS if d["kind"] == kind}


def _quantity(value: str | int) -> float:
    text = str(value)
    for suffix in sorted(_QUANTITY, key=len, reverse=True):
        if suffix and text.endswith(suffix):
            return float(text[: -len(suffix)]) * _QUANTITY[suffix]
    return float(text)


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["spec"]["template"]["spec"]["containers"]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize(("source", "doc"), [d for d in DOCS if d[1]["apiVersion"] !=
                                             "keda.sh/v1alpha1"],
                         ids=lambda v: v if isinstance(v, str) else v["kind"] + "/" +
                         v["metadata"]["name"])
def test_core_objects_match_the_kubernetes_schema(source: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == "carbonedge"


@pytest.mark.parametrize(("source", "doc"), [d for d in DOCS if d[1]["apiVersion"] ==
                                             "keda.sh/v1alpha1"],
                         ids=lambda v: v if isinstance(v, str) else v["kind"] + "/" +
                         v["metadata"]["name"])
def test_keda_objects_match_keda_documented_fields(source: str, doc: dict[str, Any]) -> None:
    jsonschema.validate(doc, SCHEMAS[doc["kind"]])


def test_the_validators_can_fail() -> None:
    agent = copy.deepcopy(_by_kind("StatefulSet")["node-green"])
    _containers(agent)[0]["resources"]["limits"]["cpu"] = ["0.4"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(agent, KUBERNETES_VERSION, strict=True)
    scaled = copy.deepcopy(_by_kind("ScaledObject")["node-green"])
    del scaled["spec"]["triggers"][0]["metadata"]["listName"]
    with pytest.raises(jsonschema.ValidationError, match="listName"):
        jsonschema.validate(scaled, SCHEMAS["ScaledObject"])
    scaled = copy.deepcopy(_by_kind("ScaledObject")["node-green"])
    scaled["spec"]["triggers"][0]["metadata"]["listLenght"] = "4"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, SCHEMAS["ScaledObject"])


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    files = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_one_statefulset_per_node_class_as_the_compose_file_declares_it() -> None:
    topology = load_topology(ROOT / "compose" / "docker-compose.yml")
    agents = {n: d for n, d in _by_kind("StatefulSet").items() if n != "redis"}
    assert set(agents) == set(topology.names)
    for name, doc in agents.items():
        spec = topology.node(name)
        pod = doc["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        resources = container["resources"]
        assert resources["requests"] == resources["limits"]  # exactly the emulated device
        assert _quantity(resources["limits"]["cpu"]) == pytest.approx(spec.cpus)
        assert _quantity(resources["limits"]["memory"]) == spec.mem_limit_bytes
        assert pod["nodeSelector"] == {f"carbonedge.zone.{spec.zone}": "true"}
        args = _parser().parse_args(container["args"][1:])
        assert (args.command, args.node, args.instance) == ("agent", name, "$(POD_INDEX)")
        env = _env(container)
        assert env["POD_INDEX"]["fieldRef"]["fieldPath"] == (
            "metadata.labels['apps.kubernetes.io/pod-index']")
        assert env["CARBONEDGE_HOST_ID"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        assert env["CARBONEDGE_REDIS_URL"]["secretKeyRef"]["key"] == "agent"
        assert node_allowed(f"{name}-3", env["CARBONEDGE_NODE_ALLOWLIST"])
        probe = container["livenessProbe"]["exec"]["command"]
        assert "--check" in probe[-1] and f"--node {name}" in probe[-1]


def test_keda_scales_each_class_on_its_queue() -> None:
    agents = _by_kind("StatefulSet")
    auth = _by_kind("TriggerAuthentication")
    redis_service = _by_kind("Service")["redis"]
    redis_port = redis_service["spec"]["ports"][0]["port"]
    scaled = _by_kind("ScaledObject")
    assert set(scaled) == set(agents) - {"redis"}
    for name, doc in scaled.items():
        spec = doc["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                          "name": name}
        assert spec["minReplicaCount"] >= 1  # replica 0's queue is the signal
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "redis" and trigger["metricType"] == "Value"
        meta = trigger["metadata"]
        assert meta["listName"] == keys.node_queue(f"{name}-0")
        assert meta["address"] == (f"{redis_service['metadata']['name']}.carbonedge.svc."
                                   f"cluster.local:{redis_port}")
        assert trigger["authenticationRef"]["name"] in auth
    (auth_doc,) = auth.values()
    params = {ref["parameter"] for ref in auth_doc["spec"]["secretTargetRef"]}
    assert params == {"username", "password", "tls", "ca"}  # TLS, verified with the CA


def test_services_commands_urls_and_prometheus_annotations() -> None:
    workloads = [*_by_kind("Deployment").values(), *_by_kind("DaemonSet").values(),
                 *_by_kind("StatefulSet").values()]
    for doc in workloads:
        for container in _containers(doc):
            env = _env(container)
            if container["args"][0] != "carbonedge":
                continue
            _parser().parse_args(container["args"][1:])  # a command the CLI accepts
            assert env["CARBONEDGE_REDIS_URL"]["secretKeyRef"]["key"] in URL_KEYS
    for kind, name, port in (("Deployment", "dispatcher", "9808"), ("DaemonSet", "carbon",
                                                                    "9809")):
        doc = _by_kind(kind)[name]
        annotations = doc["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == port
        (container,) = _containers(doc)
        args = _parser().parse_args(container["args"][1:])
        assert str(args.metrics_port) == port and args.metrics_address == "0.0.0.0"
        assert container["ports"][0]["containerPort"] == int(port)
    carbon = _env(_containers(_by_kind("DaemonSet")["carbon"])[0])
    assert carbon["CARBONEDGE_HOST_ID"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    dispatcher = _env(_containers(_by_kind("Deployment")["dispatcher"])[0])
    for name in set(_by_kind("StatefulSet")) - {"redis"}:
        assert node_allowed(f"{name}-0", dispatcher["CARBONEDGE_NODE_ALLOWLIST"])
    redis_args = _containers(_by_kind("StatefulSet")["redis"])[0]["args"]
    assert redis_args[redis_args.index("--port") + 1] == "0"  # TLS only
    assert "--aclfile" in redis_args and "--tls-ca-cert-file" in redis_args
