"""Moving averages of execution time per model, shared by tasks and the heartbeat."""

from __future__ import annotations

import threading


class ExecStats:
    """Thread-safe exponentially weighted moving average of exec time per model."""

    def __init__(self, alpha: float = 0.2) -> None:
        self._alpha = alpha
        self._ms: dict[str, float] = {}
        self._lock = threading.Lock()
        self.in_flight = 0
        self.tasks_done = 0

    def started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def finished(self, model: str | None, exec_ms: float | None) -> None:
        with self._lock:
            self.in_flight -= 1
            self.tasks_done += 1
            if model is not None and exec_ms is not None:
                old = self._ms.get(model)
                self._ms[model] = exec_ms if old is None else old + self._alpha * (exec_ms - old)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._ms)
