"""redis-server processes that a test owns: persistence, passwords, ACL users, TLS."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from carbonedge.compose.redis_server import find_redis_binary


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

    def start(self, timeout_s: float = 20.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [str(find_redis_binary()), *self.args, "--dir", str(self.directory),
             "--bind", "127.0.0.1", "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
            try:
                if client.ping():
                    return self
            except redis.RedisError:
                pass
            finally:
                client.close()
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server did not come up at {self.url}:\n{tail}")
            time.sleep(0.05)

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


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1/localhost signed by it."""
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
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
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
