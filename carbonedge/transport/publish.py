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
import os
import re
import socket
import uuid
from typing import Any

import msgpack
from celery import Celery
from kombu.serialization import dumps

from carbonedge.transport.celery_app import SERIALIZER

__all__ = ["TaskEncoder", "encode_task_message"]

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


_quoted = json.JSONEncoder(ensure_ascii=True).encode
"""A string as a JSON string (what ``json.dumps`` writes for one, without its set-up)."""

_SLOTS = ("body", "id", "argsrepr", "queue", "tag")
"""What differs between two messages of one task: placeholders in its JSON template."""


class TaskEncoder:
    """:func:`encode_task_message` for a stream of messages: what every message of a task
    shares (Celery's headers and properties, the envelope) is built by Celery once per
    task name; each message fills in its body, id, description, queue and delivery tag.
    """

    def __init__(self, app: Celery, *, ignore_result: bool = True) -> None:
        self.app = app
        self.ignore_result = ignore_result
        self._templates: dict[str, tuple[list[str], list[str], Any]] = {}

    def __call__(self, name: str, payload: dict[str, Any], *, task_id: str,
                 queue: str) -> bytes:
        """The bytes :func:`encode_task_message` would return (but the delivery tag)."""
        template = self._templates.get(name)
        if template is None:
            template = self._templates[name] = self._template(name)
        parts, order, embed = template
        body = msgpack.packb(((payload,), {}, embed), use_bin_type=True)
        quoted = _quoted
        values = {  # base64 and hex need no JSON escaping; the sender's text does
            "body": '"' + base64.b64encode(body).decode("ascii") + '"',
            "id": quoted(task_id),
            "argsrepr": quoted(f"<{payload.get('kind', 'infer')} "
                               f"{payload.get('model') or ''} id={task_id}>"),
            "queue": quoted(queue),
            "tag": '"' + os.urandom(16).hex() + '"',  # unique, as kombu's uuid4 hex is
        }
        out = [parts[0]]
        for slot, part in zip(order, parts[1:], strict=True):
            out.append(values[slot])
            out.append(part)
        return "".join(out).encode()

    def _template(self, name: str) -> tuple[list[str], list[str], Any]:
        """Celery's message for ``name`` with placeholders, as JSON text split around them."""
        marks = {slot: f"@carbonedge:{slot}@" for slot in _SLOTS}
        message = self.app.amqp.as_task_v2(
            marks["id"], name, args=((),), kwargs={}, origin=ORIGIN,
            ignore_result=self.ignore_result, argsrepr=marks["argsrepr"], kwargsrepr="{}")
        content_type, encoding, _ = dumps(message.body, serializer=SERIALIZER)
        envelope = {
            "body": marks["body"],
            "content-encoding": encoding,
            "content-type": content_type,
            "headers": message.headers,
            "properties": {
                **message.properties,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": marks["queue"]},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": marks["tag"],
            },
        }
        text = json.dumps(envelope, separators=(",", ":"))
        by_mark = {json.dumps(mark): slot for slot, mark in marks.items()}
        pieces = re.split("(" + "|".join(map(re.escape, by_mark)) + ")", text)
        return pieces[0::2], [by_mark[p] for p in pieces[1::2]], message.body[2]
