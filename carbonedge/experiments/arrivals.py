"""The request stream of a temporal replay: when each request comes, and whether it can wait.

Arrivals are a seeded Poisson process over the window (``rate`` per trace hour). Each is
urgent (the ``interactive`` tenant) or, with probability ``deferrable``, may wait up to a
deadline of a whole number of trace hours drawn uniformly from ``deadline_h`` (the
``batch`` tenant). Every arm of the replay receives the same arrivals.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from carbonedge.errors import ConfigError

__all__ = ["Arrival", "make_arrivals"]


@dataclass(frozen=True, slots=True)
class Arrival:
    index: int
    at_h: float
    """Trace hours from the window's start."""
    deadline_h: int | None
    """Trace hours the request may wait; None: urgent."""

    @property
    def tenant_role(self) -> str:
        return "interactive" if self.deadline_h is None else "batch"


def make_arrivals(hours: int, rate: float, deferrable: float, deadline_h: tuple[int, int],
                  seed: int) -> list[Arrival]:
    """The seeded arrivals of a ``hours``-long window."""
    if not rate > 0:
        raise ConfigError(f"rate must be > 0 requests per trace hour, got {rate}", field="rate")
    if not 0 <= deferrable <= 1:
        raise ConfigError(f"deferrable must be a share in [0, 1], got {deferrable}",
                          field="deferrable")
    low, high = deadline_h
    if not 1 <= low <= high:
        raise ConfigError(f"deadlines must be 1 <= low <= high trace hours, got {deadline_h}",
                          field="deadline_h")
    rng = random.Random(seed)
    out: list[Arrival] = []
    t = rng.expovariate(rate)
    while t < hours:
        deadline = rng.randint(low, high) if rng.random() < deferrable else None
        out.append(Arrival(len(out), t, deadline))
        t += rng.expovariate(rate)
    return out
