"""Every item on a node's queue reaches the consumer, poison included: kombu's side.

Anyone who can write to Redis can push anything onto ``ce.node.<id>``. kombu's Redis
transport trusts each item: one that is not JSON, not a JSON object, or an envelope
whose ``properties``, ``headers`` or ``body`` are of the wrong kind raises out of the
worker's event loop and stops it for good (Celery's "Unrecoverable error"), and since
the item is popped first, it is lost too. Here every item is checked *before* kombu
builds a message from it:

* :func:`tolerant_loads` turns an item that is not JSON into an envelope that no
  consumer accepts;
* :class:`GuardedMessage` does the same for JSON that is no well-formed envelope,
  keeping the original bytes and the request id when one can be read.

Both then reach the consumer's decode-error path
(:class:`~carbonedge.transport.consumer.GuardedConsumer`), which dead-letters them.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from typing import Any

import kombu.transport.redis as kombu_redis
from kombu.transport.virtual import Message as VirtualMessage
from kombu.utils.json import loads as kombu_loads

from carbonedge.errors import InvalidMessage

__all__ = ["GuardedMessage", "envelope_problem", "install_queue_guard", "message_problem",
           "poison_envelope", "readable_task_id", "tolerant_loads"]

log = logging.getLogger(__name__)

UNDECODABLE_CONTENT_TYPE = "application/x-carbonedge-undecodable"
PROBLEM_HEADER = "x-carbonedge-problem"
"""Header of a wrapped poison item: what was wrong with it."""
MAX_TAG = 256


def tolerant_loads(data: Any, *args: Any, **kwargs: Any) -> Any:
    """kombu's JSON decoder, except that an item that is not JSON becomes a poison
    envelope (kombu would raise out of the worker's event loop)."""
    try:
        return kombu_loads(data, *args, **kwargs)
    except (ValueError, TypeError, RecursionError):
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else bytes(data)
        return poison_envelope(raw, "the queue item is not JSON")


def poison_envelope(raw: bytes, problem: str, task_id: str | None = None) -> dict[str, Any]:
    """A well-formed kombu envelope that carries ``raw`` to the consumer's decode-error
    path: its content type is accepted by nobody."""
    log.error("poison item on a queue (%d bytes): %s", len(raw), problem)
    return {
        "body": base64.b64encode(raw).decode(),
        "content-encoding": "binary",
        "content-type": UNDECODABLE_CONTENT_TYPE,
        "headers": {PROBLEM_HEADER: problem, **({"id": task_id} if task_id else {})},
        "properties": {"delivery_tag": uuid.uuid4().hex, "body_encoding": "base64",
                       "delivery_info": {"exchange": "", "routing_key": ""}},
    }


def envelope_problem(payload: Any) -> str | None:
    """What makes ``payload`` (a decoded queue item) no envelope kombu can take, or None."""
    if not isinstance(payload, dict):
        return f"the queue item is JSON {type(payload).__name__}, not a kombu envelope object"
    props = payload.get("properties")
    if not isinstance(props, dict):
        return "envelope 'properties' is not an object"
    tag = props.get("delivery_tag")
    if not isinstance(tag, str) or not 0 < len(tag) <= MAX_TAG:
        return "envelope has no delivery_tag string"
    info = props.get("delivery_info")
    if (not isinstance(info, dict) or not isinstance(info.get("exchange"), str)
            or not isinstance(info.get("routing_key"), str)):
        return "envelope 'delivery_info' lacks exchange and routing_key strings"
    headers = payload.get("headers")
    if headers is not None and not isinstance(headers, dict):
        return f"envelope 'headers' is {type(headers).__name__}, not an object"
    for name in ("content-type", "content-encoding"):
        if payload.get(name) is not None and not isinstance(payload.get(name), str):
            return f"envelope {name!r} is not a string"
    body, encoding = payload.get("body"), props.get("body_encoding")
    if body is not None and not isinstance(body, str):
        return f"envelope 'body' is {type(body).__name__}, not a string"
    if encoding not in (None, "base64"):
        return f"envelope body_encoding {str(encoding)[:40]!r} is not base64"
    if encoding == "base64" and body:
        try:
            base64.b64decode(body.encode("utf-8", "surrogateescape"))
        except (binascii.Error, ValueError):
            return "envelope body is not valid base64"
    return None


def readable_task_id(payload: Any) -> str | None:
    """The task (request) id of a malformed envelope, where one can still be read."""
    if not isinstance(payload, dict):
        return None
    headers, props = payload.get("headers"), payload.get("properties")
    for where, name in ((headers, "id"), (props, "correlation_id")):
        if isinstance(where, dict):
            value = where.get(name)
            if isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable():
                return value
    return None


class GuardedMessage(VirtualMessage):  # type: ignore[misc]
    """kombu's Redis message, built only from a well-formed envelope (else from a poison
    envelope carrying the original item)."""

    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        problem = envelope_problem(payload)
        if problem is not None:
            raw = json.dumps(payload, default=repr).encode()
            payload = poison_envelope(raw, problem, readable_task_id(payload))
        super().__init__(payload, channel=channel, **kwargs)


def install_queue_guard() -> None:
    """Make this process's kombu Redis transport hand every queue item to the consumer
    (poison included) instead of raising out of its event loop."""
    kombu_redis.loads = tolerant_loads
    kombu_redis.Channel.Message = GuardedMessage


def message_problem(message: Any) -> InvalidMessage:
    """The error a wrapped poison message carries, or a generic one."""
    headers = getattr(message, "headers", None)
    problem = headers.get(PROBLEM_HEADER) if isinstance(headers, dict) else None
    return InvalidMessage(str(problem) if problem else "message could not be decoded")
