"""The cache in front of a live carbon-intensity source: cheap on every task, bounded when not.

Agents ask for the intensity on every task, so a live value is held for ``cache_s``; the
first task after that gets the cached value at once (marked stale) while one refresh runs
in a background thread. A value older than ``max_stale_s`` is no longer served: the caller
then waits for a refresh, whose every socket operation is bounded by ``timeout_s``. After a
failed refresh the source is not asked again for ``retry_s``: meanwhile callers get the
stale value if there is one, or the remembered failure at once, so a dead API costs at
most one timeout per ``retry_s``, never one per task.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from carbonedge.carbon.units import CarbonIntensity
from carbonedge.errors import ConfigError, IntensityUnavailable

__all__ = ["LiveOptions", "LiveValue", "Fetch"]

log = logging.getLogger(__name__)

# fetch(deadline) -> value; deadline is a time.monotonic() instant bounding the network.
Fetch = Callable[[float], CarbonIntensity]


def _number(spec: Mapping[str, Any], key: str, default: float, *, minimum: float,
            strict: bool, provider: str) -> float:
    value = spec.get(key, default)
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and (value > minimum if strict else value >= minimum)
    )
    if not ok:
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ConfigError(f"{provider} provider: {key} must be a number {bound}, got {value!r}",
                          field=key)
    return float(value)


@dataclass(frozen=True, slots=True)
class LiveOptions:
    """How long to wait for, keep, and retry a live value (seconds)."""

    timeout_s: float = 2.0
    cache_s: float = 300.0
    retry_s: float = 60.0
    max_stale_s: float = 3600.0

    KEYS = frozenset({"timeout_s", "cache_s", "retry_s", "max_stale_s"})

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], provider: str) -> LiveOptions:
        """The options of a provider spec; missing keys take the defaults."""
        d = cls()
        return cls(
            timeout_s=_number(spec, "timeout_s", d.timeout_s, minimum=0, strict=True,
                              provider=provider),
            cache_s=_number(spec, "cache_s", d.cache_s, minimum=0, strict=True,
                            provider=provider),
            retry_s=_number(spec, "retry_s", d.retry_s, minimum=0, strict=True,
                            provider=provider),
            max_stale_s=_number(spec, "max_stale_s", d.max_stale_s, minimum=0, strict=False,
                                provider=provider),
        )


class LiveValue:
    """One live source's latest value, cached, refreshed in the background, backed off."""

    def __init__(self, label: str, fetch: Fetch, options: LiveOptions,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.options = options
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()  # guards the fields below
        self._refresh_lock = threading.Lock()  # one fetch at a time
        self._value: CarbonIntensity | None = None
        self._fetched_at = 0.0
        self._error: IntensityUnavailable | None = None
        self._failed_at = 0.0
        self._background: threading.Thread | None = None
        self._fetches = 0  # completed fetches, successful or not

    def get(self) -> tuple[CarbonIntensity, bool]:
        """The value and whether it is stale (older than ``cache_s``).

        Raises ``IntensityUnavailable`` when there is no value young enough to serve and
        the source failed within ``retry_s`` or fails now.
        """
        opts = self.options
        with self._lock:
            now = self._clock()
            backing_off = self._error is not None and now - self._failed_at < opts.retry_s
            if self._value is not None:
                age = now - self._fetched_at
                if age < opts.cache_s:
                    return self._value, False
                if age < opts.max_stale_s:
                    if not backing_off and self._background is None:
                        self._start_background()
                    return self._value, True
            if backing_off:
                assert self._error is not None
                raise self._error
        return self._refresh(force=False), False

    def refresh(self) -> CarbonIntensity:
        """Fetch now (waiting for a refresh already running), whatever the cache holds."""
        return self._refresh(force=True)

    def wait_background(self, timeout: float | None = None) -> None:
        """Wait for the background refresh in flight, if any (for tests and shutdown)."""
        with self._lock:
            thread = self._background
        if thread is not None:
            thread.join(timeout)

    @property
    def last_error(self) -> IntensityUnavailable | None:
        with self._lock:
            return self._error

    def _start_background(self) -> None:
        # Called with self._lock held.
        thread = threading.Thread(target=self._refresh_in_background,
                                  name=f"refresh {self.label}", daemon=True)
        self._background = thread
        thread.start()

    def _refresh_in_background(self) -> None:
        try:
            self._refresh(force=True)
        except IntensityUnavailable:
            pass  # remembered in self._error; callers see it when the stale value runs out
        except Exception:  # a bug in a fetch function must not kill the cache silently
            log.exception("%s: background refresh crashed", self.label)
            with self._lock:
                self._error = IntensityUnavailable(f"{self.label}: refresh crashed",
                                                   reason="refresh crashed")
                self._failed_at = self._clock()
        finally:
            with self._lock:
                self._background = None

    def _refresh(self, *, force: bool) -> CarbonIntensity:
        with self._lock:
            seen = self._fetches
        with self._refresh_lock:
            with self._lock:
                # Another caller's fetch finished while this one waited: share its outcome.
                if not force and self._fetches != seen:
                    if self._error is not None:
                        raise self._error
                    assert self._value is not None
                    return self._value
            try:
                value = self._fetch(time.monotonic() + self.options.timeout_s)
            except IntensityUnavailable as e:
                with self._lock:
                    self._error, self._failed_at = e, self._clock()
                    self._fetches += 1
                raise
            with self._lock:
                self._value, self._fetched_at = value, self._clock()
                self._error = None
                self._fetches += 1
            return value
