"""Bad input gets an error result that names the problem; the system keeps serving."""

from __future__ import annotations

import base64
import json
import time
import uuid

import msgpack
import numpy as np
import pytest
import redis

from carbonedge.client import Client
from carbonedge.compose.local_runner import LocalRuntime
from carbonedge.errors import (
    CarbonEdgeError,
    InvalidMessage,
    InvalidRequest,
    InvalidTensor,
    NoNodeAvailable,
    UnknownMode,
    UnknownModel,
    UnknownNode,
)
from carbonedge.protocol import keys
from carbonedge.protocol.codec import encode_tensor
from carbonedge.protocol.messages import pack
from tests.polling import wait_until

pytestmark = pytest.mark.timeout(300)

GOOD = np.zeros((1, 3, 224, 224), np.float32)


@pytest.fixture
def client(default_runtime: LocalRuntime):
    c = Client(default_runtime.settings)
    yield c
    assert c.ping().result(30).node  # still serving after the bad input
    c.close()


@pytest.fixture
def r(default_runtime: LocalRuntime):
    conn = redis.Redis.from_url(default_runtime.settings.redis_url)
    yield conn
    conn.close()


def _raw_request(**fields: object) -> dict:
    req = {"v": 1, "id": uuid.uuid4().hex, "kind": "infer", "model": "mobilenetv2",
           "input": encode_tensor(GOOD), "submitted_at": time.time()}
    req.update(fields)
    return req


def _send_raw(client: Client, request: dict) -> CarbonEdgeError:
    client.submit_raw(pack(request))
    with pytest.raises(CarbonEdgeError) as e:
        client.result_for(request["id"], 30)
    return e.value


def test_unknown_model(client: Client) -> None:
    with pytest.raises(UnknownModel, match="resnet9000.*known: .*mobilenetv2"):
        client.submit("resnet9000", GOOD).result(30)


def test_unknown_mode(client: Client) -> None:
    with pytest.raises(UnknownMode, match="turbo"):
        client.submit("mobilenetv2", GOOD, mode="turbo").result(30)


def test_unknown_node(client: Client) -> None:
    with pytest.raises(UnknownNode, match="node-purple") as e:
        client.submit("mobilenetv2", GOOD, node="node-purple").result(30)
    assert e.value.field == "node"


def test_direct_submission_to_a_node_without_heartbeat(client: Client) -> None:
    with pytest.raises(NoNodeAvailable, match="node-purple") as e:
        client.submit_direct("node-purple", "mobilenetv2", GOOD)
    assert e.value.field == "node"


def test_bad_custom_weights_rejected_at_submit(client: Client) -> None:
    with pytest.raises(InvalidRequest, match="weights"):
        client.submit("mobilenetv2", GOOD, weights=[1, 2, 3])


def test_custom_weights_all_carbon_pick_node_green(client: Client) -> None:
    result = client.submit("mobilenetv2", GOOD, weights=[0, 0, 0, 0, 1]).result(60)
    assert result.node == "node-green"


@pytest.mark.parametrize(
    ("shape", "match"),
    [((1, 3, 32, 32), r"\[1, 3, 32, 32\] does not match"), ((2, 3, 224, 224), "does not match")],
)
def test_wrong_shape_answered_by_the_agent(client: Client, shape: tuple, match: str) -> None:
    with pytest.raises(InvalidTensor, match=match) as e:
        client.submit("mobilenetv2", np.zeros(shape, np.float32)).result(30)
    assert e.value.field == "input.shape"


def test_wrong_dtype(client: Client) -> None:
    with pytest.raises(InvalidTensor, match="int64"):
        client.submit("mobilenetv2", np.zeros((1, 3, 224, 224), np.int64))
    err = _send_raw(client, _raw_request(input=encode_tensor(np.zeros((1, 3, 224, 224), np.float16))))
    assert isinstance(err, InvalidTensor) and err.field == "input.dtype"
    assert "'float16': a model takes float32 input, or an image as uint8 pixels" in str(err)


def test_pixels_laid_out_as_planes_are_refused_with_the_layout_they_need(client: Client) -> None:
    err = _send_raw(client, _raw_request(input=encode_tensor(np.zeros((1, 3, 224, 224), np.uint8))))
    assert isinstance(err, InvalidTensor) and err.field == "input.shape"
    assert "pixels (dtype uint8) are sent as [1, H, W, 3] RGB" in str(err)
    assert "[1, 224, 224, 3]" in str(err)


def test_too_many_elements_refused_before_sending(client: Client) -> None:
    with pytest.raises(InvalidTensor, match="over the limit"):
        client.submit("mobilenetv2", np.zeros((64, 3, 224, 224), np.float32))


def test_truncated_tensor_bytes(client: Client) -> None:
    tensor = encode_tensor(GOOD)
    tensor["data"] = tensor["data"][:1000]
    err = _send_raw(client, _raw_request(input=tensor))
    assert isinstance(err, InvalidTensor) and err.field == "input.data"


def test_expired_or_missing_input_reference(client: Client) -> None:
    request = _raw_request(input_ref=True)
    del request["input"]
    err = _send_raw(client, request)
    assert isinstance(err, InvalidRequest) and "no longer in Redis" in str(err)
    err = _send_raw(client, _raw_request(input_ref=True))
    assert isinstance(err, InvalidMessage) and "not both" in str(err)


def test_nan_input(client: Client) -> None:
    x = GOOD.copy()
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(InvalidTensor, match="NaN"):
        client.submit("mobilenetv2", x).result(30)


def test_unreadable_image(client: Client) -> None:
    with pytest.raises(InvalidRequest, match="image") as e:
        client.submit("mobilenetv2", b"\x89PNG\r\n\x1a\n this is not a png")
    assert e.value.field == "image"


def test_request_with_bad_envelope_gets_error_result(client: Client) -> None:
    err = _send_raw(client, _raw_request(v=99))
    assert isinstance(err, InvalidMessage) and err.field == "v"
    err = _send_raw(client, _raw_request(submitted_at="yesterday"))
    assert isinstance(err, InvalidMessage) and err.field == "submitted_at"


@pytest.mark.parametrize("payload", [b"\xc1 not msgpack", msgpack.packb([1, 2]), b""])
def test_undecodable_stream_entries_are_dead_lettered(client: Client, r: redis.Redis,
                                                      payload: bytes) -> None:
    before = r.xlen(keys.DEAD_LETTER_STREAM)
    client.submit_raw(payload)
    wait_until(lambda: r.xlen(keys.DEAD_LETTER_STREAM) > before, 10, "the dead letter")
    assert r.xlen(keys.DEAD_LETTER_STREAM) == before + 1
    last = r.xrevrange(keys.DEAD_LETTER_STREAM, count=1)[0][1]
    assert b"msgpack" in last[b"error"] or b"missing" in last[b"error"]


def _kombu_message(task: str, body: bytes, content_type: str, queue: str) -> tuple[str, str]:
    task_id = uuid.uuid4().hex
    headers = {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "parent_id": None,
               "group": None, "retries": 0, "timelimit": [None, None], "eta": None,
               "expires": None, "shadow": None, "argsrepr": "", "kwargsrepr": "", "origin": "t"}
    props = {"correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
             "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
             "body_encoding": "base64", "delivery_tag": uuid.uuid4().hex}
    return task_id, json.dumps({"body": base64.b64encode(body).decode(),
                                "content-encoding": "binary", "content-type": content_type,
                                "headers": headers, "properties": props})


@pytest.mark.parametrize(
    ("task", "body", "content_type", "match"),
    [
        (keys.TASK_INFER, b"\x80\x04N.", "application/x-python-serialize", "pickle|disallowed|decoded"),
        (keys.TASK_INFER, b"\xc1\xc1", "application/x-msgpack", "decod|msgpack|unpack"),
        ("os.system", msgpack.packb([["ls"], {}, {}]), "application/x-msgpack", "not served"),
        (keys.TASK_INFER, msgpack.packb([["not a map"], {}, {}]), "application/x-msgpack",
         "must be a map"),
    ],
)
def test_foreign_messages_on_a_node_queue_get_error_results(
    client: Client, r: redis.Redis, task: str, body: bytes, content_type: str, match: str
) -> None:
    queue = keys.node_queue("node-green")
    task_id, message = _kombu_message(task, body, content_type, queue)
    r.lpush(queue, message)
    with pytest.raises(CarbonEdgeError, match=match):
        client.result_for(task_id, 30)


def test_garbage_on_a_node_queue_does_not_stop_the_agent(client: Client, r: redis.Redis) -> None:
    r.lpush(keys.node_queue("node-green"), b"{{{ not json")
    result = client.submit("mobilenetv2", GOOD, node="node-green").result(60)
    assert result.node == "node-green"
