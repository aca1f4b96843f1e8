"""The pure scheduler: score live nodes for a task and pick one (no Redis, no Celery).

The dispatcher builds a :class:`ClusterView` once per telemetry refresh, then calls
:func:`select` per request and :meth:`ClusterView.add_in_flight` after each dispatch.
"""

from __future__ import annotations

from carbonedge.scheduler.decision import Decision
from carbonedge.scheduler.selector import NORMALISATIONS, ClusterView, select
from carbonedge.scheduler.snapshot import NodeSnapshot, References
from carbonedge.scheduler.weights import COMPONENTS, MODES, Weights, weights_for

__all__ = [
    "COMPONENTS",
    "MODES",
    "NORMALISATIONS",
    "ClusterView",
    "Decision",
    "NodeSnapshot",
    "References",
    "Weights",
    "select",
    "weights_for",
]
