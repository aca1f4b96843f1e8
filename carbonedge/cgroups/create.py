"""Creating the cgroup a local node runs in (CPU quota and memory limit).

The local runner gives each node of the topology its own cgroup, the way Docker's
``--cpus``/``--memory`` would: on cgroup v1 one directory per controller
(``<cpu mount>/carbonedge/<name>``, the same under cpuacct and memory), on a v2-only host
one directory under the unified mount with ``cpu.max`` and ``memory.max``. Swap cannot
dodge the memory limit (v1 ``memory.memsw.limit_in_bytes``, v2 ``memory.swap.max``).

When this process may not create cgroups, :meth:`NodeCgroup.create` raises
:class:`~carbonedge.errors.RuntimeUnavailable` and :func:`cgroups_available` says why.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

from carbonedge.cgroups.accounting import CgroupAccounting
from carbonedge.cgroups.mounts import (
    CGROUP_V1,
    CGROUP_V2,
    V1_CONTROLLERS,
    V2_CONTROLLERS,
    CgroupMounts,
    read_cgroup_mounts,
)
from carbonedge.errors import ConfigError, RuntimeUnavailable

log = logging.getLogger(__name__)

DEFAULT_PARENT = "carbonedge"
CFS_PERIOD_US = 100_000
_MIN_QUOTA_US = 1_000  # the kernel refuses cfs quotas under 1 ms
_MIN_MEMORY_BYTES = 4 << 20
_V1_UNLIMITED = 1 << 60
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_POLL_S = 0.01


class CgroupLimits(NamedTuple):
    """Limits read back from a cgroup's files (None = unlimited)."""

    cpus: float | None
    mem_limit_bytes: int | None


def _check_name(what: str, name: str) -> None:
    if not _NAME.match(name):
        raise ConfigError(
            f"cgroup {what} {name!r} must be letters, digits, '_', '.' or '-'", field=what
        )


def _plan(name: str, parent: str, mounts: CgroupMounts) -> tuple[str, dict[str, Path]] | str:
    """The version and the directory per controller for ``parent/name``, or why none."""
    if mounts.has_v1(V1_CONTROLLERS):
        return CGROUP_V1, {c: mounts.v1[c].mount_point / parent / name for c in V1_CONTROLLERS}
    if mounts.unified is not None:
        missing = set(V2_CONTROLLERS) - mounts.v2_controllers()
        if missing:
            return (
                f"cgroup v2 at {mounts.unified.mount_point} does not offer the "
                f"{', '.join(sorted(missing))} controller(s) (bound to cgroup v1?)"
            )
        return CGROUP_V2, {"unified": mounts.unified.mount_point / parent / name}
    return (
        "neither cgroup v1 cpu, cpuacct and memory nor cgroup v2 is mounted "
        "(see /proc/self/mountinfo)"
    )


def cgroups_available(parent: str = DEFAULT_PARENT) -> tuple[bool, str]:
    """Whether this process may create node cgroups under ``parent``, and why (not)."""
    try:
        mounts = read_cgroup_mounts()
    except RuntimeUnavailable as e:
        return False, str(e)
    plan = _plan("probe", parent, mounts)
    if isinstance(plan, str):
        return False, plan
    version, dirs = plan
    for d in dict.fromkeys(dirs.values()):
        base = d.parent if d.parent.is_dir() else d.parent.parent
        if not os.access(base, os.W_OK):
            return False, (
                f"{base} is not writable by uid {os.geteuid()} "
                "(cgroups mounted read-only, or not root)"
            )
    where = ", ".join(f"{c} at {d.parent.parent}" for c, d in dirs.items())
    return True, f"{version}: {where}"


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as e:
        raise RuntimeUnavailable(f"cannot write {value!r} to {path}: {e.strerror}") from e


def _read_procs(d: Path) -> list[int]:
    try:
        return [int(p) for p in (d / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


class NodeCgroup:
    """One node's cgroup: its directory per controller, its limits and its processes."""

    __slots__ = ("dirs", "name", "parent", "version")

    def __init__(self, name: str, parent: str, version: str, dirs: Mapping[str, Path]) -> None:
        self.name = name
        self.parent = parent
        self.version = version
        self.dirs: dict[str, Path] = dict(dirs)

    def __repr__(self) -> str:
        return f"NodeCgroup({self.parent}/{self.name}, {self.version})"

    @property
    def unique_dirs(self) -> list[Path]:
        """Each directory once (co-mounted v1 controllers share one)."""
        return list(dict.fromkeys(self.dirs.values()))

    # -- creating and finding -------------------------------------------------------------

    @classmethod
    def attach(cls, name: str, parent: str = DEFAULT_PARENT) -> NodeCgroup:
        """The cgroup ``parent/name`` as this host lays it out, without creating anything."""
        _check_name("name", name)
        _check_name("parent", parent)
        plan = _plan(name, parent, read_cgroup_mounts())
        if isinstance(plan, str):
            raise RuntimeUnavailable(f"cannot locate cgroup {parent}/{name}: {plan}")
        return cls(name, parent, *plan)

    @classmethod
    def create(
        cls, name: str, cpus: float, mem_limit_bytes: int, parent: str = DEFAULT_PARENT
    ) -> NodeCgroup:
        """Create (or reuse a leftover) cgroup ``parent/name`` with these limits."""
        if not cpus > 0:
            raise ConfigError(f"cpus must be positive, got {cpus}", field="cpus")
        if mem_limit_bytes < _MIN_MEMORY_BYTES:
            raise ConfigError(
                f"mem_limit_bytes must be at least {_MIN_MEMORY_BYTES}, got {mem_limit_bytes}",
                field="mem_limit_bytes",
            )
        ok, why = cgroups_available(parent)
        if not ok:
            raise RuntimeUnavailable(f"cannot create cgroup {parent}/{name}: {why}")
        cg = cls.attach(name, parent)
        quota_us = max(round(cpus * CFS_PERIOD_US), _MIN_QUOTA_US)
        reused = cg.exists()
        if reused:
            log.warning(
                "reusing leftover cgroup %s/%s (a previous run may have crashed); "
                "resetting its limits",
                parent,
                name,
            )
            stray = cg.pids()
            if stray:
                log.warning("leftover cgroup %s/%s still holds processes %s", parent, name, stray)
        created: list[Path] = []
        try:
            if cg.version == CGROUP_V2:
                cg._enable_v2_controllers()
            for d in cg.unique_dirs:
                if not d.is_dir():
                    d.mkdir(parents=True)
                    created.append(d)
            if cg.version == CGROUP_V1:
                cg._set_v1(quota_us, mem_limit_bytes, reset_counters=reused)
            else:
                cg._set_v2(quota_us, mem_limit_bytes)
        except OSError as e:
            cg._undo(created)
            raise RuntimeUnavailable(f"cannot create cgroup {parent}/{name}: {e}") from e
        except RuntimeUnavailable:
            cg._undo(created)
            raise
        log.info(
            "cgroup %s/%s (%s): cpus %.2f, memory %d MiB",
            parent,
            name,
            cg.version,
            quota_us / CFS_PERIOD_US,
            mem_limit_bytes >> 20,
        )
        return cg

    def _undo(self, created: list[Path]) -> None:
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError as e:
                log.warning("could not remove half-made cgroup %s: %s", d, e.strerror)

    def _set_v1(self, quota_us: int, mem: int, *, reset_counters: bool) -> None:
        cpu, memory = self.dirs["cpu"], self.dirs["memory"]
        _write(cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US))
        _write(cpu / "cpu.cfs_quota_us", str(quota_us))
        memsw = memory / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            # memsw must stay >= the memory limit: lift it, set the limit, then pin it.
            _write(memsw, "-1")
        _write(memory / "memory.limit_in_bytes", str(mem))
        if memsw.exists():
            _write(memsw, str(mem))
        else:
            log.info("no memory.memsw.limit_in_bytes (swap accounting off); swap is not capped")
        if reset_counters:
            _write(self.dirs["cpuacct"] / "cpuacct.usage", "0")
            _write(memory / "memory.max_usage_in_bytes", "0")

    def _enable_v2_controllers(self) -> None:
        d = self.dirs["unified"]
        wanted = " ".join(f"+{c}" for c in V2_CONTROLLERS)
        for level in (d.parent.parent, d.parent):
            level.mkdir(exist_ok=True)
            enabled = set((level / "cgroup.subtree_control").read_text().split())
            if not set(V2_CONTROLLERS) <= enabled:
                try:
                    (level / "cgroup.subtree_control").write_text(wanted)
                except OSError as e:
                    hint = (
                        " (it holds processes itself: cgroup v2 allows controllers only "
                        "for groups without processes of their own)"
                        if e.errno == errno.EBUSY
                        else ""
                    )
                    raise RuntimeUnavailable(
                        f"cannot enable {wanted} in {level}/cgroup.subtree_control: "
                        f"{e.strerror}{hint}"
                    ) from e

    def _set_v2(self, quota_us: int, mem: int) -> None:
        d = self.dirs["unified"]
        _write(d / "cpu.max", f"{quota_us} {CFS_PERIOD_US}")
        _write(d / "memory.max", str(mem))
        if (d / "memory.swap.max").exists():
            _write(d / "memory.swap.max", "0")

    # -- processes ------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether any of the cgroup's directories exists."""
        return any(d.is_dir() for d in self.unique_dirs)

    def pids(self) -> list[int]:
        """Processes in the cgroup (not in cgroups below it)."""
        found: dict[int, None] = {}
        for d in self.unique_dirs:
            found.update(dict.fromkeys(_read_procs(d)))
        return sorted(found)

    def add_pid(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into the cgroup."""
        for d in self.unique_dirs:
            _write(d / "cgroup.procs", str(pid))

    def preexec_fn(self) -> Callable[[], None]:
        """A ``subprocess.Popen(preexec_fn=...)`` callable that enters the cgroup before exec.

        Writing "0" to cgroup.procs moves the writer itself; the child then execs inside the
        cgroup, so even its start-up is limited and accounted.
        """
        targets = [os.fsencode(d / "cgroup.procs") for d in self.unique_dirs]

        def enter_cgroup() -> None:
            for target in targets:
                fd = os.open(target, os.O_WRONLY)
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)

        return enter_cgroup

    # -- reading back ---------------------------------------------------------------------

    def limits(self) -> CgroupLimits:
        """The CPU quota (cores) and memory limit as the cgroup files show them now."""
        try:
            if self.version == CGROUP_V1:
                cpu, memory = self.dirs["cpu"], self.dirs["memory"]
                quota = int((cpu / "cpu.cfs_quota_us").read_text())
                period = int((cpu / "cpu.cfs_period_us").read_text())
                mem = int((memory / "memory.limit_in_bytes").read_text())
                return CgroupLimits(
                    quota / period if quota > 0 else None, mem if mem < _V1_UNLIMITED else None
                )
            d = self.dirs["unified"]
            quota_s, _, period_s = (d / "cpu.max").read_text().strip().partition(" ")
            mem_s = (d / "memory.max").read_text().strip()
            return CgroupLimits(
                None if quota_s == "max" else int(quota_s) / int(period_s or CFS_PERIOD_US),
                None if mem_s == "max" else int(mem_s),
            )
        except (OSError, ValueError) as e:
            raise RuntimeUnavailable(f"cannot read the limits of {self}: {e}") from e

    def accounting(self) -> CgroupAccounting:
        """CPU and memory accounting of this cgroup."""
        if self.version == CGROUP_V1:
            return CgroupAccounting.for_v1(
                cpuacct=self.dirs["cpuacct"], memory=self.dirs["memory"], cpu=self.dirs["cpu"]
            )
        return CgroupAccounting.for_v2(self.dirs["unified"])

    # -- removing -------------------------------------------------------------------------

    def remove(self, timeout_s: float = 5.0) -> None:
        """Kill whatever still runs in the cgroup and remove its directories (idempotent)."""
        deadline = time.monotonic() + timeout_s
        for d in self.unique_dirs:
            _remove_tree(d, deadline)
        log.info("removed cgroup %s/%s", self.parent, self.name)


def _kill_all(d: Path, deadline: float) -> None:
    """SIGKILL every process in ``d`` until it stays empty."""
    kill_file = d / "cgroup.kill"  # v2 (5.14+): kills the whole subtree at once
    if kill_file.exists():
        _write(kill_file, "1")
    while True:
        pids = _read_procs(d)
        if not pids:
            return
        if time.monotonic() > deadline:
            raise RuntimeUnavailable(f"processes {pids} in cgroup {d} did not die")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.info("killed processes %s left in cgroup %s", pids, d)
        time.sleep(_POLL_S)


def _remove_tree(d: Path, deadline: float) -> None:
    """Remove cgroup directory ``d`` and any cgroups below it, killing their processes."""
    if not d.is_dir():
        return
    for child in d.iterdir():
        if child.is_dir():
            _remove_tree(child, deadline)
    _kill_all(d, deadline)
    while True:
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise RuntimeUnavailable(f"cannot remove cgroup {d}: {e.strerror}") from e
        time.sleep(_POLL_S)
