"""The supervisor of `carbonedge up`: starts the topology's processes and keeps them up.

`carbonedge up` writes the processes to run (:class:`ProcessSpec`: agents in their
cgroups, the dispatcher, the carbon service) to ``<run_dir>/supervise.json`` and starts
``carbonedge supervise`` detached. The supervisor starts each process, and when one exits
(crashed, killed, out of memory) starts it again with the same arguments in the same
cgroup after a back-off: 1 s, doubling up to 30 s, back to 1 s once it has run for a
minute. A restarted agent hands back what its previous life held (the requests are
re-dispatched) before it takes work.

Every half second it reports each process (pid, alive, restarts, last exit) in
``ce:processes`` and beats ``ce:processes:beat`` for `carbonedge status`, and writes the
current pids to ``<run_dir>/supervised.json`` for `carbonedge down`. On SIGTERM it stops
the agents, then the services, and exits; `down` then removes the cgroups.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from carbonedge.compose.processes import (
    ProcessRecord,
    ProcessSpec,
    describe_exit,
    launch,
    stop_in_order,
)
from carbonedge.connections import redis_client
from carbonedge.protocol import keys
from carbonedge.settings import Settings

log = logging.getLogger(__name__)

SPECS_FILE = "supervise.json"
PIDS_FILE = "supervised.json"
BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
STABLE_S = 60.0
"""A process that ran this long starts its next back-off from :data:`BACKOFF_S` again."""
POLL_S = 0.5
BEAT_TTL_S = 10


@dataclass
class _Child:
    spec: ProcessSpec
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = BACKOFF_S
    next_start: float = 0.0
    last_exit: str = ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """Runs and restarts the processes of one `carbonedge up`."""

    def __init__(self, specs: list[ProcessSpec], settings: Settings, run_dir: Path, *,
                 backoff_s: float = BACKOFF_S, max_backoff_s: float = MAX_BACKOFF_S,
                 stable_s: float = STABLE_S) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.children = [_Child(spec, backoff_s=backoff_s) for spec in specs]
        self._backoff_s, self._max_backoff_s, self._stable_s = backoff_s, max_backoff_s, stable_s
        self._env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
        self._client = redis_client(settings.redis_url, socket_timeout=5)
        self._publish_failing = False

    def run(self, stop: threading.Event) -> None:
        """Supervise until ``stop`` is set, then stop every process in order."""
        try:
            while not stop.is_set():
                self.poll()
                stop.wait(POLL_S)
        finally:
            self.stop()

    def poll(self) -> None:
        """Start what is due (first start or restart), note what exited, report."""
        now = time.monotonic()
        for child in self.children:
            if child.proc is not None and child.proc.poll() is not None:
                self._exited(child, now)
            if child.proc is None and now >= child.next_start:
                self._start(child)
        self._report()

    def _exited(self, child: _Child, now: float) -> None:
        code = child.proc.returncode  # type: ignore[union-attr]
        ran_s = now - child.started_at
        if ran_s >= self._stable_s:
            child.backoff_s = self._backoff_s
        child.last_exit = f"{describe_exit(code)} after {ran_s:.0f} s"
        child.next_start = now + child.backoff_s
        log.error("%s (pid %d) exited: %s; restarting in %.0f s", child.spec.name,
                  child.proc.pid, child.last_exit, child.backoff_s)  # type: ignore[union-attr]
        child.backoff_s = min(child.backoff_s * 2, self._max_backoff_s)
        child.proc = None
        child.restarts += 1

    def _start(self, child: _Child) -> None:
        log_path = self.run_dir / "logs" / f"{child.spec.name}.log"
        try:
            child.proc = launch(child.spec, self._env, log_path)
        except (OSError, subprocess.SubprocessError) as e:  # e.g. its cgroup was removed
            log.error("could not start %s: %s; retrying in %.0f s", child.spec.name, e,
                      child.backoff_s)
            child.last_exit = f"could not start: {e}"
            child.next_start = time.monotonic() + child.backoff_s
            child.backoff_s = min(child.backoff_s * 2, self._max_backoff_s)
            return
        child.started_at = time.monotonic()

    def records(self) -> list[ProcessRecord]:
        return [ProcessRecord(name=c.spec.name, pid=c.proc.pid, log=str(
            self.run_dir / "logs" / f"{c.spec.name}.log"), cgroup=c.spec.cgroup,
            restarts=c.restarts) for c in self.children if c.proc is not None]

    def _report(self) -> None:
        """``ce:processes`` for `status`, ``supervised.json`` for `down`."""
        now, wall = time.monotonic(), time.time()
        entries = {c.spec.name: json.dumps({
            "pid": c.proc.pid if c.proc is not None else None, "alive": c.alive,
            "restarts": c.restarts, "last_exit": c.last_exit,
            "started_at": wall - (now - c.started_at) if c.alive else None,
            "restart_in_s": None if c.alive else max(c.next_start - now, 0.0)})
            for c in self.children}
        _write_json(self.run_dir / PIDS_FILE, [r.__dict__ for r in self.records()])
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(keys.PROCESSES)  # whatever was there, of whatever type
            pipe.hset(keys.PROCESSES, mapping=entries)
            pipe.set(keys.PROCESSES_BEAT, repr(wall), ex=BEAT_TTL_S)
            pipe.execute()
            if self._publish_failing:
                log.info("reporting to Redis works again")
            self._publish_failing = False
        except redis.RedisError as e:
            if not self._publish_failing:
                log.warning("cannot report the processes to Redis (will retry): %s", e)
            self._publish_failing = True

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the agents, then the services; withdraw the report."""
        stop_in_order(self.records(), grace_s)
        for child in self.children:
            if child.proc is not None:
                child.proc.poll()
            child.proc = None
        try:
            self._client.delete(keys.PROCESSES, keys.PROCESSES_BEAT)
        except redis.RedisError:
            pass
        (self.run_dir / PIDS_FILE).unlink(missing_ok=True)
        self._client.close()


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)  # atomic: `down` never reads half a file


def write_specs(run_dir: Path, specs: list[ProcessSpec]) -> None:
    _write_json(run_dir / SPECS_FILE, [s.to_wire() for s in specs])


def read_supervised(run_dir: Path) -> list[ProcessRecord]:
    """What the supervisor last reported running (for `down` if it is gone)."""
    try:
        rows = json.loads((run_dir / PIDS_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [ProcessRecord(**row) for row in rows if isinstance(row, dict)]


def run_supervisor(settings: Settings, run_dir: Path) -> None:
    """`carbonedge supervise`: supervise ``<run_dir>/supervise.json`` until SIGTERM/SIGINT."""
    specs = [ProcessSpec.from_wire(s)
             for s in json.loads((run_dir / SPECS_FILE).read_text())]
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("supervising %s", ", ".join(s.name for s in specs))
    Supervisor(specs, settings, run_dir).run(stop)
    log.info("supervisor stopped")
