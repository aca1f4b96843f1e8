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
import socket
import uuid
from binascii import b2a_base64
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
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
        argsrepr=_describe(payload, task_id), kwargsrepr="{}")
    content_type, encoding, body = dumps(message.body, serializer=SERIALIZER)
    return _envelope(message, content_type, encoding, body=base64.b64encode(body).decode("ascii"),
                     queue=queue, tag=uuid.uuid4().hex).encode()


def _describe(payload: dict[str, Any], task_id: str) -> str:
    """The task's argsrepr: a repr of a tensor payload is slow and useless, so the request
    is described instead."""
    return f"<{payload.get('kind', 'infer')} {payload.get('model') or ''} id={task_id}>"


def _envelope(message: Any, content_type: str, encoding: str, *, body: str, queue: str,
              tag: str) -> str:
    """kombu's Redis-transport envelope of a Celery message, as compact JSON."""
    return json.dumps({
        "body": body,
        "content-encoding": encoding,
        "content-type": content_type,
        "headers": message.headers,
        "properties": {
            **message.properties,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": tag,
        },
    }, separators=(",", ":"))


_quoted = encode_basestring_ascii
"""A string as a JSON string (what ``json.dumps`` writes for one)."""

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
        self._templates: dict[str, tuple[str, Any]] = {}
        self._pack = msgpack.Packer(use_bin_type=True).pack  # kombu's msgpack settings

    def __call__(self, name: str, payload: dict[str, Any], *, task_id: str,
                 queue: str) -> bytes:
        """The bytes :func:`encode_task_message` would return (but the delivery tag)."""
        template = self._templates.get(name)
        if template is None:
            template = self._templates[name] = self._template(name)
        text, embed = template
        body = b2a_base64(self._pack(((payload,), {}, embed)), newline=False)
        return (text % {  # base64 and hex need no JSON escaping; the sender's text does
            "body": body.decode("ascii"),
            "id": _quoted(task_id),
            "argsrepr": _quoted(_describe(payload, task_id)),
            "queue": _quoted(queue),
            "tag": os.urandom(16).hex(),  # unique, as kombu's uuid4 hex is
        }).encode()

    def _template(self, name: str) -> tuple[str, Any]:
        """Celery's message for ``name`` as JSON text with ``%(slot)s`` placeholders."""
        marks = {slot: f"@carbonedge:{slot}@" for slot in _SLOTS}
        message = self.app.amqp.as_task_v2(
            marks["id"], name, args=((),), kwargs={}, origin=ORIGIN,
            ignore_result=self.ignore_result, argsrepr=marks["argsrepr"], kwargsrepr="{}")
        content_type, encoding, _ = dumps(message.body, serializer=SERIALIZER)
        text = _envelope(message, content_type, encoding, body=marks["body"],
                         queue=marks["queue"], tag=marks["tag"]).replace("%", "%%")
        for slot, mark in marks.items():
            quoted = json.dumps(mark)
            # the body and tag are written inside their quotes; the others bring their own
            text = text.replace(quoted, f'"%({slot})s"' if slot in ("body", "tag")
                                else f"%({slot})s")
        return text, message.body[2]
