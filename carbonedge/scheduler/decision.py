"""The outcome of one scheduling decision, and how it explains itself.

A :class:`Decision` names the chosen node with its score and its five components, and
keeps (privately, by reference) the component vectors of every candidate so that
:meth:`Decision.explain` can list them later without slowing the decision down.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from carbonedge.scheduler.weights import COMPONENTS, Weights

__all__ = ["Decision"]


class _Table:
    """Per-candidate values of one decision (lists or arrays, read only)."""

    __slots__ = ("b", "c", "grams", "ids", "in_flight", "l", "p", "r", "scores", "t_ms")

    def __init__(
        self,
        ids: Sequence[str],
        r: Sequence[float],
        l: Sequence[float],  # noqa: E741 - the paper's name for the load component
        p: Sequence[float],
        b: Sequence[float],
        c: Sequence[float],
        scores: Sequence[float],
        in_flight: Sequence[float],
        t_ms: Sequence[float],
        grams: Sequence[float],
    ) -> None:
        self.ids = ids
        self.r = r
        self.l = l
        self.p = p
        self.b = b
        self.c = c
        self.scores = scores
        self.in_flight = in_flight
        self.t_ms = t_ms
        self.grams = grams

    def rows(self) -> list[dict[str, Any]]:
        """One map per candidate, best first (score, then fewer in flight, then node id)."""
        n = len(self.ids)
        order = sorted(range(n), key=lambda i: (-float(self.scores[i]), self.in_flight[i], i))
        out: list[dict[str, Any]] = []
        for i in order:
            out.append(
                {
                    "node": self.ids[i],
                    "R": float(self.r[i]),
                    "L": float(self.l[i]),
                    "P": float(self.p[i]),
                    "B": float(self.b[i]),
                    "C": float(self.c[i]),
                    "score": float(self.scores[i]),
                    "in_flight": int(self.in_flight[i]),
                    "exec_ms": float(self.t_ms[i]),
                    "carbon_g": float(self.grams[i]),
                }
            )
        return out


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
        return self._table.rows()

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
