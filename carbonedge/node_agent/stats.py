"""Moving averages per model (service time, power during it), shared with the heartbeat."""

from __future__ import annotations

import threading
from collections.abc import Callable


class ExecStats:
    """Thread-safe exponentially weighted moving averages per model, and in-flight counts."""

    def __init__(self, alpha: float = 0.1) -> None:
        self._alpha = alpha
        self._exec_ms: dict[str, float] = {}
        self._power_w: dict[str, float] = {}
        self._samples: dict[str, int] = {}
        self.on_first_sample: Callable[[], None] | None = None
        """Called (outside the lock) when a model gets its first measurement."""
        self._lock = threading.Lock()
        self.in_flight = 0
        self.tasks_done = 0

    def started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def finished(self, model: str | None = None, exec_ms: float | None = None,
                 energy_j: float | None = None) -> None:
        """Count a finished task; a measured one updates its model's averages."""
        with self._lock:
            self.in_flight -= 1
            self.tasks_done += 1
            if model is None or exec_ms is None or exec_ms <= 0:
                return
            n = self._samples[model] = self._samples.get(model, 0) + 1
            self._record(model, exec_ms, energy_j, n)
        if n == 1 and self.on_first_sample is not None:
            self.on_first_sample()

    def _record(self, model: str, exec_ms: float, energy_j: float | None, n: int) -> None:
        # the plain mean of the first 1/alpha samples, then an EWMA: early estimates are
        # not hostage to the first (noisiest) measurement
        weight = max(self._alpha, 1.0 / n)
        self._update(self._exec_ms, model, exec_ms, weight)
        if energy_j is not None:
            self._update(self._power_w, model, energy_j / (exec_ms / 1e3), weight)

    @staticmethod
    def _update(table: dict[str, float], model: str, value: float, weight: float) -> None:
        old = table.get(model, value)
        table[model] = old + weight * (value - old)

    def exec_ms(self) -> dict[str, float]:
        with self._lock:
            return dict(self._exec_ms)

    def task_power_w(self) -> dict[str, float]:
        with self._lock:
            return dict(self._power_w)
