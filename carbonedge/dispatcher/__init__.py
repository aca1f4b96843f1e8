"""The asyncio dispatcher: reads the request stream, routes each request (telemetry,
quarantine, budgets, deferral, model choice, partitioning), publishes its task, and
recovers the work of dead nodes and dead dispatchers."""

from carbonedge.dispatcher.dispatcher import Dispatcher, run_dispatcher

__all__ = ["Dispatcher", "run_dispatcher"]
