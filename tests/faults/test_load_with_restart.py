"""5,000 requests over the default topology, one agent killed (-9) and restarted during
the run: nothing lost, nothing delivered twice. Figures: benchmarks/bench_faults.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from carbonedge.compose.local_runner import LocalRuntime
from carbonedge.experiments.fault_load import run_fault_load
from tests.conftest import TEST_REDIS
from tests.integration.conftest import start_runtime

pytestmark = pytest.mark.timeout(600)

LOAD_URL = f"{TEST_REDIS}/8"


@pytest.fixture
def default(tmp_path: Path) -> Iterator[LocalRuntime]:
    runtime = start_runtime(tmp_path, LOAD_URL)  # the paper's three nodes
    yield runtime
    runtime.down()


def test_5000_requests_with_a_node_killed_and_restarted(default: LocalRuntime) -> None:
    figures = run_fault_load(default, requests=5000, rate_per_s=200, node="node-high")
    print("\n".join(figures.lines()))
    report = figures.report
    assert report.submitted == 5000
    assert report.lost == 0 and report.duplicated == 0 and report.errored == 0
    assert figures.redispatch_s is not None  # the watchdog, not Celery's hour, moved them
    assert figures.redispatched > 0
    assert report.nodes["node-high"] > 0  # it served before the kill or after the restart
