"""The five score components: range, direction, float/array agreement, and the floor."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from carbonedge.scheduler import components as comp
from carbonedge.scheduler.snapshot import MIB

NEED = 128 * MIB


def _rng() -> random.Random:
    return random.Random(1234)


def test_every_fixed_form_stays_in_unit_interval_over_wide_inputs() -> None:
    rng = _rng()
    for _ in range(2000):
        util = rng.uniform(-0.5, 3.0)  # telemetry noise may leave 0..1
        free = rng.uniform(-(1 << 30), 1 << 31)
        k = rng.randint(0, 10_000)
        q = rng.choice([0.05, 0.1, 0.4, 0.6, 1.0, 4.0])
        t = rng.uniform(0.0, 1e6)
        g = rng.uniform(0.0, 10.0)
        for value in (
            comp.resource_score(util, free, NEED),
            comp.load_score(k),
            comp.balance_score(k, q),
            comp.perf_score(t, 100.0),
            comp.carbon_score(g, 7e-4),
        ):
            assert 0.0 <= value <= 1.0


def test_resource_score_prefers_idle_cpu_and_free_memory() -> None:
    assert comp.resource_score(0.0, 2 * NEED, NEED) == 1.0
    assert comp.resource_score(1.0, 0, NEED) == 0.0
    assert comp.resource_score(0.2, NEED, NEED) > comp.resource_score(0.8, NEED, NEED)
    assert comp.resource_score(0.5, NEED, NEED) > comp.resource_score(0.5, NEED / 2, NEED)
    # memory saturates at what a task needs: more than enough is not better
    assert comp.resource_score(0.5, NEED, NEED) == comp.resource_score(0.5, 10 * NEED, NEED)
    # each half is clipped on its own: overcommitted memory costs at most its half
    assert comp.resource_score(0.0, -NEED, NEED) == 0.5
    assert comp.resource_score(1.5, NEED, NEED) == 0.5


def test_load_and_balance_prefer_fewer_in_flight() -> None:
    assert comp.load_score(0) == 1.0
    assert comp.load_score(1) == 0.5
    assert comp.load_score(3) < comp.load_score(2)
    assert comp.balance_score(0, 0.4) == 1.0
    assert comp.balance_score(3, 1.0) < comp.balance_score(2, 1.0)


def test_balance_is_proportional_to_capacity() -> None:
    # the same load per core scores the same, whatever the core count
    assert comp.balance_score(2, 1.0) == pytest.approx(comp.balance_score(1, 0.5))
    # a bigger quota carries the same queue better
    assert comp.balance_score(2, 1.0) > comp.balance_score(2, 0.4)
    # a zero quota is floored, never a division by zero
    assert comp.balance_score(1, 0.0) == comp.balance_score(1, 0.05)


def test_perf_and_carbon_prefer_smaller_values_and_score_half_at_the_reference() -> None:
    assert comp.perf_score(0.0, 100.0) == 1.0
    assert comp.perf_score(100.0, 100.0) == 0.5
    assert comp.perf_score(30.0, 100.0) > comp.perf_score(75.0, 100.0)
    assert comp.carbon_score(0.0, 1e-3) == 1.0
    assert comp.carbon_score(1e-3, 1e-3) == 0.5
    assert comp.carbon_score(1e-4, 1e-3) > comp.carbon_score(2e-4, 1e-3)


def test_carbon_grams_from_watts_and_milliseconds() -> None:
    # 1 kW for one hour (3.6e6 ms) on a 500 g/kWh grid is 500 g
    assert comp.carbon_g(500.0, 1.0, 1000.0, 3.6e6) == pytest.approx(500.0)
    # PUE scales linearly
    assert comp.carbon_g(500.0, 1.5, 1000.0, 3.6e6) == pytest.approx(750.0)
    # node-high of the paper: 620 g/kWh, 32.875 W, 30 ms
    assert comp.carbon_g(620.0, 1.0, 32.875, 30.0) == pytest.approx(1.6985e-4, rel=1e-3)


def test_minmax_rescales_to_unit_interval() -> None:
    assert comp.minmax([2.0, 4.0, 3.0], 0.05) == [0.0, 1.0, 0.5]
    assert comp.minmax([-30.0, -50.0, -75.0], 0.05) == pytest.approx([1.0, 25 / 45, 0.0])


def test_minmax_floor_does_not_amplify_noise() -> None:
    # 4% relative spread is below a 5% floor: every node gets 1.0
    assert comp.minmax([1.00, 0.97, 0.96], 0.05) == [1.0, 1.0, 1.0]
    # 6% is above it and gets the full range
    assert comp.minmax([1.00, 0.94], 0.05) == [1.0, 0.0]
    # equal values (including all zero) are a tie, not a division by zero
    assert comp.minmax([0.0, 0.0], 0.05) == [1.0, 1.0]
    assert comp.minmax([0.5], 0.05) == [1.0]
    # a floor of 0 only flattens exact ties
    assert comp.minmax([1.0, 0.999], 0.0) == [1.0, 0.0]


def test_minmax_floor_is_relative_to_magnitude() -> None:
    # the same 4% spread at a tiny scale (grams of CO2) is still noise
    assert comp.minmax([-1.00e-4, -0.97e-4], 0.05) == [1.0, 1.0]
    assert comp.minmax([-1.00e-4, -0.90e-4], 0.05) == [0.0, 1.0]


def test_array_forms_agree_bit_for_bit_with_scalar_forms() -> None:
    rng = np.random.default_rng(7)
    n = 257
    util = rng.uniform(-0.2, 1.5, n)
    free = rng.uniform(-1e8, 1e9, n)
    k = rng.integers(0, 50, n).astype(np.float64)
    q = np.maximum(rng.choice([0.0, 0.4, 0.6, 1.0, 2.0], n), 0.05)
    t = rng.uniform(1.0, 500.0, n)
    grams = rng.uniform(1e-6, 1e-3, n)
    pairs = [
        (
            comp.resource_scores(util, free, NEED),
            [comp.resource_score(*a, NEED) for a in zip(util, free, strict=True)],
        ),
        (comp.load_scores(k), [comp.load_score(x) for x in k]),
        (comp.balance_scores(k, q), [comp.balance_score(x, y) for x, y in zip(k, q, strict=True)]),
        (comp.perf_scores(t, 100.0), [comp.perf_score(x, 100.0) for x in t]),
        (comp.carbon_scores(grams, 7e-4), [comp.carbon_score(x, 7e-4) for x in grams]),
        (comp.minmax_array(-t, 0.05), comp.minmax(list(-t), 0.05)),
        (comp.minmax_array(np.full(5, 3.0), 0.05), comp.minmax([3.0] * 5, 0.05)),
    ]
    for array, scalars in pairs:
        assert array.tolist() == scalars


def test_no_nan_from_extreme_but_valid_inputs() -> None:
    for value in (
        comp.perf_score(1e300, 100.0),
        comp.carbon_score(1e300, 1e-3),
        comp.balance_score(10**9, 0.05),
        comp.load_score(10**12),
    ):
        assert math.isfinite(value)
