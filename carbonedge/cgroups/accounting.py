"""Resource accounting of a cgroup (v1 or v2), read by an agent about itself.

An agent measures its own CPU time and memory from the cgroup it runs in, so that energy
is apportioned by what the node really used. :meth:`CgroupAccounting.for_current_process`
finds that cgroup from ``/proc/self/cgroup`` and ``/proc/self/mountinfo`` (no hard-coded
``/sys/fs/cgroup``). A process in the root cgroup, or one whose cgroup files cannot be
read, falls back to process accounting (``getrusage``) and says so once in the log and in
:attr:`CgroupAccounting.source`.

Which hierarchies are mounted where is :mod:`carbonedge.cgroups.mounts`; creating a node's
limited cgroup is :mod:`carbonedge.cgroups.create`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import resource
from collections.abc import Mapping
from pathlib import Path

from carbonedge.cgroups.mounts import (
    CGROUP_V1,
    CGROUP_V2,
    PROCESS,
    CgroupMounts,
    read_cgroup_mounts,
    read_membership,
)
from carbonedge.errors import RuntimeUnavailable

__all__ = ["CgroupAccounting"]

log = logging.getLogger(__name__)

# The inode of the initial cgroup namespace (PROC_CGROUP_INIT_INO in the kernel). In any
# other namespace (a container), "/" in /proc/self/cgroup is the container's own cgroup.
_INIT_CGROUP_NS = "cgroup:[4026531835]"
# cgroup v1 shows "no limit" as PAGE_COUNTER_MAX pages, about 2**63; anything this big is
# no limit at all.
_V1_UNLIMITED = 1 << 60


def _in_initial_cgroup_namespace(proc_dir: Path) -> bool:
    try:
        return os.readlink(proc_dir / "ns" / "cgroup") == _INIT_CGROUP_NS
    except OSError:
        return True


@functools.cache
def _log_fallback(reason: str) -> None:
    # Cached: each distinct reason is logged once per process.
    log.warning(
        "cgroup accounting unavailable (%s); using process accounting "
        "(getrusage of self and children, no limits)",
        reason,
    )


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as e:
        raise RuntimeUnavailable(f"cannot read cgroup file {path}: {e.strerror}") from e


def _read_int(path: Path) -> int:
    text = _read(path)
    try:
        return int(text)
    except ValueError as e:
        raise RuntimeUnavailable(f"unexpected content {text!r} in {path}") from e


def _read_keyed(path: Path, key: str) -> int:
    for line in _read(path).splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    raise RuntimeUnavailable(f"no {key!r} in {path}")


def _ancestors(start: Path, filename: str) -> list[Path]:
    """``start`` and its parents, as long as each still has ``filename`` (the hierarchy)."""
    out: list[Path] = []
    cur = start
    while (cur / filename).exists():
        out.append(cur)
        if cur.parent == cur:
            break
        cur = cur.parent
    return out


class CgroupAccounting:
    """CPU time, memory use and limits of one cgroup, or of this process as a fallback.

    Build one with :meth:`for_current_process`, :meth:`for_v1`, :meth:`for_v2` or
    :meth:`for_process`. Reads go to the cgroup files every time; a file that cannot be
    read raises :class:`~carbonedge.errors.RuntimeUnavailable`.
    """

    __slots__ = ("fallback_reason", "paths", "source")

    def __init__(
        self, source: str, paths: Mapping[str, Path], fallback_reason: str | None = None
    ) -> None:
        self.source = source
        self.paths: dict[str, Path] = dict(paths)
        self.fallback_reason = fallback_reason

    def __repr__(self) -> str:
        where = ", ".join(f"{k}={v}" for k, v in self.paths.items()) or self.fallback_reason
        return f"CgroupAccounting({self.source}: {where})"

    # -- constructors -----------------------------------------------------------------

    @classmethod
    def for_v1(cls, *, cpuacct: Path, memory: Path, cpu: Path | None = None) -> CgroupAccounting:
        """A v1 cgroup given by its directory in each controller's hierarchy."""
        paths = {"cpuacct": Path(cpuacct), "memory": Path(memory)}
        if cpu is not None:
            paths["cpu"] = Path(cpu)
        return cls(CGROUP_V1, paths)

    @classmethod
    def for_v2(cls, path: Path) -> CgroupAccounting:
        """A v2 cgroup given by its directory."""
        return cls(CGROUP_V2, {"unified": Path(path)})

    @classmethod
    def for_process(cls, reason: str = "requested") -> CgroupAccounting:
        """Process accounting (getrusage), with the reason cgroups were not used."""
        return cls(PROCESS, {}, reason)

    @classmethod
    def for_current_process(cls, *, proc_dir: Path = Path("/proc/self")) -> CgroupAccounting:
        """The cgroup this process runs in, or process accounting when it has none."""
        reasons: list[str] = []
        try:
            membership = read_membership(proc_dir / "cgroup")
            mounts = read_cgroup_mounts(proc_dir / "mountinfo")
        except (OSError, RuntimeUnavailable) as e:
            reason = f"cannot read {proc_dir}/cgroup or mountinfo: {e}"
            _log_fallback(reason)
            return cls.for_process(reason)
        own_ns = not _in_initial_cgroup_namespace(proc_dir)
        for attempt in (cls._current_v1, cls._current_v2):
            found = attempt(membership, mounts, own_ns)
            if isinstance(found, str):
                reasons.append(found)
                continue
            try:
                found.cpu_usage_s()
                found.memory_usage_bytes()
            except RuntimeUnavailable as e:
                reasons.append(str(e))
                continue
            log.info("accounting from %r", found)
            return found
        reason = "; ".join(reasons)
        _log_fallback(reason)
        return cls.for_process(reason)

    @classmethod
    def _current_v1(
        cls, membership: Mapping[str, str], mounts: CgroupMounts, own_ns: bool
    ) -> CgroupAccounting | str:
        if not mounts.has_v1(("cpuacct", "memory")):
            return "cgroup v1 cpuacct/memory not mounted"
        dirs: dict[str, Path] = {}
        for ctrl in ("cpuacct", "memory", "cpu"):
            path = membership.get(ctrl)
            mount = mounts.v1.get(ctrl)
            if path is None or mount is None:
                if ctrl == "cpu":
                    continue
                return f"not a member of a cgroup v1 {ctrl} hierarchy"
            if path == "/" and not own_ns and ctrl != "cpu":
                return f"in the root cgroup of cgroup v1 {ctrl}"
            resolved = mount.resolve(path)
            if resolved is None:
                return f"cgroup v1 {ctrl} path {path} is outside its mount {mount.mount_point}"
            dirs[ctrl] = resolved
        return cls.for_v1(cpuacct=dirs["cpuacct"], memory=dirs["memory"], cpu=dirs.get("cpu"))

    @classmethod
    def _current_v2(
        cls, membership: Mapping[str, str], mounts: CgroupMounts, own_ns: bool
    ) -> CgroupAccounting | str:
        path = membership.get("")
        if mounts.unified is None or path is None:
            return "cgroup v2 not mounted"
        if path == "/" and not own_ns:
            return "in the root cgroup of cgroup v2"
        resolved = mounts.unified.resolve(path)
        if resolved is None:
            return f"cgroup v2 path {path} is outside its mount {mounts.unified.mount_point}"
        return cls.for_v2(resolved)

    # -- readings ---------------------------------------------------------------------

    def cpu_usage_s(self) -> float:
        """CPU seconds used so far (user + system) by every process in the cgroup."""
        if self.source == CGROUP_V1:
            return _read_int(self.paths["cpuacct"] / "cpuacct.usage") / 1e9
        if self.source == CGROUP_V2:
            return _read_keyed(self.paths["unified"] / "cpu.stat", "usage_usec") / 1e6
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def memory_usage_bytes(self) -> int:
        """Memory charged to the cgroup now (process RSS in the fallback)."""
        if self.source == CGROUP_V1:
            return _read_int(self.paths["memory"] / "memory.usage_in_bytes")
        if self.source == CGROUP_V2:
            return _read_int(self.paths["unified"] / "memory.current")
        resident_pages = int(_read(Path("/proc/self/statm")).split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")

    def memory_peak_bytes(self) -> int | None:
        """Highest memory charge seen (None on v2 kernels without ``memory.peak``)."""
        if self.source == CGROUP_V1:
            return _read_int(self.paths["memory"] / "memory.max_usage_in_bytes")
        if self.source == CGROUP_V2:
            peak = self.paths["unified"] / "memory.peak"
            return _read_int(peak) if peak.exists() else None
        me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        return max(me, kids) * 1024  # ru_maxrss is in KiB on Linux

    def memory_limit_bytes(self) -> int | None:
        """The memory limit in force (the tightest of the cgroup and its ancestors)."""
        if self.source == CGROUP_V1:
            mem = self.paths["memory"]
            limits = [_read_int(mem / "memory.limit_in_bytes")]
            stat = mem / "memory.stat"
            if stat.exists():
                # Older kernels lack the key: the cgroup's own limit stands.
                with contextlib.suppress(RuntimeUnavailable):
                    limits.append(_read_keyed(stat, "hierarchical_memory_limit"))
            limit = min(limits)
            return None if limit >= _V1_UNLIMITED else limit
        if self.source == CGROUP_V2:
            values = [
                _read(d / "memory.max") for d in _ancestors(self.paths["unified"], "memory.max")
            ]
            numbers = [int(v) for v in values if v != "max"]
            return min(numbers) if numbers else None
        return None

    def cpu_quota_cores(self) -> float | None:
        """The CPU quota in cores (the tightest of the cgroup and its ancestors), or None."""
        if self.source == CGROUP_V1:
            cpu = self.paths.get("cpu")
            if cpu is None:
                return None
            quotas = []
            for d in _ancestors(cpu, "cpu.cfs_quota_us"):
                quota = _read_int(d / "cpu.cfs_quota_us")
                if quota > 0:
                    quotas.append(quota / _read_int(d / "cpu.cfs_period_us"))
            return min(quotas) if quotas else None
        if self.source == CGROUP_V2:
            quotas = []
            for d in _ancestors(self.paths["unified"], "cpu.max"):
                quota, _, period = _read(d / "cpu.max").partition(" ")
                if quota != "max":
                    quotas.append(int(quota) / int(period or 100_000))
            return min(quotas) if quotas else None
        return None
