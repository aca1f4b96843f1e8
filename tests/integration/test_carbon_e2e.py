"""A real run with the carbon service: CodeCarbon on the host, agents charging tasks from
its readings, the ledger summing to the reconciled node totals in the emissions CSV."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
import redis

from carbonedge.broker.client import Client
from carbonedge.carbon.emissions_csv import read_rows
from carbonedge.carbon.ledger import LedgerRow
from carbonedge.carbon.report import summarise
from carbonedge.compose.local_runner import LocalRuntime
from carbonedge.compose.topology import load_topology
from carbonedge.experiments.workload import synthetic_images
from carbonedge.protocol import keys
from carbonedge.settings import Settings
from tests.conftest import CGROUP_PARENT, SMALL_RUNTIME_URL, _redis_or_fail, session_export_dir
from tests.integration.conftest import SMALL_TOPOLOGY

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


def test_ledger_rows_sum_to_the_reconciled_node_totals(tmp_path: Path) -> None:
    _redis_or_fail(SMALL_RUNTIME_URL).flushdb()
    compose = tmp_path / "compose.yml"
    compose.write_text(SMALL_TOPOLOGY)
    # torch: the usage apportioning prices a CPU-second by host power above the tracker's
    # idle floor (without a TDP, the lowest power it has seen), and ONNX Runtime's few-ms
    # tasks can leave the host at that floor, to be charged no CPU energy at all
    settings = Settings.load(env={}, redis_url=SMALL_RUNTIME_URL, run_dir=str(tmp_path / "run"),
                             cgroup_parent=CGROUP_PARENT, carbon_window_s=2.0,
                             export_dir=str(session_export_dir()), inference_runtime="torch")
    runtime = LocalRuntime(load_topology(compose), settings, carbon_service=True,
                           preload=("mobilenetv2",))
    results = []
    try:
        runtime.up(wait_s=180)
        client = Client(settings)
        try:
            for image in synthetic_images(4, seed=3):
                for node in runtime.node_ids:
                    results.append(client.submit_direct(node, "mobilenetv2", image).result(120))
        finally:
            client.close()
    finally:
        runtime.down()  # the carbon service drains the ledger and closes every window

    for r in results:
        assert r.raw["power_source"].startswith("host:codecarbon:"), r.raw["power_source"]
        assert r.apportioning == "usage" and r.intensity_source == "static"
        assert r.raw["cpu_energy_kwh"] > 0 and r.raw["ram_energy_kwh"] > 0
        assert r.energy_kwh == pytest.approx(r.raw["cpu_energy_kwh"] + r.raw["ram_energy_kwh"])
        assert r.carbon_g == pytest.approx(r.energy_kwh * r.intensity_g_per_kwh)

    r = redis.Redis.from_url(SMALL_RUNTIME_URL)
    ledger = [LedgerRow.from_fields(f) for _, f in r.xrange(keys.LEDGER_STREAM)]
    assert r.xpending(keys.LEDGER_STREAM, keys.LEDGER_GROUP)["pending"] == 0
    r.close()
    by_id = {row.task_id: row for row in ledger}
    for res in results:  # the result and its ledger row report the same charge
        assert by_id[res.id].energy_kwh == pytest.approx(res.energy_kwh)

    rows = read_rows(runtime.emissions_csv)
    ledger_energy: dict[str, float] = defaultdict(float)
    for row in ledger:
        ledger_energy[row.node] += row.energy_kwh
    task_energy: dict[str, float] = defaultdict(float)
    node_energy: dict[str, float] = defaultdict(float)
    for row in rows:
        if row["row_type"] == "task":
            task_energy[row["node"]] += float(row["energy_consumed"])
        elif row["row_type"] == "node":
            node_energy[row["node"]] += float(row["energy_consumed"])
    assert set(ledger_energy) == set(runtime.node_ids)
    for node in runtime.node_ids:
        assert task_energy[node] == pytest.approx(ledger_energy[node], rel=1e-9)
        assert node_energy[node] == pytest.approx(ledger_energy[node], rel=1e-9)

    hosts = [row for row in rows if row["row_type"] == "host"]
    assert hosts and all(row["power_source"].startswith("codecarbon:") for row in hosts)
    for host in hosts:
        total = float(host["energy_consumed"])
        nodes = [row for row in rows if row["row_type"] == "node"
                 and row["window_start"] == host["window_start"]]
        attributed = sum(float(row["attributed_cpu_energy"]) for row in nodes)
        node_ram = sum(float(row["ram_power"]) * float(row["duration"]) / 3.6e6 for row in nodes)
        # host energy = energy attributed to nodes (CPU share + their RAM) + unattributed
        assert attributed + node_ram + float(host["unattributed_energy"]) == pytest.approx(
            total, rel=1e-6, abs=1e-12)
    report = summarise(runtime.emissions_csv)
    assert sum(n.tasks for n in report.nodes.values()) == len(ledger)
