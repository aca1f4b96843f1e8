"""Node heartbeats: the ``ce:node:<id>`` hash an agent refreshes every interval.

Values are plain strings so that ``redis-cli HGETALL`` is readable. Decoding validates
every field (finite, within :data:`PLAUSIBLE`, not from the future); the dispatcher turns
a valid one into the scheduler's view. The bounds are wide enough for
any real edge node and narrow enough that a forged or broken value cannot win every
decision by itself (an ``exec_ms`` of 1e308, a quota of 1e9 cores).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from carbonedge.errors import InvalidMessage

EXEC_PREFIX = "exec_ms."
FORECAST_FIELD = "ci_forecast"
FORECAST_PREFIX = FORECAST_FIELD + "."
ORACLE_FORECAST = "oracle"
"""The forecaster whose steps ``ci_forecast`` carries (the provider's own); the steps of
every other forecaster travel as ``ci_forecast.<name>``."""
FORECASTER_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_FORECAST_POINTS = 64
CLOCK_SKEW_S = 5.0
NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
WORK_GROUP_RE = re.compile(r"^[A-Za-z0-9_.:-]{0,64}$")

PLAUSIBLE: dict[str, tuple[float, float]] = {
    "cpu_quota": (0.01, 1024.0),  # cores granted to the node
    "mem_limit_bytes": (1 << 20, 16 << 40),  # 1 MiB to 16 TiB
    "mem_used_bytes": (0, 16 << 40),
    "cpu_util": (0.0, 1.0),  # shares of the quota (the agent clamps them)
    "background_util": (0.0, 1.0),
    "power_w": (0.0, 20_000.0),  # watts: a rack of GPUs, not a power station
    "active_power_w": (0.0, 20_000.0),
    "carbon_intensity": (0.0, 2_000.0),  # gCO2eq/kWh: the dirtiest grids stay near 1,200
    "pue": (1.0, 5.0),
    "in_flight": (0, 1_000_000),
    "tasks_done": (0, 1 << 60),
    "cpu_usage_s": (0.0, 1e12),
    "started_at": (0.0, 1e11),
    "exec_ms": (0.001, 600_000.0),  # a model's service time: 1 us to 10 minutes
}
"""Documented plausible range ``(low, high)`` of each heartbeat value (inclusive); a value
outside it makes the heartbeat invalid (the node is not scheduled until a good one)."""
MAX_MODELS = 64
"""Service times a heartbeat may carry (one per model the node has run)."""
MAX_TEXT = 200
"""Longest source description (``intensity_source``, ``cpu_source``) and model name."""

_FLOATS = ("ts", "cpu_quota", "cpu_util", "background_util", "power_w", "active_power_w",
           "carbon_intensity", "pue")
_INTS = ("mem_limit_bytes", "mem_used_bytes", "in_flight", "tasks_done")
_OPTIONAL_FLOATS = ("cpu_usage_s", "started_at")


def valid_node_id(node_id: str) -> bool:
    return isinstance(node_id, str) and NODE_ID_RE.fullmatch(node_id) is not None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One node's telemetry at one instant."""

    node_id: str
    ts: float
    cpu_quota: float
    mem_limit_bytes: int
    mem_used_bytes: int
    cpu_util: float
    """Share of the quota used over the last interval, tasks included."""
    power_w: float
    active_power_w: float
    carbon_intensity: float
    pue: float = 1.0
    background_util: float = 0.0
    """Share of the quota used by anything but CarbonEdge tasks (what a new task competes with)."""
    in_flight: int = 0
    tasks_done: int = 0
    intensity_source: str = "static"
    cpu_source: str = "process"
    exec_ms: Mapping[str, float] = field(default_factory=dict)
    cpu_usage_s: float = 0.0
    """The node's cumulative CPU-seconds (its cgroup's counter): the carbon service's input."""
    started_at: float = 0.0
    """When the agent started (unix seconds): beats of one agent life share it."""
    ci_forecast: tuple[tuple[float, float], ...] = ()
    """``(from unix time, gCO2/kWh)`` steps of the node's intensity ahead, where its
    provider can tell (traces, static values): what deferral plans with by default."""
    work_group: str = ""
    """Nodes on the same hardware with the same runtime (the host's boot id and the
    runtime): one CPU cost per inference of a model, whatever each measured."""
    forecasts: Mapping[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    """Steps by other forecasters (``persistence``, ``yesterday``), keyed by name."""

    def forecast_by(self, name: str) -> tuple[tuple[float, float], ...] | None:
        """The steps of forecaster ``name``; None when this node does not publish them."""
        return self.ci_forecast if name == ORACLE_FORECAST else self.forecasts.get(name)

    def to_fields(self) -> dict[str, str]:
        out = {name: repr(float(getattr(self, name))) for name in _FLOATS + _OPTIONAL_FLOATS}
        out.update({name: str(int(getattr(self, name))) for name in _INTS})
        out["node_id"] = self.node_id
        out["intensity_source"] = self.intensity_source
        out["cpu_source"] = self.cpu_source
        out["work_group"] = self.work_group
        out.update({EXEC_PREFIX + m: repr(float(v)) for m, v in self.exec_ms.items()})
        if self.ci_forecast:
            out[FORECAST_FIELD] = _steps(self.ci_forecast)
        out.update({FORECAST_PREFIX + name: _steps(steps)
                    for name, steps in self.forecasts.items() if steps})
        return out

    @classmethod
    def from_fields(cls, fields: Mapping[str, str], *, now: float) -> Heartbeat:
        """Parse and validate a heartbeat hash; raise InvalidMessage naming the bad field."""
        node_id = fields.get("node_id", "")
        if not valid_node_id(node_id):
            raise InvalidMessage(f"heartbeat has an invalid node id {node_id!r}", field="node_id")
        values: dict[str, float | int] = {}
        for name in _FLOATS:
            values[name] = _number(fields, name, float)
        for name in _INTS:
            values[name] = int(_number(fields, name, int))
        for name in _OPTIONAL_FLOATS:
            if name in fields:
                values[name] = _number(fields, name, float)
        for name in ("ts", "started_at"):
            if values.get(name, 0.0) > now + CLOCK_SKEW_S:
                raise InvalidMessage(f"heartbeat of {node_id}: {name} is "
                                     f"{values[name] - now:.1f} s in the future", field=name)
        if values["cpu_quota"] <= 0 or values["mem_limit_bytes"] <= 0:
            raise InvalidMessage(f"heartbeat of {node_id} has no CPU quota or memory limit",
                                 field="cpu_quota")
        work_group = fields.get("work_group", "")
        if not WORK_GROUP_RE.match(work_group):
            raise InvalidMessage(f"heartbeat of {node_id} has an invalid work_group "
                                 f"{work_group[:80]!r}", field="work_group")
        for name, value in values.items():
            if name in PLAUSIBLE:
                _plausible(name, name, value)
        exec_ms = {}
        for key, raw in fields.items():
            if key.startswith(EXEC_PREFIX):
                model = key[len(EXEC_PREFIX):]
                if not model or len(model) > MAX_TEXT or not model.isprintable():
                    raise InvalidMessage(f"heartbeat field {_short(key)!r} names no model",
                                         field="exec_ms")
                exec_ms[model] = _plausible(key, "exec_ms", _parse(key, raw, float))
        if len(exec_ms) > MAX_MODELS:
            raise InvalidMessage(f"heartbeat has {len(exec_ms)} service times, over "
                                 f"{MAX_MODELS}", field="exec_ms")
        texts = {name: fields.get(name, "unknown") for name in ("intensity_source",
                                                                  "cpu_source")}
        for name, value in texts.items():
            if len(value) > MAX_TEXT or not value.isprintable():
                raise InvalidMessage(f"heartbeat field {name!r} is not a short printable "
                                     "text", field=name)
        forecasts = {}
        for key, raw in fields.items():
            if key.startswith(FORECAST_PREFIX):
                name = key[len(FORECAST_PREFIX):]
                if not FORECASTER_RE.match(name):
                    raise InvalidMessage(f"heartbeat forecast {_short(key)!r} has an invalid "
                                         "name", field=key)
                forecasts[name] = _forecast(raw, key)
        return cls(
            node_id=node_id,
            ci_forecast=_forecast(fields.get(FORECAST_FIELD, "")),
            forecasts=forecasts,
            exec_ms=exec_ms,
            work_group=work_group,
            **texts,
            **values,  # type: ignore[arg-type]
        )


def _steps(steps: tuple[tuple[float, float], ...]) -> str:
    return ";".join(f"{t!r}:{v!r}" for t, v in steps)


def _forecast(raw: str, name: str = FORECAST_FIELD) -> tuple[tuple[float, float], ...]:
    """Parse ``t:v;t:v``: ascending times, finite non-negative values."""
    if not raw:
        return ()
    steps = raw.split(";")
    if len(steps) > MAX_FORECAST_POINTS:
        raise InvalidMessage(f"heartbeat forecast has {len(steps)} points, over "
                             f"{MAX_FORECAST_POINTS}", field=name)
    out: list[tuple[float, float]] = []
    for step in steps:
        t_raw, _, v_raw = step.partition(":")
        t = _parse(name, t_raw, float)
        v = _plausible(name, "carbon_intensity", _parse(name, v_raw, float))
        if out and t <= out[-1][0]:
            raise InvalidMessage("heartbeat forecast times must ascend", field=name)
        out.append((t, v))
    return tuple(out)


def _plausible(field: str, bound: str, value: float) -> float:
    low, high = PLAUSIBLE[bound]
    if not low <= value <= high:
        raise InvalidMessage(f"heartbeat field {_short(field)!r}={value!r} is outside its "
                             f"plausible range [{low:g}, {high:g}]", field=field)
    return value


def _short(name: str) -> str:
    return name if len(name) <= 60 else name[:57] + "..."


def _number(fields: Mapping[str, str], name: str, kind: type) -> float:
    if name not in fields:
        raise InvalidMessage(f"heartbeat is missing field {name!r}", field=name)
    return _parse(name, fields[name], kind)


def _parse(name: str, raw: str, kind: type) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError) as e:
        raise InvalidMessage(f"heartbeat field {_short(name)!r}={_short(str(raw))!r} is not a "
                             "number", field=name) from e
    if not math.isfinite(value) or value < 0:
        raise InvalidMessage(f"heartbeat field {_short(name)!r}={_short(raw)!r} must be finite "
                             "and non-negative", field=name)
    if kind is int and value != int(value):
        raise InvalidMessage(f"heartbeat field {_short(name)!r}={_short(raw)!r} must be an "
                             "integer", field=name)
    return value
