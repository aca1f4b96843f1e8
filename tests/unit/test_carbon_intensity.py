"""Carbon-intensity providers: registry, static, trace replay and CodeCarbon's data files."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from carbonedge.carbon.intensity import create_provider, known_providers
from carbonedge.carbon.providers import IntensityProvider, register_provider
from carbonedge.carbon.trace import packaged_traces
from carbonedge.carbon.units import CarbonIntensity
from carbonedge.errors import ConfigError, InvalidRequest

START = datetime(2024, 1, 1, tzinfo=UTC)
HEADER = (
    "Datetime (UTC),Country,Zone Name,Zone Id,Carbon Intensity gCO₂eq/kWh (direct),"
    "Carbon Intensity gCO₂eq/kWh (LCA),Low Carbon Percentage,Renewable Percentage,"
    "Data Source,Data Estimated,Data Estimation Method"
)


def _trace(**extra: object) -> IntensityProvider:
    spec = {"provider": "trace", "file": "GB_2023_week23", "start": "2024-01-01T00:00:00Z"}
    return create_provider({**spec, **extra})


def _write_csv(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "tiny.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    return path


def _row(hour: int, direct: str = "100.0", day: int = 1) -> str:
    return f"2023-06-{day:02d} {hour:02d}:00:00,X,X,X,{direct},150.0,50,40,src,false,"


# --- registry ---------------------------------------------------------------------------


def test_unknown_provider_lists_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        create_provider({"provider": "electricitymaps-live"})
    message = str(info.value)
    assert "electricitymaps-live" in message
    for name in ("codecarbon", "static", "trace"):
        assert name in message
    assert {"codecarbon", "static", "trace"} <= set(known_providers())
    with pytest.raises(ConfigError, match="known"):
        create_provider({"value": 5})


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="already registered"):
        register_provider("static")(lambda spec: None)  # type: ignore[arg-type,return-value]


def test_unknown_spec_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="speed_up"):
        _trace(speed_up=2.0)


# --- static -----------------------------------------------------------------------------


def test_static_provider() -> None:
    provider = create_provider({"provider": "static", "value": 380})
    assert isinstance(provider, IntensityProvider)
    reading = provider.intensity_at(START)
    assert reading.value == CarbonIntensity.from_g_per_kwh(380)
    assert reading.source == "static"
    assert reading.timestamp == START


@pytest.mark.parametrize("bad", [-5, "high", float("nan")])
def test_static_provider_rejects_bad_values(bad: object) -> None:
    with pytest.raises(ConfigError, match="carbon intensity"):
        create_provider({"provider": "static", "value": bad})


def test_naive_datetimes_are_rejected_everywhere() -> None:
    naive = datetime(2024, 1, 1, 12)
    for provider in (create_provider({"provider": "static", "value": 1}), _trace()):
        with pytest.raises(InvalidRequest, match="timezone-aware"):
            provider.intensity_at(naive)
    with pytest.raises(ConfigError, match="timezone-aware"):
        _trace(start="2024-01-01T00:00:00")


# --- trace ------------------------------------------------------------------------------


def test_packaged_traces_are_one_week_each() -> None:
    assert {"GB_2023_week23", "US-CAL-CISO_2023_week23"} <= set(packaged_traces())
    for name in ("GB_2023_week23", "US-CAL-CISO_2023_week23"):
        provider = _trace(file=name)
        assert len(provider.values) == 168  # type: ignore[attr-defined]
        assert provider.trace_start == datetime(2023, 6, 5, tzinfo=UTC)  # type: ignore[attr-defined]


def test_trace_hour_lookup_at_boundaries_and_mid_hour() -> None:
    provider = _trace()
    first = provider.intensity_at(START)
    assert first.value.g_per_kwh == 158.33
    assert first.source == "trace:GB_2023_week23"
    assert first.trace_time == datetime(2023, 6, 5, 0, tzinfo=UTC)
    assert provider.intensity_at(START + timedelta(minutes=30)).value.g_per_kwh == 158.33
    last_us = START + timedelta(hours=1) - timedelta(microseconds=1)
    assert provider.intensity_at(last_us).value.g_per_kwh == 158.33
    assert provider.intensity_at(START + timedelta(hours=1)).value.g_per_kwh == 165.03
    assert provider.intensity_at(START + timedelta(hours=2, minutes=59)).value.g_per_kwh == 159.82
    assert provider.intensity_at(START + timedelta(days=1)).value.g_per_kwh == 163.53


def test_trace_accepts_other_utc_offsets() -> None:
    provider = _trace()
    paris = timezone(timedelta(hours=2))
    when = datetime(2024, 1, 1, 3, 0, tzinfo=paris)  # 01:00 UTC
    reading = provider.intensity_at(when)
    assert reading.value.g_per_kwh == 165.03
    assert reading.timestamp == START + timedelta(hours=1)


def test_trace_speedup_replays_a_day_in_24_seconds() -> None:
    provider = _trace(speedup=86400 / 24)
    assert provider.intensity_at(START).value.g_per_kwh == 158.33
    assert provider.intensity_at(START + timedelta(seconds=0.5)).value.g_per_kwh == 158.33
    assert provider.intensity_at(START + timedelta(seconds=1)).value.g_per_kwh == 165.03
    assert provider.intensity_at(START + timedelta(seconds=24)).value.g_per_kwh == 163.53
    # Float-unfriendly speedups still land exactly on hour boundaries.
    tenth = _trace(speedup=36000.0)
    assert tenth.intensity_at(START + timedelta(seconds=0.1)).value.g_per_kwh == 165.03


def test_trace_wraps_around_at_the_end() -> None:
    provider = _trace()
    week = timedelta(hours=168)
    assert provider.intensity_at(START + week - timedelta(hours=1)).value.g_per_kwh == 205.41
    assert provider.intensity_at(START + week).value.g_per_kwh == 158.33
    assert provider.intensity_at(START + 3 * week + timedelta(hours=1)).value.g_per_kwh == 165.03
    # Periodic both ways: an hour before start is the series' last hour.
    assert provider.intensity_at(START - timedelta(minutes=1)).value.g_per_kwh == 205.41


def test_trace_lca_column_and_other_zone() -> None:
    lca = _trace(column="lca")
    assert lca.intensity_at(START).value.g_per_kwh == 222.66
    assert lca.intensity_at(START).source == "trace:GB_2023_week23:lca"
    cal = _trace(file="US-CAL-CISO_2023_week23")
    assert cal.intensity_at(START + timedelta(hours=1)).value.g_per_kwh == 145.41
    with pytest.raises(ConfigError, match="column"):
        _trace(column="scope3")


def test_trace_reads_a_file_path_and_a_yaml_datetime(tmp_path: Path) -> None:
    path = _write_csv(tmp_path, [_row(0, "10"), _row(1, "20"), _row(2, "30")])
    provider = _trace(file=str(path), start=START)
    assert provider.intensity_at(START + timedelta(hours=2)).value.g_per_kwh == 30
    assert provider.intensity_at(START + timedelta(hours=3)).value.g_per_kwh == 10
    assert provider.intensity_at(START).source == "trace:tiny"


@pytest.mark.parametrize(
    ("rows", "bad_row", "complaint"),
    [
        ([_row(0), _row(1, "n/a")], 3, "not a number"),
        ([_row(0), _row(1, "-4")], 3, "not a number"),
        ([_row(0), _row(1), "2023-06-01T02:00,X,X,X,1,1,1,1,s,false,"], 4, "YYYY-MM-DD"),
        ([_row(0), _row(2)], 3, "consecutive hours"),
        ([_row(0), _row(0)], 3, "consecutive hours"),
        ([_row(0), "2023-06-01 01:00:00,X"], 3, "fields"),
    ],
)
def test_malformed_trace_rows_are_named(
    tmp_path: Path, rows: list[str], bad_row: int, complaint: str
) -> None:
    path = _write_csv(tmp_path, rows)
    with pytest.raises(ConfigError) as info:
        _trace(file=str(path))
    message = str(info.value)
    assert str(path) in message
    assert f"row {bad_row}" in message
    assert complaint in message


def test_bad_trace_files_and_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="GB_2023_week23"):  # lists the packaged ones
        _trace(file="GB_1999_week1")
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("time,value\n2023-06-01 00:00:00,5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="header"):
        _trace(file=str(bad_header))
    empty = _write_csv(tmp_path, [])
    with pytest.raises(ConfigError, match="no rows"):
        _trace(file=str(empty))
    for speedup in (0, -1.0, float("inf"), "fast"):
        with pytest.raises(ConfigError, match="speedup"):
            _trace(speedup=speedup)
    with pytest.raises(ConfigError, match="ISO datetime"):
        _trace(start="June 5th")
    with pytest.raises(ConfigError, match="start"):
        create_provider({"provider": "trace", "file": "GB_2023_week23"})


# --- codecarbon -------------------------------------------------------------------------


def _codecarbon(**spec: object) -> float:
    provider = create_provider({"provider": "codecarbon", **spec})
    return provider.intensity_at(START).value.g_per_kwh


def test_codecarbon_country_values_are_plausible() -> None:
    assert 10 < _codecarbon(country="FRA") < 150
    assert _codecarbon(country="POL") > 500
    assert _codecarbon(country="fra") == _codecarbon(country="FRA")
    reading = create_provider({"provider": "codecarbon", "country": "DEU"}).intensity_at(START)
    assert reading.source == "codecarbon:DEU"
    assert 200 < reading.value.g_per_kwh < 700


def test_codecarbon_regions() -> None:
    california = create_provider({"provider": "codecarbon", "country": "USA", "region": "CA"})
    assert california.intensity_at(START).source == "codecarbon:USA/california"
    assert 50 < _codecarbon(country="USA", region="California") < 400
    assert _codecarbon(country="USA", region="wyoming") > 500
    assert _codecarbon(country="CAN", region="quebec") < 50
    assert _codecarbon(country="CAN", region="alberta") > 400
    assert _codecarbon(country="CHN", region="Beijing") > 300


def test_codecarbon_unknown_codes_error_clearly() -> None:
    with pytest.raises(ConfigError, match="'XYZ'.*global_energy_mix.json"):
        _codecarbon(country="XYZ")
    with pytest.raises(ConfigError, match="alpha-3"):
        _codecarbon(country="FR")
    with pytest.raises(ConfigError, match="did you mean california"):
        _codecarbon(country="USA", region="californa")
    with pytest.raises(ConfigError, match="no regional data for FRA"):
        _codecarbon(country="FRA", region="bretagne")
    with pytest.raises(ConfigError, match="country"):
        create_provider({"provider": "codecarbon", "region": "texas"})


def test_codecarbon_provider_imports_neither_pandas_nor_codecarbon() -> None:
    code = (
        "import sys\n"
        "from carbonedge.carbon.intensity import create_provider\n"
        "create_provider({'provider': 'codecarbon', 'country': 'FRA'})\n"
        "create_provider({'provider': 'codecarbon', 'country': 'USA', 'region': 'texas'})\n"
        "print(sorted(m for m in ('pandas', 'codecarbon') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "[]"
