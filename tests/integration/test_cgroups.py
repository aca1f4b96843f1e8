"""Node cgroups for real: limits written and read back, CPU throttling, OOM kill, removal.

Skipped (with the reason) where this process may not create cgroups.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from carbonedge.cgroups import CgroupAccounting, NodeCgroup, cgroups_available, read_cgroup_mounts
from carbonedge.cgroups.mounts import CGROUP_V1, CGROUP_V2, PROCESS
from carbonedge.errors import ConfigError

pytestmark = pytest.mark.cgroups

MIB = 1 << 20
TEST_PARENT = os.environ.get("CARBONEDGE_CGROUP_PARENT", "carbonedge") + "-test"

# Busy-loops for the given wall time, then reports how it sees its own cgroup.
BUSY_CHILD = textwrap.dedent("""
    import json, sys, time
    from carbonedge.cgroups import CgroupAccounting
    end = time.monotonic() + float(sys.argv[1])
    n = 0
    while time.monotonic() < end:
        n += 1
    acc = CgroupAccounting.for_current_process()
    print(json.dumps({"source": acc.source, "quota": acc.cpu_quota_cores(),
                      "limit": acc.memory_limit_bytes(), "cpu_s": acc.cpu_usage_s()}))
""")

# Touches every page of 300 MB, far beyond a 128 MiB limit.
HOG_CHILD = "data = b'\\x01' * (300 * 1024 * 1024); print(len(data))"


@pytest.fixture(scope="module", autouse=True)
def _remove_test_parent() -> Iterator[None]:
    """Leave no empty ``carbonedge-test`` groups behind (busy ones are left alone)."""
    yield
    mounts = read_cgroup_mounts()
    tops = [m.mount_point for m in mounts.v1.values()]
    tops += [mounts.unified.mount_point] if mounts.unified is not None else []
    for top in dict.fromkeys(tops):
        with contextlib.suppress(OSError):  # absent, or in use by a concurrent run
            (top / TEST_PARENT).rmdir()


@pytest.fixture
def node_cgroup() -> Iterator[NodeCgroup]:
    ok, why = cgroups_available(TEST_PARENT)
    if not ok:
        pytest.skip(f"cannot create cgroups here: {why}")
    cg = NodeCgroup.create(
        f"t{uuid.uuid4().hex[:10]}", cpus=0.3, mem_limit_bytes=128 * MIB, parent=TEST_PARENT
    )
    try:
        yield cg
    finally:
        cg.remove()


def _run_in(
    cg: NodeCgroup, code: str, *args: str, timeout_s: float = 30.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        preexec_fn=cg.preexec_fn(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@pytest.mark.timeout(60)
def test_limits_are_written_and_read_back(node_cgroup: NodeCgroup) -> None:
    assert node_cgroup.limits() == (pytest.approx(0.3), 128 * MIB)
    for d in node_cgroup.unique_dirs:
        assert d.is_dir() and d.parent.name == TEST_PARENT
    if node_cgroup.version == CGROUP_V1:
        cpu, mem = node_cgroup.dirs["cpu"], node_cgroup.dirs["memory"]
        assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"
        assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "30000"
        memsw = mem / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            assert int(memsw.read_text()) == 128 * MIB
    else:
        d = node_cgroup.dirs["unified"]
        assert (d / "cpu.max").read_text().split() == ["30000", "100000"]
        assert int((d / "memory.max").read_text()) == 128 * MIB
    acc = node_cgroup.accounting()
    assert acc.cpu_quota_cores() == pytest.approx(0.3)
    assert acc.memory_limit_bytes() == 128 * MIB


@pytest.mark.timeout(60)
def test_cpu_is_throttled_and_child_sees_its_cgroup(node_cgroup: NodeCgroup) -> None:
    acc = node_cgroup.accounting()
    cpu0 = acc.cpu_usage_s()
    t0 = time.monotonic()
    done = _run_in(node_cgroup, BUSY_CHILD, "1.5")
    wall = time.monotonic() - t0
    used = acc.cpu_usage_s() - cpu0
    assert done.returncode == 0, done.stderr
    assert wall >= 1.5
    assert 0.15 * wall < used <= 0.4 * wall, f"{used:.3f} CPU-s in {wall:.3f} s"
    seen = json.loads(done.stdout)
    assert seen["source"] in (CGROUP_V1, CGROUP_V2)
    assert seen["source"] == node_cgroup.version
    assert seen["quota"] == pytest.approx(0.3)
    assert seen["limit"] == 128 * MIB
    assert 0 < seen["cpu_s"] <= used
    assert node_cgroup.pids() == []


@pytest.mark.timeout(60)
def test_child_over_the_memory_limit_is_oom_killed(node_cgroup: NodeCgroup) -> None:
    done = _run_in(node_cgroup, HOG_CHILD)
    assert done.returncode == -9, (done.returncode, done.stderr[-500:])
    peak = node_cgroup.accounting().memory_peak_bytes()
    assert peak is not None and 64 * MIB < peak <= 128 * MIB


@pytest.mark.timeout(60)
def test_add_pid_and_remove_kills_and_cleans_up(node_cgroup: NodeCgroup) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        node_cgroup.add_pid(proc.pid)
        assert node_cgroup.pids() == [proc.pid]
        node_cgroup.remove()
        assert proc.wait(timeout=10) == -9
        assert not node_cgroup.exists()
        assert all(not d.exists() for d in node_cgroup.unique_dirs)
        node_cgroup.remove()  # idempotent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(60)
def test_leftover_cgroup_is_reused_with_new_limits(node_cgroup: NodeCgroup) -> None:
    again = NodeCgroup.create(
        node_cgroup.name, cpus=0.5, mem_limit_bytes=64 * MIB, parent=TEST_PARENT
    )
    assert again.dirs == node_cgroup.dirs
    assert again.limits() == (pytest.approx(0.5), 64 * MIB)
    bigger = NodeCgroup.create(
        node_cgroup.name, cpus=1.5, mem_limit_bytes=256 * MIB, parent=TEST_PARENT
    )
    assert bigger.limits() == (pytest.approx(1.5), 256 * MIB)
    attached = NodeCgroup.attach(node_cgroup.name, parent=TEST_PARENT)
    assert attached.exists() and attached.dirs == node_cgroup.dirs


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        NodeCgroup.create("../escape", cpus=0.5, mem_limit_bytes=64 * MIB)
    with pytest.raises(ConfigError):
        NodeCgroup.create("ok", cpus=0.0, mem_limit_bytes=64 * MIB)


@pytest.mark.timeout(60)
def test_current_process_accounting_reads_something() -> None:
    acc = CgroupAccounting.for_current_process()
    assert acc.source in (CGROUP_V1, CGROUP_V2, PROCESS)
    if acc.source == PROCESS:
        assert acc.fallback_reason
        assert acc.memory_limit_bytes() is None and acc.cpu_quota_cores() is None
    assert acc.cpu_usage_s() > 0
    assert acc.memory_usage_bytes() > 0
    peak = acc.memory_peak_bytes()
    assert peak is None or peak > 0


@pytest.mark.timeout(60)
def test_v2_accounting_on_the_unified_hierarchy(tmp_path: Path) -> None:
    """cgroup v2 cpu.stat is kept even without the cpu controller: read a real v2 group."""
    unified = read_cgroup_mounts().unified
    if unified is None:
        pytest.skip("no cgroup v2 mount")
    d = unified.mount_point / f"{TEST_PARENT}-{uuid.uuid4().hex[:10]}"
    try:
        d.mkdir()
    except OSError as e:
        pytest.skip(f"cannot create a cgroup v2 group: {e}")
    try:
        procs = str(d / "cgroup.procs")

        def enter() -> None:
            with open(procs, "w") as f:
                f.write("0")

        done = subprocess.run(
            [sys.executable, "-c", BUSY_CHILD, "0.3"],
            preexec_fn=enter,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        acc = CgroupAccounting.for_v2(d)
        assert acc.cpu_usage_s() >= 0.2
        if not (d / "cpu.max").exists():
            assert acc.cpu_quota_cores() is None
        if not (d / "memory.max").exists():
            assert acc.memory_limit_bytes() is None
    finally:
        d.rmdir()


def test_v2_files_are_parsed(tmp_path: Path) -> None:
    """The v2 readers on a directory laid out like a limited v2 group (no v2 limits here)."""
    parent, d = tmp_path / "slice", tmp_path / "slice" / "node"
    d.mkdir(parents=True)
    (parent / "cpu.max").write_text("50000 100000\n")
    (parent / "memory.max").write_text("max\n")
    (d / "cpu.max").write_text("max 100000\n")
    (d / "memory.max").write_text(f"{256 * MIB}\n")
    (d / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    (d / "memory.current").write_text(f"{10 * MIB}\n")
    acc = CgroupAccounting.for_v2(d)
    assert acc.cpu_usage_s() == pytest.approx(2.5)
    assert acc.cpu_quota_cores() == pytest.approx(0.5)  # the parent's quota binds
    assert acc.memory_limit_bytes() == 256 * MIB
    assert acc.memory_usage_bytes() == 10 * MIB
    assert acc.memory_peak_bytes() is None


def test_container_style_v2_membership_is_resolved(tmp_path: Path) -> None:
    """A process whose v2 path is "/" in its own cgroup namespace uses the mount itself."""
    proc, mnt = tmp_path / "proc", tmp_path / "cg"
    proc.mkdir()
    mnt.mkdir()
    (proc / "cgroup").write_text("0::/\n")
    (proc / "mountinfo").write_text(
        f"30 25 0:26 / {mnt} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    )
    (proc / "ns").mkdir()
    (proc / "ns" / "cgroup").symlink_to("cgroup:[4026532999]")
    (mnt / "cpu.stat").write_text("usage_usec 1000000\n")
    (mnt / "memory.current").write_text("4096\n")
    (mnt / "cpu.max").write_text("150000 100000\n")
    acc = CgroupAccounting.for_current_process(proc_dir=proc)
    assert acc.source == CGROUP_V2 and acc.paths["unified"] == mnt
    assert acc.cpu_quota_cores() == pytest.approx(1.5)
    (proc / "ns" / "cgroup").unlink()
    (proc / "ns" / "cgroup").symlink_to("cgroup:[4026531835]")  # the host's root cgroup
    assert CgroupAccounting.for_current_process(proc_dir=proc).source == PROCESS
