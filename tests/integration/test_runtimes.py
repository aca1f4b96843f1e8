"""Both runtimes in real agents: an ONNX Runtime node in 256 MiB beside a torch node.

node-ort runs onnxruntime in a 256 MiB cgroup, node-torch runs torch; both serve the
paper's three models and ``tiny``, a TorchScript file brought by the compose file. Warm
agents: every model is loaded, warmed up and profiled before a node reports ready.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from carbonedge.cgroups import NodeCgroup
from carbonedge.client import Client
from carbonedge.compose.local_runner import LocalRuntime, process_alive
from carbonedge.errors import InvalidRequest
from carbonedge.partitioner.catalog import DEFAULT_MODELS
from carbonedge.protocol import keys
from carbonedge.protocol.telemetry import Heartbeat
from tests import model_files
from tests.conftest import TEST_REDIS
from tests.integration.conftest import start_runtime

pytestmark = pytest.mark.timeout(600)

URL = f"{TEST_REDIS}/10"
MIB = 1 << 20
NODES = ("node-ort", "node-torch")
MODELS = (*DEFAULT_MODELS, "tiny")
X = np.random.default_rng(4).standard_normal((1, 3, 224, 224)).astype(np.float32)
TINY_X = np.random.default_rng(5).standard_normal((1, *model_files.TINY_SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    tmp: Path = tmp_path_factory.mktemp("runtimes")
    tiny = model_files.torchscript(tmp / "tiny.pt")
    compose = tmp / "compose.yml"
    compose.write_text(f"""
x-carbonedge:
  models:
    - mobilenetv2
    - mobilenetv4
    - efficientnet_b0
    - {{name: tiny, source: "torchscript:{tiny}", input_shape: [3, 32, 32], family: tiny,
       top1: {{value: 10.0, source: "a test model: chance on 10 classes"}}}}
services:
  node-ort:
    cpus: 0.5
    mem_limit: 256m
    x-carbonedge: {{role: node, carbon_intensity: 300, runtime: onnxruntime}}
  node-torch:
    cpus: 0.5
    mem_limit: 1g
    x-carbonedge: {{role: node, carbon_intensity: 300, runtime: torch}}
""")
    rt = start_runtime(tmp, URL, compose)
    yield rt
    rt.down()


@pytest.fixture(scope="module")
def r(runtime: LocalRuntime) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(runtime.settings.redis_url)
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def client(runtime: LocalRuntime) -> Iterator[Client]:
    c = Client(runtime.settings)
    yield c
    c.close()


def _input(model: str) -> np.ndarray:
    return TINY_X if model == "tiny" else X


def test_agents_are_warm_before_they_report_ready(runtime: LocalRuntime, r: redis.Redis) -> None:
    """Before any request: every node's heartbeat has a service time for every model (its
    warm-up's), and the splittable models' block profiles are stored."""
    import time

    for node in NODES:
        beat = Heartbeat.from_fields({k.decode(): v.decode() for k, v in
                                      r.hgetall(keys.node_key(node)).items()}, now=time.time())
        assert beat.tasks_done == 0
        assert set(beat.exec_ms) == set(MODELS), node
        assert all(ms > 0 for ms in beat.exec_ms.values())
        for model in DEFAULT_MODELS:
            assert r.exists(keys.block_profile_key(model, node)), (model, node)
        assert not r.exists(keys.block_profile_key("tiny", node))  # served whole


def test_results_name_their_runtime_and_agree(client: Client) -> None:
    for model in MODELS:
        ort, pt = (client.submit(model, _input(model), node=n).result(120) for n in NODES)
        assert (ort.runtime, pt.runtime) == ("onnxruntime", "torch")
        assert ort.model == pt.model == model
        assert [i for i, _ in ort.top5] == [i for i, _ in pt.top5], model
        np.testing.assert_allclose([p for _, p in ort.top5], [p for _, p in pt.top5],
                                   rtol=1e-4, atol=1e-6)


def test_onnxruntime_agent_fits_256_mib_without_torch(runtime: LocalRuntime,
                                                      client: Client) -> None:
    procs = {p.name: p for p in runtime.state.processes}
    maps = {n: Path(f"/proc/{procs[n].pid}/maps").read_text() for n in NODES}
    assert "libtorch" not in maps["node-ort"]
    assert "libtorch" in maps["node-torch"]  # the check sees torch where it is loaded
    for model in MODELS:
        for _ in range(5):
            assert client.submit(model, _input(model), node="node-ort").result(120).node == \
                "node-ort"
    # a route across both runtimes: node-ort also loads the blocks it runs
    split = client.submit("efficientnet_b0", X, route=[("node-ort", 0, 12),
                                                       ("node-torch", 12, 22)]).result(120)
    assert [s.runtime for s in split.segments] == ["onnxruntime", "torch"]
    assert process_alive(procs["node-ort"].pid)
    if not runtime.state.constrained:
        pytest.skip("agents run without cgroups here: no memory limit to fit in")
    parent, _, name = procs["node-ort"].cgroup.rpartition("/")
    memory = NodeCgroup.attach(name, parent).dirs["memory"]
    limit = int((memory / "memory.limit_in_bytes").read_text())
    peak = int((memory / "memory.max_usage_in_bytes").read_text())
    oom = (memory / "memory.oom_control").read_text()
    print(f"node-ort: limit {limit / MIB:.0f} MiB, peak charge {peak / MIB:.0f} MiB | {oom!r}")
    assert limit == 256 * MIB
    assert "oom_kill 0" in oom


def test_carbon_aware_model_choice(client: Client) -> None:
    best = client.submit(None, X, min_accuracy=75.0).result(120)
    assert best.model == "efficientnet_b0"  # the only model over 75% top-1
    choice = best.decision["model_choice"]
    assert (choice["model"], choice["node"]) == (best.model, best.node)
    assert choice["candidates"][0]["model"] == "efficientnet_b0"
    mobile = client.submit(None, X, family="mobilenet", latency_slo_ms=5000).result(120)
    assert mobile.model in ("mobilenetv2", "mobilenetv4")
    assert {c["model"] for c in mobile.decision["model_choice"]["candidates"]} == {
        "mobilenetv2", "mobilenetv4"}
    assert client.submit(None, TINY_X, family="tiny").result(120).model == "tiny"
    with pytest.raises(InvalidRequest, match="reaches 99%") as info:
        client.submit(None, X, min_accuracy=99.0).result(120)
    assert info.value.field == "min_accuracy"
