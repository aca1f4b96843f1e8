"""Celery app factory, the producer clients and the asyncio dispatcher."""

from carbonedge.broker.client import AsyncClient, Client, InferenceHandle
from carbonedge.broker.results import InferenceResult
from carbonedge.transport.celery_app import make_celery_app

__all__ = ["AsyncClient", "Client", "InferenceHandle", "InferenceResult", "make_celery_app"]
