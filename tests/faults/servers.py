"""redis-server processes that a test owns: persistence, passwords, ACL users, TLS."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import redis

from carbonedge.compose.redis_server import find_redis_binary
from tests.polling import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RedisServer:
    """One redis-server on loopback; ``start`` again after ``kill`` reuses its directory."""

    directory: Path
    args: list[str]
    url: str
    """How a client reaches it (with credentials / TLS parameters)."""
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    bind: tuple[str, ...] = ("127.0.0.1",)

    def start(self, timeout_s: float = 20.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [str(find_redis_binary()), *self.args, "--dir", str(self.directory),
             "--bind", *self.bind, "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()
        wait_until(self._answers, timeout_s, f"redis-server at {self.url}",
                   on_fail=self._log_tail, interval_s=0.05)
        return self

    def _answers(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            if self.proc.poll() is not None:  # callers tell a missing feature by this error
                raise RuntimeError(f"redis-server did not come up at {self.url}:\n"
                                   f"{self._log_tail()}") from None
            return False
        finally:
            client.close()

    def _log_tail(self) -> str:
        return (self.directory / "redis.log").read_text(errors="replace")[-2000:]

    def kill(self) -> None:
        """kill -9: no shutdown save, connections cut."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def persistent(directory: Path) -> RedisServer:
    """AOF with fsync on every write: a kill -9 loses nothing that was acknowledged."""
    port = free_port()
    return RedisServer(directory, ["--port", str(port), "--save", "", "--appendonly", "yes",
                                   "--appendfsync", "always"],
                       f"redis://127.0.0.1:{port}/0", port)


def with_password(directory: Path, password: str) -> RedisServer:
    port = free_port()
    return RedisServer(directory, ["--port", str(port), "--save", "", "--appendonly", "no",
                                   "--requirepass", password],
                       f"redis://:{password}@127.0.0.1:{port}/0", port)


def with_acl_user(directory: Path, user: str, password: str) -> RedisServer:
    """The default user is switched off: only ``user`` may connect."""
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    acl = directory / "users.acl"
    acl.write_text("user default off\n"
                   f"user {user} on >{password} ~* &* +@all\n")
    return RedisServer(directory, ["--port", str(port), "--save", "", "--appendonly", "no",
                                   "--aclfile", str(acl)],
                       f"redis://{user}:{password}@127.0.0.1:{port}/0", port)


def with_tls(directory: Path, password: str) -> RedisServer:
    """TLS only (no plain port), a CA of its own, clients verify the server certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, cert, key = make_certificates(directory)
    port = free_port()
    return RedisServer(
        directory,
        ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
         "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca_cert),
         "--tls-auth-clients", "no", "--requirepass", password,
         "--save", "", "--appendonly", "no"],
        f"rediss://:{password}@127.0.0.1:{port}/0?ssl_cert_reqs=required"
        f"&ssl_ca_certs={ca_cert}", port)


def with_tls_acl(directory: Path, passwords: dict[str, str],
                 addresses: tuple[str, ...] = ("127.0.0.1",)) -> RedisServer:
    """TLS only, on each of ``addresses``, with one ACL user per CarbonEdge role (the ACL
    file ``carbonedge acl`` writes) and the default user off. ``url`` is the dispatcher's
    at the first address; :func:`role_url` gives the others."""
    from carbonedge.ops.acl import acl_file

    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, cert, key = make_certificates(directory, addresses)
    acl = directory / "users.acl"
    acl.write_text(acl_file(passwords))
    port = free_port()
    server = RedisServer(
        directory,
        ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
         "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca_cert),
         "--tls-auth-clients", "no", "--aclfile", str(acl), "--save", "", "--appendonly", "no"],
        "", port, bind=addresses)
    server.url = role_url(server, "dispatcher", passwords["dispatcher"])
    return server


def role_url(server: RedisServer, role: str, password: str, address: str | None = None) -> str:
    """The URL of a role's ACL user on a :func:`with_tls_acl` server."""
    return (f"rediss://ce-{role}:{password}@{address or server.bind[0]}:{server.port}/0"
            f"?ssl_ca_certs={server.directory / 'ca.pem'}")


def make_certificates(directory: Path, addresses: tuple[str, ...] = ("127.0.0.1",),
                      ) -> tuple[Path, Path, Path]:
    """A self-signed CA and a server certificate for ``addresses`` and localhost signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CarbonEdge test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                *(x509.IPAddress(ipaddress.ip_address(a)) for a in addresses)]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return paths


MASTER_NAME = "ce-primary"


@dataclass
class SentinelGroup:
    """A primary, one replica and three sentinels on loopback (all with one password)."""

    directory: Path
    password: str
    master_name: str = MASTER_NAME
    down_after_ms: int = 1000
    primary: RedisServer | None = None
    replica: RedisServer | None = None
    sentinels: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"sentinel://:{self.password}@{hosts}/0?master_name={self.master_name}"

    def start(self, timeout_s: float = 60.0) -> SentinelGroup:
        auth = ["--requirepass", self.password, "--masterauth", self.password]
        primary_port, replica_port = free_port(), free_port()
        self.primary = RedisServer(
            self.directory / "primary", ["--port", str(primary_port), "--save", "",
                                         "--appendonly", "no", *auth],
            f"redis://:{self.password}@127.0.0.1:{primary_port}/0", primary_port).start()
        self.replica = RedisServer(
            self.directory / "replica", ["--port", str(replica_port), "--save", "",
                                         "--appendonly", "no", "--replicaof", "127.0.0.1",
                                         str(primary_port), *auth],
            f"redis://:{self.password}@127.0.0.1:{replica_port}/0", replica_port).start()
        for i in range(3):
            port = free_port()
            conf = self.directory / f"sentinel-{i}" / "sentinel.conf"
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text(
                f"port {port}\n"
                f"sentinel monitor {self.master_name} 127.0.0.1 {primary_port} 2\n"
                f"sentinel auth-pass {self.master_name} {self.password}\n"
                f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.master_name} 10000\n"
                f"sentinel parallel-syncs {self.master_name} 1\n")
            self.sentinels.append(RedisServer(conf.parent, [str(conf), "--sentinel"],
                                              f"redis://127.0.0.1:{port}/0", port).start())
        self._wait_discovered(timeout_s)
        return self

    def _wait_discovered(self, timeout_s: float) -> None:
        """Until every sentinel knows the replica and the two other sentinels (a failover
        needs a majority of them to agree)."""
        def discovered(s: RedisServer) -> bool:
            client = redis.Redis(port=s.port, socket_timeout=1)
            try:
                return (len(client.sentinel_sentinels(self.master_name)) >= 2
                        and len(client.sentinel_slaves(self.master_name)) >= 1)
            except redis.RedisError:
                return False
            finally:
                client.close()

        wait_until(lambda: all(discovered(s) for s in self.sentinels), timeout_s,
                   "the sentinels to discover each other and the replica", interval_s=0.2)

    def primary_port(self) -> int:
        """The port the sentinels currently name as the primary's."""
        client = redis.Redis(port=self.sentinels[0].port, socket_timeout=1)
        try:
            return int(client.sentinel_get_master_addr_by_name(self.master_name)[1])
        finally:
            client.close()

    def rejoin(self, server: RedisServer) -> None:
        """Start a killed server again as a replica of the current primary (what an
        operator or orchestrator does; the sentinels then list it as a replica)."""
        args = list(server.args)
        if "--replicaof" in args:
            i = args.index("--replicaof")
            del args[i:i + 3]
        server.args = [*args, "--replicaof", "127.0.0.1", str(self.primary_port())]
        server.start()

    def stop(self) -> None:
        for server in [*self.sentinels, self.replica, self.primary]:
            if server is not None:
                server.stop()
