"""Values read from Redis are untrusted: parse them, or say once why they were ignored.

Anyone who can write to CarbonEdge's Redis can leave any bytes in any key: a heartbeat
field that is not UTF-8, a ``ce:nodes`` member that is no node id, a count that is not a
number, a hash where a stream belongs. Every long-lived process reads through these
helpers: a value that cannot be used is skipped (never a crash), and a
:class:`Rejections` log says so once per cause, not once per read, and counts every
rejection under ``ce:rejected`` for the metrics exporter (``ce_rejected_values_total``).
A key of the wrong type, which would stop every writer, is moved aside
(:func:`move_aside`).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from carbonedge.protocol import keys
from carbonedge.protocol.lua import LuaScript

MAX_CAUSES = 10_000
"""Bad causes remembered (to log each once) before the oldest are forgotten."""

__all__ = ["Rejections", "decode_fields", "is_wrong_type", "move_aside", "move_aside_sync", "parse_amount",
           "parse_count", "parse_number", "printable", "text"]


def text(raw: object) -> str | None:
    """``raw`` as text: strict UTF-8 for bytes, None for anything that is not text."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, (bytes, bytearray, memoryview)):
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def decode_fields(raw: Mapping[Any, Any]) -> dict[str, str] | None:
    """A hash read as bytes, as text; None when any field or value is not UTF-8."""
    out: dict[str, str] = {}
    for k, v in raw.items():
        key, value = text(k), text(v)
        if key is None or value is None:
            return None
        out[key] = value
    return out


def parse_count(raw: object) -> int | None:
    """A Redis integer (what HINCRBY writes): a decimal integer, else None."""
    value = text(raw) if not isinstance(raw, int) or isinstance(raw, bool) else str(raw)
    if value is None:
        return None
    value = value.strip()
    body = value[1:] if value[:1] == "-" else value
    if not body.isascii() or not body.isdigit() or len(body) > 18:
        return None
    return int(value)


def parse_amount(raw: object) -> float | None:
    """A finite, non-negative number (what HINCRBYFLOAT writes), else None."""
    number = parse_number(raw)
    return number if number is not None and number >= 0 else None


def parse_number(raw: object) -> float | None:
    """Any finite number (negative ones too), else None."""
    value = text(raw) if not isinstance(raw, (int, float)) or isinstance(raw, bool) \
        else repr(raw)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


class Rejections:
    """Values one process ignored: logged once per cause, counted for the metrics.

    A cause is ``(source, what)``, e.g. ``("heartbeat", "node-green")``: the same broken
    heartbeat read five times a second is logged and counted once, and again only when
    its reason changes or after it was :meth:`accept`-ed (seen good) in between. Counts
    accumulate in memory and go to the ``ce:rejected`` hash (field
    ``<process>|<source>``) with :meth:`flush_to`.
    """

    def __init__(self, process: str, logger: logging.Logger) -> None:
        self.process = process
        self._log = logger
        self._active: dict[tuple[str, str], str] = {}
        self._pending: Counter[str] = Counter()
        self.total: Counter[str] = Counter()
        """Every rejection of this process's life, by source (for tests and reports)."""

    def reject(self, source: str, what: object, reason: str) -> None:
        """Record that a value of ``source`` (about ``what``) was ignored, and why.

        Logged and counted once per cause and reason: the same broken value read again
        and again is one rejection.
        """
        cause = (source, _printable(what))
        if self._active.get(cause) == reason:
            return
        if len(self._active) >= MAX_CAUSES:  # a flood of distinct garbage: forget the oldest
            del self._active[next(iter(self._active))]
        self._active[cause] = reason
        self._pending[source] += 1
        self.total[source] += 1
        self._log.error("%s: ignored %s %s: %s (logged once until it changes or is good)",
                        self.process, source, cause[1], reason)

    def accept(self, source: str, what: object) -> None:
        """``what`` read well again: a later rejection is logged anew."""
        if self._active.pop((source, _printable(what)), None) is not None:
            self._log.info("%s: %s %s is valid again", self.process, source, _printable(what))

    def active(self, source: str | None = None) -> list[tuple[str, str, str]]:
        """Causes still bad: ``(source, what, reason)``."""
        return [(s, w, r) for (s, w), r in sorted(self._active.items())
                if source is None or s == source]

    def take_pending(self) -> dict[str, int]:
        """Counts since the last call (what :meth:`flush_to` writes)."""
        pending = {f"{self.process}|{source}": n for source, n in self._pending.items() if n}
        self._pending.clear()
        return pending

    def flush_to(self, pipe: Any) -> None:
        """Queue the counts since the last flush on a (sync or async) Redis pipeline."""
        for field, n in self.take_pending().items():
            pipe.hincrby(keys.REJECTED, field, n)


def printable(what: object, limit: int = 80) -> str:
    """Text fit for a log line or a terminal: non-UTF-8 bytes and control characters
    escaped, at most ``limit`` characters."""
    return _printable(what, limit)


def _printable(what: object, limit: int = 80) -> str:
    """A name fit for a log line: non-UTF-8 bytes and control characters escaped."""
    if isinstance(what, (bytes, bytearray)):
        decoded = text(what)
        what = decoded if decoded is not None else repr(bytes(what))
    shown = str(what)
    if not shown.isprintable():
        shown = shown.encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."


CORRUPT_TTL_S = 86_400
"""How long a key moved aside is kept for inspection."""
MOVE_ASIDE = LuaScript(__package__, "move_aside.lua")
"""KEYS: the key, where to move it; ARGV: the type it should have, seconds to keep it."""


def is_wrong_type(error: BaseException) -> bool:
    """Whether a command failed because its key holds another Redis type."""
    return "WRONGTYPE" in str(error)


def _moved(kind: object, key: str, expected: str, aside: str,
           rejections: Rejections) -> str | None:
    if not kind:
        return None
    name = kind.decode() if isinstance(kind, bytes) else str(kind)
    rejections.reject("key-type", key, f"a {name} where a {expected} belongs: moved aside "
                      f"to {aside}")
    return name


async def move_aside(r: Any, key: str, expected: str, rejections: Rejections) -> str | None:
    """A key of CarbonEdge's that is not of Redis type ``expected`` (nor absent) holds
    nothing of ours and stops every writer: move it aside to ``ce:corrupt:<ts>:<key>``
    (kept :data:`CORRUPT_TTL_S`), atomically, only while it is still of another type.
    Returns the type it had, or None when nothing was moved."""
    aside = keys.corrupt_key(key, time.time())
    kind = await MOVE_ASIDE(r, [key, aside], [expected, CORRUPT_TTL_S])
    return _moved(kind, key, expected, aside, rejections)


def move_aside_sync(client: Any, key: str, expected: str,
                    rejections: Rejections) -> str | None:
    """:func:`move_aside` on a blocking client."""
    aside = keys.corrupt_key(key, time.time())
    kind = MOVE_ASIDE(client, [key, aside], [expected, CORRUPT_TTL_S])
    return _moved(kind, key, expected, aside, rejections)
