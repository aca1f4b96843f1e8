"""Where the cgroup hierarchies are mounted (v1 per controller, v2 unified), and which
cgroup a process belongs to: read from ``/proc/self/mountinfo`` and ``/proc/self/cgroup``,
never a hard-coded ``/sys/fs/cgroup``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from carbonedge.errors import RuntimeUnavailable

__all__ = [
    "CGROUP_V1",
    "CGROUP_V2",
    "PROCESS",
    "V1_CONTROLLERS",
    "V2_CONTROLLERS",
    "CgroupMount",
    "CgroupMounts",
    "read_cgroup_mounts",
    "read_membership",
]

CGROUP_V1 = "cgroup-v1"
CGROUP_V2 = "cgroup-v2"
PROCESS = "process"

V1_CONTROLLERS = ("cpu", "cpuacct", "memory")
V2_CONTROLLERS = ("cpu", "memory")

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class CgroupMount:
    """One cgroup hierarchy mounted somewhere: v1 (with its controllers) or v2."""

    mount_point: Path
    root: str
    version: int
    controllers: frozenset[str] = frozenset()

    def resolve(self, cgroup_path: str) -> Path | None:
        """The directory of ``cgroup_path`` (as /proc/<pid>/cgroup shows it) under this mount.

        None when the path lies outside the part of the hierarchy that is mounted here.
        """
        root = self.root.rstrip("/")
        if cgroup_path != root and not cgroup_path.startswith(root + "/"):
            return None
        rel = cgroup_path[len(root) :].lstrip("/")
        return self.mount_point / rel if rel else self.mount_point


@dataclass(frozen=True, slots=True)
class CgroupMounts:
    """The cgroup hierarchies visible to a process: v1 per controller, and the v2 one."""

    v1: Mapping[str, CgroupMount] = field(default_factory=dict)
    unified: CgroupMount | None = None

    def has_v1(self, controllers: tuple[str, ...] = V1_CONTROLLERS) -> bool:
        """Whether every controller in ``controllers`` has a v1 mount."""
        return all(c in self.v1 for c in controllers)

    def v2_controllers(self) -> frozenset[str]:
        """Controllers the v2 root offers (empty when v2 is not mounted or unreadable)."""
        if self.unified is None:
            return frozenset()
        try:
            text = (self.unified.mount_point / "cgroup.controllers").read_text()
        except OSError:
            return frozenset()
        return frozenset(text.split())


def _unescape(path: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), path)


def read_cgroup_mounts(mountinfo: Path = Path("/proc/self/mountinfo")) -> CgroupMounts:
    """Parse the cgroup v1 and v2 mounts out of a mountinfo file.

    When one hierarchy is mounted several times, the mount exposing the widest part of it
    (the shortest root) wins.
    """
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError as e:
        raise RuntimeUnavailable(f"cannot read {mountinfo}: {e.strerror}") from e
    v1: dict[str, CgroupMount] = {}
    unified: CgroupMount | None = None
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields_ = left.split()
        tail = right.split()
        if len(fields_) < 5 or len(tail) < 3:
            continue
        fstype, super_opts = tail[0], tail[2]
        root, point = _unescape(fields_[3]), Path(_unescape(fields_[4]))
        if fstype == "cgroup2":
            if unified is None or len(root) < len(unified.root):
                unified = CgroupMount(point, root, 2)
        elif fstype == "cgroup":
            ctrls = frozenset(o for o in super_opts.split(",") if o in V1_CONTROLLERS)
            mount = CgroupMount(point, root, 1, ctrls)
            for ctrl in ctrls:
                old = v1.get(ctrl)
                if old is None or len(root) < len(old.root):
                    v1[ctrl] = mount
    return CgroupMounts(v1, unified)


def read_membership(cgroup_file: Path = Path("/proc/self/cgroup")) -> dict[str, str]:
    """Map each controller to the process's cgroup path; the v2 path is under key ``""``."""
    membership: dict[str, str] = {}
    for line in cgroup_file.read_text().splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        if not ctrls:
            membership[""] = path
        for ctrl in ctrls.split(","):
            if ctrl:
                membership[ctrl] = path
    return membership
