"""The producer API: ``Client``, ``AsyncClient``, the requests they build and the results
they read back."""

from carbonedge.client.producer import AsyncClient, Client, InferenceHandle
from carbonedge.client.requests import RequestOptions, build_request
from carbonedge.client.results import InferenceResult, SegmentInfo

__all__ = [
    "AsyncClient",
    "Client",
    "InferenceHandle",
    "InferenceResult",
    "RequestOptions",
    "SegmentInfo",
    "build_request",
]
