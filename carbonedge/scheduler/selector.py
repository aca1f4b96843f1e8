"""Choosing a node: the cluster view built once per telemetry refresh, and ``select``.

:meth:`ClusterView.build` drops nodes whose heartbeat is older than the TTL and
precomputes everything that does not change between refreshes. The only state that moves
between refreshes is each node's ``in_flight``, which the dispatcher bumps with
:meth:`ClusterView.add_in_flight` after each dispatch so that a burst does not herd onto
one node.

``select`` scores every live node (``score = Σ w·S`` over R, L, P, B, C) and picks the
best; ties within ``1e-12`` go to the node with fewer requests in flight, then to the
lower ``node_id``. Small clusters take a pure-Python loop; from :data:`VECTOR_MIN_NODES`
nodes on, a numpy path with identical semantics.

Under ``minmax`` the load terms are measured in time, so that a queue measured in
seconds weighs as such: S_P scores the predicted completion time of one more task,
``(in_flight + 1) · T``, and S_L the work already queued, ``in_flight · T`` (T: the
node's service time for the model). Costs within the noise band of each other are
merged before min-max (:func:`~carbonedge.scheduler.components.deadband`), so replicas of
one class tie and the tie goes to the one with fewer in flight. The ``paper`` form keeps
the paper's fixed references: S_P of T alone and S_L = 1/(1 + in_flight).

How a decision stays cheap: R and C do not depend on ``in_flight``, so they are cached
per model and normalisation, and their weighted sum ``base = w_R·R + w_C·C`` per weights
object; a decision adds ``w_P·P + w_L·L + w_B·B``. Both paths perform the same
operations in the same order, so they give bit-identical scores. A view is not
thread-safe: one dispatcher loop owns it.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from carbonedge.errors import ConfigError, InvalidRequest, NoNodeAvailable, UnknownNode
from carbonedge.scheduler import components as comp
from carbonedge.scheduler.decision import Decision, _new_decision, _Table
from carbonedge.scheduler.snapshot import MIN_QUOTA, NodeSnapshot, References
from carbonedge.scheduler.weights import Weights

__all__ = ["NORMALISATIONS", "VECTOR_MIN_NODES", "ClusterView", "select"]

logger = logging.getLogger(__name__)

NORMALISATIONS = ("minmax", "paper")
VECTOR_MIN_NODES = 64
"""From this many live nodes on, ``select`` takes the numpy path (measured crossover)."""
TIE_EPS = 1e-12
_MAX_CACHED = 256
"""Per-view cache entries (model and normalisation, or weights) kept before a clear."""


class _Static:
    """The in_flight-independent components of one model under one normalisation."""

    __slots__ = ("_bases", "c", "grams", "p", "r", "t_ms")

    def __init__(self, r: Any, p: Any, c: Any, t_ms: Any, grams: Any) -> None:
        self.r = r
        self.p = p
        """S_P of the ``paper`` form (None under ``minmax``, where it depends on load)."""
        self.c = c
        self.t_ms = t_ms
        self.grams = grams
        self._bases: dict[int, tuple[Weights, Any]] = {}

    def base(self, w: Weights) -> Any:
        """``w_R·R + w_C·C`` per node, cached per weights object."""
        hit = self._bases.get(id(w))
        if hit is not None and hit[0] is w:
            return hit[1]
        wr, wc = w.r, w.c
        if isinstance(self.r, np.ndarray):
            base = wr * self.r + wc * self.c
        else:
            base = [wr * r + wc * c for r, c in zip(self.r, self.c, strict=False)]
        if len(self._bases) >= _MAX_CACHED:
            self._bases.clear()
        self._bases[id(w)] = (w, base)  # holding w keeps its id from being reused
        return base


class _Arrays:
    """The view's per-node constants as float64 arrays (built on first vectorised use)."""

    __slots__ = ("active_power_w", "in_flight", "intensity", "pue", "quota", "r_fixed")

    def __init__(self, view: ClusterView) -> None:
        nodes = view._nodes
        self.quota = np.array(view._quota, dtype=np.float64)
        self.in_flight = np.array(view._in_flight, dtype=np.float64)
        self.r_fixed = comp.resource_scores(
            np.array([n.cpu_util for n in nodes], dtype=np.float64),
            np.array([n.mem_limit_bytes - n.mem_used_bytes for n in nodes], dtype=np.float64),
            float(view.references.mem_need_bytes),
        )
        self.active_power_w = np.array([n.active_power_w for n in nodes], dtype=np.float64)
        self.intensity = np.array([n.carbon_intensity for n in nodes], dtype=np.float64)
        self.pue = np.array([n.pue for n in nodes], dtype=np.float64)


class ClusterView:
    """The live nodes at one telemetry refresh, with what scoring them needs precomputed."""

    __slots__ = (
        "_arrays",
        "_cache_np",
        "_cache_py",
        "_in_flight",
        "_index",
        "_nodes",
        "_quota",
        "_r_fixed",
        "built_at",
        "node_ids",
        "references",
        "stale_ids",
    )

    def __init__(
        self,
        nodes: Iterable[NodeSnapshot],
        references: References | None = None,
        *,
        stale_ids: Sequence[str] = (),
        built_at: float | None = None,
    ) -> None:
        """A view of ``nodes``, all taken as live (use :meth:`build` to apply a TTL)."""
        refs = references if references is not None else References()
        by_id: dict[str, NodeSnapshot] = {}
        for node in nodes:
            old = by_id.get(node.node_id)
            if old is not None:
                logger.warning("node %r reported twice; keeping the newer heartbeat", node.node_id)
                if old.heartbeat_ts > node.heartbeat_ts:
                    continue
            by_id[node.node_id] = node
        self._nodes: tuple[NodeSnapshot, ...] = tuple(by_id[k] for k in sorted(by_id))
        self.node_ids: tuple[str, ...] = tuple(n.node_id for n in self._nodes)
        self.stale_ids: tuple[str, ...] = tuple(sorted(stale_ids))
        self.built_at = built_at
        self.references = refs
        self._index = {nid: i for i, nid in enumerate(self.node_ids)}
        self._in_flight: list[int] = [int(n.in_flight) for n in self._nodes]
        self._quota: list[float] = [max(n.cpu_quota, MIN_QUOTA) for n in self._nodes]
        self._r_fixed: list[float] = [
            comp.resource_score(
                n.cpu_util, n.mem_limit_bytes - n.mem_used_bytes, refs.mem_need_bytes
            )
            for n in self._nodes
        ]
        self._arrays: _Arrays | None = None
        self._cache_py: dict[tuple[str, bool], _Static] = {}
        self._cache_np: dict[tuple[str, bool], _Static] = {}

    @classmethod
    def build(
        cls,
        snapshots: Iterable[NodeSnapshot],
        now: float,
        ttl_s: float,
        references: References | None = None,
    ) -> ClusterView:
        """The view of the nodes whose heartbeat is at most ``ttl_s`` old at ``now``."""
        if not (math.isfinite(ttl_s) and ttl_s > 0):
            raise ConfigError(f"heartbeat ttl_s must be finite and > 0, got {ttl_s!r}")
        live: list[NodeSnapshot] = []
        stale: list[str] = []
        for snap in snapshots:
            if now - snap.heartbeat_ts > ttl_s:
                stale.append(snap.node_id)
            else:
                live.append(snap)
        if stale:
            logger.debug("ignoring %d stale node(s): %s", len(stale), ", ".join(sorted(stale)))
        return cls(live, references, stale_ids=stale, built_at=now)

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._index

    def __repr__(self) -> str:
        return f"ClusterView(live={list(self.node_ids)!r}, stale={list(self.stale_ids)!r})"

    def snapshot(self, node_id: str) -> NodeSnapshot:
        """The snapshot a live node was scored from."""
        return self._nodes[self._position(node_id)]

    def in_flight(self, node_id: str) -> int:
        """Requests in flight on a node, including local updates since the refresh."""
        return self._in_flight[self._position(node_id)]

    def add_in_flight(self, node_id: str, delta: int = 1) -> None:
        """Count ``delta`` more requests on ``node_id`` until the next refresh (floored at 0)."""
        i = self._position(node_id)
        value = max(0, self._in_flight[i] + int(delta))
        self._in_flight[i] = value
        if self._arrays is not None:
            self._arrays.in_flight[i] = value

    def _position(self, node_id: str) -> int:
        try:
            return self._index[node_id]
        except KeyError:
            raise UnknownNode(
                f"node {node_id!r} is not live in this view; live: {list(self.node_ids)}",
                field="node_id",
            ) from None

    def service_ms(self, model: str) -> list[float]:
        """Each node's predicted service time T for one task of ``model`` (ms).

        A node's measured T is its CPU-seconds per task over its quota. The CPU-seconds of
        one inference are the model's work, the same on every node that runs it on the
        same hardware with the same runtime (its ``work_group``); what a node measures
        strays from that with the host's load (a throttled or preempted run refills its
        caches: 10-20% between the nodes of one busy 2-core host). So the nodes of a
        group are priced at the group's median work: they then differ only by their
        quotas, powers and intensities, as the devices do, and no burst of noise can flip
        a ranking. A node of no group keeps its own; one that has not run the model gets
        the prior.
        """
        refs = self.references
        nodes = self._nodes
        groups: dict[str, list[float]] = {}
        for n in nodes:
            if n.work_group and model in n.exec_ms:
                groups.setdefault(n.work_group, []).append(n.exec_ms[model] * n.cpu_quota)
        work = {g: statistics.median(ws) for g, ws in groups.items()}
        out = []
        for n in nodes:
            measured = n.exec_ms.get(model)
            if measured is None:
                out.append(refs.prior_ms(n.cpu_quota))
            elif n.work_group:
                out.append(work[n.work_group] / n.cpu_quota)
            else:
                out.append(measured)
        return out

    # --- cached in_flight-independent components ------------------------------------

    def _static_py(self, model: str, paper: bool) -> _Static:
        key = (model, paper)
        hit = self._cache_py.get(key)
        if hit is not None:
            return hit
        refs = self.references
        t_ms = self.service_ms(model)
        grams = [
            comp.carbon_g(n.carbon_intensity, n.pue, n.active_power_w, t)
            for n, t in zip(self._nodes, t_ms, strict=True)
        ]
        p: list[float] | None = None
        if paper:
            r = self._r_fixed
            p = [comp.perf_score(t, refs.ref_exec_ms) for t in t_ms]
            c = [comp.carbon_score(g, refs.ref_carbon_g) for g in grams]
        else:
            r = comp.minmax(self._r_fixed, refs.resource_floor)
            c = comp.minmax([-g for g in comp.deadband(grams, refs.noise_band)], 0.0)
        static = _Static(r, p, c, t_ms, grams)
        if len(self._cache_py) >= _MAX_CACHED:
            self._cache_py.clear()
        self._cache_py[key] = static
        return static

    def _vectors(self) -> _Arrays:
        if self._arrays is None:
            self._arrays = _Arrays(self)
        return self._arrays

    def _static_np(self, model: str, paper: bool) -> _Static:
        key = (model, paper)
        hit = self._cache_np.get(key)
        if hit is not None:
            return hit
        refs = self.references
        arr = self._vectors()
        t_ms = np.array(self.service_ms(model), dtype=np.float64)
        grams = comp.carbon_g(arr.intensity, arr.pue, arr.active_power_w, t_ms)
        p = None
        if paper:
            r = arr.r_fixed
            p = comp.perf_scores(t_ms, refs.ref_exec_ms)
            c = comp.carbon_scores(grams, refs.ref_carbon_g)
        else:
            r = comp.minmax_array(arr.r_fixed, refs.resource_floor)
            c = comp.minmax_array(-comp.deadband_array(grams, refs.noise_band), 0.0)
        static = _Static(r, p, c, t_ms, grams)
        if len(self._cache_np) >= _MAX_CACHED:
            self._cache_np.clear()
        self._cache_np[key] = static
        return static


def select(
    view: ClusterView,
    model: str,
    weights: Weights,
    normalisation: str = "minmax",
    *,
    _vectorised: bool | None = None,
) -> Decision:
    """The best live node of ``view`` for one task of ``model`` under ``weights``.

    Raises :class:`~carbonedge.errors.InvalidRequest` (field ``normalisation``) for an
    unknown normalisation and :class:`~carbonedge.errors.NoNodeAvailable` when the view
    has no live node. ``_vectorised`` forces one path (tests and benchmarks only).
    """
    start = time.perf_counter_ns()
    if normalisation == "minmax":
        paper = False
    elif normalisation == "paper":
        paper = True
    else:
        raise InvalidRequest(
            f"unknown normalisation {normalisation!r}; known: {', '.join(NORMALISATIONS)}",
            field="normalisation",
        )
    n = len(view._nodes)
    if n == 0:
        stale = view.stale_ids
        detail = (
            f"{len(stale)} known node(s) have heartbeats older than the TTL"
            if stale
            else "no node agent has sent a heartbeat"
        )
        raise NoNodeAvailable(f"no live node agent to run {model!r}: {detail}")
    if n >= VECTOR_MIN_NODES if _vectorised is None else _vectorised:
        idx, table = _choose_np(view, model, weights, paper)
    else:
        idx, table = _choose_py(view, model, weights, paper)
    _, r, p, c, l_, b, *_ = table
    comps = {"R": float(r[idx]), "L": float(l_[idx]), "P": float(p[idx]), "B": float(b[idx]),
             "C": float(c[idx])}
    scores = table[-1]
    return _new_decision(
        view.node_ids[idx],
        float(scores[idx]),
        comps,
        weights,
        normalisation,
        time.perf_counter_ns() - start,
        n,
        table,
    )


def _choose_py(view: ClusterView, model: str, w: Weights, paper: bool) -> tuple[int, _Table]:
    """Pure-Python scoring; the loop bodies are the fixed forms of ``components`` inlined."""
    static = view._cache_py.get((model, paper)) or view._static_py(model, paper)
    base = static.base(w)
    k = view._in_flight[:]
    t_ms = static.t_ms
    bl = [1.0 / (1.0 + x / q) for x, q in zip(k, view._quota, strict=False)]
    if paper:
        p, lo, b = static.p, [1.0 / (1.0 + x) for x in k], bl
    else:
        refs = view.references
        band = refs.noise_band
        p = comp.minmax([-v for v in comp.deadband(
            [(x + 1) * t for x, t in zip(k, t_ms, strict=False)], band)], 0.0)
        lo = comp.minmax([-v for v in comp.deadband(
            [x * t for x, t in zip(k, t_ms, strict=False)], band)], 0.0)
        b = comp.minmax(bl, refs.minmax_floor)
    wp, wl, wb = w.p, w.l, w.b
    scores = [
        b0 + wp * p0 + wl * l0 + wb * b1
        for b0, p0, l0, b1 in zip(base, p, lo, b, strict=False)
    ]
    threshold = max(scores) - TIE_EPS
    tied = [i for i, s in enumerate(scores) if s >= threshold]
    idx = tied[0] if len(tied) == 1 else min(tied, key=k.__getitem__)
    return idx, (view.node_ids, static.r, p, static.c, lo, b, t_ms, static.grams, k, scores)


def _choose_np(view: ClusterView, model: str, w: Weights, paper: bool) -> tuple[int, _Table]:
    """Vectorised scoring, the same operations in the same order as :func:`_choose_py`."""
    static = view._cache_np.get((model, paper)) or view._static_np(model, paper)
    base = static.base(w)
    arr = view._vectors()
    k = arr.in_flight.copy()
    t_ms = static.t_ms
    bl = 1.0 / (1.0 + k / arr.quota)
    if paper:
        p, lo, b = static.p, 1.0 / (1.0 + k), bl
    else:
        refs = view.references
        band = refs.noise_band
        p = comp.minmax_array(-comp.deadband_array((k + 1) * t_ms, band), 0.0)
        lo = comp.minmax_array(-comp.deadband_array(k * t_ms, band), 0.0)
        b = comp.minmax_array(bl, refs.minmax_floor)
    scores = base + w.p * p + w.l * lo + w.b * b
    tied = np.flatnonzero(scores >= scores.max() - TIE_EPS)
    idx = int(tied[0]) if tied.size == 1 else int(tied[np.argmin(k[tied])])
    return idx, (view.node_ids, static.r, p, static.c, lo, b, t_ms, static.grams, k, scores)
