"""The Celery application every CarbonEdge process builds the same way: msgpack only."""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from celery import Celery

from carbonedge.errors import ConfigError
from carbonedge.settings import Settings

SERIALIZER = "msgpack"


def make_celery_app(settings: Settings, *, main: str = "carbonedge", **conf: Any) -> Celery:
    """A Celery app on the settings' Redis, accepting msgpack and nothing else (no pickle)."""
    url, tls = split_tls(settings.redis_url)
    app = Celery(main, broker=url, backend=url, set_as_current=False)
    if tls is not None:
        conf = {"broker_use_ssl": tls, "redis_backend_use_ssl": tls, **conf}
    app.conf.update(
        task_serializer=SERIALIZER,
        result_serializer=SERIALIZER,
        accept_content=[SERIALIZER],
        result_accept_content=[SERIALIZER],
        event_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_create_missing_queues=True,
        task_default_queue="ce.default",
        result_expires=3600,
        result_extended=False,
        broker_connection_retry_on_startup=True,
        # Not lowered on purpose: a dead node's requests are re-dispatched within seconds
        # by the dispatchers' watchdog (broker/recovery.py), which also removes their
        # unacked entries; a short timeout would only make kombu re-queue the long tasks
        # of live agents.
        broker_transport_options={"visibility_timeout": 3600},
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_track_started=False,
        enable_utc=True,
        **conf,
    )
    return app


_CERT_REQS = {"required": ssl.CERT_REQUIRED, "cert_required": ssl.CERT_REQUIRED,
              "optional": ssl.CERT_OPTIONAL, "cert_optional": ssl.CERT_OPTIONAL,
              "none": ssl.CERT_NONE, "cert_none": ssl.CERT_NONE}
_TLS_PARAMS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def split_tls(url: str) -> tuple[str, dict[str, Any] | None]:
    """A ``rediss://`` URL's TLS options for kombu and Celery, and the URL without them.

    redis-py reads ``ssl_cert_reqs``/``ssl_ca_certs``/... from the URL itself, but kombu
    ignores them and, for a bare ``rediss://``, falls back to *not* verifying the server.
    Verification is on unless the URL says ``ssl_cert_reqs=none``.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return url, None
    query = dict(parse_qsl(parts.query))
    reqs = query.pop("ssl_cert_reqs", "required").lower()
    if reqs not in _CERT_REQS:
        raise ConfigError(f"ssl_cert_reqs={reqs!r} in the Redis URL is not one of "
                          f"{sorted(_CERT_REQS)}", field="redis_url")
    tls: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS[reqs]}
    for name in _TLS_PARAMS:
        if name in query:
            tls[name] = query.pop(name)
    rest = "&".join(f"{k}={v}" for k, v in query.items())
    return urlunsplit(parts._replace(query=rest)), tls
