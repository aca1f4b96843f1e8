"""Which of the agent's CPU time belongs to which task, and which to no task at all.

A task's stretch runs from the moment the worker receives its message to the moment its
result is built (message hand-off, input fetch, decode, the model run, top-k). Its CPU is
read from the process's own CPU clock, which counts the running slice to the nanosecond;
a cgroup's counter is only brought up to date at scheduler ticks (4 ms here, as long as a
whole ONNX Runtime inference). Everything else the node's cgroup burns is start-up
(imports, model loading and export, warm-up) or idle time (heartbeats, polling,
acknowledgements), read from the cgroup counter over long stretches, where its lag does
not matter: idle = the cgroup's CPU over the stretch minus its tasks' CPU. So every
CPU-second of the node is a task's, the start-up row's or an idle row's, once, and a
task never pays for the time before it arrived.
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
    """Cuts the node's CPU into task, idle and start-up stretches (thread-safe).

    ``node_cpu`` is the node's whole CPU counter (its cgroup's); ``task_cpu`` a precise
    clock of the process that runs the tasks (``time.process_time``).
    """

    def __init__(self, node_cpu: Callable[[], float], cpu_quota: float, *,
                 task_cpu: Callable[[], float] = time.process_time,
                 clock: Callable[[], float] = time.time) -> None:
        self._node_cpu = node_cpu
        self._task_clock = task_cpu
        self._quota = cpu_quota
        self._clock = clock
        self._lock = threading.Lock()
        self._born_cpu = node_cpu()
        self._born_at = clock()
        self._ready = False
        self._since_cpu = self._born_cpu
        """The node counter at the start of the current idle stretch."""
        self._since = self._born_at
        self._tasks_cpu = 0.0
        """CPU of the tasks that ran since then (it is theirs, not idle)."""
        self._tasks_busy_s = 0.0
        self._open: float | None = None
        """Task clock when the current task's message arrived (None: no task open)."""

    def startup_done(self) -> Stretch:
        """End of start-up: what it cost; from now on time is tasks' or idle."""
        with self._lock:
            now, cpu = self._clock(), self._node_cpu()
            stretch = Stretch(self._born_at, max(now - self._born_at, 0.0),
                              max(cpu - self._born_cpu, 0.0), 0.0)
            self._since_cpu, self._since, self._ready = cpu, now, True
            self._tasks_cpu = self._tasks_busy_s = 0.0
            return stretch

    def message_received(self) -> None:
        """A task message has just arrived: its task's stretch starts here. A stretch
        still open (a message that never ran: dead-lettered, not ours) was idle time."""
        with self._lock:
            self._open = self._task_clock()

    def task_started(self) -> None:
        """A task starts; its stretch began when its message arrived, or begins now."""
        with self._lock:
            if self._open is None:
                self._open = self._task_clock()

    def task_finished(self, model_cpu_s: float) -> CpuSplit:
        """The task's stretch ends: its CPU, split into the model run and the rest."""
        with self._lock:
            now = self._task_clock()
            total = max(now - self._open, 0.0) if self._open is not None else 0.0
            model = min(max(model_cpu_s, 0.0), total)
            self._open = None
            self._tasks_cpu += total
            self._tasks_busy_s += total / self._quota
            return CpuSplit(model, total - model)

    def flush_idle(self, min_wall_s: float = 0.0) -> Stretch | None:
        """The idle stretch since the previous flush (None before start-up ends, or while
        it is shorter than ``min_wall_s``): the node's CPU over it, less its tasks'."""
        with self._lock:
            now = self._clock()
            if not self._ready or now - self._since < min_wall_s:
                return None
            cpu = self._node_cpu()
            stretch = Stretch(self._since, max(now - self._since, 0.0),
                              max(cpu - self._since_cpu - self._tasks_cpu, 0.0),
                              self._tasks_busy_s)
            self._since_cpu, self._since = cpu, now
            self._tasks_cpu = self._tasks_busy_s = 0.0
            return stretch
