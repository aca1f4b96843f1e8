"""Per-model service time over recent tasks, shared with the heartbeat."""

from __future__ import annotations

import statistics
import threading
from collections import deque
from collections.abc import Callable


class ExecStats:
    """Thread-safe running medians per model over the last ``window`` tasks, and counts.

    Medians, not moving averages: one task that lands on a throttled period or a page
    fault can take twice the usual, and the scheduler must not read a node as slower
    than it is because of one such spike (or faster because of one lucky run).
    """

    def __init__(self, window: int = 15) -> None:
        self._samples: dict[str, deque[float]] = {}
        self._window = window
        self._lock = threading.Lock()
        self.in_flight = 0
        self.tasks_done = 0
        self.on_first_sample: Callable[[], None] | None = None
        """Called (outside the lock) when a model gets its first measurement."""

    def started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def finished(self, model: str | None = None, service_ms: float | None = None) -> None:
        """Count a finished task; a measured one joins its model's window."""
        first = False
        with self._lock:
            self.in_flight -= 1
            self.tasks_done += 1
            if model is None or service_ms is None or service_ms <= 0:
                return
            samples = self._samples.get(model)
            if samples is None:
                samples = self._samples[model] = deque(maxlen=self._window)
                first = True
            samples.append(service_ms)
        if first and self.on_first_sample is not None:
            self.on_first_sample()

    def seed(self, model: str, service_ms: float) -> None:
        """A measurement that is not a task's (a warm-up run at start-up): the model's first
        sample, soon outvoted in the median by real tasks."""
        if not service_ms > 0:
            return
        with self._lock:
            self._samples.setdefault(model, deque(maxlen=self._window)).append(service_ms)

    def exec_ms(self) -> dict[str, float]:
        """Median service time per model, in milliseconds."""
        with self._lock:
            return {m: statistics.median(s) for m, s in self._samples.items()}
