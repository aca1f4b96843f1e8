"""Poison messages: whatever is on a node's queue, the agent survives it and says so.

Anyone who can write to Redis can push anything onto ``ce.node.<id>``. The transport's
queue guard (:mod:`carbonedge.transport.queue_guard`) hands every item kombu cannot take
to the consumer's decode-error path (:mod:`carbonedge.transport.consumer`), and that
consumer hands every message it cannot run here: :class:`PoisonHandler` writes the item
to ``ce:deadletter`` with the reason, counts it under ``ce:rejected`` (``agent
<node>|queue-item``), answers the request with an error result when its id is known, and
the consumer acknowledges it: never retried, never blocking the queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import redis

from carbonedge.errors import CarbonEdgeError
from carbonedge.node_agent.guard import DeliveryGuard
from carbonedge.protocol import keys
from carbonedge.protocol.untrusted import Rejections, is_wrong_type, move_aside_sync

log = logging.getLogger(__name__)

DEAD_LETTER_MAXLEN = 10_000


class PoisonHandler:
    """Records, counts and answers what an agent cannot run (one per agent)."""

    def __init__(self, client: redis.Redis, node_id: str, guard: DeliveryGuard) -> None:
        self._client = client
        self.node_id = node_id
        self._guard = guard
        self.rejections = Rejections(f"agent {node_id}", log)
        self.handled = 0

    def handle(self, task_id: object, error: CarbonEdgeError, *, content_type: str = "",
               raw: bytes = b"") -> None:
        """Dead-letter one message; answer it if ``task_id`` is a request id."""
        self.handled += 1
        answer = task_id if isinstance(task_id, str) and 0 < len(task_id) <= 128 else None
        log.error("dead-lettered a message on %s (request %s): %s",
                  keys.node_queue(self.node_id), answer or "unknown", error.message)
        entry = {"ts": repr(time.time()), "source": keys.node_queue(self.node_id),
                 "node": self.node_id, "task_id": str(answer or ""), "error": error.message,
                 "content_type": content_type[:100], "size": str(len(raw)),
                 "head": raw[:64]}
        try:
            self._record(entry)
            if answer is not None:
                self._guard.reject(answer, error)
        except Exception:  # the dead letter itself must not stop the consumer
            log.exception("could not record the dead-lettered message %s", answer)

    def _record(self, entry: Mapping[str, Any]) -> None:
        for _ in range(2):
            pipe = self._client.pipeline(transaction=False)
            pipe.xadd(keys.DEAD_LETTER_STREAM, dict(entry), maxlen=DEAD_LETTER_MAXLEN,
                      approximate=True)
            pipe.hincrby(keys.REJECTED, f"agent {self.node_id}|queue-item", 1)
            replies = pipe.execute(raise_on_error=False)
            wrong = [(key, kind) for key, kind, reply in
                     zip((keys.DEAD_LETTER_STREAM, keys.REJECTED), ("stream", "hash"), replies,
                         strict=True)
                     if isinstance(reply, redis.ResponseError) and is_wrong_type(reply)]
            if not wrong:
                return
            for key, kind in wrong:  # holds nothing of ours: out of the way, then again
                move_aside_sync(self._client, key, kind, self.rejections)

