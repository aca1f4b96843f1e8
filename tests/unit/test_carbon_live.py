"""Live carbon-intensity providers against a real local HTTP server shaped like the APIs."""

from __future__ import annotations

import base64
import json
import logging
import math
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from carbonedge.carbon.fallback import FallbackProvider
from carbonedge.carbon.intensity import create_provider, known_providers
from carbonedge.carbon.live import (
    LBS_PER_MWH_TO_G_PER_KWH,
    electricitymaps_provider,
    watttime_provider,
)
from carbonedge.carbon.units import CarbonIntensity
from carbonedge.errors import ConfigError, IntensityUnavailable, InvalidRequest, from_wire

NOW = datetime(2026, 11, 27, 16, 0, tzinfo=UTC)
EM_TOKEN = "em-secret-token"
WT_USER, WT_PASSWORD = "edge-user", "wt-secret-password"
TIMEOUT = 0.5  # client timeout: short, yet ample for a local answer on a loaded machine
SLOW_S = 3.0


class FakeApi:
    """What the server answers; switched by the tests while it runs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hits: Counter[str] = Counter()
        self.headers: list[tuple[str, dict[str, str]]] = []
        self.queries: list[dict[str, list[str]]] = []
        self.mode = "ok"
        self.em_value: Any = 123.5
        self.moer_lbs: Any = 900.0
        self.logins = 0
        self.tokens: set[str] = set()

    def revoke_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def answer(self, path: str, query: dict[str, list[str]],
               headers: dict[str, str]) -> tuple[int, bytes]:
        with self.lock:
            self.hits[path] += 1
            self.headers.append((path, headers))
            self.queries.append(query)
            mode = self.mode
        if mode == "slow":
            time.sleep(SLOW_S)
        if mode == "500":
            return 500, b'{"message": "internal error"}'
        if mode == "badjson":
            return 200, b'{"zone": "FR", "carbonIntensity": 12'
        if path == "/v3/carbon-intensity/latest":
            return self._electricitymaps(mode, query, headers)
        if path == "/login":
            return self._login(headers)
        if path == "/v3/forecast":
            return self._watttime(mode, headers)
        return 404, b'{"message": "not found"}'

    def _electricitymaps(self, mode: str, query: dict[str, list[str]],
                         headers: dict[str, str]) -> tuple[int, bytes]:
        if headers.get("auth-token") != EM_TOKEN:
            return 401, b'{"message": "invalid auth-token"}'
        body: dict[str, Any] = {
            "zone": query.get("zone", ["?"])[0],
            "carbonIntensity": self.em_value,
            "datetime": "2026-11-27T16:00:00.000Z",
            "updatedAt": "2026-11-27T15:48:12.311Z",
            "createdAt": "2026-11-24T16:47:35.129Z",
            "emissionFactorType": "lifecycle",
            "isEstimated": True,
            "estimationMethod": "TIME_SLICER_AVERAGE",
        }
        if mode == "missing":
            del body["carbonIntensity"]
        if mode == "negative":
            body["carbonIntensity"] = -5
        if mode == "nan":
            return 200, b'{"zone": "FR", "carbonIntensity": NaN}'
        return 200, json.dumps(body).encode()

    def _login(self, headers: dict[str, str]) -> tuple[int, bytes]:
        expected = base64.b64encode(f"{WT_USER}:{WT_PASSWORD}".encode()).decode()
        if headers.get("authorization") != f"Basic {expected}":
            return 403, b'{"error": "invalid credentials"}'
        with self.lock:
            self.logins += 1
            token = f"jwt-{self.logins}"
            self.tokens.add(token)
        return 200, json.dumps({"token": token}).encode()

    def _watttime(self, mode: str, headers: dict[str, str]) -> tuple[int, bytes]:
        auth = headers.get("authorization", "")
        with self.lock:
            valid = auth.startswith("Bearer ") and auth[len("Bearer "):] in self.tokens
        if not valid:
            return 401, b'{"error": "invalid token"}'
        value = -1.0 if mode == "negative" else self.moer_lbs
        body = {
            "data": [
                {"point_time": "2026-11-27T16:00:00+00:00", "value": value},
                {"point_time": "2026-11-27T16:05:00+00:00", "value": 1.0},
            ],
            "meta": {
                "data_point_period_seconds": 300,
                "region": "CAISO_NORTH",
                "signal_type": "co2_moer",
                "units": "percentile" if mode == "units" else "lbs_co2_per_mwh",
                "warnings": [],
                "model": {"date": "2023-03-01"},
                "generated_at": "2026-11-27T16:00:00+00:00",
            },
        }
        return 200, json.dumps(body).encode()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        api: FakeApi = self.server.api  # type: ignore[attr-defined]
        parts = urllib.parse.urlsplit(self.path)
        status, body = api.answer(parts.path, urllib.parse.parse_qs(parts.query),
                                  {k.lower(): v for k, v in self.headers.items()})
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up (timeout test)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class Clock:
    """A monotonic clock the test moves by hand, so cache ages need no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def api() -> Iterator[FakeApi]:
    state = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.api = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _em_spec(api: FakeApi, **extra: Any) -> dict[str, Any]:
    spec = {"provider": "electricitymaps", "zone": "FR", "token": EM_TOKEN,
            "base_url": api.url, "timeout_s": TIMEOUT}  # type: ignore[attr-defined]
    return {**spec, **extra}


def _wt_spec(api: FakeApi, **extra: Any) -> dict[str, Any]:
    spec = {"provider": "watttime", "region": "CAISO_NORTH", "username": WT_USER,
            "password": WT_PASSWORD, "base_url": api.url,  # type: ignore[attr-defined]
            "timeout_s": TIMEOUT}
    return {**spec, **extra}


EM_PATH = "/v3/carbon-intensity/latest"


# --- Electricity Maps ---------------------------------------------------------------------


def test_electricitymaps_reads_latest_carbon_intensity(api: FakeApi) -> None:
    assert {"electricitymaps", "watttime", "fallback"} <= set(known_providers())
    provider = create_provider(_em_spec(api))
    reading = provider.intensity_at(NOW)
    assert reading.value == CarbonIntensity(123.5)
    assert reading.source == "electricitymaps:FR"
    assert reading.timestamp == NOW
    path, headers = api.headers[0]
    assert path == EM_PATH and headers["auth-token"] == EM_TOKEN
    assert api.queries[0] == {"zone": ["FR"]}


def test_electricitymaps_token_from_environment(api: FakeApi,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CE_TEST_EMAPS_TOKEN", EM_TOKEN)
    spec = _em_spec(api, token_env="CE_TEST_EMAPS_TOKEN")
    del spec["token"]
    assert create_provider(spec).intensity_at(NOW).value == CarbonIntensity(123.5)


def test_electricitymaps_wrong_token_is_unavailable_and_not_leaked(api: FakeApi) -> None:
    provider = create_provider(_em_spec(api, token="wrong-secret"))
    with pytest.raises(IntensityUnavailable) as info:
        provider.intensity_at(NOW)
    assert info.value.reason == "HTTP 401"
    assert "wrong-secret" not in str(info.value) and "wrong-secret" not in repr(provider)


def test_cached_value_is_served_without_asking_again(api: FakeApi, clock: Clock) -> None:
    provider = electricitymaps_provider(_em_spec(api, cache_s=300), clock=clock)
    for _ in range(50):
        assert provider.intensity_at(NOW).value == CarbonIntensity(123.5)
        clock.advance(5)  # 250 s in all: still within cache_s
    assert api.hits[EM_PATH] == 1


def test_expired_value_is_served_stale_while_one_background_refresh_runs(
    api: FakeApi, clock: Clock
) -> None:
    provider = electricitymaps_provider(_em_spec(api, cache_s=300), clock=clock)
    provider.intensity_at(NOW)
    api.em_value = 80.0
    clock.advance(301)
    reading = provider.intensity_at(NOW)
    assert reading.value == CarbonIntensity(123.5)  # the old value, without waiting
    assert reading.source == "electricitymaps:FR (stale)"
    provider.cache.wait_background(10)
    reading = provider.intensity_at(NOW)
    assert reading.value == CarbonIntensity(80.0)
    assert reading.source == "electricitymaps:FR"
    assert api.hits[EM_PATH] == 2


def test_concurrent_callers_at_expiry_start_one_refresh(api: FakeApi, clock: Clock) -> None:
    provider = electricitymaps_provider(_em_spec(api, cache_s=300), clock=clock)
    provider.intensity_at(NOW)
    clock.advance(301)
    start = threading.Barrier(8)
    sources: list[str] = []

    def task() -> None:
        start.wait(timeout=10)
        sources.append(provider.intensity_at(NOW).source)

    threads = [threading.Thread(target=task) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    provider.cache.wait_background(10)
    # Nobody waited for the network: each got the stale value, or the new one if the
    # refresh had already landed; and only one refresh went out.
    assert len(sources) == 8
    assert set(sources) <= {"electricitymaps:FR (stale)", "electricitymaps:FR"}
    assert api.hits[EM_PATH] == 2


def test_value_older_than_max_stale_is_refetched_before_answering(
    api: FakeApi, clock: Clock
) -> None:
    provider = electricitymaps_provider(_em_spec(api, cache_s=300, max_stale_s=600),
                                        clock=clock)
    provider.intensity_at(NOW)
    api.em_value = 42.0
    clock.advance(601)
    reading = provider.intensity_at(NOW)
    assert (reading.value, reading.source) == (CarbonIntensity(42.0), "electricitymaps:FR")
    assert api.hits[EM_PATH] == 2


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("slow", "timed out"),
        ("500", "HTTP 500"),
        ("badjson", "malformed JSON"),
        ("missing", "missing field carbonIntensity"),
        ("negative", "invalid value"),
        ("nan", "invalid value"),
    ],
)
def test_electricitymaps_failures_raise_intensity_unavailable(
    api: FakeApi, mode: str, reason: str
) -> None:
    api.mode = mode
    provider = create_provider(_em_spec(api))
    with pytest.raises(IntensityUnavailable) as info:
        provider.intensity_at(NOW)
    assert info.value.reason == reason
    assert info.value.code == "intensity_unavailable"
    assert "electricitymaps:FR" in info.value.message
    assert EM_TOKEN not in info.value.message


def test_unreachable_server_is_unavailable(api: FakeApi) -> None:
    provider = create_provider(_em_spec(api, base_url="http://127.0.0.1:9"))
    with pytest.raises(IntensityUnavailable) as info:
        provider.intensity_at(NOW)
    assert info.value.reason in ("unreachable", "timed out")


def test_failure_backs_off_instead_of_asking_on_every_call(api: FakeApi, clock: Clock) -> None:
    api.mode = "slow"
    provider = electricitymaps_provider(_em_spec(api, retry_s=60), clock=clock)
    for _ in range(20):
        with pytest.raises(IntensityUnavailable, match="no answer"):
            provider.intensity_at(NOW)
        clock.advance(1)
    assert api.hits[EM_PATH] == 1  # one timeout paid, then the remembered failure
    api.mode = "ok"
    clock.advance(60)
    assert provider.intensity_at(NOW).value == CarbonIntensity(123.5)
    assert api.hits[EM_PATH] == 2


def test_error_round_trips_the_wire() -> None:
    error = IntensityUnavailable("electricitymaps:FR: HTTP 500", reason="HTTP 500")
    again = from_wire(error.to_wire())
    assert isinstance(again, IntensityUnavailable) and again.message == error.message


# --- WattTime -----------------------------------------------------------------------------


def test_watttime_logs_in_with_basic_auth_and_converts_moer(api: FakeApi) -> None:
    provider = create_provider(_wt_spec(api))
    reading = provider.intensity_at(NOW)
    assert math.isclose(reading.value.g_per_kwh, 900.0 * LBS_PER_MWH_TO_G_PER_KWH)
    assert math.isclose(reading.value.g_per_kwh, 408.233133)
    assert reading.source == "watttime:CAISO_NORTH"
    (login_path, login_headers), (data_path, data_headers) = api.headers
    assert login_path == "/login" and login_headers["authorization"].startswith("Basic ")
    assert data_path == "/v3/forecast" and data_headers["authorization"] == "Bearer jwt-1"
    assert api.queries[1] == {"region": ["CAISO_NORTH"], "signal_type": ["co2_moer"],
                              "horizon_hours": ["0"]}


def test_watttime_logs_in_again_after_401(api: FakeApi, clock: Clock) -> None:
    provider = watttime_provider(_wt_spec(api, cache_s=300), clock=clock)
    provider.intensity_at(NOW)
    api.revoke_tokens()  # as when the 30-minute token expires
    api.moer_lbs = 500.0
    clock.advance(301)
    provider.intensity_at(NOW)
    provider.cache.wait_background(10)
    reading = provider.intensity_at(NOW)
    assert math.isclose(reading.value.g_per_kwh, 500.0 * LBS_PER_MWH_TO_G_PER_KWH)
    assert api.logins == 2
    assert [path for path, _ in api.headers] == [
        "/login", "/v3/forecast", "/v3/forecast", "/login", "/v3/forecast"]
    assert api.headers[-1][1]["authorization"] == "Bearer jwt-2"


def test_watttime_wrong_password_is_login_refused(api: FakeApi) -> None:
    provider = create_provider(_wt_spec(api, password="nope-not-it"))
    with pytest.raises(IntensityUnavailable) as info:
        provider.intensity_at(NOW)
    assert info.value.reason == "login refused"
    assert "nope-not-it" not in info.value.message


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("slow", "timed out"), ("500", "HTTP 500"), ("badjson", "malformed JSON"),
     ("negative", "invalid value"), ("units", "unexpected units")],
)
def test_watttime_failures_raise_intensity_unavailable(
    api: FakeApi, mode: str, reason: str
) -> None:
    api.mode = mode
    with pytest.raises(IntensityUnavailable) as info:
        create_provider(_wt_spec(api)).intensity_at(NOW)
    assert info.value.reason == reason
    assert WT_PASSWORD not in info.value.message


# --- fallback -----------------------------------------------------------------------------


def _fallback_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "carbonedge.carbon.fallback" and r.levelno == logging.WARNING]


def test_fallback_chain_from_spec_falls_through_to_codecarbon(api: FakeApi) -> None:
    api.mode = "500"
    provider = create_provider({
        "provider": "fallback",
        "chain": [_em_spec(api), {"provider": "codecarbon", "country": "FRA"},
                  {"provider": "static", "value": 400}],
    })
    reading = provider.intensity_at(NOW)
    fra = create_provider({"provider": "codecarbon", "country": "FRA"}).intensity_at(NOW)
    assert reading.value == fra.value
    assert reading.source == "codecarbon:FRA (fallback: electricitymaps:FR HTTP 500)"


def test_fallback_logs_once_backs_off_and_recovers(
    api: FakeApi, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="carbonedge.carbon.fallback")
    live = electricitymaps_provider(_em_spec(api, retry_s=60), clock=clock)
    provider = FallbackProvider([live, create_provider({"provider": "static", "value": 400})])

    api.mode = "slow"
    for _ in range(30):
        reading = provider.intensity_at(NOW)
        assert reading.value == CarbonIntensity(400)
        assert reading.source == "static (fallback: electricitymaps:FR timed out)"
        clock.advance(1)
    assert api.hits[EM_PATH] == 1  # the dead API cost one timeout, not thirty
    warnings = _fallback_warnings(caplog)
    assert len(warnings) == 1 and "timed out" in warnings[0].getMessage()
    assert EM_TOKEN not in caplog.text

    api.mode = "ok"
    clock.advance(60)  # past the back-off: the live source is asked again
    reading = provider.intensity_at(NOW)
    assert (reading.value, reading.source) == (CarbonIntensity(123.5), "electricitymaps:FR")
    assert any("answers again" in r.getMessage() for r in caplog.records)

    # A new outage after the recovery is reported again, once per kind.
    api.mode = "500"
    clock.advance(3601)  # past max_stale_s, so the cached value is no longer served
    for _ in range(10):
        assert provider.intensity_at(NOW).source == "static (fallback: electricitymaps:FR HTTP 500)"
    assert len(_fallback_warnings(caplog)) == 2


def test_fallback_serves_stale_live_value_before_falling_back(
    api: FakeApi, clock: Clock
) -> None:
    live = electricitymaps_provider(_em_spec(api, cache_s=300, max_stale_s=900, retry_s=60),
                                    clock=clock)
    provider = FallbackProvider([live, create_provider({"provider": "static", "value": 400})])
    assert provider.intensity_at(NOW).source == "electricitymaps:FR"
    api.mode = "500"
    clock.advance(301)
    reading = provider.intensity_at(NOW)
    assert (reading.value, reading.source) == (CarbonIntensity(123.5),
                                               "electricitymaps:FR (stale)")
    live.cache.wait_background(10)
    assert live.cache.last_error is not None and live.cache.last_error.reason == "HTTP 500"
    assert provider.intensity_at(NOW).source == "electricitymaps:FR (stale)"
    clock.advance(600)  # 901 s old: too stale to serve
    reading = provider.intensity_at(NOW)
    assert (reading.value, reading.source) == (
        CarbonIntensity(400), "static (fallback: electricitymaps:FR HTTP 500)")


def test_fallback_names_every_failed_entry(api: FakeApi) -> None:
    api.mode = "500"
    provider = create_provider({
        "provider": "fallback",
        "chain": [_em_spec(api), _wt_spec(api), {"provider": "static", "value": 250}],
    })
    reading = provider.intensity_at(NOW)
    assert reading.value == CarbonIntensity(250)
    assert reading.source == ("static (fallback: electricitymaps:FR HTTP 500; "
                              "watttime:CAISO_NORTH HTTP 500)")


# --- spec errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field", "match"),
    [
        ({"provider": "electricitymaps", "token": "t"}, "zone", "needs zone"),
        ({"provider": "electricitymaps", "zone": "FR"}, "token", "exactly one of token"),
        ({"provider": "electricitymaps", "zone": "FR", "token": "t", "token_env": "X"},
         "token", "exactly one"),
        ({"provider": "electricitymaps", "zone": "FR", "token_env": "CE_TEST_UNSET_VAR"},
         "token_env", "CE_TEST_UNSET_VAR"),
        ({"provider": "electricitymaps", "zone": "", "token": "t"}, "zone", "non-empty"),
        ({"provider": "electricitymaps", "zone": "FR", "token": "t", "timeout_s": 0},
         "timeout_s", "> 0"),
        ({"provider": "electricitymaps", "zone": "FR", "token": "t", "cache_s": "5"},
         "cache_s", "number"),
        ({"provider": "electricitymaps", "zone": "FR", "token": "t", "max_stale_s": -1},
         "max_stale_s", ">= 0"),
        ({"provider": "electricitymaps", "zone": "FR", "token": "t", "base_url": "ftp://x"},
         "base_url", "http"),
        ({"provider": "electricitymaps", "zone": "FR", "token": "t", "ttl": 5}, "ttl",
         "unknown"),
        ({"provider": "watttime", "region": "CAISO_NORTH", "password": "p"}, "username",
         "needs username"),
        ({"provider": "watttime", "region": "CAISO_NORTH", "username": "u"}, "password",
         "password_env"),
        ({"provider": "fallback", "chain": []}, "chain", "non-empty"),
        ({"provider": "fallback", "chain": {"provider": "static", "value": 1}}, "chain",
         "list"),
        ({"provider": "fallback", "chain": [{"provider": "static", "value": 1},
                                            {"provider": "electricitymaps", "zone": "FR",
                                             "token": "t"}]},
         "chain", "cannot fail"),
        ({"provider": "fallback", "chain": [{"provider": "electricitymaps", "token": "t"},
                                            {"provider": "static", "value": 1}]},
         "chain[0].zone", "chain\\[0\\]"),
    ],
)
def test_spec_errors_name_the_field(spec: dict[str, Any], field: str, match: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CE_TEST_UNSET_VAR", raising=False)
    with pytest.raises(ConfigError, match=match) as info:
        create_provider(spec)
    assert info.value.field == field


def test_building_a_live_provider_does_not_touch_the_network(api: FakeApi) -> None:
    create_provider(_em_spec(api))
    create_provider(_wt_spec(api))
    assert sum(api.hits.values()) == 0


def test_fallback_may_end_in_a_trace_and_does_not_swallow_bad_input(api: FakeApi) -> None:
    api.mode = "500"
    provider = create_provider({
        "provider": "fallback",
        "chain": [_em_spec(api), {"provider": "trace", "file": "GB_2023_week23",
                                  "start": "2024-01-01T00:00:00Z"}],
    })
    reading = provider.intensity_at(NOW)
    assert reading.source == "trace:GB_2023_week23 (fallback: electricitymaps:FR HTTP 500)"
    assert reading.trace_time is not None
    with pytest.raises(InvalidRequest, match="timezone-aware"):
        provider.intensity_at(datetime(2026, 11, 27, 16, 0))  # naive: refused, not a fallback
