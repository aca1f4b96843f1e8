"""Which of the agent's CPU time belongs to which task, and which to no task at all.

The agent's cgroup CPU counter is cut into stretches: start-up (importing, loading and
warming models), one stretch per task — from the moment the worker receives the task's
message to the moment its result is built (message hand-off, input fetch, decode, the
model run, top-k) — and idle time in between (heartbeats, polling, acknowledgements).
Each task is charged its own stretch only; idle and start-up stretches become ledger rows
of their own, so a task never pays for the time before it arrived.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from carbonedge.node_agent.energy import CpuSplit

__all__ = ["ChargeMeter", "Stretch"]


@dataclass(frozen=True, slots=True)
class Stretch:
    """A stretch of the agent's time that belongs to no task."""

    started_at: float
    wall_s: float
    cpu_s: float
    busy_s: float
    """Device-busy time of the tasks that ran within it (their RAM is theirs)."""


class ChargeMeter:
    """Cuts the agent's CPU counter into task, idle and start-up stretches (thread-safe)."""

    def __init__(self, cpu_counter: Callable[[], float], cpu_quota: float,
                 *, clock: Callable[[], float] = time.time) -> None:
        self._cpu = cpu_counter
        self._quota = cpu_quota
        self._clock = clock
        self._lock = threading.Lock()
        self._born_cpu = cpu_counter()
        self._born_at = clock()
        self._ready = False
        self._mark_cpu = self._born_cpu
        """Counter at the end of the last task (or the last idle flush)."""
        self._idle_cpu = 0.0
        """Idle CPU accumulated since the last flush, between tasks."""
        self._idle_since = self._born_at
        self._idle_busy_s = 0.0
        self._task_cpu: float | None = None
        """Counter when the current task's message was received (None: no task open)."""

    def startup_done(self) -> Stretch:
        """End of start-up: what it cost; from now on time is tasks' or idle."""
        with self._lock:
            now, cpu = self._clock(), self._cpu()
            stretch = Stretch(self._born_at, max(now - self._born_at, 0.0),
                              max(cpu - self._born_cpu, 0.0), 0.0)
            self._mark_cpu, self._idle_since, self._ready = cpu, now, True
            self._idle_cpu = self._idle_busy_s = 0.0
            return stretch

    def message_received(self) -> None:
        """A task message has just arrived: its task's stretch starts here. A stretch
        still open (a message that never ran: dead-lettered, not ours) was idle time."""
        with self._lock:
            cpu = self._cpu()
            self._idle_cpu += max(cpu - self._mark_cpu, 0.0)
            self._mark_cpu = self._task_cpu = cpu

    def task_started(self) -> None:
        """A task starts; its stretch began when its message arrived, or begins now."""
        with self._lock:
            if self._task_cpu is None:
                cpu = self._cpu()
                self._idle_cpu += max(cpu - self._mark_cpu, 0.0)
                self._mark_cpu = self._task_cpu = cpu

    def task_finished(self, model_cpu_s: float) -> CpuSplit:
        """The task's stretch ends: its CPU, split into the model run and the rest."""
        with self._lock:
            cpu = self._cpu()
            if self._task_cpu is None:  # called without a receipt (e.g. in-process use)
                self._task_cpu = self._mark_cpu
            total = max(cpu - self._task_cpu, 0.0)
            model = min(max(model_cpu_s, 0.0), total)
            self._task_cpu, self._mark_cpu = None, cpu
            self._idle_busy_s += total / self._quota
            return CpuSplit(model, total - model)

    def flush_idle(self, min_wall_s: float = 0.0) -> Stretch | None:
        """The idle stretch since the previous flush (None before start-up ends, or while
        it is shorter than ``min_wall_s``)."""
        with self._lock:
            now = self._clock()
            if not self._ready or now - self._idle_since < min_wall_s:
                return None
            cpu_idle = self._idle_cpu
            if self._task_cpu is None:  # no task open: everything since the last mark
                cpu = self._cpu()
                cpu_idle += max(cpu - self._mark_cpu, 0.0)
                self._mark_cpu = cpu
            stretch = Stretch(self._idle_since, max(now - self._idle_since, 0.0), cpu_idle,
                              self._idle_busy_s)
            self._idle_cpu = self._idle_busy_s = 0.0
            self._idle_since = now
            return stretch
