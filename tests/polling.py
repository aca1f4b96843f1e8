"""Waiting for something to happen in a test: poll it with a deadline, never a bare sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str,
               on_fail: Callable[[], object] | None = None, interval_s: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that value.

    Fails the test after ``timeout_s`` with ``what`` it was waiting for and, when given,
    ``on_fail()``'s detail (logs, the state it last saw). ``interval_s`` spaces checks that
    are expensive (a subprocess, an HTTP call)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{on_fail()}" if on_fail is not None else ""
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}{detail}")
        time.sleep(interval_s)
