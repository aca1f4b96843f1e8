"""Partitioned inference across real agents: split outputs equal the whole model's.

Three nodes with 1 GiB each, on a database of their own: part-a runs torch (every model
loaded: about 650 MiB resident, over the 512 MiB of the paper's smaller nodes), part-b and
part-c ONNX Runtime, so routes cross runtimes. Outputs agree with in-process torch within
1e-4 (absolute, and relative to the logits' magnitude).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest
import redis
import torch

from carbonedge.client import Client
from carbonedge.client.images import preprocess_image
from carbonedge.compose.local_runner import LocalRuntime
from carbonedge.errors import InferenceFailed, InvalidRequest, InvalidTensor, NoNodeAvailable
from carbonedge.experiments.workload import synthetic_images
from carbonedge.partitioner.blocks import flatten_model
from carbonedge.partitioner.models import create_model, run_inference
from carbonedge.protocol import keys
from carbonedge.protocol.codec import encode_tensor
from carbonedge.protocol.messages import PROTOCOL_VERSION, pack, unpack
from carbonedge.transport.publish import encode_task_message
from tests.conftest import TEST_REDIS
from tests.integration.conftest import start_runtime
from tests.polling import wait_until

pytestmark = pytest.mark.timeout(600)

PARTITION_RUNTIME_URL = f"{TEST_REDIS}/11"
MODELS = ("mobilenetv2", "mobilenetv4", "efficientnet_b0")
NODES = ("part-a", "part-b", "part-c")
TOPOLOGY = "services:\n" + "".join(
    f"  {node}:\n    cpus: 0.5\n    mem_limit: 1g\n"
    f"    x-carbonedge: {{role: node, carbon_intensity: {ci}, runtime: {runtime}}}\n"
    for node, ci, runtime in zip(NODES, (600, 400, 200), ("torch", "onnxruntime", "auto"),
                                 strict=True)
)

TOL = 1e-4


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    tmp = tmp_path_factory.mktemp("partition")
    compose = tmp / "compose.yml"
    compose.write_text(TOPOLOGY)
    rt = start_runtime(tmp, PARTITION_RUNTIME_URL, compose)
    yield rt
    rt.down()


@pytest.fixture(scope="module")
def client(runtime: LocalRuntime) -> Iterator[Client]:
    """A client after every node ran every model once (so each stored its block profile)."""
    c = Client(runtime.settings)
    x = _image(0)
    for model in MODELS:
        for node in NODES:
            assert c.submit(model, x, node=node).result(120).node == node
    r = _redis(runtime)
    wait_until(lambda: all(r.exists(keys.block_profile_key(m, n)) for m in MODELS for n in NODES),
               120, "the agents' block profiles")
    r.close()
    yield c
    c.close()


@pytest.fixture(scope="module")
def reference() -> dict[str, tuple[int, np.ndarray]]:
    """Per model: its block count and its whole-model logits on the test image, in process."""
    torch.set_num_threads(1)  # the agents run one thread each
    out = {}
    for model in MODELS:
        loaded = create_model(model)
        logits = run_inference(loaded, _image(0)).numpy()
        out[model] = (len(flatten_model(loaded)), logits)
    return out


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, 224, 224)).astype(np.float32)


def _serves(client: Client, node: str) -> bool:
    """Whether the dispatcher routes a ping to ``node`` (it sees the node alive)."""
    try:
        return client.ping(node=node).result(60).node == node
    except NoNodeAvailable:
        return False


def _redis(runtime: LocalRuntime) -> redis.Redis:
    return redis.Redis.from_url(runtime.settings.redis_url)


def _routes(n: int) -> list[list[tuple[str, int, int]]]:
    """A k=2 and a k=3 route over distinct nodes, cut early, midway and late."""
    a, b = n // 3, (2 * n) // 3
    return [
        [("part-a", 0, n // 2), ("part-c", n // 2, n)],
        [("part-b", 0, 1), ("part-c", 1, n)],
        [("part-c", 0, a), ("part-a", a, b), ("part-b", b, n)],
        [("part-a", 0, n - 2), ("part-b", n - 2, n - 1), ("part-c", n - 1, n)],
    ]


@pytest.mark.parametrize("model", MODELS)
def test_split_across_agents_equals_whole_model(
    model: str, client: Client, reference: dict[str, tuple[int, np.ndarray]]
) -> None:
    n, expected = reference[model]
    for route in _routes(n):
        result = client.submit(model, _image(0), route=route).result(120)
        assert result.logits is not None
        diff = float(np.max(np.abs(result.logits - expected)))
        assert diff <= TOL, f"{model} {route}: max abs difference {diff}"
        assert diff <= TOL * float(np.max(np.abs(expected))), f"{model} {route}: {diff}"
        assert [(s.node, s.start, s.stop) for s in result.segments] == route
        assert [s.runtime for s in result.segments] == [
            "torch" if s.node == "part-a" else "onnxruntime" for s in result.segments]
        assert result.node == route[-1][0]
        assert result.top1 == int(np.argmax(expected))
        for seg in result.segments[:-1]:
            assert seg.out_bytes > 0 and seg.exec_ms > 0
        assert [s.in_bytes for s in result.segments[1:]] >= [s.out_bytes
                                                             for s in result.segments[:-1]]
        assert result.carbon_g == pytest.approx(sum(s.carbon_g for s in result.segments))
        assert result.carbon_g > 0
        assert result.exec_ms == pytest.approx(sum(s.exec_ms for s in result.segments))


def test_an_image_travels_as_pixels_and_its_first_node_normalises_it(
    client: Client, reference: dict[str, tuple[int, np.ndarray]]
) -> None:
    """The producer sends the crop as uint8 (a quarter of the float bytes); the node that
    runs the model's first block normalises it, so the outputs equal the model's on the
    producer-side float input, whole or split, on either runtime."""
    model = "mobilenetv2"
    image = synthetic_images(1, seed=5)[0]
    expected = run_inference(create_model(model), preprocess_image(image)).numpy()
    n = reference[model][0]
    split = client.submit(model, image, route=[("part-b", 0, n // 2), ("part-a", n // 2, n)])
    result = split.result(120)
    assert result.segments[0].in_bytes == 224 * 224 * 3
    assert result.logits is not None
    assert float(np.max(np.abs(result.logits - expected))) <= TOL
    probs = np.exp(expected[0] - expected[0].max())
    probs /= probs.sum()
    fifth = float(np.sort(probs)[-5])
    for node in NODES:  # (ids compared by probability: near-ties may order differently)
        whole = client.submit(model, image, node=node).result(120)
        assert len(whole.top5) == 5, node
        for class_id, prob in whole.top5:
            assert prob == pytest.approx(float(probs[class_id]), abs=1e-5), (node, class_id)
            assert prob >= fifth - 1e-5, (node, class_id)


@pytest.mark.parametrize("k", [2, 3])
def test_partition_k_runs_a_balanced_plan(
    k: int, client: Client, reference: dict[str, tuple[int, np.ndarray]]
) -> None:
    n, expected = reference["mobilenetv2"]
    result = client.submit("mobilenetv2", _image(0), partition=k).result(120)
    assert len(result.segments) == k
    assert len({s.node for s in result.segments}) == k
    assert result.segments[0].start == 0 and result.segments[-1].stop == n
    assert result.raw["plan"]["strategy"] == "balanced"
    assert float(np.max(np.abs(result.logits - expected))) <= TOL


def test_partition_one_and_auto_give_the_model_output(
    client: Client, reference: dict[str, tuple[int, np.ndarray]]
) -> None:
    n, expected = reference["efficientnet_b0"]
    one = client.submit("efficientnet_b0", _image(0), partition=1).result(120)
    assert [(s.start, s.stop) for s in one.segments] == [(0, n)]
    assert float(np.max(np.abs(one.logits - expected))) <= TOL
    auto = client.submit("efficientnet_b0", _image(0), partition="auto").result(120)
    assert auto.top1 == int(np.argmax(expected))


def test_every_agent_stores_its_block_profile(
    runtime: LocalRuntime, client: Client, reference: dict[str, tuple[int, np.ndarray]]
) -> None:
    r = _redis(runtime)
    try:
        for model in MODELS:
            n, _ = reference[model]
            for node in NODES:
                record = unpack(r.get(keys.block_profile_key(model, node)), max_bytes=1 << 24)
                assert record["node"] == node and record["cpu_quota"] == 0.5
                blocks = record["blocks"]
                assert [b["index"] for b in blocks] == list(range(n))
                for b in blocks:
                    assert b["time_ms"] > 0 and b["activation_bytes"] > 0
                    assert b["flops"] >= 0 and b["layer_cost"] >= 0 and b["params"] >= 0
                assert sum(b["flops"] for b in blocks) > 1e8  # every model is 0.2+ GFLOPs
    finally:
        r.close()


def test_a_finished_route_leaves_nothing_behind(runtime: LocalRuntime, client: Client) -> None:
    """No activation key, no assignment (recovery would re-run the request), no in-flight
    count."""
    n = 21
    client.submit("mobilenetv2", _image(1), route=[("part-a", 0, 1), ("part-b", 1, 7),
                                                   ("part-c", 7, n)]).result(120)
    r = _redis(runtime)
    try:
        assert list(r.scan_iter(match=f"{keys.PREFIX}:act:*")) == []
        for node in NODES:
            assert r.hlen(keys.assigned_key(node)) == 0
            assert int(r.hget(keys.IN_FLIGHT, node) or 0) == 0
    finally:
        r.close()


def test_error_in_a_middle_segment_names_segment_and_node(
    runtime: LocalRuntime, client: Client, reference: dict[str, tuple[int, np.ndarray]]
) -> None:
    """Segment 1 of 3 gets an activation of the wrong shape: the request ends with an error
    naming that segment and node, and the activation is gone."""
    n, _ = reference["mobilenetv2"]
    route = [{"node": "part-a", "start": 0, "stop": 4},
             {"node": "part-b", "start": 4, "stop": 10},
             {"node": "part-c", "start": 10, "stop": n}]
    request_id = "partition-middle-error"
    payload = {"v": PROTOCOL_VERSION, "id": request_id, "kind": "infer", "model": "mobilenetv2",
               "submitted_at": time.time(), "route": route, "segment": 1, "hops": []}
    queue = keys.node_queue("part-b")
    app = client._app
    r = _redis(runtime)
    try:
        r.set(keys.activation_key(request_id, 1), pack(encode_tensor(_image(2))), ex=60)
        r.lpush(queue, encode_task_message(app, keys.TASK_INFER_SEGMENT, payload,
                                           task_id=request_id, queue=queue, ignore_result=True))
        with pytest.raises(InvalidTensor) as info:
            client.result_for(request_id, timeout=120)
        assert "segment 1 [4, 10) on node part-b" in info.value.message
        assert info.value.field == "activation.shape"
        assert not r.exists(keys.activation_key(request_id, 1))
    finally:
        r.close()


def test_a_crash_inside_a_segment_is_an_inference_error(runtime: LocalRuntime,
                                                        client: Client) -> None:
    """A segment whose input activation is missing fails with the segment and node named."""
    route = [{"node": "part-c", "start": 0, "stop": 3},
             {"node": "part-a", "start": 3, "stop": 21}]
    request_id = "partition-missing-activation"
    payload = {"v": PROTOCOL_VERSION, "id": request_id, "kind": "infer", "model": "mobilenetv2",
               "submitted_at": time.time(), "route": route, "segment": 1, "hops": []}
    queue = keys.node_queue("part-a")
    r = _redis(runtime)
    try:
        r.lpush(queue, encode_task_message(client._app, keys.TASK_INFER_SEGMENT, payload,
                                           task_id=request_id, queue=queue, ignore_result=True))
    finally:
        r.close()
    with pytest.raises(InvalidRequest) as info:
        client.result_for(request_id, timeout=120)
    assert "segment 1 [3, 21) on node part-a" in info.value.message
    assert info.value.field == "activation"
    assert not isinstance(info.value, InferenceFailed)


def test_bad_routes_are_rejected_by_the_dispatcher(client: Client) -> None:
    with pytest.raises(InvalidRequest) as short:
        client.submit("mobilenetv2", _image(0), route=[("part-a", 0, 5), ("part-b", 5, 9)]
                      ).result(60)
    assert short.value.field == "route" and "has 21 blocks" in short.value.message
    with pytest.raises(NoNodeAvailable) as unknown:
        client.submit("mobilenetv2", _image(0), route=[("part-a", 0, 5), ("nowhere", 5, 21)]
                      ).result(60)
    assert unknown.value.field == "route"
    with pytest.raises(InvalidRequest) as too_many:
        client.submit("mobilenetv2", _image(0), partition=4).result(60)
    assert too_many.value.field == "k"


def test_a_node_frozen_mid_route_ends_the_request_with_a_clear_error(
    runtime: LocalRuntime, client: Client, reference: dict[str, tuple[int, np.ndarray]]
) -> None:
    """part-b freezes (SIGSTOP) while segment 0 runs on part-a: its heartbeat expires, the
    request, now assigned to part-b, is re-dispatched, and its route names a dead node.
    The client gets an error naming it instead of waiting forever, and part-b, thawed,
    does not run the old segment (the watchdog took it off its queue) and serves again."""
    n, expected = reference["mobilenetv2"]
    agent = next(p for p in runtime.state.processes if p.name == "part-b")
    route = [("part-a", 0, n - 1), ("part-b", n - 1, n)]
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        handle = client.submit("mobilenetv2", _image(0), route=route)
        with pytest.raises(NoNodeAvailable) as info:
            handle.result(120)
        assert "part-b" in info.value.message and info.value.field == "route"
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    r = _redis(runtime)
    try:
        wait_until(lambda: r.exists(keys.node_key("part-b")), 60, "part-b's heartbeat")
        assert r.hlen(keys.assigned_key("part-b")) == 0
    finally:
        r.close()
    wait_until(lambda: _serves(client, "part-b"), 60, "the dispatcher to see part-b again",
               interval_s=0.5)
    result = client.submit("mobilenetv2", _image(0), route=route).result(120)
    assert float(np.max(np.abs(result.logits - expected))) <= TOL
