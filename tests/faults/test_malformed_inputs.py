"""More malformed inputs, each answered by a clear error; the system serves afterwards.

tests/integration/test_bad_inputs.py holds the first cases (unknown model, mode and node,
wrong shape and dtype, truncated bytes, NaN, bad envelopes, undecodable stream entries,
pickle and other foreign messages on a node queue, ...); these are the ones it lacks:
huge payloads, infinities, every envelope field of the wrong type, forged recovery
entries, forged heartbeats. An input with a request id is answered with an error result
naming the field; one without an id cannot be answered and is dead-lettered with the
reason instead.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
import redis

from carbonedge.client import Client
from carbonedge.compose.local_runner import LocalRuntime, process_alive
from carbonedge.errors import (
    CarbonEdgeError,
    DispatchFailed,
    InvalidMessage,
    InvalidRequest,
    InvalidTensor,
    NoNodeAvailable,
    UnknownMode,
    UnknownNode,
)
from carbonedge.protocol import keys
from carbonedge.protocol.codec import encode_tensor
from carbonedge.protocol.messages import pack
from carbonedge.protocol.telemetry import Heartbeat
from carbonedge.transport.publish import encode_task_message
from tests.conftest import TEST_REDIS
from tests.faults.conftest import pid_of
from tests.integration.conftest import SMALL_TOPOLOGY, start_runtime
from tests.polling import wait_until

pytestmark = pytest.mark.timeout(300)

GOOD = np.zeros((1, 3, 224, 224), np.float32)
URL = f"{TEST_REDIS}/9"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    tmp: Path = tmp_path_factory.mktemp("malformed")
    compose = tmp / "compose.yml"
    compose.write_text(SMALL_TOPOLOGY)
    rt = start_runtime(tmp, URL, compose, preload=("mobilenetv2",))
    yield rt
    rt.down()


@pytest.fixture
def client(runtime: LocalRuntime) -> Iterator[Client]:
    c = Client(runtime.settings)
    yield c
    assert c.ping().result(60).node  # still serving after the bad input
    c.close()


@pytest.fixture
def r(runtime: LocalRuntime) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(runtime.settings.redis_url)
    yield conn
    conn.close()


def _request(**fields: object) -> dict:
    req = {"v": 1, "id": uuid.uuid4().hex, "kind": "infer", "model": "mobilenetv2",
           "input": encode_tensor(GOOD), "submitted_at": time.time()}
    req.update(fields)
    return {k: v for k, v in req.items() if v is not None}


def _answer(client: Client, request: dict, extra: dict | None = None) -> CarbonEdgeError:
    """Send a request map raw (past the client's checks) and return the error it gets."""
    entry = {keys.REQUEST_FIELD: pack(request), **(extra or {})}
    client._redis.xadd(keys.REQUEST_STREAM, entry)
    with pytest.raises(CarbonEdgeError) as e:
        client.result_for(request["id"], 60)
    return e.value


def _dead_lettered(r: redis.Redis, send, match: bytes) -> None:
    before = r.xlen(keys.DEAD_LETTER_STREAM)
    send()
    wait_until(lambda: r.xlen(keys.DEAD_LETTER_STREAM) > before, 30, "the dead letter")
    assert r.xlen(keys.DEAD_LETTER_STREAM) == before + 1
    last = r.xrevrange(keys.DEAD_LETTER_STREAM, count=1)[0][1]
    assert match in last[b"error"], last


# -- payloads -----------------------------------------------------------------------------


def test_100_mb_payload_is_refused_not_parsed(client: Client, r: redis.Redis) -> None:
    huge = pack(_request(input={"dtype": "float32", "shape": [1, 3, 224, 224],
                                "data": bytes(100 << 20)}))
    _dead_lettered(r, lambda: client.submit_raw(huge), b"over the limit")


def test_100_mb_tensor_is_refused_before_sending(client: Client) -> None:
    with pytest.raises(InvalidTensor, match="over the limit"):
        client.submit("mobilenetv2", np.zeros((1, 3, 2900, 2900), np.float32))  # ~100 MB


def test_infinity_in_the_input(client: Client) -> None:
    x = GOOD.copy()
    x[0, 1, 2, 3] = np.inf
    err = _answer(client, _request(input=encode_tensor(x)))
    assert isinstance(err, InvalidTensor) and err.field == "input.data"


def test_unknown_tensor_dtype(client: Client) -> None:
    tensor = encode_tensor(GOOD)
    tensor["dtype"] = "complex64"
    err = _answer(client, _request(input=tensor))
    assert isinstance(err, InvalidTensor) and "complex64" in str(err)


def test_tensor_data_is_not_bytes(client: Client) -> None:
    tensor = encode_tensor(GOOD)
    tensor["data"] = [0.0] * 16
    err = _answer(client, _request(input=tensor))
    assert isinstance(err, InvalidTensor) and err.field == "input.data"


def test_tensor_shape_is_nonsense(client: Client) -> None:
    tensor = encode_tensor(GOOD)
    tensor["shape"] = [-1, 3, 224, 224]
    err = _answer(client, _request(input=tensor))
    assert isinstance(err, InvalidTensor) and err.field.startswith("input")


def test_tensor_map_without_shape(client: Client) -> None:
    tensor = encode_tensor(GOOD)
    del tensor["shape"]
    err = _answer(client, _request(input=tensor))
    assert isinstance(err, InvalidTensor) and err.field.startswith("input")


def test_input_is_not_a_tensor_map(client: Client) -> None:
    err = _answer(client, _request(input="a picture of a cat"))
    assert isinstance(err, InvalidMessage) and err.field == "input"


def test_input_reference_to_garbage(client: Client, r: redis.Redis) -> None:
    request = _request(input=None, input_ref=True)
    r.set(keys.input_key(request["id"]), b"\xc1 not msgpack", ex=60)
    err = _answer(client, request)
    assert isinstance(err, InvalidMessage) and "msgpack" in str(err)


# -- envelope fields ----------------------------------------------------------------------


def test_unknown_request_kind(client: Client) -> None:
    err = _answer(client, _request(kind="train"))
    assert isinstance(err, InvalidRequest) and err.field == "kind"


def test_model_is_not_a_string(client: Client) -> None:
    err = _answer(client, _request(model=42))
    assert isinstance(err, InvalidMessage) and err.field == "model"


def test_request_id_too_long(client: Client) -> None:
    request = _request()
    request["id"] = "x" * 200
    err = _answer(client, request)
    assert isinstance(err, InvalidMessage) and err.field == "id"


def test_request_id_not_a_string_is_dead_lettered(client: Client, r: redis.Redis) -> None:
    _dead_lettered(r, lambda: client.submit_raw(pack(_request(id=12345))), b"'id'")


def test_stream_entry_without_the_request_field(client: Client, r: redis.Redis) -> None:
    _dead_lettered(r, lambda: client._redis.xadd(keys.REQUEST_STREAM, {"q": b"x"}),
                   b"no request field 'p'")


def test_mode_of_the_wrong_type(client: Client) -> None:
    err = _answer(client, _request(mode=["green"]))
    assert isinstance(err, UnknownMode) and err.field == "mode"


def test_weights_with_nan(client: Client) -> None:
    err = _answer(client, _request(weights=[1.0, float("nan"), 1.0, 1.0, 1.0]))
    assert isinstance(err, InvalidRequest) and err.field == "weights"


def test_weights_all_zero(client: Client) -> None:
    err = _answer(client, _request(weights=[0, 0, 0, 0, 0]))
    assert isinstance(err, InvalidRequest) and err.field == "weights"


def test_unknown_normalisation(client: Client) -> None:
    err = _answer(client, _request(normalisation="zscore-ish"))
    assert isinstance(err, InvalidRequest) and err.field == "normalisation"


def test_node_id_with_path_characters(client: Client) -> None:
    err = _answer(client, _request(node="../../etc/passwd"))
    assert isinstance(err, UnknownNode) and err.field == "node"


def test_forged_recovery_entries(client: Client) -> None:
    """Only the recovery script writes attempt numbers; nonsense or spent ones are refused."""
    err = _answer(client, _request(), {"a": b"not a number"})
    assert isinstance(err, InvalidMessage) and err.field == "a"
    err = _answer(client, _request(), {"a": b"99"})
    assert isinstance(err, DispatchFailed) and "given up" in str(err)


# -- node queues --------------------------------------------------------------------------


def _envelope(task: str, body: bytes, content_type: str, queue: str,
              headers: dict | None = None) -> tuple[str, bytes]:
    task_id = uuid.uuid4().hex
    hdrs = {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "parent_id": None,
            "group": None, "retries": 0, "timelimit": [None, None], "eta": None,
            "expires": None, "shadow": None, "argsrepr": "", "kwargsrepr": "", "origin": "t"}
    if headers is not None:
        hdrs = headers | {"id": task_id}
    props = {"correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
             "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
             "body_encoding": "base64", "delivery_tag": uuid.uuid4().hex}
    return task_id, json.dumps({"body": base64.b64encode(body).decode(),
                                "content-encoding": "utf-8", "content-type": content_type,
                                "headers": hdrs, "properties": props}).encode()


def test_json_task_on_a_node_queue_is_refused(client: Client, r: redis.Redis) -> None:
    queue = keys.node_queue("node-a")
    task_id, message = _envelope(keys.TASK_PING, json.dumps([[{"v": 1}], {}, {}]).encode(),
                                 "application/json", queue)
    r.lpush(queue, message)
    with pytest.raises(CarbonEdgeError, match="decod|disallowed|content"):
        client.result_for(task_id, 60)


def test_task_payload_of_a_future_protocol_on_a_node_queue(client: Client,
                                                          r: redis.Redis) -> None:
    queue = keys.node_queue("node-a")
    task_id = uuid.uuid4().hex
    r.lpush(queue, encode_task_message(client._app, keys.TASK_INFER,
                                       {"v": 2, "id": task_id, "model": "mobilenetv2"},
                                       task_id=task_id, queue=queue))
    with pytest.raises(InvalidMessage, match="protocol version") as e:
        client.result_for(task_id, 60)
    assert e.value.field == "v"


def test_message_without_a_task_name(client: Client, r: redis.Redis) -> None:
    queue = keys.node_queue("node-a")
    _, message = _envelope("", msgpack.packb([[{}], {}, {}]), "application/x-msgpack", queue,
                           headers={"lang": "py"})
    _dead_lettered(r, lambda: r.lpush(queue, message), b"not a CarbonEdge task")


# -- poison items: whatever is on a node's queue, the agent survives it and says so --------


def _rejected(r: redis.Redis, node: str) -> int:
    return int(r.hget(keys.REJECTED, f"agent {node}|queue-item") or 0)


def _survives(runtime: LocalRuntime, client: Client, r: redis.Redis, item: bytes,
              match: bytes) -> None:
    """Push ``item`` onto node-b's queue: dead-lettered with ``match`` in its reason,
    counted, removed (never retried), and the same agent process serves afterwards."""
    queue, pid = keys.node_queue("node-b"), pid_of(runtime, "node-b")
    counted = _rejected(r, "node-b")
    _dead_lettered(r, lambda: r.lpush(queue, item), match)
    last = r.xrevrange(keys.DEAD_LETTER_STREAM, count=1)[0][1]
    assert last[b"source"] == queue.encode() and last[b"node"] == b"node-b"
    assert _rejected(r, "node-b") == counted + 1
    assert r.llen(queue) == 0 and not [v for v in r.hvals(keys.KOMBU_UNACKED) if queue.encode()
                                       in v]  # not waiting to be retried
    assert client.ping(node="node-b").result(60).node == "node-b"
    assert process_alive(pid) and pid_of(runtime, "node-b") == pid  # the same process


@pytest.mark.parametrize(
    ("item", "match"),
    [
        (b"[]", b"JSON list"),
        (b"123", b"JSON int"),
        (b"null", b"JSON NoneType"),
        (b'"a string"', b"JSON str"),
        (b"{}", b"'properties' is not an object"),
        (b"\xff\xfe\x00 binary", b"not JSON"),
        (json.dumps({"body": "", "headers": "x", "properties": {
            "delivery_tag": "t", "delivery_info": {"exchange": "", "routing_key": "q"}}}
        ).encode(), b"'headers' is str"),
        (json.dumps({"body": "abcde", "properties": {
            "delivery_tag": "t", "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": "q"}}}).encode(), b"base64"),
    ],
    ids=["list", "int", "null", "string", "empty-object", "binary", "headers-string",
         "bad-base64"],
)
def test_poison_items_are_dead_lettered_and_the_agent_keeps_serving(
        runtime: LocalRuntime, client: Client, r: redis.Redis, item: bytes,
        match: bytes) -> None:
    _survives(runtime, client, r, item, match)


def test_a_poison_envelope_with_a_readable_id_is_answered(
        runtime: LocalRuntime, client: Client, r: redis.Redis) -> None:
    task_id = uuid.uuid4().hex
    item = json.dumps({"body": "", "headers": "not a map", "properties": {
        "correlation_id": task_id, "delivery_tag": "t",
        "delivery_info": {"exchange": "", "routing_key": "q"}}}).encode()
    _survives(runtime, client, r, item, b"'headers' is str")
    with pytest.raises(InvalidMessage, match="'headers' is str"):
        client.result_for(task_id, 30)


def test_a_task_message_without_its_payload_is_answered(
        runtime: LocalRuntime, client: Client, r: redis.Redis) -> None:
    queue = keys.node_queue("node-b")
    task_id, message = _envelope(keys.TASK_PING, msgpack.packb([[], {}, {}]),
                                 "application/x-msgpack", queue)
    _survives(runtime, client, r, message, b"exactly one payload")
    with pytest.raises(InvalidMessage, match="exactly one payload") as e:
        client.result_for(task_id, 30)
    assert e.value.field == "args"


def test_headers_celery_chokes_on_are_answered(runtime: LocalRuntime, client: Client,
                                               r: redis.Redis) -> None:
    queue = keys.node_queue("node-b")
    task_id, message = _envelope(keys.TASK_PING, msgpack.packb([[{"v": 1}], {}, {}]),
                                 "application/x-msgpack", queue,
                                 headers={"lang": "py", "task": keys.TASK_PING,
                                          "timelimit": "not a pair", "retries": 0})
    _survives(runtime, client, r, message, b"could not take this message")
    with pytest.raises(InvalidMessage, match="could not take"):
        client.result_for(task_id, 30)


def test_a_routed_request_whose_message_is_poison_releases_its_count(
        runtime: LocalRuntime, client: Client, r: redis.Redis) -> None:
    """Answered like a result would be: out of the node's registry, its count released."""
    task_id = uuid.uuid4().hex
    r.hset(keys.assigned_key("node-b"), task_id, pack(_request(id=task_id)))
    before = int(r.hincrby(keys.IN_FLIGHT, "node-b", 1))
    item = json.dumps({"body": 12, "headers": {"id": task_id, "task": keys.TASK_INFER},
                       "properties": {"delivery_tag": "t", "delivery_info": {
                           "exchange": "", "routing_key": "q"}}}).encode()
    _survives(runtime, client, r, item, b"'body' is int")
    with pytest.raises(InvalidMessage, match="'body' is int"):
        client.result_for(task_id, 30)
    assert not r.hexists(keys.assigned_key("node-b"), task_id)
    assert int(r.hget(keys.IN_FLIGHT, "node-b")) == before - 1


def test_a_redispatch_is_not_counted_as_a_new_decision(client: Client,
                                                       r: redis.Redis) -> None:
    def decided() -> int:
        return sum(int(v) for v in r.hvals(keys.DECISIONS))

    before = decided()
    request = _request(mode="green")
    r.xadd(keys.REQUEST_STREAM, {keys.REQUEST_FIELD: pack(request), "a": b"1"})
    assert client.result_for(request["id"], 60).node == "node-b"
    assert decided() == before  # its first dispatch was counted, not this one
    client.submit("mobilenetv2", GOOD, mode="green").result(60)
    assert decided() == before + 1


def test_custom_weights_are_labelled_custom(client: Client, r: redis.Redis) -> None:
    result = client.submit("mobilenetv2", GOOD, mode="performance",
                           weights=[0, 0, 0, 0, 1]).result(60)
    assert result.mode == "custom" and result.node == "node-b"
    assert int(r.hget(keys.DECISIONS, "node-b|custom")) >= 1


# -- heartbeats ---------------------------------------------------------------------------


def _beat(**changes: object) -> dict[str, str]:
    beat = Heartbeat(node_id="node-evil", ts=time.time(), cpu_quota=4.0,
                     mem_limit_bytes=8 << 30, mem_used_bytes=0, cpu_util=0.0, power_w=0.1,
                     active_power_w=0.1, carbon_intensity=1.0).to_fields()
    beat.update({k: str(v) for k, v in changes.items()})
    return beat


@pytest.mark.parametrize(
    "fields",
    [
        _beat(power_w="nan"),
        _beat(cpu_quota="-4"),
        _beat(ts=repr(time.time() + 3600)),
        _beat(node_id="node-a"),  # one node's telemetry under another's key
        _beat(node_id="evil node; rm -rf"),
        _beat(carbon_intensity="inf"),
        _beat(),  # well-formed, but no such node in the topology (the allowlist)
    ],
    ids=["nan-power", "negative-quota", "future-timestamp", "impersonation", "bad-id", "inf-ci",
         "unknown-node"],
)
def test_forged_heartbeats_are_ignored(client: Client, r: redis.Redis,
                                       fields: dict[str, str]) -> None:
    """A forged node that claimed 1 g/kWh would win every Green decision if believed."""
    key = keys.node_key("node-evil")
    r.hset(key, mapping=fields)
    r.expire(key, 30)
    r.sadd(keys.NODES, "node-evil")
    try:
        # positive control: a legitimate change made after the forgery (node-a's own beat
        # saying 100 g/kWh, under node-b's 200 and too small a drop to be quarantined, until
        # its agent beats again) is picked up: the dispatcher has re-read telemetry with the
        # forgery in place, and still did not believe it
        def green_after_node_a_drops() -> str | None:
            r.hset(keys.node_key("node-a"), mapping={"carbon_intensity": "100",
                                                     "ts": repr(time.time())})
            node = client.ping(mode="green").result(60).node
            assert node != "node-evil"
            return node if node == "node-a" else None

        wait_until(green_after_node_a_drops, 30, "node-a's lower carbon intensity to count")
        wait_until(lambda: client.ping(mode="green").result(60).node == "node-b", 30,
                   "node-a's agent to restore its own heartbeat")
        nodes = {client.ping(mode="green").result(60).node for _ in range(5)}
        assert nodes == {"node-b"}
        with pytest.raises((UnknownNode, NoNodeAvailable)):
            client.ping(node="node-evil").result(60)
    finally:
        r.delete(key)
        r.srem(keys.NODES, "node-evil")
