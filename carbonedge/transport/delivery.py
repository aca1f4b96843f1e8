"""Exactly one result per request: the first writer wins, later results are dropped.

A request can run twice: its node is declared dead (heartbeat expired) and the request is
re-dispatched, but the node was only frozen and finishes it after all. Every result, good
or error, is therefore stored through one Lua script that sets ``ce:done:<id>`` with NX
and stores and publishes Celery's result meta only when that succeeded. The same script
takes the request off the node's ``ce:assigned:<node>`` registry, so a delivered request
is never re-dispatched.

The meta is what Celery's Redis result backend writes (``celery-task-meta-<id>``, msgpack,
published on a channel of the same name), so :class:`~carbonedge.transport.listener.ResultListener`
and Celery's own ``AsyncResult`` read it unchanged.
"""

from __future__ import annotations

import datetime
from typing import Any

import msgpack

from carbonedge.protocol import keys
from carbonedge.protocol.lua import LuaScript
from carbonedge.transport.listener import result_key

DELIVER = LuaScript(__package__, "deliver.lua")
"""Stores and announces a result unless one was delivered first (see deliver.lua)."""


def encode_meta(request_id: str, result: Any) -> bytes:
    """Celery's stored meta of a successful task returning ``result`` (msgpack)."""
    return msgpack.packb({
        "status": "SUCCESS",
        "result": result,
        "traceback": None,
        "children": [],
        "date_done": datetime.datetime.now(datetime.UTC).isoformat(),
        "task_id": request_id,
    }, use_bin_type=True)


def delivery_call(request_id: str, result: Any, *, node: str | None = None,
                  counted: bool = False, expires_s: int = 3600) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of :data:`DELIVER` for one result (for any client or pipeline)."""
    node = node or ""
    script_keys = [
        keys.done_key(request_id),
        result_key(request_id),
        keys.assigned_key(node) if node else keys.assigned_key("-"),
        keys.IN_FLIGHT,
        keys.ATTEMPTS,
        keys.DELIVERY_STATS,
    ]
    args = [request_id, encode_meta(request_id, result), int(expires_s), node,
            "1" if counted else "0"]
    return script_keys, args


def deliver(client: Any, request_id: str, result: Any, *, node: str | None = None,
            counted: bool = False, expires_s: int = 3600) -> bool:
    """Store and announce ``result`` unless one was already delivered; True if it was ours.

    ``client`` is a blocking redis client or pipeline (a pipeline returns itself; read
    the outcome from its ``execute``).
    """
    script_keys, args = delivery_call(request_id, result, node=node, counted=counted,
                                      expires_s=expires_s)
    return bool(DELIVER(client, script_keys, args))
