"""Celery app factory, the producer clients and the asyncio dispatcher."""

from carbonedge.broker.celery_app import make_celery_app
from carbonedge.broker.client import AsyncClient, Client, InferenceHandle
from carbonedge.broker.results import InferenceResult

__all__ = ["AsyncClient", "Client", "InferenceHandle", "InferenceResult", "make_celery_app"]
