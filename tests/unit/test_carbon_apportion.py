"""The measured method: settling ledger rows from host samples, and window reconciliation."""

from __future__ import annotations

import math

import pytest

from carbonedge.carbon.apportion import HostPower, reconcile_window
from carbonedge.carbon.ledger import LedgerRow
from carbonedge.carbon.measured import MIN_BUSY_CPUS, HostSample, SampleLog, settle
from carbonedge.errors import InvalidMessage

HOST = HostPower(cpu_w=10.0, idle_cpu_w=2.0, busy_cpus=1.6, host_cpus=2, source="test", ts=1.0)
GB = 10**9


def _sample(t0: float, cpu_j: float = 9.0, idle_j: float = 1.0, busy: float = 1.6,
            ram_j: float = 4.0, nodes: dict[str, float] | None = None) -> HostSample:
    return HostSample(t0=t0, t1=t0 + 1.0, cpu_j=cpu_j, idle_j=idle_j, ram_j=ram_j, gpu_j=0.0,
                      busy_cpu_s=busy, node_cpu_s=nodes if nodes is not None else {"a": 0.8})


def _ledger(start: float = 100.2, wall: float = 0.1, cpu: float = 0.05, **changes: object
            ) -> LedgerRow:
    fields = dict(task_id="t1", node="a", kind="infer", model="m", mode="green", status="ok",
                  ts=start + wall, started_at=start, wall_s=wall, cpu_s=cpu, cpu_model_s=cpu,
                  cpu_kwh=1e-7, ram_kwh=0.2 * 0.125 / 3.6e6, energy_kwh=1e-7,
                  carbon_g=3.9e-5, intensity_g_per_kwh=380.0, intensity_source="static",
                  pue=1.0, power_source="configured", busy_s=0.125, cpu_quota=0.4,
                  mem_limit_bytes=0.2 / 0.375 * GB)
    fields.update(changes)
    return LedgerRow(**fields)  # type: ignore[arg-type]


def test_a_covered_row_pays_the_cpu_second_price_of_its_samples() -> None:
    log = SampleLog()
    log.add(_sample(100.0))  # (9 - 1) J over 1.6 busy CPU-s: 5 J per CPU-second
    m = settle(_ledger(), log, host_mem_bytes=16 * GB, estimated=True)
    assert m.settlement == "settled" and m.estimated and m.coverage == pytest.approx(1.0)
    assert m.cpu_kwh == pytest.approx(0.05 * 5.0 / 3.6e6)
    # RAM: 4 W of host RAM, the node's 0.533 GB of 16 GB, for the 0.125 s it was busy
    assert m.ram_kwh == pytest.approx(4.0 * (0.2 / 0.375) / 16 * 0.125 / 3.6e6)
    assert m.carbon_g == pytest.approx(m.energy_kwh * 380.0)


def test_a_row_across_two_samples_is_priced_by_overlap() -> None:
    log = SampleLog()
    log.add(_sample(100.0))  # 5 J per CPU-s
    log.add(_sample(101.0, cpu_j=17.0, busy=1.6))  # 10 J per CPU-s
    row = _ledger(start=100.75, wall=0.5, cpu=0.2)  # a quarter in the first, 3/4 in the next
    m = settle(row, log, host_mem_bytes=16 * GB, estimated=False)
    assert m.cpu_kwh == pytest.approx(0.2 * (0.5 * 5.0 + 0.5 * 10.0) / 3.6e6)


def test_a_row_the_samples_do_not_cover_is_unsettled_not_guessed() -> None:
    log = SampleLog()
    log.add(_sample(100.0))
    log.add(_sample(105.0))  # the service was down from 101 to 105
    m = settle(_ledger(start=102.0, wall=0.5), log, host_mem_bytes=GB, estimated=True)
    assert m.settlement == "unsettled" and math.isnan(m.carbon_g) and m.coverage == 0.0
    assert settle(_ledger(start=100.9, wall=0.5), log, host_mem_bytes=GB,
                  estimated=True).settlement == "unsettled"  # 20% covered


def test_near_idle_host_does_not_inflate_the_per_cpu_price() -> None:
    s = _sample(0.0, cpu_j=2.01, idle_j=2.0, busy=0.0, nodes={})
    assert s.price_j_per_cpu_s == pytest.approx(0.01 / MIN_BUSY_CPUS)


def test_samples_round_trip_through_redis_fields_and_reject_bad_ones() -> None:
    s = _sample(100.0, nodes={"a": 0.5, "node-b.1": 0.25})
    fields = {k.encode(): v.encode() for k, v in s.to_fields().items()}
    assert HostSample.from_fields(fields) == s
    for bad in ({**s.to_fields(), "cpu_j": "nan"}, {**s.to_fields(), "t1": "99"},
                {"t0": "1"}, {**s.to_fields(), "cpu_j": b"\xff"}):
        with pytest.raises(InvalidMessage):
            HostSample.from_fields(bad)


def test_host_power_round_trips_through_redis_fields_and_rejects_bad_ones() -> None:
    fields = {k.encode(): v.encode() for k, v in HOST.to_fields().items()}
    assert HostPower.from_fields(fields) == HOST
    with pytest.raises(ValueError):
        HostPower.from_fields({**HOST.to_fields(), "cpu_w": "nan"})
    with pytest.raises(KeyError):
        HostPower.from_fields({"cpu_w": "1"})


def _window() -> list[HostSample]:
    """Synthetic cgroup readings: two nodes, one absent in the second second."""
    return [
        HostSample(0.0, 1.0, cpu_j=6.0, idle_j=1.0, ram_j=8.0, gpu_j=0.0, busy_cpu_s=1.0,
                   node_cpu_s={"a": 0.6, "b": 0.2}),
        HostSample(1.0, 2.0, cpu_j=9.0, idle_j=1.0, ram_j=8.0, gpu_j=0.5, busy_cpu_s=1.6,
                   node_cpu_s={"a": 0.8}),
    ]


def test_window_splits_energy_by_cgroup_cpu_and_memory_and_names_the_rest() -> None:
    shares = reconcile_window(_window(), {"a": 2 * GB, "b": 1 * GB}, host_mem_bytes=8 * GB)
    # second 1: 5 J dynamic, a 0.6/1.0, b 0.2/1.0; second 2: 8 J dynamic, a 0.8/1.6
    assert shares.node_cpu_j["a"] == pytest.approx(3.0 + 4.0)
    assert shares.node_cpu_j["b"] == pytest.approx(1.0)
    # RAM: 8 J a second; a holds 2/8 of the host's memory in both, b 1/8 in the first
    assert shares.node_ram_j["a"] == pytest.approx(4.0)
    assert shares.node_ram_j["b"] == pytest.approx(1.0)
    causes = shares.causes_j()
    assert causes == pytest.approx({"idle": 2.0, "other": 1.0 + 4.0, "ram": 11.0, "gpu": 0.5})
    assert sum(causes.values()) == pytest.approx(shares.unattributed_j)
    assert shares.attributed_j + shares.unattributed_j == pytest.approx(shares.host_j)


def test_node_cpu_above_host_busy_cannot_attribute_more_than_the_dynamic_energy() -> None:
    # heartbeats and /proc/stat are read at slightly different instants
    skewed = [HostSample(0.0, 1.0, cpu_j=4.0, idle_j=1.0, ram_j=0.0, gpu_j=0.0,
                         busy_cpu_s=0.5, node_cpu_s={"a": 0.5, "b": 0.5})]
    shares = reconcile_window(skewed, {}, host_mem_bytes=GB)
    assert sum(shares.node_cpu_j.values()) == pytest.approx(3.0)
    assert shares.unattributed_j == pytest.approx(1.0)


def _row(**changes: object) -> dict[str, str]:
    return {**_ledger().to_fields(), **{k: str(v) for k, v in changes.items()}}


def test_ledger_rows_round_trip_and_bad_fields_are_named() -> None:
    fields = _row()
    assert LedgerRow.from_fields({k.encode(): v.encode() for k, v in fields.items()}).cpu_s == 0.05
    for name, bad in (("cpu_kwh", "-1"), ("carbon_g", "nan"), ("wall_s", "x"),
                      ("row_type", "lunch")):
        with pytest.raises(InvalidMessage, match=name) as info:
            LedgerRow.from_fields(_row(**{name: bad}))
        assert info.value.field == name
    missing = _row()
    del missing["intensity_source"]
    with pytest.raises(InvalidMessage, match="intensity_source"):
        LedgerRow.from_fields(missing)
    with pytest.raises(InvalidMessage, match="UTF-8"):
        LedgerRow.from_fields({b"node": b"\xff"})
