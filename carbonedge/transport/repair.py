"""Repairing CarbonEdge's own keys when someone left the wrong thing in them.

A counter hash field that is not an integer makes every later HINCRBY fail; a key of the
wrong Redis type (a string where the in-flight hash belongs) makes every command on it
fail. Both would stop a process that writes there for good. They are repaired in the
smallest way that keeps what can be kept:

* a key of the wrong type is moved aside, not deleted, to ``ce:corrupt:<ts>:<key>``
  (kept a day for inspection); the next write recreates it;
* a counter field that is not an integer is reset to what it should count (the node's
  assigned-registry size for an in-flight count), only if it still holds the bad value.

Both are single Lua scripts, so a repair never overwrites a value that changed meanwhile.
"""

from __future__ import annotations

import logging
from typing import Any

from carbonedge.protocol import keys
from carbonedge.protocol.lua import LuaScript
from carbonedge.protocol.untrusted import Rejections

__all__ = ["RESET_FIELD", "cap_in_flight", "is_not_a_number", "reset_field", "reset_in_flight"]

log = logging.getLogger(__name__)

RESET_IN_FLIGHT = LuaScript(__package__, "reset_in_flight.lua")
CAP_IN_FLIGHT = LuaScript(__package__, "cap_in_flight.lua")
RESET_FIELD = LuaScript(__package__, "reset_field.lua")
"""KEYS: a hash; ARGV: field, the bad value, the value to put instead ('' deletes)."""

async def reset_in_flight(r: Any, node_id: str, bad: bytes, rejections: Rejections) -> None:
    """An in-flight count that is not an integer becomes the node's registry size."""
    held = await RESET_IN_FLIGHT(r, [keys.IN_FLIGHT, keys.assigned_key(node_id)],
                                 [node_id, bad])
    rejections.reject("in-flight", node_id, f"count {bad[:40]!r} is not an integer"
                      + (f": reset to the {held} request(s) assigned to it"
                         if held is not None else ""))


async def cap_in_flight(r: Any, node_id: str, rejections: Rejections) -> bool:
    """Bring a node's in-flight count down to its registry's size if it is above it."""
    capped = await CAP_IN_FLIGHT(r, [keys.IN_FLIGHT, keys.assigned_key(node_id)], [node_id])
    if capped:
        count, held = capped
        rejections.reject("in-flight", node_id, f"count {count} is more than the {held} "
                          "request(s) assigned to it: lowered to that")
    return bool(capped)


async def reset_field(r: Any, key: str, field: bytes | str, bad: bytes, value: str,
                      rejections: Rejections, source: str) -> None:
    """A hash field holding a value its writers cannot add to: reset (or delete) it."""
    await RESET_FIELD(r, [key], [field, bad, value])
    name = field.decode(errors="backslashreplace") if isinstance(field, bytes) else field
    rejections.reject(source, f"{key} {name}", f"value {bad[:40]!r} is not a number: "
                      + ("removed" if value == "" else f"reset to {value}"))


def is_not_a_number(error: BaseException) -> bool:
    """Whether a command failed because a field it adds to holds no number."""
    text = str(error)
    return "not an integer" in text or "not a valid float" in text or "not a float" in text
