"""Partition plans: which node runs which contiguous range of a model's blocks.

A plan cuts the ordered blocks ``[0, n)`` into contiguous segments, one per node (each
node at most once, each segment at least one block). A request runs segment after
segment; between two segments the sender ships its last block's activation over a
:class:`Link`. Every number is predicted from plain inputs:

- a block's cost in the profile's units (layer cost, FLOPs or ms) and its output bytes
  (:class:`BlockCost`, from any ``BlockProfile``-like object),
- a node's speed in cost units per ms (:func:`speed_from_profile`), its power while
  serving, its grid's carbon intensity and PUE (:class:`PlanNode`).

Per segment: ``compute_ms = Σ cost / speed``; ``transfer_ms_out = latency + bytes /
bandwidth`` (0 for the last segment); energy ``power_w · compute_ms / 1000`` J plus the
transfer's ``bytes · J/B``; carbon ``J / 3.6e6 · CI · PUE`` for compute and ``J / 3.6e6 ·
CI`` (the sender's grid, no PUE) for the transfer. A plan's latency is the sum of its
stages and transfers (one request, no pipelining); its bottleneck is its slowest stage
including that stage's outgoing transfer (the bound on pipelined throughput).

Strategies are registered by name (:func:`plan_strategies`, :func:`make_plan`):

- ``monolithic``: every block on one node,
- ``balanced``: exactly ``k`` nodes minimising the bottleneck, ties to lower latency,
- ``green``: 1..``k_max`` nodes minimising carbon subject to a latency bound.

Node orders: for ``k <= 3`` segments every ordered choice of ``k`` of the given nodes is
tried (permutations); for more, ``k`` of the nodes in the order given (combinations), so
the caller's order is the pipeline order. Within one order the cut points are chosen by
dynamic programming, exactly. Pure: no torch, no Redis.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations, permutations
from typing import Any, Protocol

from carbonedge.carbon.power import carbon_grams
from carbonedge.carbon.units import kwh_from_joules
from carbonedge.errors import ConfigError, InvalidMessage, InvalidRequest
from carbonedge.protocol.routes import Route, RouteSegment
from carbonedge.registry import Registry

__all__ = [
    "LOOPBACK",
    "BlockCost",
    "Link",
    "Plan",
    "PlanNode",
    "Segment",
    "balanced_plan",
    "block_costs",
    "green_plan",
    "make_plan",
    "monolithic_plan",
    "plan_strategies",
    "register_strategy",
    "speed_from_profile",
]

WIRE_VERSION = 1
MAX_PERMUTED_SEGMENTS = 3
"""Up to this many segments every node order is tried; beyond it, the given order."""
MAX_ORDERS = 20_000
"""Node orders one plan may examine before it refuses (the request is too large)."""
COST_MEASURES = ("layer_cost", "flops", "time_ms")
_REL_TOL = 1e-9


def _check_number(name: str, value: Any, *, positive: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise InvalidRequest(f"{name} must be finite and {bound}, got {value!r}", field=name)
    return float(value)


def _tol(x: float) -> float:
    return _REL_TOL * max(1.0, abs(x))


# --- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlockCost:
    """One block's cost in the profile's units and the bytes of its output activation."""

    cost: float
    activation_bytes: int

    def __post_init__(self) -> None:
        _check_number("cost", self.cost)
        _check_number("activation_bytes", self.activation_bytes)


class _ProfileLike(Protocol):
    activation_bytes: int


def block_costs(profiles: Iterable[_ProfileLike], measure: str = "layer_cost") -> list[BlockCost]:
    """:class:`BlockCost` per ``BlockProfile``-like object, costed by ``measure``
    (one of :data:`COST_MEASURES`)."""
    if measure not in COST_MEASURES:
        raise ConfigError(
            f"unknown cost measure {measure!r}; known: {', '.join(COST_MEASURES)}",
            field="measure",
        )
    return [BlockCost(float(getattr(p, measure)), int(p.activation_bytes)) for p in profiles]


def speed_from_profile(total_cost: float, exec_ms: float) -> float:
    """A node's speed in cost units per ms: the model's total cost over its service time."""
    total = _check_number("total_cost", total_cost, positive=True)
    return total / _check_number("exec_ms", exec_ms, positive=True)


class _SnapshotLike(Protocol):
    node_id: str
    active_power_w: float
    carbon_intensity: float
    pue: float
    exec_ms: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class PlanNode:
    """A candidate node: speed (cost units per ms), power while serving (W), grid CI
    (gCO2/kWh) and PUE."""

    node_id: str
    speed: float
    power_w: float
    carbon_intensity: float
    pue: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, str) or not self.node_id:
            raise InvalidRequest("node_id must be a non-empty string", field="node_id")
        _check_number("speed", self.speed, positive=True)
        for name in ("power_w", "carbon_intensity", "pue"):
            _check_number(name, getattr(self, name))

    @classmethod
    def from_snapshot(cls, snapshot: _SnapshotLike, model: str, total_cost: float) -> PlanNode:
        """From a scheduler ``NodeSnapshot``: speed from its service time of ``model``."""
        if model not in snapshot.exec_ms:
            raise InvalidRequest(
                f"node {snapshot.node_id!r} has no service time for model {model!r}",
                field="model",
            )
        return cls(
            node_id=snapshot.node_id,
            speed=speed_from_profile(total_cost, snapshot.exec_ms[model]),
            power_w=snapshot.active_power_w,
            carbon_intensity=snapshot.carbon_intensity,
            pue=snapshot.pue,
        )


@dataclass(frozen=True, slots=True)
class Link:
    """The wire between two segments. Defaults: loopback Redis."""

    bandwidth_bytes_per_ms: float = 1e6
    latency_ms: float = 0.5
    energy_j_per_byte: float = 0.0

    def __post_init__(self) -> None:
        _check_number("bandwidth_bytes_per_ms", self.bandwidth_bytes_per_ms, positive=True)
        _check_number("latency_ms", self.latency_ms)
        _check_number("energy_j_per_byte", self.energy_j_per_byte)

    def transfer_ms(self, nbytes: int) -> float:
        return self.latency_ms + nbytes / self.bandwidth_bytes_per_ms


LOOPBACK = Link()


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    """Blocks ``[start, stop)`` on ``node_id``; energy and carbon include the outgoing
    transfer (charged to this, the sending, node)."""

    node_id: str
    start: int
    stop: int
    compute_ms: float
    transfer_ms_out: float
    energy_j: float
    carbon_g: float

    @property
    def stage_ms(self) -> float:
        return self.compute_ms + self.transfer_ms_out


_SEGMENT_FIELDS = (
    "node_id",
    "start",
    "stop",
    "compute_ms",
    "transfer_ms_out",
    "energy_j",
    "carbon_g",
)
_PLAN_FIELDS = ("strategy", "latency_ms", "bottleneck_ms", "energy_j", "carbon_g")


@dataclass(frozen=True, slots=True)
class Plan:
    """A partition plan and its predictions (see the module docstring for the formulas)."""

    strategy: str
    segments: tuple[Segment, ...]
    latency_ms: float
    bottleneck_ms: float
    energy_j: float
    carbon_g: float

    @classmethod
    def of(cls, strategy: str, segments: Sequence[Segment]) -> Plan:
        """The plan of ``segments``, its totals computed from them."""
        return cls(
            strategy=strategy,
            segments=tuple(segments),
            latency_ms=sum(s.stage_ms for s in segments),
            bottleneck_ms=max(s.stage_ms for s in segments),
            energy_j=sum(s.energy_j for s in segments),
            carbon_g=sum(s.carbon_g for s in segments),
        )

    def route(self) -> Route:
        """What runs the plan: each segment's node and block range, as it travels."""
        return Route(tuple(RouteSegment(s.node_id, s.start, s.stop) for s in self.segments))

    def to_wire(self) -> dict[str, Any]:
        """The plan as a versioned map of builtins (msgpack-able)."""
        wire: dict[str, Any] = {"version": WIRE_VERSION}
        wire.update({name: getattr(self, name) for name in _PLAN_FIELDS})
        wire["segments"] = [{n: getattr(s, n) for n in _SEGMENT_FIELDS} for s in self.segments]
        return wire

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Plan:
        """Inverse of :meth:`to_wire`; a malformed map raises ``InvalidMessage``."""
        if not isinstance(wire, Mapping) or wire.get("version") != WIRE_VERSION:
            raise InvalidMessage(f"plan must be a map with version {WIRE_VERSION}", field="version")
        try:
            segments = tuple(
                Segment(**{n: s[n] for n in _SEGMENT_FIELDS}) for s in wire["segments"]
            )
            values = {n: wire[n] for n in _PLAN_FIELDS}
        except (KeyError, TypeError) as e:
            raise InvalidMessage(f"malformed plan: missing or bad {e}", field="plan") from e
        if not segments:
            raise InvalidMessage("plan has no segments", field="segments")
        return cls(segments=segments, **values)

    def explain(self) -> str:
        """A short human-readable summary."""
        head = (
            f"{self.strategy}: {len(self.segments)} segment(s), latency {self.latency_ms:.3g} ms, "
            f"bottleneck {self.bottleneck_ms:.3g} ms, {self.energy_j:.3g} J, "
            f"{self.carbon_g:.3g} gCO2"
        )
        parts = [
            f"[{s.start}, {s.stop}) on {s.node_id}: {s.compute_ms:.3g} ms"
            + (f" + {s.transfer_ms_out:.3g} ms out" if s.transfer_ms_out else "")
            for s in self.segments
        ]
        return head + "; " + "; ".join(parts)


# --- the cost model -----------------------------------------------------------------------


class _Model:
    """Prefix sums over the blocks: any segment's numbers in O(1)."""

    def __init__(self, blocks: Sequence[BlockCost], link: Link) -> None:
        if not blocks:
            raise InvalidRequest("a plan needs at least one block", field="blocks")
        self.n = len(blocks)
        self.link = link
        self.prefix = [0.0]
        for b in blocks:
            self.prefix.append(self.prefix[-1] + b.cost)
        self.out_bytes = [b.activation_bytes for b in blocks]

    def segment(self, node: PlanNode, start: int, stop: int) -> Segment:
        compute_ms = (self.prefix[stop] - self.prefix[start]) / node.speed
        compute_j = node.power_w * compute_ms / 1000.0
        carbon = carbon_grams(kwh_from_joules(compute_j), node.carbon_intensity, node.pue)
        transfer_ms = transfer_j = 0.0
        if stop < self.n:
            nbytes = self.out_bytes[stop - 1]
            transfer_ms = self.link.transfer_ms(nbytes)
            transfer_j = nbytes * self.link.energy_j_per_byte
            carbon += carbon_grams(kwh_from_joules(transfer_j), node.carbon_intensity)
        energy = compute_j + transfer_j
        return Segment(node.node_id, start, stop, compute_ms, transfer_ms, energy, carbon)


def _check_nodes(nodes: Sequence[PlanNode]) -> None:
    if not nodes:
        raise InvalidRequest("a plan needs at least one node", field="nodes")
    ids = [n.node_id for n in nodes]
    if len(set(ids)) != len(ids):
        raise InvalidRequest(f"node ids must be distinct, got {ids}", field="nodes")


def _check_k(name: str, k: Any, nodes: Sequence[PlanNode], n_blocks: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidRequest(f"{name} must be an integer >= 1, got {k!r}", field=name)
    if k > len(nodes) or k > n_blocks:
        raise InvalidRequest(
            f"{name}={k} segments need {k} distinct nodes and {k} blocks; "
            f"have {len(nodes)} node(s) and {n_blocks} block(s)",
            field=name,
        )
    return k


def _orders(nodes: Sequence[PlanNode], k: int) -> list[tuple[PlanNode, ...]]:
    count = math.perm(len(nodes), k) if k <= MAX_PERMUTED_SEGMENTS else math.comb(len(nodes), k)
    if count > MAX_ORDERS:
        raise InvalidRequest(
            f"{count} node orders for {k} segments over {len(nodes)} nodes exceed {MAX_ORDERS}",
            field="nodes",
        )
    pick = permutations if k <= MAX_PERMUTED_SEGMENTS else combinations
    return list(pick(nodes, k))


def _stage_ms(model: _Model, node: PlanNode, start: int, stop: int) -> float:
    ms = (model.prefix[stop] - model.prefix[start]) / node.speed
    if stop < model.n:
        ms += model.link.transfer_ms(model.out_bytes[stop - 1])
    return ms


def _min_bottleneck(model: _Model, order: Sequence[PlanNode]) -> float:
    """Least bottleneck of ``order`` (each node one non-empty segment, in order)."""
    k, n = len(order), model.n
    best = [0.0] + [math.inf] * n  # best[t]: blocks [0, t) on the nodes so far
    for j, node in enumerate(order):
        nxt = [math.inf] * (n + 1)
        for t in range(j + 1, n - (k - j - 1) + 1):
            for s in range(j, t):
                if best[s] < nxt[t]:
                    nxt[t] = min(nxt[t], max(best[s], _stage_ms(model, node, s, t)))
        best = nxt
    return best[n]


def _min_latency_cuts(
    model: _Model, order: Sequence[PlanNode], cap_ms: float
) -> tuple[float, list[int]] | None:
    """Least latency of ``order`` with every stage <= ``cap_ms``, and its cut points."""
    k, n = len(order), model.n
    best = [0.0] + [math.inf] * n
    back: list[list[int]] = []
    for j, node in enumerate(order):
        nxt = [math.inf] * (n + 1)
        arg = [-1] * (n + 1)
        for t in range(j + 1, n - (k - j - 1) + 1):
            for s in range(j, t):
                if best[s] == math.inf:
                    continue
                stage = _stage_ms(model, node, s, t)
                if stage <= cap_ms and best[s] + stage < nxt[t]:
                    nxt[t], arg[t] = best[s] + stage, s
        best = nxt
        back.append(arg)
    if best[n] == math.inf:
        return None
    cuts = [n]
    for arg in reversed(back):
        cuts.append(arg[cuts[-1]])
    return best[n], cuts[::-1]


def _plan_from_cuts(
    strategy: str, model: _Model, order: Sequence[PlanNode], cuts: Sequence[int]
) -> Plan:
    return Plan.of(
        strategy, [model.segment(node, cuts[i], cuts[i + 1]) for i, node in enumerate(order)]
    )


# --- strategies ---------------------------------------------------------------------------


def monolithic_plan(blocks: Sequence[BlockCost], node: PlanNode, *, link: Link = LOOPBACK) -> Plan:
    """Every block on ``node``: one segment, no transfer."""
    model = _Model(blocks, link)
    return Plan.of("monolithic", [model.segment(node, 0, model.n)])


def balanced_plan(
    blocks: Sequence[BlockCost], nodes: Sequence[PlanNode], k: int, *, link: Link = LOOPBACK
) -> Plan:
    """Exactly ``k`` distinct nodes minimising the bottleneck (slowest stage including its
    outgoing transfer); among plans within ``1e-9`` relative of the least bottleneck, the
    least latency."""
    model = _Model(blocks, link)
    _check_nodes(nodes)
    _check_k("k", k, nodes, model.n)
    orders = _orders(nodes, k)
    bottleneck = min(_min_bottleneck(model, order) for order in orders)
    cap = bottleneck + _tol(bottleneck)
    best: tuple[float, Sequence[PlanNode], list[int]] | None = None
    for order in orders:
        found = _min_latency_cuts(model, order, cap)
        if found is not None and (best is None or found[0] < best[0]):
            best = (found[0], order, found[1])
    assert best is not None  # the order that reached ``bottleneck`` is feasible under cap
    return _plan_from_cuts("balanced", model, best[1], best[2])


# A Pareto label: (carbon_g, latency_ms, previous cut, index of the parent label).
_Label = tuple[float, float, int, int]


def _pareto(labels: list[_Label]) -> list[_Label]:
    labels.sort(key=lambda lab: (lab[0], lab[1]))
    kept: list[_Label] = []
    for lab in labels:
        if not kept or lab[1] < kept[-1][1]:
            kept.append(lab)
    return kept


def _least_carbon(
    model: _Model, order: Sequence[PlanNode], bound_ms: float
) -> tuple[float, float, list[int]] | None:
    """Least (carbon, latency) of ``order`` with latency <= ``bound_ms``, and its cuts:
    a dynamic program over Pareto fronts of (carbon, latency) per cut point."""
    k, n = len(order), model.n
    fronts: list[list[list[_Label]]] = [[[(0.0, 0.0, -1, -1)]] + [[] for _ in range(n)]]
    for j, node in enumerate(order):
        prev = fronts[-1]
        cur: list[list[_Label]] = [[] for _ in range(n + 1)]
        for t in range(j + 1, n - (k - j - 1) + 1):
            labels: list[_Label] = []
            for s in range(j, t):
                if not prev[s]:
                    continue
                seg = model.segment(node, s, t)
                for i, (carbon, latency, _, _) in enumerate(prev[s]):
                    lat = latency + seg.stage_ms
                    if lat <= bound_ms:
                        labels.append((carbon + seg.carbon_g, lat, s, i))
            cur[t] = _pareto(labels)
        fronts.append(cur)
    final = fronts[-1][n]
    if not final:
        return None
    floor = final[0][0] + _tol(final[0][0])
    label = min((lab for lab in final if lab[0] <= floor), key=lambda lab: lab[1])
    carbon, latency = label[0], label[1]
    cuts = [n]
    for j in range(k, 0, -1):
        s, i = label[2], label[3]
        cuts.append(s)
        label = fronts[j - 1][s][i]
    return carbon, latency, cuts[::-1]


def green_plan(
    blocks: Sequence[BlockCost],
    nodes: Sequence[PlanNode],
    k_max: int,
    latency_bound_ms: float,
    *,
    link: Link = LOOPBACK,
) -> Plan:
    """Least carbon over plans of 1..``k_max`` distinct nodes whose latency meets
    ``latency_bound_ms``; carbon ties (``1e-9`` relative) go to lower latency, then to
    fewer segments. Raises :class:`InvalidRequest` naming the bound and the least
    achievable latency when no plan meets it."""
    model = _Model(blocks, link)
    _check_nodes(nodes)
    _check_k("k_max", k_max, nodes, model.n)
    bound = _check_number("latency_bound_ms", latency_bound_ms)
    best: tuple[float, float, Sequence[PlanNode], list[int]] | None = None
    for k in range(1, k_max + 1):
        for order in _orders(nodes, k):
            found = _least_carbon(model, order, bound + _tol(bound))
            if found is None:
                continue
            carbon, latency, cuts = found
            if (
                best is None
                or carbon < best[0] - _tol(best[0])
                or (carbon <= best[0] + _tol(best[0]) and latency < best[1])
            ):
                best = (carbon, latency, order, cuts)
    if best is None:
        fastest = min(
            found[0]
            for k in range(1, k_max + 1)
            for order in _orders(nodes, k)
            if (found := _min_latency_cuts(model, order, math.inf)) is not None
        )
        raise InvalidRequest(
            f"no plan of up to {k_max} segment(s) meets the latency bound "
            f"{latency_bound_ms:g} ms; the best achievable latency is {fastest:.6g} ms",
            field="latency_bound_ms",
        )
    return _plan_from_cuts("green", model, best[2], best[3])


# --- registry -----------------------------------------------------------------------------

PlanStrategy = Callable[..., Plan]
"""``(blocks, nodes, *, link, **options) -> Plan``."""

STRATEGIES: Registry[PlanStrategy] = Registry("plan strategy", field="strategy")


def register_strategy(name: str) -> Callable[[PlanStrategy], PlanStrategy]:
    """Register a plan strategy under ``name`` (a duplicate name is a ConfigError)."""
    return STRATEGIES.register(name)


def plan_strategies() -> list[str]:
    """Names of the registered strategies, sorted."""
    return STRATEGIES.names()


def make_plan(
    strategy: str,
    blocks: Sequence[BlockCost],
    nodes: Sequence[PlanNode],
    *,
    link: Link = LOOPBACK,
    **options: Any,
) -> Plan:
    """Run the strategy named ``strategy``; an unknown name or option is a ConfigError
    that lists what exists."""
    fn = STRATEGIES.get(strategy)
    params = inspect.signature(fn).parameters
    accepted = [p for p in params if p not in ("blocks", "nodes", "link")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"plan strategy {strategy!r} takes no option(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(accepted) or 'none'}",
            field="options",
        )
    return fn(blocks, nodes, link=link, **options)


@register_strategy("monolithic")
def _monolithic(
    blocks: Sequence[BlockCost],
    nodes: Sequence[PlanNode],
    *,
    link: Link,
    node_id: str | None = None,
) -> Plan:
    _check_nodes(nodes)
    if node_id is None:
        if len(nodes) != 1:
            raise InvalidRequest(
                f"monolithic plan over {len(nodes)} nodes needs node_id", field="node_id"
            )
        return monolithic_plan(blocks, nodes[0], link=link)
    for node in nodes:
        if node.node_id == node_id:
            return monolithic_plan(blocks, node, link=link)
    raise InvalidRequest(f"node_id {node_id!r} is not among the candidate nodes", field="node_id")


@register_strategy("balanced")
def _balanced(
    blocks: Sequence[BlockCost], nodes: Sequence[PlanNode], *, link: Link, k: int = 2
) -> Plan:
    return balanced_plan(blocks, nodes, k, link=link)


@register_strategy("green")
def _green(
    blocks: Sequence[BlockCost],
    nodes: Sequence[PlanNode],
    *,
    link: Link,
    latency_bound_ms: float,
    k_max: int | None = None,
) -> Plan:
    if k_max is None:  # as many segments as the cluster allows, up to the permuted limit
        k_max = min(MAX_PERMUTED_SEGMENTS, len(nodes), len(blocks))
    return green_plan(blocks, nodes, k_max, latency_bound_ms, link=link)
