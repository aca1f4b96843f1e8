"""A real run with the carbon service: CodeCarbon on the host, agents charging tasks from
its readings, the ledger summing to the reconciled node totals in the emissions CSV."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
import redis

from carbonedge.carbon.emissions_csv import read_rows
from carbonedge.carbon.ledger import LedgerRow
from carbonedge.carbon.report import summarise
from carbonedge.client import Client
from carbonedge.compose.local_runner import LocalRuntime
from carbonedge.compose.topology import load_topology
from carbonedge.experiments.workload import synthetic_images
from carbonedge.protocol import keys
from carbonedge.settings import Settings
from tests.conftest import CGROUP_PARENT, SMALL_RUNTIME_URL, _redis_or_fail, session_export_dir
from tests.integration.conftest import SMALL_TOPOLOGY

pytestmark = pytest.mark.timeout(400)


def test_ledger_rows_sum_to_the_reconciled_node_totals(tmp_path: Path) -> None:
    _redis_or_fail(SMALL_RUNTIME_URL).flushdb()
    compose = tmp_path / "compose.yml"
    compose.write_text(SMALL_TOPOLOGY)
    settings = Settings.load(env={}, redis_url=SMALL_RUNTIME_URL, run_dir=str(tmp_path / "run"),
                             cgroup_parent=CGROUP_PARENT, carbon_window_s=2.0,
                             export_dir=str(session_export_dir()))
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

    for r in results:  # the device method: deterministic, and named
        assert r.accounting == "device" and r.intensity_source == "static"
        assert r.power_source in ("codecarbon-default-per-thread", "configured") or \
            r.power_source.startswith("codecarbon-tdp:")
        assert r.raw["cpu_energy_kwh"] > 0 and r.raw["ram_energy_kwh"] > 0
        assert r.energy_kwh == pytest.approx(r.raw["cpu_energy_kwh"] + r.raw["ram_energy_kwh"])
        assert r.carbon_g == pytest.approx(r.energy_kwh * r.intensity_g_per_kwh)
        # its own CPU only: the model run plus a little hand-off, never start-up or idle
        assert 0 < r.cpu_model_s and 0 <= r.cpu_overhead_s < r.cpu_model_s
        assert r.cpu_model_s + r.cpu_overhead_s < 1.0

    r = redis.Redis.from_url(SMALL_RUNTIME_URL)
    ledger = [LedgerRow.from_fields(f) for _, f in r.xrange(keys.LEDGER_STREAM)]
    settled = {f[b"task_id"].decode(): f for _, f in r.xrange(keys.CARBON_SETTLED)}
    assert r.xpending(keys.LEDGER_STREAM, keys.LEDGER_GROUP)["pending"] == 0
    r.close()
    by_id = {row.task_id: row for row in ledger}
    for res in results:  # the result and its ledger row report the same charge
        assert by_id[res.id].energy_kwh == pytest.approx(res.energy_kwh)
        assert settled[res.id][b"settlement"] == b"settled"  # the service covered it
        assert settled[res.id][b"estimated"] in (b"0", b"1")
        assert float(settled[res.id][b"energy_kwh"]) > 0
    kinds = {(row.node, row.row_type) for row in ledger}
    for node in runtime.node_ids:  # start-up and idle time are on rows of their own
        assert (node, "startup") in kinds and (node, "idle") in kinds

    rows = read_rows(runtime.emissions_csv)
    ledger_energy: dict[str, float] = defaultdict(float)
    for row in ledger:
        ledger_energy[row.node] += row.energy_kwh
    device_rows: dict[str, float] = defaultdict(float)
    device_nodes: dict[str, float] = defaultdict(float)
    for row in rows:
        if row["method"] != "device":
            continue
        if row["row_type"] in ("task", "idle", "startup"):
            device_rows[row["node"]] += float(row["energy_consumed"])
        elif row["row_type"] == "node":
            device_nodes[row["node"]] += float(row["energy_consumed"])
    assert set(ledger_energy) == set(runtime.node_ids)
    for node in runtime.node_ids:
        assert device_rows[node] == pytest.approx(ledger_energy[node], rel=1e-9)
        assert device_nodes[node] == pytest.approx(ledger_energy[node], rel=1e-9)

    hosts = [row for row in rows if row["row_type"] == "host"]
    assert hosts and all(row["power_source"].startswith("codecarbon:") for row in hosts)
    for host in hosts:
        nodes = [row for row in rows if row["row_type"] == "node" and row["method"] ==
                 "measured" and row["window_start"] == host["window_start"]]
        attributed = sum(float(row["attributed_energy"]) for row in nodes)
        # host energy = energy the nodes' cgroups earned + unattributed (named by cause)
        assert attributed + float(host["unattributed_energy"]) == pytest.approx(
            float(host["energy_consumed"]), rel=1e-6, abs=1e-12)
        causes = sum(float(host[f"unattributed_{c}_energy"])
                     for c in ("idle", "other", "ram", "gpu"))
        assert causes == pytest.approx(float(host["unattributed_energy"]), rel=1e-6, abs=1e-12)
    report = summarise(runtime.emissions_csv)
    tasks = sum(1 for row in ledger if row.row_type == "task")
    assert sum(n.methods["device"].tasks for n in report.nodes.values()) == tasks
