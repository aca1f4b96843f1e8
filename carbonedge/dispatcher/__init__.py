"""The asyncio dispatcher: reads the request stream, routes each request through a
pipeline of steps (:mod:`~carbonedge.dispatcher.steps`: validation, budgets, deferral,
model and node choice, SLO, partitioning), publishes its task, and recovers the work of
dead nodes and dead dispatchers."""

from carbonedge.dispatcher.dispatcher import Dispatcher, run_dispatcher

__all__ = ["Dispatcher", "run_dispatcher"]
