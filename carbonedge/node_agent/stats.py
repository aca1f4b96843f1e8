"""Moving averages per model (service time, power during it), shared with the heartbeat."""

from __future__ import annotations

import threading


class ExecStats:
    """Thread-safe exponentially weighted moving averages per model, and in-flight counts."""

    def __init__(self, alpha: float = 0.2) -> None:
        self._alpha = alpha
        self._exec_ms: dict[str, float] = {}
        self._power_w: dict[str, float] = {}
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
            self._update(self._exec_ms, model, exec_ms)
            if energy_j is not None:
                self._update(self._power_w, model, energy_j / (exec_ms / 1e3))

    def _update(self, table: dict[str, float], model: str, value: float) -> None:
        old = table.get(model)
        table[model] = value if old is None else old + self._alpha * (value - old)

    def exec_ms(self) -> dict[str, float]:
        with self._lock:
            return dict(self._exec_ms)

    def task_power_w(self) -> dict[str, float]:
        with self._lock:
            return dict(self._power_w)
