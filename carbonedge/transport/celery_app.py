"""The Celery application every CarbonEdge process builds the same way: msgpack only."""

from __future__ import annotations

from typing import Any

from celery import Celery

from carbonedge.connections import celery_connection
from carbonedge.settings import Settings
from carbonedge.transport.compat import check_supported

SERIALIZER = "msgpack"


def make_celery_app(settings: Settings, *, main: str = "carbonedge", **conf: Any) -> Celery:
    """A Celery app on the settings' Redis (plain, TLS or Sentinel: see
    :mod:`carbonedge.connections`), accepting msgpack and nothing else (no pickle).
    Refuses to make one on a Celery or kombu outside the checked versions."""
    check_supported()
    connection = celery_connection(settings.redis_url)
    broker = connection.pop("broker_url")
    app = Celery(main, broker=broker, backend=connection.pop("result_backend"),
                 set_as_current=False)
    transport = {**connection.pop("broker_transport_options", {}),
                 **conf.pop("broker_transport_options", {})}
    conf = {**connection, **conf}
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
        # by the dispatchers' watchdog (dispatcher/recovery.py), which also removes their
        # unacked entries; a short timeout would only make kombu re-queue the long tasks
        # of live agents.
        broker_transport_options={"visibility_timeout": 3600, **transport},
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_track_started=False,
        enable_utc=True,
        **conf,
    )
    return app
