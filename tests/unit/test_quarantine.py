"""The quarantine's jump rules, hold and release (pure: heartbeats in, verdicts out)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from carbonedge.dispatcher.quarantine import Quarantine
from carbonedge.protocol.telemetry import Heartbeat

NOW = 1_800_000_000.0


def _beat(ts: float = NOW, **changes: object) -> Heartbeat:
    values = dict(node_id="node-high", ts=ts, cpu_quota=1.0, mem_limit_bytes=1 << 30,
                  mem_used_bytes=300 << 20, cpu_util=0.25, power_w=5.0, active_power_w=8.0,
                  carbon_intensity=620.0, tasks_done=10, cpu_usage_s=50.0,
                  started_at=NOW - 100, exec_ms={"mobilenetv2": 45.0})
    values.update(changes)
    return Heartbeat(**values)  # type: ignore[arg-type]


def test_smooth_telemetry_is_never_held() -> None:
    q = Quarantine()
    for i in range(20):
        beat = _beat(NOW + i, tasks_done=10 + i, cpu_usage_s=50.0 + i / 2,
                     carbon_intensity=620.0 - 20 * (i % 3), exec_ms={"mobilenetv2": 45.0 + i})
        assert q.observe(beat, NOW + i) is None
    assert q.held() == {}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (dict(carbon_intensity=5.0), "carbon intensity jumped"),
        (dict(exec_ms={"mobilenetv2": 4500.0}), "service time of mobilenetv2 jumped"),
        (dict(cpu_quota=64.0), "cpu_quota changed"),
        (dict(mem_limit_bytes=1 << 40), "mem_limit_bytes changed"),
        (dict(tasks_done=0), "tasks_done went back"),
        (dict(cpu_usage_s=1.0), "cpu_usage_s went back"),
        (dict(started_at=NOW - 500), "start time went back"),
    ],
)
def test_an_implausible_jump_quarantines_the_node(changes: dict, reason: str) -> None:
    q = Quarantine(hold_s=30)
    assert q.observe(_beat(NOW), NOW) is None
    held = q.observe(_beat(NOW + 1, **changes), NOW + 1)
    assert held is not None and reason in held.reason
    assert held.until == NOW + 31 and "node-high" in q.held()


def test_a_new_agent_life_may_declare_new_resources() -> None:
    q = Quarantine()
    q.observe(_beat(NOW), NOW)
    restarted = _beat(NOW + 5, started_at=NOW + 4, tasks_done=0, cpu_usage_s=0.0,
                      cpu_quota=2.0, exec_ms={"mobilenetv2": 30.0})
    assert q.observe(restarted, NOW + 5) is None


def test_a_forged_new_life_is_held_when_the_real_agent_beats_again() -> None:
    q = Quarantine()
    q.observe(_beat(NOW), NOW)
    forged = _beat(NOW + 0.5, started_at=NOW + 0.4, carbon_intensity=1.0)
    assert q.observe(forged, NOW + 0.5) is None  # looks like a restart, within bounds
    held = q.observe(_beat(NOW + 1), NOW + 1)  # the real agent contradicts it
    assert held is not None and "start time went back" in held.reason


def test_intensity_steps_from_another_source_or_announced_are_no_jump() -> None:
    q = Quarantine()
    q.observe(_beat(NOW, intensity_source="electricitymaps:FR"), NOW)
    fallback = _beat(NOW + 1, carbon_intensity=30.0, intensity_source="static (fallback)")
    assert q.observe(fallback, NOW + 1) is None
    q = Quarantine()
    q.observe(_beat(NOW, carbon_intensity=600.0, ci_forecast=((NOW + 1, 40.0),)), NOW)
    assert q.observe(_beat(NOW + 1, carbon_intensity=40.0), NOW + 1) is None


def test_small_values_near_zero_are_not_ratios() -> None:
    q = Quarantine()
    q.observe(_beat(NOW, carbon_intensity=0.5), NOW)
    assert q.observe(_beat(NOW + 1, carbon_intensity=9.0), NOW + 1) is None


def test_release_after_the_hold_unless_it_keeps_jumping() -> None:
    q = Quarantine(hold_s=10)
    q.observe(_beat(NOW), NOW)
    assert q.observe(_beat(NOW + 1, carbon_intensity=5.0), NOW + 1) is not None
    assert q.observe(_beat(NOW + 2, carbon_intensity=600.0), NOW + 2).since == NOW + 1
    # stable from NOW + 2 on: the hold ends 10 s after the last jump
    assert q.observe(_beat(NOW + 6, carbon_intensity=600.0), NOW + 6) is not None
    assert q.observe(_beat(NOW + 12.5, carbon_intensity=600.0), NOW + 12.5) is None
    assert q.held() == {}


def test_the_same_beat_read_twice_is_one_observation() -> None:
    q = Quarantine()
    beat = _beat(NOW)
    q.observe(beat, NOW)
    assert q.observe(replace(beat), NOW + 0.2) is None
