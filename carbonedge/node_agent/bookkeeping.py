"""Post-task Redis bookkeeping, off the task's critical path."""

from __future__ import annotations

import logging
import queue
import threading

import redis

from carbonedge.protocol import keys

log = logging.getLogger(__name__)


class TaskBookkeeper:
    """Releases in-flight counts and deletes consumed inputs from a background thread.

    A task's result should not wait for bookkeeping round trips: the count lags the
    result by well under a millisecond, and work queued meanwhile shares one pipeline.
    """

    def __init__(self, client: redis.Redis, node_id: str) -> None:
        self._client = client
        self._node_id = node_id
        self._pending: queue.SimpleQueue[tuple[bool, str | None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ce-bookkeeping", daemon=True)
        self._thread.start()

    def task_done(self, *, counted: bool, input_key: str | None) -> None:
        """After a task: release its in-flight count (if the dispatcher counted it) and input."""
        if counted or input_key:
            self._pending.put((counted, input_key))

    def close(self) -> None:
        self._pending.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            item = self._pending.get()
            if item is None:
                return
            batch = [item]
            while not self._pending.empty():
                more = self._pending.get()
                if more is None:
                    self._flush(batch)
                    return
                batch.append(more)
            self._flush(batch)

    def _flush(self, batch: list[tuple[bool, str | None]]) -> None:
        released = sum(counted for counted, _ in batch)
        inputs = [key for _, key in batch if key]
        try:
            pipe = self._client.pipeline(transaction=False)
            if released:
                pipe.hincrby(keys.IN_FLIGHT, self._node_id, -released)
            if inputs:
                pipe.delete(*inputs)
            pipe.execute()
        except redis.RedisError as e:
            log.warning("post-task bookkeeping failed (%d in flight, %d inputs): %s",
                        released, len(inputs), e)
