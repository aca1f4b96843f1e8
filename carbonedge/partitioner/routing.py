"""The policy that picks a partitioned request's route from its ``partition`` option.

:func:`choose_route` turns ``partition`` (``none``, ``auto``, ``green`` or a segment count)
into a plan over the live nodes, or ``None``: serve the request whole, task-level. The plan's
:meth:`~carbonedge.partitioner.plans.Plan.route` is what travels
(:class:`carbonedge.protocol.routes.Route`).

Pure: no torch, no Redis.
"""

from __future__ import annotations

from collections.abc import Sequence

from carbonedge.errors import InvalidRequest
from carbonedge.partitioner.plans import (
    MAX_PERMUTED_SEGMENTS,
    BlockCost,
    Link,
    Plan,
    PlanNode,
    balanced_plan,
    green_plan,
    monolithic_plan,
)

__all__ = ["AUTO_CARBON_MARGIN", "choose_route"]

AUTO_CARBON_MARGIN = 0.10
"""``auto`` splits a request only when the split saves at least this share of carbon."""


def choose_route(
    partition: str | int,
    blocks: Sequence[BlockCost],
    nodes: Sequence[PlanNode],
    *,
    selected: str,
    latency_bound_ms: float | None = None,
    link: Link,
) -> tuple[Plan | None, str]:
    """The plan a request runs (``None``: serve it whole on ``selected``) and why.

    - a count ``k``: ``1`` runs every block on ``selected`` through the segment path
      (a baseline for the cost of that path); ``k >= 2`` is the balanced plan over
      exactly ``k`` nodes (least bottleneck),
    - ``green``: least carbon over up to three nodes within ``latency_bound_ms``
      (default: the predicted latency of ``selected`` alone),
    - ``auto``: the green plan, taken only if it has at least two segments and saves
      at least :data:`AUTO_CARBON_MARGIN` of the carbon of ``selected`` alone;
      a bound no plan meets falls back to ``selected`` too.
    """
    by_id = {n.node_id: n for n in nodes}
    if selected not in by_id:
        raise InvalidRequest(f"node {selected!r} has no speed estimate for this model",
                             field="partition")
    whole = monolithic_plan(blocks, by_id[selected], link=link)
    if partition == "none":
        return None, "partition=none"
    if isinstance(partition, int):
        if partition == 1:
            return whole, "partition=1: every block on the selected node"
        return balanced_plan(blocks, nodes, partition, link=link), f"partition={partition}"
    bound = whole.latency_ms if latency_bound_ms is None else latency_bound_ms
    k_max = min(MAX_PERMUTED_SEGMENTS, len(nodes), len(blocks))
    if partition == "green":
        return green_plan(blocks, nodes, k_max, bound, link=link), "partition=green"
    try:
        plan = green_plan(blocks, nodes, k_max, bound, link=link)
    except InvalidRequest:
        return None, f"auto: no split meets {bound:.3g} ms"
    saving = 1.0 - plan.carbon_g / whole.carbon_g if whole.carbon_g > 0 else 0.0
    if len(plan.segments) >= 2 and saving >= AUTO_CARBON_MARGIN:
        return plan, f"auto: split saves {saving:.0%} carbon within {bound:.3g} ms"
    return None, f"auto: best split saves {saving:.0%} carbon (< {AUTO_CARBON_MARGIN:.0%})"
