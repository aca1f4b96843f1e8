"""The Celery tasks an agent runs: thin wrappers around :class:`AgentRuntime`."""

from __future__ import annotations

from typing import Any

from celery import Celery

from carbonedge.node_agent.runtime import AgentRuntime
from carbonedge.protocol import keys


def register_tasks(app: Celery, runtime: AgentRuntime) -> None:
    """Bind the agent's tasks to ``runtime`` (one runtime per worker process)."""

    @app.task(name=keys.TASK_INFER, acks_late=True, reject_on_worker_lost=True)
    def infer(payload: Any) -> dict[str, Any]:
        return runtime.infer(payload)

    @app.task(name=keys.TASK_PING, acks_late=True, reject_on_worker_lost=True)
    def ping(payload: Any) -> dict[str, Any]:
        return runtime.ping(payload)
