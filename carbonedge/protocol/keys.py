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
"""Energy rows written by agents (one per task, idle and start-up stretches), with their
``device`` charge; read by the carbon service, which settles their ``measured`` one."""

LEDGER_GROUP = f"{PREFIX}:carbon"
"""Consumer group of carbon services on :data:`LEDGER_STREAM`."""

DEFERRED = f"{PREFIX}:deferred"
"""Sorted set: requests (msgpack) held for a lower-carbon slot, scored by release time."""

DEFERRED_TOTAL = f"{PREFIX}:deferred:total"
"""Counter of requests ever deferred."""

HOST_POWER = f"{PREFIX}:carbon:host"
"""Hash: the host's latest CPU power, idle power and busy CPUs, from the carbon service."""

CARBON_SAMPLES = f"{PREFIX}:carbon:samples"
"""Stream of the carbon service's host samples (energy, busy CPU, per-node CPU): what a
restarted service settles earlier ledger rows from."""

CARBON_SETTLED = f"{PREFIX}:carbon:settled"
"""Stream of ledger rows' ``measured`` charges, as the carbon service settles them."""

CARBON_WINDOWS = f"{PREFIX}:carbon:windows"
"""Stream of the carbon service's reconciliation windows (host vs attributed energy)."""

DEAD_LETTER_STREAM = f"{PREFIX}:deadletter"
"""Messages that could not be delivered or decoded, with the reason."""

DISPATCHER_ALIVE = f"{PREFIX}:dispatcher:alive"
"""Hash dispatcher consumer name -> last beat (unix seconds)."""

REJECTED = f"{PREFIX}:rejected"
"""Hash ``<process>|<source>`` -> values read from Redis that were ignored as malformed
(see :mod:`carbonedge.protocol.untrusted`)."""

QUARANTINE = f"{PREFIX}:quarantine"
"""Hash node id -> why and until when dispatchers keep it out of scheduling (JSON)."""

PROCESSES = f"{PREFIX}:processes"
"""Hash process name -> what the supervisor of `carbonedge up` knows of it (JSON)."""

PROCESSES_BEAT = f"{PREFIX}:processes:beat"
"""The supervisor's last beat (unix seconds; expires when it stops beating)."""


def corrupt_key(key: str, ts: float) -> str:
    """Where a key of the wrong Redis type is moved aside (kept for inspection)."""
    return f"{PREFIX}:corrupt:{int(ts)}:{key}"

TASK_INFER = "carbonedge.infer"
TASK_PING = "carbonedge.ping"
TASK_BY_KIND = {"infer": TASK_INFER, "ping": TASK_PING}
"""Celery task name an agent runs for a whole-model request."""

TASK_INFER_SEGMENT = "carbonedge.infer_segment"
"""Celery task that runs one segment of a partitioned request and hands on to the next."""

REQUEST_FIELD = "p"
"""The single stream-entry field that holds the msgpack request."""


def host_power_key(host_id: str = "") -> str:
    """:data:`HOST_POWER` of one host where agents run on several (``host_id`` set)."""
    return f"{HOST_POWER}:{host_id}" if host_id else HOST_POWER


def host_samples_key(host_id: str = "") -> str:
    """:data:`CARBON_SAMPLES` of one host where agents run on several (``host_id`` set)."""
    return f"{CARBON_SAMPLES}:{host_id}" if host_id else CARBON_SAMPLES


def host_nodes_key(host_id: str) -> str:
    """Set of the node ids whose agents run on host ``host_id`` (they say so each beat)."""
    return f"{PREFIX}:host:{host_id}:nodes"


def ledger_group(host_id: str = "") -> str:
    """The carbon service's consumer group on the ledger: one per host, each of which
    keeps the rows of its own host's nodes."""
    return f"{LEDGER_GROUP}:{host_id}" if host_id else LEDGER_GROUP


def budget_spend_key(period: int) -> str:
    """Hash tenant -> grams of CO2 spent in budget period ``period``."""
    return f"{PREFIX}:budget:{period}"


def node_key(node_id: str) -> str:
    """The heartbeat hash of a node (expires after the missed-beat limit)."""
    return f"{PREFIX}:node:{node_id}"


def node_queue(node_id: str) -> str:
    """The Celery queue a node's agent consumes, and no other agent does."""
    return f"{PREFIX}.node.{node_id}"


def input_key(request_id: str) -> str:
    """Where a large request input waits for its agent (the request says ``input_ref``)."""
    return f"{PREFIX}:input:{request_id}"


# -- delivery guarantees (see carbonedge.dispatcher.recovery and carbonedge.transport.delivery) ----

ATTEMPTS = f"{PREFIX}:attempts"
"""Hash request id -> how many times it was re-dispatched after its node died."""

RECOVERIES = f"{PREFIX}:recoveries"
"""Stream of re-dispatches: which node died, when, and how many requests it held."""

DELIVERY_STATS = f"{PREFIX}:delivery"
"""Hash of counters: late results dropped, moved requests skipped, requests re-dispatched."""

KOMBU_UNACKED = "unacked"
KOMBU_UNACKED_INDEX = "unacked_index"
"""kombu's Redis transport keeps delivered, unacknowledged messages here (its defaults)."""


def assigned_key(node_id: str) -> str:
    """Hash request id -> request bytes of every request dispatched to a node and not
    yet answered: what is re-dispatched when the node dies."""
    return f"{PREFIX}:assigned:{node_id}"


def done_key(request_id: str) -> str:
    """Set once, by the first result delivered for a request; later ones are dropped."""
    return f"{PREFIX}:done:{request_id}"


def block_profile_key(model: str, node_id: str) -> str:
    """A node's profile of ``model``'s blocks (msgpack; written once per agent and model)."""
    return f"{PREFIX}:blocks:{model}:{node_id}"


def activation_key(request_id: str, segment: int, attempt: int = 1) -> str:
    """The activation segment ``segment`` of a partitioned request reads (raw msgpack bin);
    a re-dispatched request (``attempt`` > 1) never reads one of an earlier route."""
    return f"{PREFIX}:act:{request_id}:{attempt}:{segment}"
