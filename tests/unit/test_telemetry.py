from __future__ import annotations

import pytest

from carbonedge.dispatcher.telemetry import snapshot_of
from carbonedge.errors import InvalidMessage
from carbonedge.protocol.telemetry import Heartbeat

NOW = 1_800_000_000.0


def _beat(**changes: object) -> Heartbeat:
    values = dict(node_id="node-green", ts=NOW, cpu_quota=0.4, mem_limit_bytes=512 << 20,
                  mem_used_bytes=300 << 20, cpu_util=0.25, power_w=1.2, active_power_w=2.0,
                  carbon_intensity=380.0, in_flight=1, exec_ms={"mobilenetv2": 80.5},
                  work_group="b5970930f305:torch")
    values.update(changes)
    return Heartbeat(**values)  # type: ignore[arg-type]


def test_fields_round_trip() -> None:
    beat = _beat()
    fields = beat.to_fields()
    assert all(isinstance(v, str) for v in fields.values())
    assert Heartbeat.from_fields(fields, now=NOW) == beat


def test_snapshot_uses_dispatcher_in_flight_when_given() -> None:
    snap = snapshot_of(_beat(), in_flight=4)
    assert snap.in_flight == 4 and snap.exec_ms == {"mobilenetv2": 80.5}
    assert snap.work_group == "b5970930f305:torch"
    assert snapshot_of(_beat()).in_flight == 1


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("cpu_util", "nan", "finite"),
        ("power_w", "-1", "non-negative"),
        ("carbon_intensity", "inf", "finite"),
        ("mem_used_bytes", "1.5", "integer"),
        ("in_flight", "many", "not a number"),
        ("exec_ms.mobilenetv2", "-3", "non-negative"),
        ("ts", str(NOW + 3600), "in the future"),
        ("cpu_quota", "0", "no CPU quota"),
        ("node_id", "../etc", "invalid node id"),
        ("node_id", "", "invalid node id"),
        ("work_group", "a b", "invalid work_group"),
        ("work_group", "x" * 65, "invalid work_group"),
    ],
)
def test_forged_or_broken_heartbeats_are_rejected(field: str, value: str, match: str) -> None:
    fields = _beat().to_fields()
    fields[field] = value
    with pytest.raises(InvalidMessage, match=match):
        Heartbeat.from_fields(fields, now=NOW)


def test_missing_field_named() -> None:
    fields = _beat().to_fields()
    del fields["carbon_intensity"]
    with pytest.raises(InvalidMessage, match="carbon_intensity") as e:
        Heartbeat.from_fields(fields, now=NOW)
    assert e.value.field == "carbon_intensity"


def test_the_work_group_is_the_host_and_the_runtime(tmp_path: object) -> None:
    from pathlib import Path

    from carbonedge.node_agent.config import work_group

    boot = Path(str(tmp_path)) / "boot_id"
    boot.write_text("b5970930-f305-46d3-8b5e-f24410c8c576\n")
    assert work_group("torch", boot) == "b5970930f305:torch"
    assert work_group("onnxruntime", boot) != work_group("torch", boot)
    group = work_group("torch", Path(str(tmp_path)) / "missing")  # no boot id: host name
    assert group.endswith(":torch") and Heartbeat.from_fields(
        {**_beat(work_group=group).to_fields()}, now=NOW).work_group == group
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("exec_ms.mobilenetv2", "1e308"),  # finite, and would have steered every decision
        ("exec_ms.mobilenetv2", "0"),
        ("cpu_quota", "1e9"),
        ("mem_limit_bytes", "1"),
        ("carbon_intensity", "5000"),
        ("power_w", "1e7"),
        ("pue", "0.5"),
        ("cpu_util", "1.5"),
        ("in_flight", "100000000"),
        ("ci_forecast", "1800000000.0:9999.0"),
        ("started_at", str(NOW + 3600)),
    ],
)
def test_values_outside_their_plausible_range_are_refused(field: str, value: str) -> None:
    fields = _beat().to_fields()
    fields[field] = value
    with pytest.raises(InvalidMessage, match="plausible|future") as e:
        Heartbeat.from_fields(fields, now=NOW)
    assert e.value.field == field


def test_bounds_hold_every_range_they_document() -> None:
    from carbonedge.protocol.telemetry import PLAUSIBLE

    for name, (low, high) in PLAUSIBLE.items():
        assert 0 <= low < high, name
    edge = _beat(cpu_quota=PLAUSIBLE["cpu_quota"][1], carbon_intensity=0.0,
                 exec_ms={"m": PLAUSIBLE["exec_ms"][1]})
    assert Heartbeat.from_fields(edge.to_fields(), now=NOW) == edge


def test_a_heartbeat_may_not_carry_thousands_of_models_or_binary_sources() -> None:
    fields = _beat().to_fields()
    fields.update({f"exec_ms.m{i}": "10" for i in range(100)})
    with pytest.raises(InvalidMessage, match="service times"):
        Heartbeat.from_fields(fields, now=NOW)
    fields = _beat().to_fields()
    fields["intensity_source"] = "static\x00\x1b[2J"
    with pytest.raises(InvalidMessage, match="printable"):
        Heartbeat.from_fields(fields, now=NOW)


def test_node_id_with_a_trailing_newline_is_invalid() -> None:
    fields = _beat().to_fields()
    fields["node_id"] = "node-green\n"
    with pytest.raises(InvalidMessage, match="invalid node id"):
        Heartbeat.from_fields(fields, now=NOW)


def test_started_at_round_trips() -> None:
    beat = _beat(started_at=NOW - 100)
    assert Heartbeat.from_fields(beat.to_fields(), now=NOW).started_at == NOW - 100
