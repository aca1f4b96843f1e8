"""Every Redis key, stream and queue name CarbonEdge uses, in one place."""

from __future__ import annotations

PREFIX = "ce"

REQUEST_STREAM = f"{PREFIX}:requests"
"""Producers XADD requests here; dispatchers read it through :data:`DISPATCH_GROUP`."""

DISPATCH_GROUP = f"{PREFIX}:dispatchers"

NODES = f"{PREFIX}:nodes"
"""Set of every node id that has ever sent a heartbeat (dead ones included)."""

IN_FLIGHT = f"{PREFIX}:inflight"
"""Hash node id -> requests dispatched to it and not yet finished."""

DECISIONS = f"{PREFIX}:decisions"
"""Hash ``<node>|<mode>`` -> number of scheduling decisions."""

CARBON_TOTALS = f"{PREFIX}:carbon_g"
"""Hash node id -> grams of CO2 of every task the node has finished (for status views)."""

ENERGY_TOTALS = f"{PREFIX}:energy_kwh"
"""Hash node id -> kWh of every task the node has finished."""

LEDGER_STREAM = f"{PREFIX}:ledger"
"""Per-task energy rows written by agents, read by the carbon service."""

LEDGER_GROUP = f"{PREFIX}:carbon"
"""Consumer group of carbon services on :data:`LEDGER_STREAM`."""

CARBON_WINDOWS = f"{PREFIX}:carbon:windows"
"""Stream of the carbon service's reconciliation windows (host vs attributed energy)."""

DEAD_LETTER_STREAM = f"{PREFIX}:deadletter"
"""Messages that could not be delivered or decoded, with the reason."""

DISPATCHER_ALIVE = f"{PREFIX}:dispatcher:alive"
"""Hash dispatcher consumer name -> last beat (unix seconds)."""

TASK_INFER = "carbonedge.infer"
TASK_PING = "carbonedge.ping"
TASK_BY_KIND = {"infer": TASK_INFER, "ping": TASK_PING}
"""Celery task name an agent runs for a whole-model request."""

REQUEST_FIELD = "p"
"""The single stream-entry field that holds the msgpack request."""


def node_key(node_id: str) -> str:
    """The heartbeat hash of a node (expires after the missed-beat limit)."""
    return f"{PREFIX}:node:{node_id}"


def node_queue(node_id: str) -> str:
    """The Celery queue a node's agent consumes, and no other agent does."""
    return f"{PREFIX}.node.{node_id}"


def input_key(request_id: str) -> str:
    """Where a large request input waits for its agent (the request says ``input_ref``)."""
    return f"{PREFIX}:input:{request_id}"
