"""The Celery application every CarbonEdge process builds the same way: msgpack only."""

from __future__ import annotations

from typing import Any

from celery import Celery

from carbonedge.settings import Settings

SERIALIZER = "msgpack"


def make_celery_app(settings: Settings, *, main: str = "carbonedge", **conf: Any) -> Celery:
    """A Celery app on the settings' Redis, accepting msgpack and nothing else (no pickle)."""
    app = Celery(main, broker=settings.redis_url, backend=settings.redis_url, set_as_current=False)
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
        broker_transport_options={"visibility_timeout": 3600},
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_track_started=False,
        enable_utc=True,
        **conf,
    )
    return app
