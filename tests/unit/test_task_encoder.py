"""Task messages from a per-task template are Celery's own, byte for byte but the tag."""

from __future__ import annotations

import json

from carbonedge.protocol import keys
from carbonedge.settings import Settings
from carbonedge.transport.celery_app import make_celery_app
from carbonedge.transport.publish import TaskEncoder, encode_task_message

APP = make_celery_app(Settings.load(env={}, redis_url="redis://127.0.0.1:1/0"))


def _without_tag(message: bytes) -> dict:
    envelope = json.loads(message)
    tag = envelope["properties"].pop("delivery_tag")
    assert isinstance(tag, str) and len(tag) == 32
    return envelope


def test_the_template_gives_celerys_message() -> None:
    encode = TaskEncoder(APP)
    for task, payload, task_id, queue in (
        (keys.TASK_PING, {"v": 1, "id": "a", "kind": "ping"}, "a", keys.node_queue("n1")),
        (keys.TASK_INFER, {"v": 1, "id": 'q"\\é\n%s%', "model": "m", "input": {"data": b"\0\xff"},
                           "decision": {"x": [1.5, None, True]}}, 'q"\\é\n%s%', "ce:q:%d"),
        (keys.TASK_INFER_SEGMENT, {"kind": "infer", "segment": 0}, "s", keys.node_queue("n2")),
    ):
        ours = encode(task, payload, task_id=task_id, queue=queue)
        celerys = encode_task_message(APP, task, payload, task_id=task_id, queue=queue)
        assert _without_tag(ours) == _without_tag(celerys)


def test_each_message_has_its_own_delivery_tag() -> None:
    encode = TaskEncoder(APP)
    tags = {json.loads(encode(keys.TASK_PING, {"id": "a"}, task_id="a", queue="q"))
            ["properties"]["delivery_tag"] for _ in range(50)}
    assert len(tags) == 50
