"""Intervals across blocks, and per-arm summaries of an experiment's records."""

from __future__ import annotations

import math
import statistics

import pytest

from carbonedge.client.results import parse_result
from carbonedge.experiments.blocks import TaskRecord, summarise_arms
from carbonedge.experiments.stats import bootstrap_mean_ci, mean_ci, t_quantile


def test_t_interval_across_blocks() -> None:
    ci = mean_ci([1.0, 2.0, 3.0])
    half = 4.303 * statistics.stdev([1.0, 2.0, 3.0]) / math.sqrt(3)
    assert (ci.mean, ci.low, ci.high) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert math.isnan(mean_ci([5.0]).low) and mean_ci([5.0]).mean == 5.0
    assert math.isnan(mean_ci([]).mean)
    assert t_quantile(100) == pytest.approx(1.96, abs=1e-3)


def test_bootstrap_is_seeded_and_brackets_the_mean() -> None:
    values = [1.0, 4.0, 2.0, 8.0, 5.0]
    a, b = bootstrap_mean_ci(values, seed=3), bootstrap_mean_ci(values, seed=3)
    assert a == b and a.low < a.mean < a.high and a.mean == statistics.fmean(values)


def _record(block: int, arm: str, node: str, grams: float, measured: float) -> TaskRecord:
    result = parse_result({
        "v": 1, "id": f"{arm}-{block}-{grams}", "status": "ok", "node": node,
        "model": "m", "mode": arm, "timings": {"submitted_at": 0.0, "exec_ms": 5.0},
        "output": {}, "energy_kwh": grams / 400, "carbon_g": grams,
    }, received_at=0.02)
    return TaskRecord(block, 0, arm, "m", result, 0.02, measured_g=measured,
                      settlement="settled")


def test_arm_summaries_pair_blocks_against_the_baseline() -> None:
    records = []
    for block, scale in enumerate((1.0, 1.2, 0.9)):
        records += [_record(block, "mono", "medium", 10.0 * scale, 8.0 * scale) for _ in range(2)]
        records += [_record(block, "green", "green", 7.0 * scale, 6.0 * scale),
                    _record(block, "green", "medium", 7.0 * scale, 6.0 * scale)]
    rows = {r.name: r for r in summarise_arms(records, "mono")}
    green = rows["green"]
    assert green.shares == {"green": 0.5, "medium": 0.5}
    # every block's green costs 70% of that block's monolithic: -30%, whatever the drift
    assert green.delta_device_pct.mean == pytest.approx(-30.0)
    assert green.delta_measured_pct.mean == pytest.approx(-25.0)
    assert green.device_g.mean == pytest.approx(7.0 * (1.0 + 1.2 + 0.9) / 3)
    assert green.unsettled == 0 and rows["mono"].count == 6
