"""The carbon service against the real Redis: samples kept, ledger rows settled once from
the samples that cover them, windows reconciled by cause, a restart settling what its
stored samples cover. The host tracker here is scripted, so the figures are exact."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from carbonedge.carbon.apportion import HostPower
from carbonedge.carbon.emissions_csv import EmissionsCsv, read_rows
from carbonedge.carbon.host_tracker import HostReading
from carbonedge.carbon.ledger import LedgerRow
from carbonedge.carbon.measured import HostSample
from carbonedge.carbon.report import format_report, summarise
from carbonedge.carbon.service import CarbonService
from carbonedge.protocol import keys
from carbonedge.settings import Settings
from tests.polling import wait_until

GB = 10**9
PRICE_J_PER_CPU_S = (2.0 - 0.2) / 0.3
"""Each scripted sample: 2 J with 0.2 J of idle floor over 0.3 busy CPU-seconds."""
HOST_RAM_W = 0.4 / 0.2
HOST_MEM = 8 * GB


class ScriptedHost:
    """Each sample: 0.2 s at 10 W with 1 W idle and 1.5 busy CPUs, RAM 2 W of an 8 GB host;
    node a used 0.1 CPU-s and node b 0.05 (their heartbeats' counters advance as if)."""

    source = "codecarbon:scripted"
    cpu_model = "test-cpu"
    idle_cpu_w = 1.0
    estimated = True
    ram_total_bytes = float(HOST_MEM)

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.cpu = {"a": 0.0, "b": 0.0}

    def start(self) -> None:
        self._beat()

    def sample(self) -> HostReading:
        self.cpu["a"] += 0.1
        self.cpu["b"] += 0.05
        self._beat()
        return HostReading(seconds=0.2, cpu_j=2.0, ram_j=0.4, gpu_j=0.0, cpu_w=10.0,
                           busy_cpu_s=0.3, emissions_kg=1e-9)

    def stop(self) -> None:
        pass

    def _beat(self) -> None:
        for node, quota in (("a", 1.0), ("b", 0.4)):
            self.client.hset(keys.node_key(node), mapping={
                "cpu_usage_s": repr(self.cpu[node]), "cpu_quota": str(quota),
                "mem_limit_bytes": str(GB), "carbon_intensity": "400", "pue": "1.0"})
            self.client.sadd(keys.NODES, node)


def _row(task_id: str, node: str, start: float, *, cpu_s: float = 0.05,
         row_type: str = "task") -> LedgerRow:
    quota = 1.0 if node == "a" else 0.4
    busy = cpu_s / quota
    ram_w = 0.375 * GB / 1e9
    return LedgerRow(task_id=task_id, node=node, kind="infer", model="m", mode="green",
                     status="ok", ts=start + 0.05, started_at=start, wall_s=0.05, cpu_s=cpu_s,
                     cpu_model_s=cpu_s * 0.9, cpu_overhead_s=cpu_s * 0.1, busy_s=busy,
                     cpu_quota=quota, mem_limit_bytes=float(GB), cpu_kwh=4.0 * cpu_s / 3.6e6,
                     ram_kwh=ram_w * busy / 3.6e6, energy_kwh=(4.0 * cpu_s + ram_w * busy) / 3.6e6,
                     carbon_g=400 * (4.0 * cpu_s + ram_w * busy) / 3.6e6,
                     intensity_g_per_kwh=400.0, intensity_source="static", pue=1.0,
                     power_source="configured", row_type=row_type)


def _samples(client: redis.Redis) -> list[HostSample]:
    return [HostSample.from_fields(f) for _, f in client.xrange(keys.CARBON_SAMPLES)]


async def _serve(service: CarbonService, until: Callable[[], bool]) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    deadline = time.monotonic() + 30
    while not until() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 30)


def _settings(redis_url: str) -> Settings:
    return Settings.load(env={}, redis_url=redis_url, carbon_window_s=1.0, carbon_sample_s=0.2)


def test_rows_settle_from_the_samples_that_cover_them_and_windows_reconcile(
    redis_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    csv_path = tmp_path / "emissions.csv"
    service = CarbonService(_settings(redis_url), ScriptedHost(client), EmissionsCsv(csv_path),
                            host_intensity=(369.5, "codecarbon:USA"))
    added: list[LedgerRow] = []

    def feed() -> bool:
        """Once samples exist, add rows inside the newest one; stop after two windows."""
        samples = _samples(client)
        if len(samples) >= 3 and not added:
            latest = samples[-1]
            for i in range(5):
                added.append(_row(f"a-{i}", "a", latest.t0 + 0.01 * i))
            for i in range(3):
                added.append(_row(f"b-{i}", "b", latest.t0 + 0.02 * i, cpu_s=0.02))
            added.append(_row("idle:a", "a", latest.t0, cpu_s=0.01, row_type="idle"))
            for row in added:
                client.xadd(keys.LEDGER_STREAM, row.to_fields())  # type: ignore[arg-type]
            client.xadd(keys.LEDGER_STREAM, {"task_id": "forged"})  # rejected, acknowledged
        published = client.hgetall(keys.HOST_POWER)
        if published:
            host = HostPower.from_fields(published)
            assert host.cpu_w == 10.0 and host.busy_cpus == pytest.approx(1.5)
        return bool(added) and service.rows_settled >= len(added) and (
            service.windows_written >= 2)

    asyncio.run(_serve(service, feed))
    assert client.xpending(keys.LEDGER_STREAM, keys.LEDGER_GROUP)["pending"] == 0

    rows = read_rows(csv_path)
    ledger = [r for r in rows if r["row_type"] in ("task", "idle")]
    assert len(ledger) == 2 * len(added)  # each row once per method
    by_key = {(r["task_id"], r["method"]): r for r in ledger}
    for row in added:
        device, measured = by_key[(row.task_id, "device")], by_key[(row.task_id, "measured")]
        assert float(device["energy_consumed"]) == pytest.approx(row.energy_kwh)
        assert measured["settlement"] == "settled" and measured["estimated"] == "1"
        assert float(measured["cpu_energy"]) == pytest.approx(
            row.cpu_s * PRICE_J_PER_CPU_S / 3.6e6)
        assert float(measured["ram_energy"]) == pytest.approx(
            HOST_RAM_W * GB / HOST_MEM * row.busy_s / 3.6e6)
        assert float(measured["emissions"]) * 1000 == pytest.approx(
            float(measured["energy_consumed"]) * 400.0)
        # CodeCarbon's convention: power x duration = energy
        for r in (device, measured):
            assert float(r["cpu_power"]) * float(r["duration"]) / 3.6e6 == pytest.approx(
                float(r["cpu_energy"]))
    settled = {f[b"task_id"].decode(): f for _, f in client.xrange(keys.CARBON_SETTLED)}
    assert set(settled) == {row.task_id for row in added}
    assert all(f[b"settlement"] == b"settled" for f in settled.values())

    hosts = [r for r in rows if r["row_type"] == "host"]
    nodes = [r for r in rows if r["row_type"] == "node"]
    assert len(hosts) >= 2
    for host in hosts:
        assert host["intensity_source"] == "codecarbon:USA"
        causes = sum(float(host[f"unattributed_{c}_energy"])
                     for c in ("idle", "other", "ram", "gpu"))
        assert causes == pytest.approx(float(host["unattributed_energy"]), rel=1e-9)
        window_nodes = [r for r in nodes if r["window_start"] == host["window_start"]
                        and r["method"] == "measured"]
        attributed = sum(float(r["attributed_energy"]) for r in window_nodes)
        assert attributed + float(host["unattributed_energy"]) == pytest.approx(
            float(host["energy_consumed"]), rel=1e-9)
    # a node row per method sums its window's rows
    for method in ("device", "measured"):
        total = sum(float(r["energy_consumed"]) for r in nodes
                    if r["method"] == method and r["node"] == "a")
        expected = sum(float(by_key[(row.task_id, method)]["energy_consumed"])
                       for row in added if row.node == "a")
        assert total == pytest.approx(expected)

    report = summarise(csv_path)
    assert report.nodes["a"].methods["device"].tasks == 5
    assert report.nodes["a"].methods["measured"].tasks == 5
    assert "unattributed" in format_report(report)
    client.close()


def test_a_restarted_service_settles_what_its_stored_samples_cover(
    redis_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    first = CarbonService(_settings(redis_url), ScriptedHost(client),
                          EmissionsCsv(tmp_path / "first.csv"))
    asyncio.run(_serve(first, lambda: len(_samples(client)) >= 4))
    before = _samples(client)
    down_at = time.time()
    # written while no service runs: one inside a stored sample, one in the outage
    covered = _row("covered", "a", before[-2].t0 + 0.01)
    in_gap = _row("in-gap", "a", down_at + 0.05)
    for row in (covered, in_gap):
        client.xadd(keys.LEDGER_STREAM, row.to_fields())  # type: ignore[arg-type]
    wait_until(lambda: time.time() > down_at + 0.5, 5, "the outage to last half a second")
    second = CarbonService(_settings(redis_url), ScriptedHost(client),
                           EmissionsCsv(tmp_path / "second.csv"))
    asyncio.run(_serve(second, lambda: second.rows_settled >= 2))
    settled = {f[b"task_id"].decode(): f for _, f in client.xrange(keys.CARBON_SETTLED)}
    assert settled["covered"][b"settlement"] == b"settled"
    assert float(settled["covered"][b"cpu_kwh"]) == pytest.approx(
        covered.cpu_s * PRICE_J_PER_CPU_S / 3.6e6)
    assert settled["in-gap"][b"settlement"] == b"unsettled"
    assert b"carbon_g" not in settled["in-gap"]  # no guess: its device charge stands
    rows = {(r["task_id"], r["method"]): r for r in read_rows(tmp_path / "second.csv")}
    assert rows[("in-gap", "measured")]["settlement"] == "unsettled"
    assert math.isclose(float(rows[("in-gap", "device")]["energy_consumed"]), in_gap.energy_kwh)
    assert client.xpending(keys.LEDGER_STREAM, keys.LEDGER_GROUP)["pending"] == 0
    client.close()


def test_report_refuses_a_missing_csv(tmp_path: Path) -> None:
    from carbonedge.errors import ConfigError

    with pytest.raises(ConfigError, match="no emissions CSV"):
        summarise(tmp_path / "nope.csv")
