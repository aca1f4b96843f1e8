"""Celery task messages, built by Celery and written to a node's queue with one LPUSH.

The message is Celery's own (protocol 2, built by ``app.amqp.as_task_v2`` and serialised
with msgpack by kombu); only the last step, kombu's Redis transport envelope and its
LPUSH, is done here. That lets the dispatcher publish a whole batch, count it and
acknowledge it in one pipelined round trip on its asyncio connection, instead of a
blocking kombu publish per request.
"""

from __future__ import annotations

import base64
import json
import socket
import uuid
from typing import Any

from celery import Celery
from kombu.serialization import dumps

from carbonedge.transport.celery_app import SERIALIZER

__all__ = ["encode_task_message"]

ORIGIN = f"carbonedge@{socket.gethostname()}"


def encode_task_message(app: Celery, name: str, payload: dict[str, Any], *, task_id: str,
                        queue: str, ignore_result: bool = True) -> bytes:
    """The bytes kombu's Redis transport would LPUSH for ``name(payload)`` on ``queue``.

    ``ignore_result`` goes into the message headers, where the worker reads it in
    preference to the task's own ``ignore_result``: CarbonEdge's tasks deliver their
    results themselves, so it is set, or Celery stores a task's return value (False for
    one it skipped) where the producer reads the result.
    """
    message = app.amqp.as_task_v2(
        task_id, name, args=(payload,), kwargs={}, origin=ORIGIN, ignore_result=ignore_result,
        # a repr of a tensor payload is slow and useless: describe the request instead
        argsrepr=f"<{payload.get('kind', 'infer')} {payload.get('model') or ''} id={task_id}>",
        kwargsrepr="{}",
    )
    content_type, encoding, body = dumps(message.body, serializer=SERIALIZER)
    envelope = {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": encoding,
        "content-type": content_type,
        "headers": message.headers,
        "properties": {
            **message.properties,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": uuid.uuid4().hex,
        },
    }
    return json.dumps(envelope, separators=(",", ":")).encode()
