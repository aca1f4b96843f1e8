"""An agent's side of the delivery guarantees: run only what is still ours, deliver once.

Before running a request the dispatcher routed here (``counted``), the agent checks that
recovery did not move it: when the node was declared dead and came back, its queue may
hold requests that were meanwhile re-dispatched elsewhere (gone from this node's
``ce:assigned`` registry, an attempt counted in ``ce:attempts``).
After running it, the result goes through :func:`carbonedge.transport.delivery.deliver`,
which drops it if another node's result was delivered first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from carbonedge.errors import CarbonEdgeError, InferenceFailed
from carbonedge.protocol import keys
from carbonedge.protocol.messages import error_result
from carbonedge.protocol.task import Task
from carbonedge.protocol.untrusted import parse_count
from carbonedge.transport.delivery import deliver

log = logging.getLogger(__name__)

DELIVERY_RETRY_S = 0.5


class DeliveryGuard:
    """Wraps an agent's task functions (one per worker process)."""

    def __init__(self, client: redis.Redis, node_id: str, *, expires_s: int = 3600,
                 retry_for_s: float = 60.0) -> None:
        self._client = client
        self.node_id = node_id
        self._expires_s = expires_s
        self._retry_for_s = retry_for_s
        self.skipped = 0
        self.late = 0

    def run(self, task_id: str, task: Task, work: Callable[[Task], dict[str, Any]]) -> bool:
        """Run ``work(task)`` if the request is still ours and deliver its result; returns
        whether a result of ours was delivered."""
        owner = self.node_id
        counted = task.counted
        if counted and self._moved(task_id, owner, task.attempt):
            self.skipped += 1
            log.warning("request %s was re-dispatched to another node while queued here; "
                        "not running it", task_id)
            self._count("skipped_moved")
            return False
        try:
            result = work(task)
        except Exception as e:  # a crash must still answer the request, never drop it
            log.exception("request %s crashed the agent's task", task_id)
            result = error_result(task_id, InferenceFailed(
                f"the agent failed while running the request: {type(e).__name__}: {e}"),
                node=self.node_id)
        delivered = self._deliver(task_id, result, counted, owner)
        if not delivered:
            self.late += 1
            log.warning("late result of request %s dropped: another node's was delivered "
                        "first", task_id)
        return delivered

    def reject(self, task_id: str, error: CarbonEdgeError) -> bool:
        """Answer a request this agent cannot run (a poison message) with ``error``.

        If the dispatcher routed it here, it leaves the node's registry and its in-flight
        count is released, as with a result; returns whether the answer was delivered (a
        result delivered before wins).
        """
        result = error_result(task_id, error, node=self.node_id)
        return self._deliver(task_id, result, True, self.node_id)

    def _moved(self, task_id: str, owner: str, attempt: int) -> bool:
        """Whether recovery re-dispatched the request away from ``owner``: it is not in
        the node's registry *and* the recovery scripts counted an attempt at least as
        late as this message's. A request missing from the registry without such a count
        (its registry write failed, the registry was moved aside as corrupt) is run:
        delivery keeps the first result only."""
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.hexists(keys.assigned_key(owner), task_id)
            pipe.hget(keys.ATTEMPTS, task_id)
            owned, moves = pipe.execute(raise_on_error=False)
        except redis.RedisError as e:  # cannot tell: running it is safe, delivery is guarded
            log.warning("could not check ownership of %s: %s", task_id, e)
            return False
        if owned is True or owned == 1:
            return False
        moved = parse_count(moves) if not isinstance(moves, Exception) else None
        return moved is not None and moved >= attempt

    def may_run(self, task_id: str, task: Task) -> bool:
        """Whether a task that arrived here may run: one the dispatcher did not route
        (``counted``) always may; a routed one only while it is still assigned to this node
        (a request re-dispatched while its task waited here must not run twice)."""
        return not task.counted or self.owns(task_id)

    def owns(self, task_id: str) -> bool:
        """Whether ``task_id`` is in this node's registry (True when Redis cannot tell:
        running it is safe, as delivery is guarded)."""
        try:
            return bool(self._client.hexists(keys.assigned_key(self.node_id), task_id))
        except redis.RedisError as e:
            log.warning("could not check ownership of %s: %s", task_id, e)
            return True

    def _deliver(self, task_id: str, result: dict[str, Any], counted: bool, owner: str) -> bool:
        """Deliver, retrying through a Redis outage (the result must not be lost)."""
        deadline = time.monotonic() + self._retry_for_s
        while True:
            try:
                return deliver(self._client, task_id, result, node=owner,
                               counted=counted, expires_s=self._expires_s)
            except (redis.ConnectionError, redis.TimeoutError) as e:
                if time.monotonic() > deadline:
                    log.error("result of %s could not be delivered for %.0f s: %s",
                              task_id, self._retry_for_s, e)
                    raise
                time.sleep(DELIVERY_RETRY_S)

    def _count(self, name: str) -> None:
        try:
            self._client.hincrby(keys.DELIVERY_STATS, name, 1)
        except redis.RedisError:
            pass
