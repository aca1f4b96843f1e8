"""Carbon-aware deferral end to end: a request with a deadline waits for the next
low-carbon hour of a trace-driven node and runs there, through real agents."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from carbonedge.client import Client
from carbonedge.compose.local_runner import LocalRuntime
from carbonedge.errors import InvalidRequest
from carbonedge.protocol import keys
from tests.conftest import SMALL_RUNTIME_URL
from tests.integration.conftest import start_runtime

pytestmark = pytest.mark.timeout(300)

HOUR_S = 4.0  # one trace hour every 4 s of wall time
TRACE = ["600", "100"]


@pytest.fixture
def trace_runtime(tmp_path: Path) -> Iterator[LocalRuntime]:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    rows = ["Datetime (UTC),Carbon Intensity gCO₂eq/kWh (direct)"] + [
        f"{start + timedelta(hours=i):%Y-%m-%d %H:%M:%S},{v}" for i, v in enumerate(TRACE)]
    trace = tmp_path / "alternating.csv"
    trace.write_text("\n".join(rows) + "\n", encoding="utf-8")
    compose = tmp_path / "compose.yml"
    compose.write_text(f"""
services:
  node-trace:
    cpus: 0.5
    mem_limit: 768m
    x-carbonedge:
      role: node
      carbon_intensity: {{provider: trace, file: {trace}, start: '{datetime.now(UTC).isoformat()}',
                          speedup: {3600 / HOUR_S}}}
  node-steady:
    cpus: 0.5
    mem_limit: 768m
    x-carbonedge: {{role: node, carbon_intensity: 500}}
""")
    runtime = start_runtime(tmp_path, SMALL_RUNTIME_URL, compose)
    yield runtime
    runtime.down()


def test_a_deadline_request_waits_for_the_low_carbon_hour(trace_runtime: LocalRuntime) -> None:
    with Client(trace_runtime.settings) as client:
        results = []
        for _ in range(3):  # whatever the phase: 600 now (wait) or 100 now (go at once)
            submitted = time.time()
            result = client.ping(mode="green", deadline_s=3 * HOUR_S).result(60)
            results.append(result)
            assert result.node == "node-trace", result.raw
            assert result.intensity_g_per_kwh == 100.0, result.raw
            assert result.e2e_ms / 1000 < 3 * HOUR_S
            if result.deferred_until is not None:
                assert result.deferred_until > submitted
            time.sleep(HOUR_S / 2)  # land in the other phase next time
        assert any(r.deferred_until is not None for r in results)
        # without a deadline a green request goes at once, whatever the hour
        now = client.ping(mode="green").result(30)
        assert now.deferred_until is None
        # planned with persistence (the present held), a deadline never makes it wait
        for _ in range(2):
            held = client.ping(mode="green", deadline_s=3 * HOUR_S, forecast="persistence")
            assert held.result(60).deferred_until is None
            time.sleep(HOUR_S / 2)  # and in the other phase too
        with pytest.raises(InvalidRequest) as info:
            client.ping(deadline_s=3 * HOUR_S, forecast="crystal_ball").result(30)
        assert info.value.field == "forecast" and "yesterday" in info.value.message
    r = redis.Redis.from_url(trace_runtime.settings.redis_url)
    try:
        assert int(r.get(keys.DEFERRED_TOTAL) or 0) >= 1 and r.zcard(keys.DEFERRED) == 0
    finally:
        r.close()
