"""The one place that turns the Redis URL of the settings into connections.

Every CarbonEdge process (producer, dispatcher, agents, carbon service, Flower, the CLI)
reaches Redis through :func:`redis_client`, :func:`async_redis_client` or, for Celery,
:func:`celery_connection`, so that one URL means the same thing everywhere:

``redis://[user:password@]host:6379/0``
    plain TCP; an ACL user and its password go in the user-info part.
``rediss://[user:password@]host:6380/0?ssl_ca_certs=ca.pem``
    TLS with the server certificate verified (``ssl_cert_reqs`` defaults to ``required``;
    ``ssl_certfile``/``ssl_keyfile`` add a client certificate). kombu would skip the
    verification for a bare ``rediss://``; here Celery gets the same options as redis-py.
``sentinel://[user:password@]host1:26379,host2:26379,host3:26379/0?master_name=NAME``
    Redis Sentinel: the sentinels are asked for the current primary of ``NAME`` (on every
    new connection, so a failover is followed); the user and password are those of the
    primary. ``sentinel_password`` (and ``sentinel_username``) authenticate to the sentinels
    themselves. ``replica_acks`` (default 1) is how many replicas must hold a submitted
    request before a producer reports it accepted (``WAIT``), so that a request that was
    acknowledged survives the loss of the primary.
``unix:///run/redis.sock?db=0``
    a local socket (redis-py's own form).

Redis Cluster is not supported: Celery's Redis transport cannot use it, and CarbonEdge's
MULTI blocks and scripts touch keys that would hash to different slots.

A URL that cannot work (a sentinel URL without ``master_name``, a CA file that cannot be
read) raises :class:`~carbonedge.errors.ConfigError` naming the ``redis_url`` setting when
it is parsed, i.e. when a process starts.
"""

from __future__ import annotations

import functools
import logging
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis

from carbonedge.errors import ConfigError, RuntimeUnavailable

log = logging.getLogger(__name__)

SETTING = "redis_url"
SCHEMES = ("redis", "rediss", "sentinel", "unix")
SENTINEL_PORT = 26379
REPLICA_ACK_TIMEOUT_MS = 2000
"""How long a producer waits for replicas to confirm a submission before refusing it."""

_CERT_REQS = {"required": ssl.CERT_REQUIRED, "cert_required": ssl.CERT_REQUIRED,
              "optional": ssl.CERT_OPTIONAL, "cert_optional": ssl.CERT_OPTIONAL,
              "none": ssl.CERT_NONE, "cert_none": ssl.CERT_NONE}
_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_SENTINEL_OPTIONS = ("master_name", "sentinel_username", "sentinel_password", "replica_acks")


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A Redis URL, parsed and checked once: where the data lives and how to reach it."""

    url: str
    scheme: str
    base_url: str
    """The URL for redis-py without the options this module handles itself."""
    tls: Mapping[str, Any] | None = None
    """``ssl_cert_reqs``/``ssl_ca_certs``/... for redis-py, kombu and Celery (None: no TLS)."""
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str = ""
    username: str | None = None
    password: str | None = None
    db: int = 0
    sentinel_auth: Mapping[str, str] = field(default_factory=dict)
    replica_acks: int = 0

    @property
    def is_sentinel(self) -> bool:
        return self.scheme == "sentinel"

    @property
    def display(self) -> str:
        """The URL with its passwords replaced by ``***`` (for logs and errors)."""
        return redact(self.url)

    # -- clients ---------------------------------------------------------------------------

    def client(self, **kwargs: Any) -> redis.Redis:
        """A blocking client (``socket_timeout``, ``decode_responses``, ... pass through)."""
        if self.is_sentinel:
            from redis.sentinel import Sentinel

            manager = Sentinel(self.sentinels, sentinel_kwargs=self._sentinel_kwargs(kwargs))
            return manager.master_for(self.master_name, redis_class=redis.Redis,
                                      **self._primary_kwargs(kwargs))
        return redis.Redis.from_url(self.base_url, **{**(self.tls or {}), **kwargs})

    def async_client(self, **kwargs: Any) -> aioredis.Redis:
        """An asyncio client, configured as :meth:`client`."""
        if self.is_sentinel:
            from redis.asyncio.sentinel import Sentinel

            manager = Sentinel(self.sentinels, sentinel_kwargs=self._sentinel_kwargs(kwargs))
            return manager.master_for(self.master_name, redis_class=aioredis.Redis,
                                      **self._primary_kwargs(kwargs))
        return aioredis.Redis.from_url(self.base_url, **{**(self.tls or {}), **kwargs})

    def _sentinel_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        timeouts = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
        return {**timeouts, **self.sentinel_auth}

    def _primary_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        auth = {k: v for k, v in (("username", self.username), ("password", self.password))
                if v}
        return {"db": self.db, **auth, **kwargs}

    # -- Celery ----------------------------------------------------------------------------

    def celery_conf(self) -> dict[str, Any]:
        """Celery settings for broker and result backend on this Redis: the URLs, and the
        TLS or Sentinel options that kombu does not read from a URL."""
        if self.is_sentinel:
            userinfo = _userinfo(self.username, self.password)
            url = ";".join(f"sentinel://{userinfo}{_hostport(h, p)}/{self.db}"
                           for h, p in self.sentinels)
            options: dict[str, Any] = {"master_name": self.master_name}
            if self.sentinel_auth:
                options["sentinel_kwargs"] = dict(self.sentinel_auth)
            return {"broker_url": url, "result_backend": url,
                    "broker_transport_options": options,
                    "result_backend_transport_options": dict(options)}
        conf: dict[str, Any] = {"broker_url": self.base_url, "result_backend": self.base_url}
        if self.tls is not None:
            conf.update(broker_use_ssl=dict(self.tls), redis_backend_use_ssl=dict(self.tls))
        return conf


def parse_redis_url(url: str) -> RedisTarget:
    """Parse and check ``url``; ConfigError (field ``redis_url``) says what is wrong."""
    return _parse(url)


@functools.lru_cache(maxsize=64)
def _parse(url: str) -> RedisTarget:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise _error(url, f"scheme {parts.scheme or '(none)'}:// is not one of "
                          f"{', '.join(s + '://' for s in SCHEMES)} (Redis Cluster is not "
                          "supported)")
    if scheme == "sentinel" or ";sentinel://" in url:
        return _parse_sentinel(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    stray = sorted(set(query) & set(_SENTINEL_OPTIONS) - {"replica_acks"})
    if stray:
        raise _error(url, f"{', '.join(stray)} only applies to sentinel:// URLs")
    acks = _replica_acks(url, query.pop("replica_acks", "0"))
    tls = None
    if scheme == "rediss":
        tls = _tls_options(url, query)
    elif any(name in query for name in (*_TLS_FILES, "ssl_cert_reqs")):
        raise _error(url, "ssl_* options need a rediss:// URL (TLS)")
    base = urlunsplit(parts._replace(query="&".join(f"{k}={quote(v, safe='/:')}"
                                                    for k, v in query.items())))
    return RedisTarget(url=url, scheme=scheme, base_url=base, tls=tls,
                       username=unquote(parts.username) if parts.username else None,
                       password=unquote(parts.password) if parts.password else None,
                       replica_acks=acks)


def _parse_sentinel(url: str) -> RedisTarget:
    """``sentinel://[user:pw@]h1:p1,h2:p2/db?master_name=...``, or kombu's
    ``sentinel://h1:p1;sentinel://h2:p2`` with the options on any of them."""
    chunks = [c for c in url.split(";") if c]
    hosts: list[tuple[str, int]] = []
    query: dict[str, str] = {}
    username = password = None
    db = 0
    for chunk in chunks:
        parts = urlsplit(chunk)
        if parts.scheme.lower() != "sentinel":
            raise _error(url, f"{redact(chunk)!r} is not a sentinel:// address")
        userinfo, _, netloc = parts.netloc.rpartition("@")
        if userinfo:
            user, _, pw = userinfo.partition(":")
            username, password = unquote(user) or None, unquote(pw) or None
        for address in filter(None, netloc.split(",")):
            hosts.append(_split_hostport(url, address))
        path = parts.path.strip("/")
        if path:
            if not path.isdigit():
                raise _error(url, f"database {path!r} is not a number")
            db = int(path)
        query.update(parse_qsl(parts.query, keep_blank_values=True))
    if not hosts:
        raise _error(url, "a sentinel URL needs at least one sentinel host:port")
    master = query.pop("master_name", "").strip()
    if not master:
        raise _error(url, "a sentinel:// URL needs ?master_name=NAME (the name the sentinels "
                          "monitor the primary under)")
    acks = _replica_acks(url, query.pop("replica_acks", "1"))
    auth = {k[len("sentinel_"):]: query.pop(k) for k in ("sentinel_username",
                                                          "sentinel_password") if k in query}
    if query:
        raise _error(url, f"unknown sentinel option(s) {', '.join(sorted(query))}; known: "
                          f"{', '.join(_SENTINEL_OPTIONS)}")
    return RedisTarget(url=url, scheme="sentinel", base_url="", sentinels=tuple(hosts),
                       master_name=master, username=username, password=password, db=db,
                       sentinel_auth=auth, replica_acks=acks)


def _tls_options(url: str, query: dict[str, str]) -> dict[str, Any]:
    """Pop the TLS options out of ``query``, checking that each named file can be used."""
    reqs = query.pop("ssl_cert_reqs", "required").lower()
    if reqs not in _CERT_REQS:
        raise _error(url, f"ssl_cert_reqs={reqs!r} is not one of {sorted(_CERT_REQS)}")
    tls: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS[reqs]}
    for name in _TLS_FILES:
        if name in query:
            tls[name] = query.pop(name)
    try:
        context = ssl.create_default_context(cafile=tls.get("ssl_ca_certs"))
    except (OSError, ssl.SSLError) as e:
        raise _error(url, f"ssl_ca_certs={tls['ssl_ca_certs']} cannot be read as a CA "
                          f"certificate file: {e}") from e
    if "ssl_certfile" in tls or "ssl_keyfile" in tls:
        if "ssl_certfile" not in tls:
            raise _error(url, "ssl_keyfile needs ssl_certfile")
        try:
            context.load_cert_chain(tls["ssl_certfile"], tls.get("ssl_keyfile"))
        except (OSError, ssl.SSLError) as e:
            raise _error(url, f"ssl_certfile={tls['ssl_certfile']} / ssl_keyfile="
                              f"{tls.get('ssl_keyfile')} cannot be loaded: {e}") from e
    return tls


def _replica_acks(url: str, raw: str) -> int:
    if not raw.isdigit():
        raise _error(url, f"replica_acks={raw!r} is not a whole number")
    return int(raw)


def _split_hostport(url: str, address: str) -> tuple[str, int]:
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, _, port = address.partition(":")
    if not host or (port and not port.isdigit()):
        raise _error(url, f"sentinel address {address!r} is not host:port")
    return host, int(port) if port else SENTINEL_PORT


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _userinfo(username: str | None, password: str | None) -> str:
    if not username and not password:
        return ""
    return f"{quote(username or '', safe='')}:{quote(password or '', safe='')}@"


def _error(url: str, problem: str) -> ConfigError:
    return ConfigError(f"setting {SETTING} ({redact(url)}): {problem}", field=SETTING)


def redact(url: str) -> str:
    """``url`` with the password of every user-info part (and sentinel_password) hidden."""
    out = []
    for chunk in url.split(";"):
        parts = urlsplit(chunk)
        userinfo, at, netloc = parts.netloc.rpartition("@")
        if at and ":" in userinfo:
            userinfo = userinfo.partition(":")[0] + ":***"
        query = "&".join(f"{k}={'***' if k == 'sentinel_password' else v}"
                         for k, v in parse_qsl(parts.query, keep_blank_values=True))
        out.append(urlunsplit(parts._replace(netloc=f"{userinfo}{at}{netloc}", query=query)))
    return ";".join(out)


# -- what processes call ----------------------------------------------------------------


def redis_client(url: str, **kwargs: Any) -> redis.Redis:
    """A blocking client for the Redis of ``url`` (any form above)."""
    return parse_redis_url(url).client(**kwargs)


def async_redis_client(url: str, **kwargs: Any) -> aioredis.Redis:
    """An asyncio client for the Redis of ``url`` (any form above)."""
    return parse_redis_url(url).async_client(**kwargs)


def celery_connection(url: str) -> dict[str, Any]:
    """Celery's broker and result-backend settings for ``url`` (see :meth:`RedisTarget.celery_conf`)."""
    return parse_redis_url(url).celery_conf()


def wait_until_reachable(url: str, timeout_s: float, *, poll_s: float = 1.0) -> None:
    """Block until Redis answers PING at ``url`` (a service started before its Redis, as
    Compose, Swarm and Kubernetes may do); RuntimeUnavailable after ``timeout_s``. Refused
    credentials or permissions raise at once: waiting would not help."""
    deadline = time.monotonic() + timeout_s
    client = redis_client(url, socket_timeout=5, socket_connect_timeout=5)
    told = False
    try:
        while True:
            try:
                client.ping()
                if told:
                    log.info("Redis at %s answers", redact(url))
                return
            except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as e:
                raise RuntimeUnavailable(f"Redis at {redact(url)} refuses these credentials: "
                                         f"{e}") from e
            except (redis.ConnectionError, redis.TimeoutError) as e:
                if time.monotonic() > deadline:
                    raise RuntimeUnavailable(f"no Redis answered at {redact(url)} within "
                                             f"{timeout_s:.0f} s (redis_wait_s): {e}") from e
                if not told:
                    log.info("waiting up to %.0f s for Redis at %s (%s)", timeout_s,
                             redact(url), e)
                    told = True
            time.sleep(poll_s)
    finally:
        client.close()


def confirm_replicated(client: redis.Redis, url: str, what: str) -> None:
    """Wait until ``replica_acks`` replicas hold what ``client`` wrote; RuntimeUnavailable
    (naming ``what``) if they do not within :data:`REPLICA_ACK_TIMEOUT_MS`."""
    needed = parse_redis_url(url).replica_acks
    if needed <= 0:
        return
    got = client.wait(needed, REPLICA_ACK_TIMEOUT_MS)
    if got < needed:
        raise RuntimeUnavailable(_not_replicated(url, what, got, needed))


async def confirm_replicated_async(client: aioredis.Redis, url: str, what: str) -> None:
    """:func:`confirm_replicated` for an asyncio client."""
    needed = parse_redis_url(url).replica_acks
    if needed <= 0:
        return
    got = await client.wait(needed, REPLICA_ACK_TIMEOUT_MS)
    if got < needed:
        raise RuntimeUnavailable(_not_replicated(url, what, got, needed))


def _not_replicated(url: str, what: str, got: int, needed: int) -> str:
    return (f"{what} reached the primary at {redact(url)} but only {got} of {needed} "
            f"replica(s) confirmed it within {REPLICA_ACK_TIMEOUT_MS} ms (replica_acks): it "
            "may still be served, or lost if the primary fails now")
