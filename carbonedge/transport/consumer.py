"""A Celery consumer that turns undeliverable messages into error results, never silence.

Celery's default is to log a foreign, undecodable or unregistered message and drop it,
and to stop the worker on anything its task handler did not expect (headers of the
wrong types, a time limit that is no pair, ...). Here each such message goes to the
worker's :class:`DeadLetters` (for an agent, its
:class:`~carbonedge.node_agent.poison.PoisonHandler`: dead-lettered, counted, answered
when its request id is known) and is acknowledged; the worker keeps serving. What is read
out of a kombu message (headers, properties, the raw body) is read here, with the queue
guard's envelope checks (:mod:`carbonedge.transport.queue_guard`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from celery.worker.consumer import Consumer
from vine import promise

from carbonedge.errors import CarbonEdgeError, InvalidMessage, InvalidRequest
from carbonedge.protocol import keys
from carbonedge.transport.queue_guard import UNDECODABLE_CONTENT_TYPE, message_problem

__all__ = ["DeadLetters", "GuardedConsumer"]

log = logging.getLogger(__name__)


class DeadLetters(Protocol):
    """What records and answers a message the worker cannot run."""

    def handle(self, task_id: object, error: CarbonEdgeError, *, content_type: str = "",
               raw: bytes = b"") -> None: ...


class GuardedConsumer(Consumer):  # type: ignore[misc]
    """Celery's worker consumer with dead-lettering of bad messages."""

    on_reconnect: Callable[[], object] | None = None
    """Set by the agent: hands back the requests a broken broker connection orphaned."""
    on_message: Callable[[], object] | None = None
    """Set by the agent: called as each task message arrives (a task's CPU starts here)."""
    poison: DeadLetters | None = None
    """Set by the agent: records and answers messages it cannot run."""

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

    def create_task_handler(self, promise: Any = promise) -> Callable[[Any], Any]:
        """Celery's handler, announcing each message's arrival first; a message it chokes
        on is dead-lettered."""
        handler = super().create_task_handler(promise)
        broker_errors = (tuple(getattr(self, "connection_errors", ()))
                         + tuple(getattr(self, "channel_errors", ())))
        on_message = type(self).on_message

        def on_task_received(message: Any) -> Any:
            if on_message is not None:
                on_message()
            try:
                return handler(message)
            except Exception as e:
                # kombu's Redis transport counts KeyError as a connection error: a message
                # without an 'id' header would then restart the consumer, which restores
                # the message to the head of the queue, for ever
                if isinstance(e, broker_errors) and not isinstance(e, KeyError):
                    raise  # Celery reconnects; the watchdog and hand-back keep the request
                self._dead_letter(message, InvalidMessage(
                    f"the worker could not take this message: {type(e).__name__}: "
                    f"{str(e)[:200]}"))
                _ack(message)
                return None

        return on_task_received

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        if getattr(message, "content_type", None) == UNDECODABLE_CONTENT_TYPE:
            self._dead_letter(message, message_problem(message))
        else:
            self._dead_letter(message, InvalidMessage(f"message could not be decoded: {exc}"))
        _ack(message)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead_letter(message, InvalidMessage("message is not a CarbonEdge task"))
        message.reject_log_error(log, self.connection_errors)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        name = _headers(message).get("task")
        self._dead_letter(message, InvalidRequest(
            f"task {str(name)[:80]!r} is not served here; known: {keys.TASK_INFER}, "
            f"{keys.TASK_PING}, {keys.TASK_INFER_SEGMENT}", field="task"))
        message.reject_log_error(log, self.connection_errors)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, InvalidMessage(f"invalid task message: {exc}"))
        message.reject_log_error(log, self.connection_errors)

    def _dead_letter(self, message: Any, error: CarbonEdgeError) -> None:
        task_id = _headers(message).get("id") or _properties(message).get("correlation_id")
        if self.poison is None:  # not an agent's consumer: log it at least
            log.error("undeliverable message (task id %s): %s", task_id, error)
            return
        self.poison.handle(task_id, error, content_type=str(getattr(message, "content_type",
                                                                   "") or ""),
                           raw=_raw_body(message))


def _ack(message: Any) -> None:
    """Acknowledge a message that will not run (once; a broker error is logged)."""
    try:
        if not message.acknowledged:
            message.ack()
    except Exception as e:  # a broken connection: Celery reconnects and the watchdog
        log.warning("could not acknowledge a dead-lettered message: %s", e)


def _raw_body(message: Any) -> bytes:
    """The message's body as received (for a wrapped poison item: the item itself)."""
    body = getattr(message, "body", b"") or b""
    if isinstance(body, str):
        return body.encode("utf-8", "surrogateescape")
    return bytes(body) if isinstance(body, (bytes, bytearray)) else b""


def _headers(message: Any) -> dict[str, Any]:
    headers = getattr(message, "headers", None)
    return headers if isinstance(headers, dict) else {}


def _properties(message: Any) -> dict[str, Any]:
    props = getattr(message, "properties", None)
    return props if isinstance(props, dict) else {}
