"""CarbonEdge: carbon-aware deep-learning inference across heterogeneous edge nodes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "InferenceResult", "__version__"]

if TYPE_CHECKING:
    from carbonedge.client import AsyncClient, Client, InferenceResult


def __getattr__(name: str) -> Any:
    # Lazy so that `import carbonedge.scheduler` does not pull in Celery.
    if name in ("Client", "AsyncClient", "InferenceResult"):
        from carbonedge import client

        return getattr(client, name)
    raise AttributeError(name)
