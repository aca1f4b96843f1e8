"""Waiting for results: Celery's result-backend keys and their pub/sub announcements.

An agent's result is stored under ``celery-task-meta-<id>`` and published on a channel
of the same name. A listener subscribes *before* the request is sent, so it cannot miss
the announcement, and reads the stored key once in case it raced ahead anyway.
"""

from __future__ import annotations

import time
from typing import Any

import msgpack
import redis

from carbonedge.errors import CarbonEdgeError, InferenceFailed, InvalidMessage

__all__ = ["RESULT_KEY_PREFIX", "ResultListener", "celery_failure", "decode_meta", "result_key"]

RESULT_KEY_PREFIX = "celery-task-meta-"


def result_key(request_id: str) -> str:
    return RESULT_KEY_PREFIX + request_id


def decode_meta(raw: bytes) -> Any:
    """The task's return value from Celery's stored meta, or the failure it records."""
    try:
        meta = msgpack.unpackb(raw, raw=False)
    except (ValueError, msgpack.UnpackException) as e:
        raise InvalidMessage(f"result metadata is not msgpack: {e}") from e
    if not isinstance(meta, dict):
        raise InvalidMessage("result metadata is not a map")
    if meta.get("status") != "SUCCESS":
        raise celery_failure(meta.get("result"))
    return meta.get("result")


def celery_failure(meta_result: Any) -> CarbonEdgeError:
    """An error for a task Celery itself marked as failed (not one of our error maps)."""
    if isinstance(meta_result, dict):
        kind = meta_result.get("exc_type", "error")
        msg = meta_result.get("exc_message", meta_result)
        return InferenceFailed(f"task failed in Celery: {kind}: {msg}")
    return InferenceFailed(f"task failed in Celery: {meta_result!r}")


class ResultListener:
    """One pub/sub connection that collects the results of many outstanding requests.

    Not thread-safe: one per client, used by the thread that owns the client.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._arrived: dict[str, bytes] = {}
        self._watched: set[str] = set()
        self._checked: set[str] = set()
        self.to_delete: list[str] = []
        """Keys of results already read, deleted with the next request's round trip."""

    def watch(self, request_id: str) -> None:
        """Subscribe to a request's result before the request is sent."""
        self._watched.add(request_id)
        try:
            self._pubsub.subscribe(result_key(request_id))
        except (redis.ConnectionError, redis.TimeoutError):
            self._reconnect()  # raises again while Redis is still away

    def _reconnect(self) -> None:
        """A new subscription after Redis went away: a pub/sub connection that broke
        stays broken, and results announced meanwhile are only in their stored keys."""
        self._pubsub.close()
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._checked.clear()  # read every stored result again
        if self._watched:
            self._pubsub.subscribe(*(result_key(i) for i in self._watched))

    def wait(self, request_id: str, timeout: float) -> bytes | None:
        """The raw stored meta of ``request_id``, or None after ``timeout`` seconds."""
        key = result_key(request_id)
        deadline = time.monotonic() + timeout
        if request_id not in self._watched:
            self.watch(request_id)
        try:
            while request_id not in self._arrived:
                if request_id not in self._checked:
                    self._checked.add(request_id)
                    stored = self._client.get(key)
                    if stored is not None:
                        self._arrived[request_id] = stored
                        break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                try:
                    message = self._pubsub.get_message(timeout=min(remaining, 1.0))
                except (redis.ConnectionError, redis.TimeoutError):
                    self._reconnect()
                    continue
                if message is not None and message["type"] == "message":
                    channel = message["channel"].decode()
                    self._arrived[channel[len(RESULT_KEY_PREFIX):]] = message["data"]
            raw = self._arrived.pop(request_id)
        finally:
            self._checked.discard(request_id)
        self._watched.discard(request_id)
        self._pubsub.unsubscribe(key)
        self.to_delete.append(key)
        return raw

    def close(self) -> None:
        if self.to_delete:
            self._client.delete(*self.to_delete)
            self.to_delete.clear()
        self._pubsub.close()
