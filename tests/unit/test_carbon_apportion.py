"""Apportioning host power to tasks and nodes: both methods, sums, edge cases."""

from __future__ import annotations

import math

import pytest

from carbonedge.carbon.apportion import (
    MIN_BUSY_CPUS,
    HostPower,
    HostSample,
    check_method,
    reconcile_window,
    task_cpu_energy_j,
)
from carbonedge.carbon.ledger import LedgerRow
from carbonedge.errors import ConfigError, InvalidMessage

HOST = HostPower(cpu_w=10.0, idle_cpu_w=2.0, busy_cpus=1.6, host_cpus=2, source="test", ts=1.0)


def test_usage_charges_dynamic_power_per_busy_cpu_times_cpu_seconds() -> None:
    # (10 - 2) W over 1.6 busy CPUs = 5 W per CPU; 0.3 CPU-s -> 1.5 J
    assert task_cpu_energy_j("usage", HOST, cpu_s=0.3, wall_s=9.0, cpu_quota=0.4) == (
        pytest.approx(1.5))


def test_quota_charges_the_quota_share_of_host_power_over_wall_time() -> None:
    # 10 W * 0.4/2 CPUs * 0.5 s = 1 J, whatever CPU time the task used
    assert task_cpu_energy_j("quota", HOST, cpu_s=0.0, wall_s=0.5, cpu_quota=0.4) == (
        pytest.approx(1.0))
    # a quota above the host's CPUs cannot claim more than the whole host
    assert task_cpu_energy_j("quota", HOST, cpu_s=0, wall_s=1.0, cpu_quota=8) == pytest.approx(10)


def test_near_idle_host_does_not_inflate_the_per_cpu_figure() -> None:
    idle = HostPower(cpu_w=2.01, idle_cpu_w=2.0, busy_cpus=0.0, host_cpus=2, source="t")
    assert idle.dynamic_w_per_busy_cpu == pytest.approx(0.01 / MIN_BUSY_CPUS)


def test_estimate_is_linear_with_no_idle_floor() -> None:
    est = HostPower.estimate(4.0, 2, "estimate:codecarbon-default-per-thread")
    assert est.dynamic_w_per_busy_cpu == pytest.approx(4.0)
    assert task_cpu_energy_j("usage", est, cpu_s=1.0, wall_s=1.0, cpu_quota=1) == 4.0


def test_unknown_method_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="'share'.*usage, quota"):
        check_method("share")
    with pytest.raises(ConfigError):
        task_cpu_energy_j("share", HOST, cpu_s=1, wall_s=1, cpu_quota=1)


def test_host_power_round_trips_through_redis_fields_and_rejects_bad_ones() -> None:
    fields = {k.encode(): v.encode() for k, v in HOST.to_fields().items()}
    assert HostPower.from_fields(fields) == HOST
    with pytest.raises(ValueError):
        HostPower.from_fields({**HOST.to_fields(), "cpu_w": "nan"})
    with pytest.raises(KeyError):
        HostPower.from_fields({"cpu_w": "1"})


def _samples() -> list[HostSample]:
    """Synthetic cgroup readings: two nodes, one absent in the second second."""
    return [
        HostSample(seconds=1.0, cpu_j=6.0, idle_j=1.0, busy_cpu_s=1.0,
                   node_cpu_s={"a": 0.6, "b": 0.2}),
        HostSample(seconds=1.0, cpu_j=9.0, idle_j=1.0, busy_cpu_s=1.6,
                   node_cpu_s={"a": 0.8}),
    ]


def test_usage_window_splits_dynamic_energy_by_cpu_time_and_sums_to_host() -> None:
    shares = reconcile_window(_samples(), "usage", {"a": 1.0, "b": 0.4}, host_cpus=2)
    # second 1: 5 J dynamic, a 0.6/1.0, b 0.2/1.0; second 2: 8 J dynamic, a 0.8/1.6
    assert shares.per_node_j["a"] == pytest.approx(3.0 + 4.0)
    assert shares.per_node_j["b"] == pytest.approx(1.0)
    assert shares.host_j == 15.0 and shares.idle_j == 2.0
    assert shares.attributed_j + shares.unattributed_j == pytest.approx(shares.host_j)
    # unattributed = idle + CPU time of other processes' share
    assert shares.unattributed_j == pytest.approx(2.0 + 1.0 + 4.0)


def test_quota_window_gives_each_present_node_its_quota_share() -> None:
    shares = reconcile_window(_samples(), "quota", {"a": 1.0, "b": 0.4}, host_cpus=2)
    assert shares.per_node_j["a"] == pytest.approx(6.0 * 0.5 + 9.0 * 0.5)
    assert shares.per_node_j["b"] == pytest.approx(6.0 * 0.2)  # absent in second 2
    assert shares.attributed_j + shares.unattributed_j == pytest.approx(15.0)


def test_node_cpu_above_host_busy_cannot_attribute_more_than_the_dynamic_energy() -> None:
    # heartbeats and /proc/stat are read at slightly different instants
    skewed = [HostSample(seconds=1.0, cpu_j=4.0, idle_j=1.0, busy_cpu_s=0.5,
                         node_cpu_s={"a": 0.5, "b": 0.5})]
    shares = reconcile_window(skewed, "usage", {}, host_cpus=2)
    assert shares.attributed_j == pytest.approx(3.0)
    assert shares.unattributed_j == pytest.approx(1.0)


def _row(**changes: object) -> dict[str, str]:
    row = LedgerRow(task_id="t1", node="n", kind="infer", model="m", mode="green",
                    status="ok", ts=1.0, wall_s=0.1, cpu_s=0.05, cpu_kwh=1e-7, ram_kwh=2e-9,
                    energy_kwh=1.02e-7, carbon_g=3.9e-5, intensity_g_per_kwh=380.0,
                    intensity_source="static", pue=1.0, power_source="p", apportioning="usage")
    return {**row.to_fields(), **{k: str(v) for k, v in changes.items()}}


def test_ledger_rows_round_trip_and_bad_fields_are_named() -> None:
    fields = _row()
    assert LedgerRow.from_fields({k.encode(): v.encode() for k, v in fields.items()}).cpu_s == 0.05
    for name, bad in (("cpu_kwh", "-1"), ("carbon_g", "nan"), ("wall_s", "x")):
        with pytest.raises(InvalidMessage, match=name) as info:
            LedgerRow.from_fields(_row(**{name: bad}))
        assert info.value.field == name
    missing = _row()
    del missing["intensity_source"]
    with pytest.raises(InvalidMessage, match="intensity_source"):
        LedgerRow.from_fields(missing)
    assert math.isclose(LedgerRow.from_fields(_row()).energy_kwh, 1.02e-7)
