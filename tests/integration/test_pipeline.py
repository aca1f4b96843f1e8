"""The default topology end to end: real cgroups, real agents, real dispatcher."""

from __future__ import annotations

import asyncio
import math
import statistics
import time

import numpy as np
import pytest
import redis

from carbonedge.cgroups import NodeCgroup
from carbonedge.client import AsyncClient, Client
from carbonedge.compose.local_runner import LocalRuntime
from carbonedge.experiments.workload import synthetic_images
from carbonedge.protocol import keys
from carbonedge.protocol.telemetry import Heartbeat
from tests.polling import wait_until

pytestmark = pytest.mark.timeout(300)

MODEL = "mobilenetv2"


@pytest.fixture(scope="module")
def warm_client(default_runtime: LocalRuntime):
    """A client after every node has run the model a few times (moving averages seeded)."""
    client = Client(default_runtime.settings)
    images = synthetic_images(9, seed=1)
    for node in default_runtime.node_ids:
        for image in images:
            assert client.submit(MODEL, image, node=node).result(60).node == node
    wait_until(lambda: all(MODEL in _heartbeat(default_runtime, n).exec_ms
                           for n in default_runtime.node_ids), 10,
               "every node's heartbeat to report the warm-up")
    yield client
    client.close()


def _heartbeat(runtime: LocalRuntime, node: str) -> Heartbeat:
    r = redis.Redis.from_url(runtime.settings.redis_url, decode_responses=True)
    try:
        return Heartbeat.from_fields(r.hgetall(keys.node_key(node)), now=time.time())
    finally:
        r.close()


def test_each_agent_runs_inside_its_own_cgroup_with_the_declared_limits(
    default_runtime: LocalRuntime,
) -> None:
    assert default_runtime.state.constrained, "cgroups must be usable on the CI machine"
    for spec in default_runtime.topology.nodes:
        cgroup = NodeCgroup.attach(spec.name, default_runtime.settings.cgroup_parent)
        limits = cgroup.limits()
        assert limits.cpus == pytest.approx(spec.cpus)
        assert limits.mem_limit_bytes == spec.mem_limit_bytes
        agent_pid = next(p.pid for p in default_runtime.state.processes if p.name == spec.name)
        assert agent_pid in cgroup.pids()
        beat = _heartbeat(default_runtime, spec.name)
        assert beat.cpu_source == "cgroup-v1" or beat.cpu_source == "cgroup-v2"
        assert beat.cpu_quota == spec.cpus and beat.mem_limit_bytes == spec.mem_limit_bytes
        assert 0 < beat.mem_used_bytes <= spec.mem_limit_bytes


def test_green_routes_to_node_green_and_performance_to_node_high(warm_client: Client) -> None:
    """The paper's Table V under the default (minmax) normalisation."""
    images = synthetic_images(8, seed=2)
    green = [warm_client.submit(MODEL, im, mode="green").result(60) for im in images]
    perf = [warm_client.submit(MODEL, im, mode="performance").result(60) for im in images]
    assert {r.node for r in green} == {"node-green"}, "\n".join(
        str(r.decision.get("explain")) for r in green if r.node != "node-green")
    assert {r.node for r in perf} == {"node-high"}, [r.decision for r in perf]
    assert sum(r.carbon_g for r in green) < sum(r.carbon_g for r in perf)


def test_a_plan_predicts_the_charge(warm_client: Client) -> None:
    """S_C prices a task with the formula the agent charges it with: per millisecond of
    device busy time the plan and the charge are the same grams (exactly, at a static
    intensity), so a plan is off only by how far a task's CPU strays from the node's
    median (the benchmark bench_carbon_stability.py prints that in steady state)."""
    results = [warm_client.submit(MODEL, im, mode="green").result(60)
               for im in synthetic_images(10, seed=8)]
    for r in results:
        row = next(row for row in r.decision["explain"] if row["node"] == r.node)
        assert row["carbon_g"] / row["exec_ms"] == pytest.approx(
            r.carbon_g / (r.busy_s * 1e3), rel=1e-9)
    predicted = statistics.median(
        next(row["carbon_g"] for row in r.decision["explain"] if row["node"] == r.node)
        for r in results)
    assert predicted == pytest.approx(statistics.median(r.carbon_g for r in results), rel=0.5)


def test_result_carries_output_timings_breakdown_energy_and_carbon(warm_client: Client) -> None:
    result = warm_client.submit(MODEL, synthetic_images(1, seed=3)[0], mode="balanced").result(60)
    assert len(result.top5) == 5 and all(0 <= cls < 1000 for cls, _ in result.top5)
    assert [s for _, s in result.top5] == sorted((s for _, s in result.top5), reverse=True)
    assert result.exec_ms > 0 and result.queue_ms >= 0 and result.e2e_ms >= result.exec_ms
    assert result.cpu_s > 0 and result.accounting == "device"
    assert result.cpu_model_s > 0 and result.cpu_overhead_s >= 0
    assert result.busy_s == pytest.approx(
        (result.cpu_model_s + result.cpu_overhead_s) / {"node-high": 1.0, "node-medium": 0.6,
                                                        "node-green": 0.4}[result.node])
    assert result.carbon_g == pytest.approx(result.energy_kwh * result.intensity_g_per_kwh)
    assert result.power_source == "codecarbon-default-per-thread" or \
        result.power_source.startswith(("codecarbon-tdp:", "configured"))
    assert result.energy_kwh == pytest.approx(result.cpu_energy_kwh + result.ram_energy_kwh)
    assert result.intensity_source == "static" and result.pue == 1.0
    assert result.random_init  # no pretrained weights on a machine without a download
    decision = result.decision
    assert decision is not None and decision["node_id"] == result.node
    assert set(decision["components"]) == {"R", "L", "P", "B", "C"}
    assert decision["weights"]["C"] == pytest.approx(0.30) and decision["duration_ns"] > 0


def test_tensor_input_and_map(warm_client: Client) -> None:
    x = np.random.default_rng(0).standard_normal((3, 224, 224)).astype(np.float32)
    results = warm_client.map(MODEL, [x, x[None]], mode="green", timeout=60)
    assert results[0].top5 == results[1].top5  # same input, same (deterministic) model


def test_async_client(default_runtime: LocalRuntime) -> None:
    async def go() -> list:
        async with AsyncClient(default_runtime.settings) as client:
            pings = await asyncio.gather(*(client.ping(timeout=30) for _ in range(5)))
            image = synthetic_images(1, seed=4)[0]
            return [*pings, await client.infer(MODEL, image, mode="green", timeout=60)]

    results = asyncio.run(go())
    assert all(r.node in {"node-high", "node-medium", "node-green"} for r in results)
    assert results[-1].node == "node-green" and not math.isnan(results[-1].exec_ms)


def test_a_burst_in_performance_mode_spills_over_when_node_high_queues_up(
    warm_client: Client,
) -> None:
    """Submitted all at once, requests queue on node-high; the load components move some."""
    image = synthetic_images(1, seed=5)[0]
    handles = [warm_client.submit(MODEL, image, mode="performance") for _ in range(24)]
    nodes = [h.result(120).node for h in handles]
    assert len(nodes) == 24 and nodes.count("node-high") >= 8
    assert len(set(nodes)) >= 2, nodes


def test_status_shows_every_node_with_its_carbon_so_far(
    warm_client: Client, default_runtime: LocalRuntime
) -> None:
    import subprocess
    import sys

    from carbonedge.ops.status import collect_status, format_status

    r = redis.Redis.from_url(default_runtime.settings.redis_url)
    # carbon totals are added off the task's path
    wait_until(lambda: all(row.carbon_g > 0 for row in collect_status(r)), 10,
               "every node's carbon total", on_fail=lambda: format_status(collect_status(r)))
    rows = {row.node_id: row for row in collect_status(r)}
    assert set(rows) == set(default_runtime.node_ids) and all(x.alive for x in rows.values())
    assert rows["node-green"].heartbeat.carbon_intensity == 380.0
    assert sum(x.decision_share for x in rows.values()) == pytest.approx(1.0)
    out = subprocess.run([sys.executable, "-m", "carbonedge.cli", "--redis-url",
                          default_runtime.settings.redis_url, "status"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert all(node in out for node in default_runtime.node_ids) and "mobilenetv2" in out
    r.close()


def test_latency_slo_picks_the_least_carbon_node_that_meets_it(warm_client: Client) -> None:
    image = synthetic_images(1, seed=4)[0]
    # every node meets a minute: the least carbon one runs it, even in Performance mode
    relaxed = warm_client.submit(MODEL, image, mode="performance",
                                 latency_slo_ms=60_000).result(60)
    assert relaxed.node == "node-green", relaxed.decision
    assert relaxed.decision["slo"]["met"] is True and relaxed.decision["slo"]["meeting"] == 3
