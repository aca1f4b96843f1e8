"""Post-task Redis bookkeeping."""

from __future__ import annotations

import logging
import queue
import threading

import redis

from carbonedge.protocol import keys

log = logging.getLogger(__name__)


class TaskBookkeeper:
    """Releases in-flight counts at once; deletes consumed inputs from a background thread.

    The count must drop before the result is published (a producer's next request is
    scheduled from it); deleting the input can wait, and deletions queued meanwhile share
    one command.
    """

    def __init__(self, client: redis.Redis, node_id: str) -> None:
        self._client = client
        self._node_id = node_id
        self._inputs: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ce-bookkeeping", daemon=True)
        self._thread.start()

    def task_done(self, *, counted: bool, input_key: str | None) -> None:
        """After a task: release its in-flight count (if the dispatcher counted it) and input."""
        if counted:
            try:
                self._client.hincrby(keys.IN_FLIGHT, self._node_id, -1)
            except redis.RedisError as e:
                log.warning("could not release an in-flight count: %s", e)
        if input_key:
            self._inputs.put(input_key)

    def close(self) -> None:
        self._inputs.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            key = self._inputs.get()
            if key is None:
                return
            batch = [key]
            while not self._inputs.empty():
                more = self._inputs.get()
                if more is None:
                    self._delete(batch)
                    return
                batch.append(more)
            self._delete(batch)

    def _delete(self, batch: list[str]) -> None:
        try:
            self._client.delete(*batch)
        except redis.RedisError as e:
            log.warning("could not delete %d consumed input(s): %s", len(batch), e)
