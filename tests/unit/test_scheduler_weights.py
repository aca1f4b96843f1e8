"""Mode weights, custom weights and their validation; snapshot and reference validation."""

from __future__ import annotations

import math

import pytest

from carbonedge.errors import ConfigError, InvalidMessage, InvalidRequest, UnknownMode
from carbonedge.scheduler import MODES, NodeSnapshot, References, Weights, weights_for


def test_modes_are_the_papers_weights_and_sum_to_one() -> None:
    assert MODES["performance"] == Weights(0.25, 0.25, 0.30, 0.15, 0.05)
    assert MODES["green"] == Weights(0.15, 0.15, 0.10, 0.10, 0.50)
    assert MODES["balanced"] == Weights(0.20, 0.20, 0.15, 0.15, 0.30)
    for w in MODES.values():
        assert math.fsum(w.as_tuple()) == pytest.approx(1.0)


def test_modes_are_read_only() -> None:
    with pytest.raises(TypeError):
        MODES["mine"] = Weights(1, 0, 0, 0, 0)  # type: ignore[index]


@pytest.mark.parametrize("name", ["green", "GREEN", " Green ", "gReEn"])
def test_mode_names_are_case_insensitive(name: str) -> None:
    assert weights_for(name) is MODES["green"]


def test_no_mode_gives_the_default() -> None:
    assert weights_for(None) is MODES["balanced"]
    assert weights_for(None, default_mode="performance") is MODES["performance"]


def test_unknown_mode_lists_the_known_ones() -> None:
    with pytest.raises(UnknownMode) as info:
        weights_for("turbo")
    message = str(info.value)
    assert "turbo" in message
    for name in MODES:
        assert name in message
    assert info.value.field == "mode"
    assert isinstance(info.value, InvalidRequest)


def test_unknown_default_mode_is_an_error_too() -> None:
    with pytest.raises(UnknownMode):
        weights_for(None, default_mode="nope")


def test_non_string_mode_is_unknown_mode() -> None:
    with pytest.raises(UnknownMode):
        weights_for(3)  # type: ignore[arg-type]


def test_custom_weights_win_and_are_normalised() -> None:
    w = weights_for("performance", [1, 1, 1, 1, 4])
    assert w.as_tuple() == pytest.approx((0.125, 0.125, 0.125, 0.125, 0.5))
    assert math.fsum(w.as_tuple()) == pytest.approx(1.0)
    # a single non-zero weight is allowed
    assert weights_for(None, (0, 0, 0, 0, 2.5)).as_tuple() == (0.0, 0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize(
    "custom",
    [
        [],
        [0.2, 0.2, 0.2, 0.4],
        [0.2] * 6,
        [0, 0, 0, 0, 0],
        [0.5, -0.1, 0.2, 0.2, 0.2],
        [0.5, float("nan"), 0.2, 0.2, 0.2],
        [0.5, float("inf"), 0.2, 0.2, 0.2],
        [0.5, "0.1", 0.2, 0.2, 0.2],
        [0.5, True, 0.2, 0.2, 0.2],
        [0.5, None, 0.2, 0.2, 0.2],
        "abcde",
        {"r": 1},
        5,
    ],
)
def test_bad_custom_weights_raise_invalid_request_naming_weights(custom: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        weights_for("balanced", custom)  # type: ignore[arg-type]
    assert info.value.field == "weights"
    assert "weights" in str(info.value)


def test_direct_weights_are_validated_too() -> None:
    with pytest.raises(InvalidRequest):
        Weights(0, 0, 0, 0, 0)
    with pytest.raises(InvalidRequest):
        Weights(1, -1, 0, 0, 0)


def test_weights_to_wire_uses_component_names() -> None:
    assert MODES["green"].to_wire() == {"R": 0.15, "L": 0.15, "P": 0.10, "B": 0.10, "C": 0.50}


def _snap(**over: object) -> NodeSnapshot:
    fields: dict[str, object] = {
        "node_id": "n",
        "cpu_quota": 1.0,
        "mem_limit_bytes": 1 << 30,
        "mem_used_bytes": 1 << 28,
        "cpu_util": 0.1,
        "power_w": 10.0,
        "active_power_w": 30.0,
        "carbon_intensity": 400.0,
        "in_flight": 0,
        "exec_ms": {"m": 20.0},
        "heartbeat_ts": 100.0,
    }
    fields.update(over)
    return NodeSnapshot(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("node_id", ""),
        ("cpu_quota", 0.0),
        ("cpu_util", float("nan")),
        ("carbon_intensity", -1.0),
        ("active_power_w", float("inf")),
        ("in_flight", -1),
        ("heartbeat_ts", float("nan")),
        ("exec_ms", {"m": -3.0}),
        ("exec_ms", [1, 2]),
        ("pue", "1.2"),
    ],
)
def test_malformed_snapshot_raises_naming_the_field(name: str, value: object) -> None:
    with pytest.raises(InvalidMessage) as info:
        _snap(**{name: value})
    assert info.value.field == name


def test_snapshot_is_immutable() -> None:
    snap = _snap()
    with pytest.raises(AttributeError):
        snap.in_flight = 3  # type: ignore[misc]


def test_references_defaults_and_validation() -> None:
    refs = References()
    assert refs.ref_exec_ms == 100.0
    assert refs.mem_need_bytes == 64 << 20
    assert refs.minmax_floor == 0.05
    assert refs.prior_ms(0.5) == pytest.approx(200.0)
    assert refs.prior_ms(0.0) == pytest.approx(2000.0)  # quota floored at 0.05
    with pytest.raises(ConfigError):
        References(ref_carbon_g=0.0)
    with pytest.raises(ConfigError):
        References(minmax_floor=1.0)
