"""The Celery tasks an agent runs: thin wrappers around :class:`AgentRuntime`.

Results are not stored by Celery (``ignore_result``) but delivered by the
:class:`DeliveryGuard`, so that a request run twice (its node was declared dead, then
finished it anyway) is answered exactly once.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery

from carbonedge.errors import InvalidMessage
from carbonedge.node_agent.guard import DeliveryGuard
from carbonedge.node_agent.poison import PoisonHandler
from carbonedge.node_agent.runtime import AgentRuntime
from carbonedge.node_agent.segments import SegmentExecutor
from carbonedge.protocol import keys


def register_tasks(app: Celery, runtime: AgentRuntime, guard: DeliveryGuard,
                   poison: PoisonHandler, client: redis.Redis) -> SegmentExecutor:
    """Bind the agent's tasks to ``runtime`` (one runtime per worker process); returns the
    executor of partitioned requests."""

    @app.task(name=keys.TASK_INFER, bind=True, acks_late=True, reject_on_worker_lost=True,
              ignore_result=True)
    def infer(task: Any, *args: Any, **kwargs: Any) -> bool:
        payload = _payload(task, args, kwargs, poison)
        return payload is not _REFUSED and guard.run(task.request.id, payload, runtime.infer)

    @app.task(name=keys.TASK_PING, bind=True, acks_late=True, reject_on_worker_lost=True,
              ignore_result=True)
    def ping(task: Any, *args: Any, **kwargs: Any) -> bool:
        payload = _payload(task, args, kwargs, poison)
        return payload is not _REFUSED and guard.run(task.request.id, payload, runtime.ping)

    return register_segment_task(app, runtime, guard, poison, client)


def register_segment_task(app: Celery, runtime: AgentRuntime, guard: DeliveryGuard,
                          poison: PoisonHandler, client: redis.Redis) -> SegmentExecutor:
    """The task of partitioned requests (the executor profiles the models at start-up)."""
    executor = SegmentExecutor(runtime, app, client)

    @app.task(name=keys.TASK_INFER_SEGMENT, bind=True, acks_late=True,
              reject_on_worker_lost=True, ignore_result=True)
    def infer_segment(task: Any, *args: Any, **kwargs: Any) -> bool:
        payload = _payload(task, args, kwargs, poison)
        if payload is _REFUSED:
            return False
        if not guard.may_run(task.request.id, payload):
            executor.discard(payload)
            return False
        outcome = executor.finish(payload, runtime.infer_segment(payload, executor.run))
        if outcome is None:  # handed on to the next segment's node
            return True
        return guard.run(task.request.id, payload, lambda _: outcome)

    return executor


_REFUSED = object()


def _payload(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
             poison: PoisonHandler) -> Any:
    """The one payload a task message carries; a message with other arguments is a
    poison message (dead-lettered and answered), and :data:`_REFUSED` is returned."""
    if len(args) == 1 and not kwargs:
        return args[0]
    poison.handle(task.request.id, InvalidMessage(
        f"a task message carries exactly one payload argument; this one has {len(args)} "
        f"positional and {len(kwargs)} keyword argument(s)", field="args"))
    return _REFUSED
