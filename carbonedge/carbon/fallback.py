"""The ``fallback`` provider: try live sources in order, end on one that cannot fail.

``{provider: fallback, chain: [{provider: electricitymaps, zone: FR, token_env: T},
{provider: codecarbon, country: FRA}, {provider: static, value: 400}]}`` answers with the
first entry that has a value. The last entry must be one that cannot fail at run time:
``static``, ``codecarbon`` (a fixed value from CodeCarbon's data) or ``trace``.

When an entry fails (it raised ``IntensityUnavailable``), the reading says so in its
``source``, e.g. ``codecarbon:FRA (fallback: electricitymaps:FR timed out)``, and the
failure is logged once per (entry, kind of failure) until that entry answers again, not
on every call. The entries' own caches keep a dead API from being asked more often than
its ``retry_s``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from carbonedge.carbon.providers import (
    IntensityProvider,
    IntensityReading,
    StaticProvider,
    build_provider,
    check_keys,
    register_provider,
)
from carbonedge.carbon.trace import TraceProvider
from carbonedge.errors import ConfigError, IntensityUnavailable

__all__ = ["FallbackProvider"]

log = logging.getLogger(__name__)

# Providers whose intensity_at cannot fail for a well-formed ``when``.
_CANNOT_FAIL = (StaticProvider, TraceProvider)


def _label(provider: IntensityProvider, index: int) -> str:
    label = getattr(provider, "label", None)
    return label if isinstance(label, str) else f"chain[{index}]"


class FallbackProvider:
    """The first of ``providers`` that answers; failures are logged once per kind."""

    def __init__(self, providers: Sequence[IntensityProvider]) -> None:
        if not providers:
            raise ConfigError("fallback provider: chain is empty", field="chain")
        if not isinstance(providers[-1], _CANNOT_FAIL):
            raise ConfigError(
                "fallback provider: the last entry of chain must be a provider that cannot "
                f"fail (static, codecarbon or trace), got {type(providers[-1]).__name__}",
                field="chain",
            )
        self.providers = tuple(providers)
        self._labels = tuple(_label(p, i) for i, p in enumerate(providers))
        self._lock = threading.Lock()
        self._reported: set[tuple[str, str]] = set()

    def intensity_at(self, when: datetime) -> IntensityReading:
        failures: list[str] = []
        for provider, label in zip(self.providers, self._labels, strict=True):
            try:
                reading = provider.intensity_at(when)
            except IntensityUnavailable as e:
                self._report(label, e)
                failures.append(f"{label} {e.reason}")
                continue
            self._recovered(label)
            if not failures:
                return reading
            source = f"{reading.source} (fallback: {'; '.join(failures)})"
            return IntensityReading(reading.value, source, reading.timestamp,
                                    reading.trace_time)
        # Unreachable: the last provider cannot fail (checked when built).
        raise AssertionError("fallback chain ended without a reading")

    def _report(self, label: str, error: IntensityUnavailable) -> None:
        key = (label, error.reason)
        with self._lock:
            if key in self._reported:
                return
            self._reported.add(key)
        log.warning("carbon intensity: %s (%s); falling back until it answers",
                    error.message, error.reason)

    def _recovered(self, label: str) -> None:
        with self._lock:
            gone = {key for key in self._reported if key[0] == label}
            if not gone:
                return
            self._reported -= gone
        log.info("carbon intensity: %s answers again", label)


@register_provider("fallback")
def _fallback(spec: Mapping[str, Any]) -> FallbackProvider:
    check_keys(spec, {"chain"}, set())
    chain = spec["chain"]
    if isinstance(chain, (str, bytes)) or not isinstance(chain, Sequence) or not chain:
        raise ConfigError("fallback provider: chain must be a non-empty list of provider "
                          f"specs, got {chain!r}", field="chain")
    providers: list[IntensityProvider] = []
    for i, entry in enumerate(chain):
        try:
            providers.append(build_provider(entry))
        except ConfigError as e:
            inner = f".{e.field}" if e.field else ""
            raise ConfigError(f"fallback provider: chain[{i}]: {e.message}",
                              field=f"chain[{i}]{inner}") from e
    return FallbackProvider(providers)
