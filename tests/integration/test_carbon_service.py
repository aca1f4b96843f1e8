"""The carbon service against the real Redis: host power published, ledger consumed once,
windows reconciled. The host tracker here is a scripted one, so the figures are exact."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis

from carbonedge.carbon.apportion import HostPower
from carbonedge.carbon.emissions_csv import EmissionsCsv, read_rows
from carbonedge.carbon.host_tracker import HostReading
from carbonedge.carbon.ledger import LedgerRow
from carbonedge.carbon.report import format_report, summarise
from carbonedge.carbon.service import CarbonService
from carbonedge.protocol import keys
from carbonedge.settings import Settings


class ScriptedHost:
    """Each sample: 0.2 s at 10 W with 1 W idle and 1.5 busy CPUs; node a used 0.1 CPU-s
    and node b 0.05 (their heartbeats' counters advance as if they had)."""

    source = "scripted"
    cpu_model = "test-cpu"
    idle_cpu_w = 1.0

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
                "mem_limit_bytes": str(1 << 30), "carbon_intensity": "400", "pue": "1.0"})
            self.client.sadd(keys.NODES, node)


def _ledger(client: redis.Redis, node: str, n: int, ts: float) -> None:
    for i in range(n):
        row = LedgerRow(task_id=f"{node}-{i}", node=node, kind="infer", model="m",
                        mode="green", status="ok", ts=ts, wall_s=0.1, cpu_s=0.05,
                        cpu_kwh=1e-7, ram_kwh=1e-8, energy_kwh=1.1e-7, carbon_g=4.4e-5,
                        intensity_g_per_kwh=400.0, intensity_source="static", pue=1.0,
                        power_source="host:scripted", apportioning="usage")
        client.xadd(keys.LEDGER_STREAM, row.to_fields())  # type: ignore[arg-type]


def test_service_reconciles_windows_and_counts_each_ledger_row_once(
    redis_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    settings = Settings.load(env={}, redis_url=redis_url, carbon_window_s=1.0,
                             carbon_sample_s=0.2)
    csv_path = tmp_path / "emissions.csv"
    host = ScriptedHost(client)
    service = CarbonService(settings, host, EmissionsCsv(csv_path))
    now = time.time()
    _ledger(client, "a", 5, now)
    _ledger(client, "b", 3, now)
    client.xadd(keys.LEDGER_STREAM, {"task_id": "forged"})  # rejected, still acknowledged

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        deadline = time.monotonic() + 20
        while service.windows_written < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            fields = client.hgetall(keys.HOST_POWER)
            if fields:
                published = HostPower.from_fields(fields)
        assert published.source == "scripted" and published.cpu_w == 10.0
        assert published.busy_cpus == pytest.approx(1.5)
        stop.set()
        await asyncio.wait_for(task, 20)

    asyncio.run(run())
    rows = read_rows(csv_path)
    tasks = [r for r in rows if r["row_type"] == "task"]
    nodes = [r for r in rows if r["row_type"] == "node"]
    hosts = [r for r in rows if r["row_type"] == "host"]
    assert len(tasks) == 8 and {r["task_id"] for r in tasks} == {
        *(f"a-{i}" for i in range(5)), *(f"b-{i}" for i in range(3))}
    assert client.xpending(keys.LEDGER_STREAM, keys.LEDGER_GROUP)["pending"] == 0
    assert len(hosts) >= 2

    # every task row is in exactly one node row
    for node, count in (("a", 5), ("b", 3)):
        assert sum(int(r["tasks"]) for r in nodes if r["node"] == node) == count
        assert sum(float(r["cpu_energy"]) for r in nodes if r["node"] == node) == (
            pytest.approx(count * 1e-7))
    # usage: each sample's 2 J minus 0.2 J idle, split 0.1 : 0.05 : rest of 0.3 busy CPU-s
    for host_row in hosts:
        host_cpu = float(host_row["cpu_energy"])
        attributed = float(host_row["attributed_cpu_energy"])
        window_nodes = [r for r in nodes if r["window_start"] == host_row["window_start"]]
        assert attributed == pytest.approx(sum(float(r["attributed_cpu_energy"])
                                               for r in window_nodes))
        # usage: a sample's 2 J minus 0.2 J idle, a and b get 0.15 of its 0.3 busy CPU-s
        assert attributed <= 0.45 * host_cpu * (1 + 1e-9)
        assert float(host_row["unattributed_energy"]) > 0
        assert host_row["power_source"] == "scripted"
        assert host_row["cpu_model"] == "test-cpu"

    # only the first sample lacks node deltas (no earlier counter to subtract)
    host_total = sum(float(r["cpu_energy"]) for r in hosts)
    samples = round(host_total * 3.6e6 / 2.0)
    attributed_total = sum(float(r["attributed_cpu_energy"]) for r in hosts)
    assert attributed_total * 3.6e6 == pytest.approx(0.9 * (samples - 1))

    report = summarise(csv_path)
    assert report.nodes["a"].tasks == 5 and report.windows == len(hosts)
    text = format_report(report)
    assert "per-task CPU energy / cgroup-attributed CPU energy" in text
    client.close()


def test_report_refuses_a_missing_csv(tmp_path: Path) -> None:
    from carbonedge.errors import ConfigError

    with pytest.raises(ConfigError, match="no emissions CSV"):
        summarise(tmp_path / "nope.csv")
