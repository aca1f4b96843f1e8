"""The pure-Python and the numpy paths of ``select`` choose the same node with the same scores."""

from __future__ import annotations

import random

import numpy as np
import pytest

from carbonedge.scheduler import MODES, ClusterView, NodeSnapshot, Weights, select
from carbonedge.scheduler.selector import VECTOR_MIN_NODES

NOW = 10_000.0
TTL = 15.0
MODELS = ("mobilenetv2", "resnet18", "unknown-model")


def random_cluster(rng: random.Random, n: int, *, ties: bool = False) -> ClusterView:
    """``n`` random nodes, some stale, some missing models; ``ties`` repeats a few profiles."""
    profiles = []
    for _ in range(3 if ties else n):
        quota = rng.choice([0.05, 0.25, 0.4, 0.6, 1.0, 2.0, rng.uniform(0.1, 4.0)])
        limit = rng.choice([256, 512, 1024, 2048]) << 20
        exec_ms = {m: rng.uniform(5.0, 400.0) / quota for m in MODELS[:2] if rng.random() < 0.8}
        profiles.append(
            {
                "cpu_quota": quota,
                "mem_limit_bytes": limit,
                "mem_used_bytes": int(limit * rng.uniform(0.1, 1.1)),
                "cpu_util": rng.choice([0.0, 0.02, rng.uniform(0.0, 1.2)]),
                "power_w": rng.uniform(1.0, 30.0),
                "active_power_w": quota * 32.5 + limit / (1 << 30) * 0.375,
                "carbon_intensity": rng.choice([20.0, 380.0, 530.0, 620.0, rng.uniform(0, 900)]),
                "in_flight": rng.choice([0, 0, 1, 2, rng.randint(0, 40)]),
                "exec_ms": exec_ms,
                "pue": rng.choice([1.0, 1.0, 1.2, 1.6]),
            }
        )
    nodes = []
    for i in range(n):
        profile = profiles[i % len(profiles)]
        age = rng.uniform(0.0, TTL * 1.3) if rng.random() < 0.1 else rng.uniform(0.0, TTL)
        nodes.append(NodeSnapshot(node_id=f"node-{i:05d}", heartbeat_ts=NOW - age, **profile))
    return ClusterView.build(nodes, NOW, TTL)


def random_weights(rng: random.Random) -> Weights:
    if rng.random() < 0.5:
        return MODES[rng.choice(sorted(MODES))]
    raw = [rng.choice([0.0, rng.random()]) for _ in range(5)]
    raw[rng.randrange(5)] += 0.1
    return Weights.from_sequence(raw)


def assert_same(view: ClusterView, model: str, w: Weights, normalisation: str) -> str:
    py = select(view, model, w, normalisation, _vectorised=False)
    vec = select(view, model, w, normalisation, _vectorised=True)
    assert vec.node_id == py.node_id
    assert vec.score == pytest.approx(py.score, abs=1e-9)
    assert vec.components == pytest.approx(py.components, abs=1e-9)
    py_rows, vec_rows = py.explain(), vec.explain()
    assert [r["node"] for r in vec_rows] == [r["node"] for r in py_rows]
    assert [r["in_flight"] for r in vec_rows] == [r["in_flight"] for r in py_rows]
    keys = ("R", "L", "P", "B", "C", "score")
    a = np.array([[r[k] for k in keys] for r in py_rows])
    b = np.array([[r[k] for k in keys] for r in vec_rows])
    assert np.abs(a - b).max() <= 1e-9
    for key in ("exec_ms", "carbon_g"):
        a = np.array([r[key] for r in py_rows])
        b = np.array([r[key] for r in vec_rows])
        assert np.allclose(a, b, rtol=1e-12, atol=0.0)
    return py.node_id


SIZES = [1, 2, 3, 4, 7, 16, VECTOR_MIN_NODES - 1, VECTOR_MIN_NODES, 33, 100, 257, 1000]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("normalisation", ["minmax", "paper"])
def test_paths_agree_on_random_clusters(size: int, normalisation: str) -> None:
    rng = random.Random(size * 31 + len(normalisation))
    for trial in range(12 if size <= 100 else 4):
        view = random_cluster(rng, size, ties=trial % 3 == 0)
        if len(view) == 0:
            continue
        for model in MODELS:
            assert_same(view, model, random_weights(rng), normalisation)


@pytest.mark.parametrize("size", [3, 40, 300])
@pytest.mark.parametrize("normalisation", ["minmax", "paper"])
def test_paths_agree_through_a_burst_of_dispatches(size: int, normalisation: str) -> None:
    rng = random.Random(size)
    view = random_cluster(rng, size, ties=True)
    w = random_weights(rng)
    for step in range(60):
        node = assert_same(view, "mobilenetv2", w, normalisation)
        view.add_in_flight(node)
        if step % 7 == 6:  # a result comes back somewhere
            view.add_in_flight(rng.choice(view.node_ids), -1)


def test_automatic_path_choice_matches_both() -> None:
    rng = random.Random(99)
    for size in (VECTOR_MIN_NODES - 1, VECTOR_MIN_NODES + 1):
        view = random_cluster(rng, size)
        auto = select(view, "resnet18", MODES["green"])
        forced = select(view, "resnet18", MODES["green"], _vectorised=len(view) >= VECTOR_MIN_NODES)
        assert auto.node_id == forced.node_id
        assert auto.score == forced.score
