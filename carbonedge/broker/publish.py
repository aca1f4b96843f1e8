"""Publishing a task to one node's queue under the request's id.

``Celery.send_task`` also subscribes the sender to the task's result channel, which a
dispatcher that never reads results must not do (one subscription per request, forever),
so the message is built and sent through Celery's own AMQP helpers instead.
"""

from __future__ import annotations

from typing import Any

from celery import Celery


class TaskPublisher:
    """Sends ``name(payload)`` to a queue with a chosen task id, reusing one producer."""

    def __init__(self, app: Celery) -> None:
        self._app = app
        self._amqp = app.amqp
        self._routes: dict[str, dict[str, Any]] = {}

    def publish(self, name: str, payload: dict[str, Any], *, queue: str, task_id: str) -> None:
        message = self._amqp.create_task_message(task_id, name, (payload,), {})
        options = self._routes.get(queue)
        if options is None:
            options = self._amqp.router.route({"queue": queue}, name, (payload,), {})
            self._routes[queue] = options
        with self._app.producer_or_acquire() as producer:
            with producer.connection._reraise_as_library_errors():
                self._amqp.send_task_message(producer, name, message, **options)
