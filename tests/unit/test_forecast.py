"""Intensity forecasters (oracle, persistence, yesterday), their heartbeat encoding, and
the deferral each one plans."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from carbonedge.carbon.forecast import forecast_steps, get_forecaster, known_forecasters
from carbonedge.carbon.intensity import create_provider
from carbonedge.errors import InvalidMessage, InvalidRequest
from carbonedge.protocol.messages import PROTOCOL_VERSION, validate_request
from carbonedge.protocol.telemetry import Heartbeat
from carbonedge.scheduler.deferral import plan_deferral

START = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(seconds=1)  # speed-up 3600: one trace hour per wall second


def _provider(tmp_path: Path, values: list[float]) -> object:
    rows = ["Datetime (UTC),Carbon Intensity gCO₂eq/kWh (direct)"]
    first = datetime(2024, 1, 1, tzinfo=UTC)
    rows += [f"{first + timedelta(hours=i):%Y-%m-%d %H:%M:%S},{v}" for i, v in enumerate(values)]
    path = tmp_path / "trace.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return create_provider({"provider": "trace", "file": str(path),
                            "start": START.isoformat(), "speedup": 3600})


# 48 hours: day one ramps 0..23, day two ramps 100..123 (so yesterday is always 100 lower)
TWO_DAYS = [float(h) for h in range(24)] + [100.0 + h for h in range(24)]


def test_the_registry_knows_three_forecasters_and_names_them_on_a_typo() -> None:
    assert known_forecasters() == ["oracle", "persistence", "yesterday"]
    with pytest.raises(InvalidRequest) as info:
        get_forecaster("oracel")
    assert info.value.field == "forecast"
    assert "oracle, persistence, yesterday" in info.value.message


def test_oracle_is_the_trace_itself(tmp_path: Path) -> None:
    provider = _provider(tmp_path, TWO_DAYS)
    now = START + 30 * HOUR + timedelta(milliseconds=200)  # trace hour 30: 106
    steps = forecast_steps("oracle", provider, now, 3 * HOUR, 106.0)
    assert steps[0] == (now, 106.0)
    assert steps[1:] == [(START + h * HOUR, 100.0 + h - 24) for h in (31, 32, 33)]


def test_persistence_holds_the_present(tmp_path: Path) -> None:
    provider = _provider(tmp_path, TWO_DAYS)
    now = START + 30 * HOUR
    assert forecast_steps("persistence", provider, now, 3 * HOUR, 106.0) == [(now, 106.0)]


def test_yesterday_values_each_coming_hour_as_it_was_24_trace_hours_earlier(
        tmp_path: Path) -> None:
    provider = _provider(tmp_path, TWO_DAYS)
    now = START + 30 * HOUR + timedelta(milliseconds=200)
    steps = forecast_steps("yesterday", provider, now, 3 * HOUR, 106.0)
    assert steps[0] == (now, 106.0)  # the present is known, not guessed
    assert steps[1:] == [(START + h * HOUR, float(h - 24)) for h in (31, 32, 33)]


def test_a_static_provider_forecasts_its_value_whatever_the_forecaster() -> None:
    static = create_provider({"provider": "static", "value": 42})
    for name in known_forecasters():
        steps = forecast_steps(name, static, START, timedelta(hours=4), 42.0)
        assert [v for _, v in steps] == [42.0] * len(steps)


def test_planned_deferral_differs_by_what_the_forecaster_knew(tmp_path: Path) -> None:
    """Trace: high now, a dip in two hours. The oracle waits for it; persistence never
    waits; yesterday (a day whose dip came an hour later) waits for the wrong hour."""
    day1 = [500.0] * 24
    day1[3] = 100.0
    day2 = [500.0] * 24
    day2[2] = 100.0
    provider = _provider(tmp_path, day1 + day2)
    now = START + 24 * HOUR
    plans = {}
    for name in known_forecasters():
        steps = forecast_steps(name, provider, now, 6 * HOUR, 500.0)
        forecast = [(t.timestamp(), v) for t, v in steps]
        plans[name] = plan_deferral(now.timestamp(), (now + 5 * HOUR).timestamp(),
                                    {"n": forecast}, {"n": 500.0})
    assert plans["oracle"].release_at == (now + 2 * HOUR).timestamp()
    assert not plans["persistence"].deferred
    assert plans["yesterday"].release_at == (now + 3 * HOUR).timestamp()
    assert provider.intensity_at(now + 3 * HOUR).value.g_per_kwh == 500.0  # it was wrong


def _beat(**forecasts: tuple[tuple[float, float], ...]) -> Heartbeat:
    return Heartbeat(node_id="n", ts=1000.0, cpu_quota=1.0, mem_limit_bytes=1 << 30,
                     mem_used_bytes=1, cpu_util=0.0, power_w=1.0, active_power_w=1.0,
                     carbon_intensity=300.0, ci_forecast=((1000.0, 300.0), (1010.0, 100.0)),
                     forecasts=forecasts)


def test_every_forecaster_travels_in_the_heartbeat() -> None:
    beat = _beat(persistence=((1000.0, 300.0),), yesterday=((1000.0, 300.0), (1010.0, 50.0)))
    fields = beat.to_fields()
    assert fields["ci_forecast.yesterday"] == "1000.0:300.0;1010.0:50.0"
    back = Heartbeat.from_fields(fields, now=1000.0)
    assert back.forecast_by("oracle") == ((1000.0, 300.0), (1010.0, 100.0))
    assert back.forecast_by("yesterday") == ((1000.0, 300.0), (1010.0, 50.0))
    assert back.forecast_by("persistence") == ((1000.0, 300.0),)
    assert back.forecast_by("tomorrow") is None


@pytest.mark.parametrize("key, value", [("ci_forecast.Bad-Name", "1000.0:1.0"),
                                        ("ci_forecast.yesterday", "1000.0:-1.0"),
                                        ("ci_forecast.yesterday", "1001.0:1.0;1000.0:2.0")])
def test_a_malformed_named_forecast_is_refused_naming_its_field(key: str, value: str) -> None:
    fields = {**_beat().to_fields(), key: value}
    with pytest.raises(InvalidMessage) as info:
        Heartbeat.from_fields(fields, now=1000.0)
    assert info.value.field == key


@pytest.mark.parametrize("bad", [3, "", "Oracle", "x" * 40, ["oracle"]])
def test_a_request_forecast_must_be_a_name(bad: object) -> None:
    request = {"v": PROTOCOL_VERSION, "id": "r", "kind": "ping", "submitted_at": 1.0,
               "deadline_s": 60, "forecast": bad}
    with pytest.raises(InvalidRequest) as info:
        validate_request(request)
    assert info.value.field == "forecast"
