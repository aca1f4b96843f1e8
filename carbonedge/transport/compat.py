"""The Celery and kombu versions whose wire formats this package was checked against.

Task envelopes (:mod:`~carbonedge.transport.publish`), result metadata
(:mod:`~carbonedge.transport.delivery`), the unacked-hash Lua scripts and the queue guard
(:mod:`~carbonedge.transport.queue_guard`) follow formats Celery and kombu write but do not
promise. pyproject.toml pins the same ranges; :func:`check_supported` runs when a Celery
app is made, so an upgrade outside them fails at start-up, naming the package, instead of
corrupting messages in flight.
"""

from __future__ import annotations

import functools
import importlib.metadata

from carbonedge.errors import RuntimeUnavailable

__all__ = ["SUPPORTED", "check_supported", "installed_version"]

SUPPORTED: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "celery": ((5, 7), (5, 8)),
    "kombu": ((5, 7), (5, 8)),
}
"""Per package, the versions ``[low, high)`` checked (major, minor)."""


def installed_version(package: str) -> tuple[int, int]:
    """The installed (major, minor) of ``package``."""
    major, minor, *_ = (int(p) if p.isdigit() else 0
                        for p in importlib.metadata.version(package).split(".") + ["0"])
    return major, minor


@functools.cache
def check_supported() -> None:
    """RuntimeUnavailable naming the first package installed outside :data:`SUPPORTED`
    (checked once per process when it passes)."""
    for package, (low, high) in SUPPORTED.items():
        version = installed_version(package)
        if not low <= version < high:
            raise RuntimeUnavailable(
                f"{package} {version[0]}.{version[1]} is installed; CarbonEdge's transport was "
                f"checked against {package}>={low[0]}.{low[1]},<{high[0]}.{high[1]} "
                "(carbonedge/transport/compat.py)")
