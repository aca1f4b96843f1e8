"""One URL, every connection: plain, ACL user, TLS and Sentinel, and the errors for URLs
that cannot work (no Redis needed: these check what the clients are configured with)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import redis
from redis.sentinel import SentinelConnectionPool

from carbonedge.cli import main
from carbonedge.connections import (
    async_redis_client,
    parse_redis_url,
    redact,
    redis_client,
    wait_until_reachable,
)
from carbonedge.errors import ConfigError, RuntimeUnavailable
from carbonedge.settings import Settings
from carbonedge.transport.allowlist import check_agent_allowed
from carbonedge.transport.celery_app import make_celery_app
from tests.faults.servers import make_certificates


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ca_cert, _, _ = make_certificates(tmp_path_factory.mktemp("tls"))
    return ca_cert


def test_plain_url_with_an_acl_user() -> None:
    client = redis_client("redis://agent:s3cret@10.0.0.5:6390/2", socket_timeout=3)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("10.0.0.5", 6390, 2)
    assert (kwargs["username"], kwargs["password"], kwargs["socket_timeout"]) == (
        "agent", "s3cret", 3)
    assert client.connection_pool.connection_class is redis.Connection
    conf = parse_redis_url("redis://agent:s3cret@10.0.0.5:6390/2").celery_conf()
    assert conf == {"broker_url": "redis://agent:s3cret@10.0.0.5:6390/2",
                    "result_backend": "redis://agent:s3cret@10.0.0.5:6390/2"}


def test_tls_url_verifies_the_server_in_redis_py_kombu_and_celery(ca: Path) -> None:
    url = f"rediss://agent:pw@redis.example:6380/0?ssl_ca_certs={ca}"
    target = parse_redis_url(url)
    assert target.tls == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(ca)}
    assert target.base_url == "rediss://agent:pw@redis.example:6380/0"
    pool = redis_client(url).connection_pool
    assert pool.connection_class is redis.SSLConnection
    assert pool.connection_kwargs["ssl_ca_certs"] == str(ca)
    assert pool.connection_kwargs["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    apool = async_redis_client(url).connection_pool
    assert apool.connection_kwargs["ssl_ca_certs"] == str(ca)
    app = make_celery_app(Settings.load(env={}, redis_url=url))
    assert app.conf.broker_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(ca)}
    assert app.conf.redis_backend_use_ssl["ssl_ca_certs"] == str(ca)
    assert app.conf.accept_content == ["msgpack"]  # never pickle
    off = parse_redis_url("rediss://h/0?ssl_cert_reqs=none")
    assert off.tls == {"ssl_cert_reqs": ssl.CERT_NONE}


@pytest.mark.parametrize("problem", ["missing", "directory", "garbage"])
def test_tls_url_with_an_unreadable_ca_names_the_setting(problem: str, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    if problem == "directory":
        ca.mkdir()
    elif problem == "garbage":
        ca.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"setting redis_url .*ssl_ca_certs=") as info:
        parse_redis_url(f"rediss://:pw@host:6380/0?ssl_ca_certs={ca}")
    assert info.value.field == "redis_url"
    assert "pw" not in info.value.message  # the password is not echoed


def test_bad_tls_options() -> None:
    with pytest.raises(ConfigError, match="ssl_cert_reqs"):
        parse_redis_url("rediss://host/0?ssl_cert_reqs=maybe")
    with pytest.raises(ConfigError, match="rediss://"):
        parse_redis_url("redis://host/0?ssl_ca_certs=/ca.pem")
    with pytest.raises(ConfigError, match="ssl_keyfile needs ssl_certfile"):
        parse_redis_url("rediss://host/0?ssl_keyfile=/k.pem")


def test_sentinel_url() -> None:
    url = ("sentinel://dispatcher:pw@s1:26379,s2,[::1]:26381/3?master_name=ce-primary"
           "&sentinel_password=spw")
    target = parse_redis_url(url)
    assert target.sentinels == (("s1", 26379), ("s2", 26379), ("::1", 26381))
    assert (target.master_name, target.db, target.username, target.password) == (
        "ce-primary", 3, "dispatcher", "pw")
    assert target.sentinel_auth == {"password": "spw"}
    assert target.replica_acks == 1  # by default a submission waits for one replica
    client = target.client(socket_timeout=2)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "ce-primary"
    assert pool.connection_kwargs["password"] == "pw" and pool.connection_kwargs["db"] == 3
    sentinel = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    assert sentinel["password"] == "spw" and sentinel["socket_timeout"] == 2
    conf = target.celery_conf()
    assert conf["broker_url"] == ("sentinel://dispatcher:pw@s1:26379/3;"
                                  "sentinel://dispatcher:pw@s2:26379/3;"
                                  "sentinel://dispatcher:pw@[::1]:26381/3")
    assert conf["broker_transport_options"] == {"master_name": "ce-primary",
                                                "sentinel_kwargs": {"password": "spw"}}
    assert conf["result_backend_transport_options"]["master_name"] == "ce-primary"
    assert "spw" not in redact(url) and ":pw@" not in redact(url)


def test_kombu_style_sentinel_url_and_celery_app() -> None:
    url = "sentinel://s1:26379;sentinel://s2:26380/0?master_name=m&replica_acks=0"
    target = parse_redis_url(url)
    assert target.sentinels == (("s1", 26379), ("s2", 26380)) and target.replica_acks == 0
    app = make_celery_app(Settings.load(env={}, redis_url=url))
    options = app.conf.broker_transport_options
    assert options["master_name"] == "m" and options["visibility_timeout"] == 3600
    assert app.conf.result_backend_transport_options == {"master_name": "m"}
    assert app.conf.broker_url.startswith("sentinel://s1:26379/0;")


def test_sentinel_url_without_master_name_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"setting redis_url .*master_name") as info:
        parse_redis_url("sentinel://:pw@s1:26379,s2:26379/0")
    assert info.value.field == "redis_url"
    with pytest.raises(ConfigError, match="unknown sentinel option"):
        parse_redis_url("sentinel://s1/0?master_name=m&mastername=x")
    with pytest.raises(ConfigError, match="only applies to sentinel"):
        parse_redis_url("redis://h/0?master_name=m")


def test_cluster_and_unknown_schemes_are_refused() -> None:
    with pytest.raises(ConfigError, match="Redis Cluster is not supported"):
        parse_redis_url("redis+cluster://h:7000/0")


def test_cli_refuses_a_bad_url_at_start_up(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--redis-url", "sentinel://s1:26379/0", "status"]) == 2
    err = capsys.readouterr().err
    assert "redis_url" in err and "master_name" in err


def test_agent_outside_the_allowlist_refuses_to_start(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # Nothing listens on port 1: the agent fails on its id before it touches Redis.
    monkeypatch.setenv("CARBONEDGE_NODE_ALLOWLIST", "node-green,node-remote-*")
    assert main(["--redis-url", "redis://127.0.0.1:1/0", "agent", "--node", "node-high"]) == 2
    err = capsys.readouterr().err
    assert "node_allowlist" in err and "'node-high'" in err
    check_agent_allowed("node-remote-7", "node-green,node-remote-*")
    with pytest.raises(ConfigError) as info:
        check_agent_allowed("node-evil", "node-green,node-remote-*")
    assert info.value.field == "node_allowlist"


def test_a_service_gives_up_waiting_for_redis_naming_the_setting() -> None:
    with pytest.raises(RuntimeUnavailable, match="redis_wait_s") as info:
        wait_until_reachable("redis://:secret@127.0.0.1:1/0", 0.05, poll_s=0.01)
    assert "secret" not in info.value.message
