"""The outcome of one scheduling decision, and how it explains itself.

A :class:`Decision` names the chosen node with its score and its five components, and
keeps (privately, by reference) the component vectors of every candidate so that
:meth:`Decision.explain` can list them later without slowing the decision down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from carbonedge.scheduler.weights import COMPONENTS, Weights

__all__ = ["Decision"]


_Table = tuple[Any, ...]
"""Per-candidate vectors of one decision (lists or arrays, a tuple being cheap to build):
node ids, the components R, P, C, L, B as scored, the service time T (ms), the
estimated carbon of the task (g), in_flight, and the scores."""


def _rows(table: _Table) -> list[dict[str, Any]]:
    """One map per candidate, best first (score, then fewer in flight, then node id)."""
    ids, r, p, c, l_, b, t_ms, grams, k, scores = table
    order = sorted(range(len(ids)), key=lambda i: (-float(scores[i]), k[i], i))
    return [
        {
            "node": ids[i],
            "R": float(r[i]),
            "L": float(l_[i]),
            "P": float(p[i]),
            "B": float(b[i]),
            "C": float(c[i]),
            "score": float(scores[i]),
            "in_flight": int(k[i]),
            "exec_ms": float(t_ms[i]),
            "predicted_ms": float((k[i] + 1) * t_ms[i]),
            "carbon_g": float(grams[i]),
        }
        for i in order
    ]


@dataclass(frozen=True, slots=True)
class Decision:
    """Which node a task goes to, why, and how long deciding took."""

    node_id: str
    score: float
    components: dict[str, float]
    """The chosen node's components, keyed ``R``, ``L``, ``P``, ``B``, ``C``."""
    weights: Weights
    normalisation: str
    duration_ns: int
    """Time spent inside :func:`~carbonedge.scheduler.select`, from ``perf_counter_ns``."""
    candidates: int
    """Number of live nodes that were scored."""
    _table: _Table | None = field(default=None, repr=False, compare=False)

    def explain(self) -> list[dict[str, Any]]:
        """Every candidate with each component and its score, best first.

        Rows also carry the candidate's ``in_flight`` at decision time, its predicted
        ``exec_ms`` and the estimated ``carbon_g`` of the task. A decision built by hand
        (without a table) explains only its chosen node.
        """
        if self._table is None:
            return [{"node": self.node_id, **self.components, "score": self.score}]
        rows = _rows(self._table)
        if rows[0]["node"] != self.node_id:  # a tie within 1e-12 went to fewer in flight
            rows.sort(key=lambda row: row["node"] != self.node_id)
        return rows

    def to_wire(self, *, explain: bool = False) -> dict[str, Any]:
        """The decision as a map of builtins (msgpack-able); ``explain`` adds every row."""
        wire: dict[str, Any] = {
            "node_id": self.node_id,
            "score": float(self.score),
            "components": {k: float(self.components[k]) for k in COMPONENTS},
            "weights": self.weights.to_wire(),
            "normalisation": self.normalisation,
            "duration_ns": int(self.duration_ns),
            "candidates": int(self.candidates),
        }
        if explain:
            wire["explain"] = self.explain()
        return wire


_new = object.__new__
_set = object.__setattr__


def _new_decision(
    node_id: str,
    score: float,
    components: dict[str, float],
    weights: Weights,
    normalisation: str,
    duration_ns: int,
    candidates: int,
    table: _Table,
) -> Decision:
    """``Decision(...)`` without the keyword handling of the generated ``__init__``.

    ``select`` builds one per request and this saves about a third of the cost; the
    fields are the same, set the way a frozen dataclass's ``__init__`` sets them.
    """
    d = _new(Decision)
    _set(d, "node_id", node_id)
    _set(d, "score", score)
    _set(d, "components", components)
    _set(d, "weights", weights)
    _set(d, "normalisation", normalisation)
    _set(d, "duration_ns", duration_ns)
    _set(d, "candidates", candidates)
    _set(d, "_table", table)
    return d
