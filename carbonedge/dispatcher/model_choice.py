"""Carbon-aware model choice: which model, on which node, for a request that names a
family of models or an accuracy floor instead of one model.

Each declared model carries its published ImageNet top-1 accuracy (with its source; see
:mod:`~carbonedge.partitioner.catalog`). Each node's telemetry carries its measured service
time per model (warm-up at start-up, then a median of recent tasks), from which the
scheduler estimates a task's carbon there (its S_C grams: intensity x PUE x power x time).
The choice takes every (model, node) pair whose model meets the request's family and
accuracy floor (:func:`~carbonedge.partitioner.catalog.candidates`) and whose predicted latency, ``(in flight + 1) x service time``, meets its
SLO, and picks the one of least estimated carbon; ties go to the more accurate model, then
to the better score under the request's mode. When no pair meets the SLO, the fastest pair
runs and the explanation says so. Built on the scheduler's public API only
(:func:`~carbonedge.scheduler.select`, :meth:`~carbonedge.scheduler.Decision.explain`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from carbonedge.errors import InvalidRequest
from carbonedge.partitioner.catalog import ModelSpec
from carbonedge.scheduler import COMPONENTS, ClusterView, Decision, Weights, select

__all__ = ["ModelChoice", "choose_model"]


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """The chosen model, the decision that sends it to its node, and why."""

    model: str
    decision: Decision
    explanation: dict[str, Any]


def choose_model(view: ClusterView, specs: Sequence[ModelSpec], weights: Weights,
                 normalisation: str = "minmax", *, slo_ms: float | None = None) -> ModelChoice:
    """The (model, node) pair of least estimated carbon among ``specs`` x the live nodes
    of ``view`` that meet ``slo_ms`` (see the module docstring)."""
    if not specs:
        raise InvalidRequest("no candidate model", field="model")
    decisions: dict[str, Decision] = {}
    rows: list[dict[str, Any]] = []
    for spec in specs:
        decision = select(view, spec.name, weights, normalisation)
        decisions[spec.name] = decision
        for row in decision.explain():
            predicted = (row["in_flight"] + 1) * row["exec_ms"]
            rows.append({**row, "model": spec.name, "top1": spec.top1,
                         "predicted_ms": predicted,
                         "meets_slo": slo_ms is None or predicted <= slo_ms})
    meeting = [r for r in rows if r["meets_slo"]]
    if meeting:
        best = min(meeting, key=lambda r: (r["carbon_g"], -_top1(r), -r["score"]))
    else:
        best = min(rows, key=lambda r: r["predicted_ms"])
    decision = decisions[best["model"]]
    if best["node"] != decision.node_id:
        decision = replace(decision, node_id=best["node"], score=best["score"],
                           components={k: best[k] for k in COMPONENTS})
    return ModelChoice(best["model"], decision, _explain(best, rows, meeting, slo_ms))


def _top1(row: Mapping[str, Any]) -> float:
    top1 = row.get("top1")
    return float(top1) if isinstance(top1, (int, float)) and math.isfinite(top1) else 0.0


def _explain(best: dict[str, Any], rows: list[dict[str, Any]], meeting: list[dict[str, Any]],
             slo_ms: float | None) -> dict[str, Any]:
    """Each model's best pair (least carbon where the SLO is met), the chosen one first."""
    per_model: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (not r["meets_slo"], r["carbon_g"])):
        per_model.setdefault(row["model"], row)
    ordered = sorted(per_model.values(), key=lambda r: r["model"] != best["model"])
    return {
        "model": best["model"],
        "node": best["node"],
        "reason": ("least estimated carbon" + (f" within the {slo_ms:g} ms SLO" if slo_ms
                                               else "")
                   if meeting else f"no pair meets the {slo_ms:g} ms SLO: the fastest"),
        "pairs": len(rows),
        "meeting_slo": len(meeting),
        "candidates": [{"model": r["model"], "top1": r["top1"], "node": r["node"],
                        "carbon_g": r["carbon_g"], "exec_ms": r["exec_ms"],
                        "predicted_ms": r["predicted_ms"], "meets_slo": r["meets_slo"]}
                       for r in ordered],
    }
