"""A second "host" on this machine: a network namespace joined to this one by a veth pair.

Processes started in it (through ``nsenter --net``, which keeps this machine's mounts, so
cgroup files stay readable) see only their own loopback and the veth: the one address
they can reach is this side's end, a test address in 198.18.0.0/15 (the range set aside
for test networks) that the namespace pair owns. No route leads anywhere else, so no traffic leaves the machine. ``cut`` takes the
link down (connections stall as a pulled cable would), ``restore`` brings it back.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

NETNS_DIR = Path("/run/netns")


class NetnsUnavailable(Exception):
    """Why no second host can be made here (not root, no iproute2, no veth)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NetnsUnavailable(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


class SecondHost:
    """A network namespace with one veth link to this one; a context manager."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.ns = f"ce-host-{tag}"
        self.outer_if, self.inner_if = f"ceo{tag}", f"cei{tag}"
        # 198.18.0.0/15 is set aside for benchmarking test networks (RFC 2544)
        a, b, c = 18 + secrets.randbelow(2), secrets.randbelow(256), secrets.randbelow(63) * 4
        self.outer_ip, self.inner_ip = f"198.{a}.{b}.{c + 1}", f"198.{a}.{b}.{c + 2}"
        """This side's end (what the other host reaches) and the other host's address."""

    def create(self) -> SecondHost:
        if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nsenter") is None:
            raise NetnsUnavailable("needs root, iproute2 and nsenter")
        _ip("netns", "add", self.ns)
        try:
            _ip("link", "add", self.outer_if, "type", "veth", "peer", "name", self.inner_if,
                "netns", self.ns)
            _ip("addr", "add", f"{self.outer_ip}/30", "dev", self.outer_if)
            _ip("link", "set", self.outer_if, "up")
            _ip("-n", self.ns, "addr", "add", f"{self.inner_ip}/30", "dev", self.inner_if)
            _ip("-n", self.ns, "link", "set", self.inner_if, "up")
            _ip("-n", self.ns, "link", "set", "lo", "up")
        except NetnsUnavailable:
            self.remove()
            raise
        return self

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace (network only: mounts and cgroups are shared)."""
        return ["nsenter", f"--net={NETNS_DIR / self.ns}", "--", *argv]

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], log: Path,
              preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(self.command(argv), env=dict(env), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=preexec_fn)

    def run(self, argv: Sequence[str], timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(argv), capture_output=True, text=True,
                              timeout=timeout_s)

    def cut(self) -> None:
        """Pull the cable: the link goes down, connections stall (no reset is sent)."""
        _ip("-n", self.ns, "link", "set", self.inner_if, "down")

    def restore(self) -> None:
        _ip("-n", self.ns, "link", "set", self.inner_if, "up")

    def remove(self) -> None:
        _ip("link", "del", self.outer_if, check=False)
        _ip("netns", "del", self.ns, check=False)

    def __enter__(self) -> SecondHost:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.remove()
