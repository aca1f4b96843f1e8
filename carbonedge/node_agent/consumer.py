"""A Celery consumer that turns undeliverable messages into error results, never silence.

Celery's default is to log a foreign, undecodable or unregistered message and drop it.
Here each one is also written to the ``ce:deadletter`` stream and, when the message names
a task id, answered with an error result so that whoever waits on it learns why.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import kombu.transport.redis as kombu_redis
from celery.worker.consumer import Consumer
from kombu.utils.json import loads as kombu_loads

from carbonedge.errors import CarbonEdgeError, InvalidMessage, InvalidRequest
from carbonedge.protocol import keys
from carbonedge.protocol.messages import error_result

log = logging.getLogger(__name__)


class AgentConsumer(Consumer):  # type: ignore[misc]
    """Celery's worker consumer with dead-lettering of bad messages."""

    on_reconnect: Callable[[], object] | None = None
    """Set by the agent: hands back the requests a broken broker connection orphaned."""
    on_message: Callable[[], object] | None = None
    """Set by the agent: called as each task message arrives (a task's CPU starts here)."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        """Celery's task handler, announcing each message's arrival first."""
        handler = super().create_task_handler(*args, **kwargs)
        on_message = type(self).on_message
        if on_message is None:
            return handler

        def on_task_received(message: Any) -> Any:
            on_message()
            return handler(message)

        return on_task_received

    def connect(self) -> Any:
        """Connect; after a lost connection, first hand back what this agent held.

        On a connection loss Celery forgets the messages it had fetched (kombu's Redis
        transport would restore them only after the visibility timeout, an hour), and a
        message popped just as Redis died may be gone altogether. A solo-pool agent runs
        nothing while it reconnects, so whatever is still assigned to it is re-dispatched.
        """
        connection = super().connect()
        if self.restart_count > 0 and self.on_reconnect is not None:
            try:
                self.on_reconnect()
            except Exception:  # Redis may still be flaky: the watchdog remains
                log.exception("could not hand back requests after reconnecting")
        return connection

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._dead_letter(message, InvalidMessage(f"message could not be decoded: {exc}"))
        message.ack()

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead_letter(message, InvalidMessage("message is not a CarbonEdge task"))
        message.reject_log_error(log, self.connection_errors)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        name = _headers(message).get("task")
        self._dead_letter(message, InvalidRequest(
            f"task {name!r} is not served here; known: {keys.TASK_INFER}, {keys.TASK_PING}",
            field="task"))
        message.reject_log_error(log, self.connection_errors)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, InvalidMessage(f"invalid task message: {exc}"))
        message.reject_log_error(log, self.connection_errors)

    def _dead_letter(self, message: Any, error: CarbonEdgeError) -> None:
        headers = _headers(message)
        task_id = headers.get("id") or _properties(message).get("correlation_id")
        log.error("dead-lettered message (task id %s): %s", task_id, error)
        try:
            client = self.app.backend.client
            client.xadd(keys.DEAD_LETTER_STREAM, {
                "ts": repr(time.time()),
                "task_id": str(task_id),
                "error": error.message,
                "content_type": str(getattr(message, "content_type", "")),
                "size": str(len(getattr(message, "body", b"") or b"")),
            }, maxlen=10_000, approximate=True)
            if isinstance(task_id, str) and task_id:
                self.app.backend.store_result(task_id, error_result(task_id, error), "SUCCESS")
        except Exception:  # the dead letter itself must not kill the consumer
            log.exception("could not record dead-lettered message %s", task_id)


UNDECODABLE_CONTENT_TYPE = "application/x-carbonedge-undecodable"


def tolerant_loads(data: Any, *args: Any, **kwargs: Any) -> Any:
    """kombu's JSON envelope decoder, except that garbage becomes an undecodable message.

    kombu's Redis transport decodes each popped queue item with a bare ``loads``; one
    item that is not JSON raises out of the event loop and stops the worker for good
    (the item is already popped, so it is lost too). Wrapping the raw bytes in an
    envelope whose content type nobody accepts sends it to ``on_decode_error`` instead,
    where :class:`AgentConsumer` dead-letters it and the worker carries on.
    """
    try:
        return kombu_loads(data, *args, **kwargs)
    except (ValueError, TypeError):
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else bytes(data)
        log.error("undecodable item on a queue (%d bytes): wrapping it for dead-lettering",
                  len(raw))
        return {
            "body": base64.b64encode(raw).decode(),
            "content-encoding": "binary",
            "content-type": UNDECODABLE_CONTENT_TYPE,
            "headers": {},
            "properties": {"delivery_tag": uuid.uuid4().hex, "body_encoding": "base64",
                           "delivery_info": {"exchange": "", "routing_key": ""}},
        }


def install_tolerant_queue_decoder() -> None:
    """Make this process's kombu Redis transport survive non-JSON queue items."""
    kombu_redis.loads = tolerant_loads


def _headers(message: Any) -> dict[str, Any]:
    headers = getattr(message, "headers", None)
    return headers if isinstance(headers, dict) else {}


def _properties(message: Any) -> dict[str, Any]:
    props = getattr(message, "properties", None)
    return props if isinstance(props, dict) else {}
