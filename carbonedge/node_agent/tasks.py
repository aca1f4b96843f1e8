"""The Celery tasks an agent runs: thin wrappers around :class:`AgentRuntime`.

Results are not stored by Celery (``ignore_result``) but delivered by the
:class:`DeliveryGuard`, so that a request run twice (its node was declared dead, then
finished it anyway) is answered exactly once.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery

from carbonedge.errors import CarbonEdgeError, InvalidMessage
from carbonedge.node_agent.guard import DeliveryGuard
from carbonedge.node_agent.poison import PoisonHandler
from carbonedge.node_agent.runtime import AgentRuntime
from carbonedge.node_agent.segments import SegmentExecutor
from carbonedge.protocol import keys
from carbonedge.protocol.task import Task


def register_tasks(app: Celery, runtime: AgentRuntime, guard: DeliveryGuard,
                   poison: PoisonHandler, client: redis.Redis) -> SegmentExecutor:
    """Bind the agent's tasks to ``runtime`` (one runtime per worker process); returns the
    executor of partitioned requests."""

    @app.task(name=keys.TASK_INFER, bind=True, acks_late=True, reject_on_worker_lost=True,
              ignore_result=True)
    def infer(celery_task: Any, *args: Any, **kwargs: Any) -> bool:
        task = _task(celery_task, args, kwargs, poison)
        return task is not None and guard.run(celery_task.request.id, task, runtime.infer)

    @app.task(name=keys.TASK_PING, bind=True, acks_late=True, reject_on_worker_lost=True,
              ignore_result=True)
    def ping(celery_task: Any, *args: Any, **kwargs: Any) -> bool:
        task = _task(celery_task, args, kwargs, poison)
        return task is not None and guard.run(celery_task.request.id, task, runtime.ping)

    return register_segment_task(app, runtime, guard, poison, client)


def register_segment_task(app: Celery, runtime: AgentRuntime, guard: DeliveryGuard,
                          poison: PoisonHandler, client: redis.Redis) -> SegmentExecutor:
    """The task of partitioned requests (the executor profiles the models at start-up)."""
    executor = SegmentExecutor(runtime, app, client)

    @app.task(name=keys.TASK_INFER_SEGMENT, bind=True, acks_late=True,
              reject_on_worker_lost=True, ignore_result=True)
    def infer_segment(celery_task: Any, *args: Any, **kwargs: Any) -> bool:
        task = _task(celery_task, args, kwargs, poison, segment=True)
        if task is None:
            return False
        task_id = celery_task.request.id
        if not guard.may_run(task_id, task):
            executor.discard(task)
            return False
        outcome = executor.finish(task, runtime.infer_segment(task, executor.run))
        if outcome is None:  # handed on to the next segment's node
            return True
        return guard.run(task_id, task, lambda _: outcome)

    return executor


def _task(celery_task: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
          poison: PoisonHandler, *, segment: bool = False) -> Task | None:
    """The task a message carries: exactly one payload, a valid task map (with a
    ``segment`` for a segment task). Anything else is a poison message: dead-lettered and
    answered with the error naming the field, and None is returned."""
    try:
        if len(args) != 1 or kwargs:
            raise InvalidMessage(
                f"a task message carries exactly one payload argument; this one has "
                f"{len(args)} positional and {len(kwargs)} keyword argument(s)", field="args")
        task = Task.from_wire(args[0])
        if segment and task.segment is None:
            raise InvalidMessage("missing field 'segment'", field="segment")
        return task
    except CarbonEdgeError as e:
        poison.handle(celery_task.request.id, e)
        return None
