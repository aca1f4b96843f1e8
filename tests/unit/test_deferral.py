"""Deferral planning, trace forecasts and their heartbeat encoding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from carbonedge.carbon.intensity import create_provider
from carbonedge.errors import InvalidMessage, InvalidRequest
from carbonedge.protocol.messages import PROTOCOL_VERSION, validate_request
from carbonedge.protocol.telemetry import Heartbeat
from carbonedge.scheduler.deferral import plan_deferral

NOW = 1_000_000.0


def test_waits_for_the_greenest_slot_of_any_node_before_the_deadline() -> None:
    forecasts = {"a": [(NOW, 500.0), (NOW + 60, 200.0), (NOW + 120, 100.0)],
                 "b": [(NOW, 400.0), (NOW + 30, 150.0)]}
    current = {"a": 500.0, "b": 400.0}
    plan = plan_deferral(NOW, NOW + 200, forecasts, current)
    assert plan.deferred and plan.release_at == NOW + 120
    assert (plan.now_g_per_kwh, plan.release_g_per_kwh) == (400.0, 100.0)
    # a shorter deadline settles for b's drop at +30 s
    assert plan_deferral(NOW, NOW + 100, forecasts, current).release_at == NOW + 30


def test_goes_now_when_waiting_does_not_pay_enough() -> None:
    forecasts = {"a": [(NOW, 400.0), (NOW + 60, 390.0)]}
    plan = plan_deferral(NOW, NOW + 600, forecasts, {"a": 400.0})
    assert not plan.deferred and plan.release_at == NOW
    # nodes without a forecast (live APIs) are taken as constant
    plan = plan_deferral(NOW, NOW + 600, {}, {"a": 300.0, "b": 100.0})
    assert not plan.deferred and plan.release_g_per_kwh == 100.0


def test_a_constant_green_node_makes_waiting_for_another_pointless() -> None:
    forecasts = {"dirty": [(NOW, 600.0), (NOW + 60, 150.0)]}
    plan = plan_deferral(NOW, NOW + 600, forecasts, {"dirty": 600.0, "green": 100.0})
    assert not plan.deferred


def test_no_live_node_means_no_deferral() -> None:
    assert not plan_deferral(NOW, NOW + 60, {}, {}).deferred


def _trace(tmp_path: Path, values: list[float]) -> Path:
    rows = ["Datetime (UTC),Carbon Intensity gCO₂eq/kWh (direct)"]
    start = datetime(2024, 1, 1, tzinfo=UTC)
    rows += [f"{(start + timedelta(hours=i)):%Y-%m-%d %H:%M:%S},{v}"
             for i, v in enumerate(values)]
    path = tmp_path / "trace.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_trace_forecast_gives_each_hour_boundary_in_wall_time(tmp_path: Path) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    provider = create_provider({"provider": "trace", "file": str(_trace(tmp_path, [5, 6, 7])),
                                "start": start.isoformat(), "speedup": 3600})  # 1 s per hour
    points = provider.forecast(start + timedelta(milliseconds=500), timedelta(seconds=3))
    assert [v for _, v in points] == [5, 6, 7, 5]  # the trace repeats
    assert [t for t, _ in points][1:] == [start + timedelta(seconds=s) for s in (1, 2, 3)]
    for t, v in points:
        assert provider.intensity_at(t).value.g_per_kwh == v
    static = create_provider({"provider": "static", "value": 42})
    assert static.forecast(start, timedelta(hours=1)) == [(start, 42.0)]


def _beat(**fields: str) -> dict[str, str]:
    beat = Heartbeat(node_id="n", ts=NOW, cpu_quota=1.0, mem_limit_bytes=1 << 30,
                     mem_used_bytes=1, cpu_util=0.0, power_w=1.0, active_power_w=1.0,
                     carbon_intensity=300.0, ci_forecast=((NOW, 300.0), (NOW + 3600, 120.5)))
    return {**beat.to_fields(), **fields}


def test_heartbeat_forecast_round_trips_and_bad_ones_are_refused() -> None:
    assert Heartbeat.from_fields(_beat(), now=NOW).ci_forecast == (
        (NOW, 300.0), (NOW + 3600, 120.5))
    for bad in (f"{NOW}:1;{NOW - 1}:2", f"{NOW}:-5", "x:1", f"{NOW}:nan"):
        with pytest.raises(InvalidMessage) as info:
            Heartbeat.from_fields(_beat(ci_forecast=bad), now=NOW)
        assert info.value.field == "ci_forecast"


@pytest.mark.parametrize("bad", [0, -3, float("nan"), "soon", True, 8 * 24 * 3600])
def test_deadline_must_be_a_sensible_number_of_seconds(bad: object) -> None:
    request = {"v": PROTOCOL_VERSION, "id": "r", "kind": "ping", "submitted_at": NOW,
               "deadline_s": bad}
    with pytest.raises(InvalidRequest) as info:
        validate_request(request)
    assert info.value.field == "deadline_s"
