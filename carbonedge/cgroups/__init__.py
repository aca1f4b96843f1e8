"""cgroups (v1 and v2): creating a node's CPU- and memory-limited cgroup, and reading the
CPU and memory accounting of the one a process runs in."""

from carbonedge.cgroups.accounting import CgroupAccounting
from carbonedge.cgroups.create import DEFAULT_PARENT, CgroupLimits, NodeCgroup, cgroups_available
from carbonedge.cgroups.mounts import CgroupMounts, read_cgroup_mounts, read_membership

__all__ = [
    "DEFAULT_PARENT",
    "CgroupAccounting",
    "CgroupLimits",
    "CgroupMounts",
    "NodeCgroup",
    "cgroups_available",
    "read_cgroup_mounts",
    "read_membership",
]
