"""The latency-SLO policy: the least carbon among nodes predicted to meet a latency bound.

A node's predicted latency for one more task is its service time for the model times the
tasks ahead of it plus this one, ``(in_flight + 1) · exec_ms``. Among nodes that meet the
SLO the one with the least estimated carbon wins (ties: the better score); when none can,
the fastest predicted one does, and the decision says the SLO was missed. This is what
keeps a Green burst from piling onto one green node: once its queue would break the SLO,
the next-greenest node that can still meet it takes the task.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from carbonedge.scheduler.decision import Decision
from carbonedge.scheduler.weights import COMPONENTS

__all__ = ["apply_latency_slo"]


def _predicted_ms(row: dict[str, Any]) -> float:
    return (row["in_flight"] + 1) * row["exec_ms"]


def apply_latency_slo(decision: Decision, slo_ms: float) -> tuple[Decision, dict[str, Any]]:
    """``decision`` re-targeted under the SLO, and a summary for the decision's wire form."""
    rows = decision.explain()
    if not rows or "exec_ms" not in rows[0]:  # a hand-built decision: nothing to compare
        return decision, {"slo_ms": slo_ms, "met": None}
    meeting = [row for row in rows if _predicted_ms(row) <= slo_ms]
    if meeting:
        best = min(meeting, key=lambda row: (row["carbon_g"], -row["score"]))
    else:
        best = min(rows, key=_predicted_ms)
    summary = {"slo_ms": slo_ms, "met": bool(meeting), "predicted_ms": _predicted_ms(best),
               "meeting": len(meeting), "scored_choice": decision.node_id}
    if best["node"] == decision.node_id:
        return decision, summary
    chosen = replace(decision, node_id=best["node"], score=best["score"],
                     components={k: best[k] for k in COMPONENTS})
    return chosen, summary
