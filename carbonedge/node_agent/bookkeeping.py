"""Post-task Redis bookkeeping."""

from __future__ import annotations

import logging
import queue
import threading

import redis

from carbonedge.protocol import keys

log = logging.getLogger(__name__)


class TaskBookkeeper:
    """Releases in-flight counts at once; the rest from a background thread.

    The count must drop before the result is published (a producer's next request is
    scheduled from it). Deleting the consumed input and adding the task's carbon to the
    node's total can wait, and work queued meanwhile shares one pipeline.
    """

    def __init__(self, client: redis.Redis, node_id: str) -> None:
        self._client = client
        self._node_id = node_id
        self._later: queue.SimpleQueue[tuple[str | None, float] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ce-bookkeeping", daemon=True)
        self._thread.start()

    def task_done(self, *, counted: bool, input_key: str | None, carbon_g: float = 0.0) -> None:
        """After a task: release its in-flight count (if the dispatcher counted it) at once;
        delete its input and count its carbon in the background."""
        if counted:
            try:
                self._client.hincrby(keys.IN_FLIGHT, self._node_id, -1)
            except redis.RedisError as e:
                log.warning("could not release an in-flight count: %s", e)
        if input_key or carbon_g > 0:
            self._later.put((input_key, carbon_g))

    def close(self) -> None:
        self._later.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            item = self._later.get()
            if item is None:
                return
            batch = [item]
            while not self._later.empty():
                more = self._later.get()
                if more is None:
                    self._flush(batch)
                    return
                batch.append(more)
            self._flush(batch)

    def _flush(self, batch: list[tuple[str | None, float]]) -> None:
        inputs = [key for key, _ in batch if key]
        carbon = sum(grams for _, grams in batch)
        try:
            pipe = self._client.pipeline(transaction=False)
            if inputs:
                pipe.delete(*inputs)
            if carbon > 0:
                pipe.hincrbyfloat(keys.CARBON_TOTALS, self._node_id, carbon)
            pipe.execute()
        except redis.RedisError as e:
            log.warning("post-task bookkeeping failed (%d inputs, %.3g g): %s",
                        len(inputs), carbon, e)
