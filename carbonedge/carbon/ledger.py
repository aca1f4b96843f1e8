"""The energy ledger: one row per finished task, and per stretch of a node's idle time.

Agents append a row for every task they run (errors included, if they used CPU), one
``startup`` row for what loading their models cost, and an ``idle`` row every few seconds
for the CPU they burnt and the RAM they held between tasks: nothing a node does lands on
another task's bill. Each row carries its ``device`` charge (see
:mod:`carbonedge.carbon.device`); the carbon service consumes the stream through a
consumer group, settles each row's ``measured`` charge from the host tracker's samples
that cover it, and writes both. Values are plain strings so that ``redis-cli XRANGE``
stays readable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields

from carbonedge.errors import InvalidMessage

__all__ = ["LEDGER_MAXLEN", "ROW_TYPES", "LedgerRow"]

LEDGER_MAXLEN = 200_000
"""Rows kept when no carbon service reads them (approximate trim): bounded memory."""
ROW_TYPES = ("task", "idle", "startup")

_FLOATS = ("ts", "started_at", "wall_s", "cpu_s", "cpu_model_s", "cpu_overhead_s", "busy_s",
           "cpu_quota", "mem_limit_bytes", "cpu_kwh", "ram_kwh", "energy_kwh", "carbon_g",
           "intensity_g_per_kwh", "pue")


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One task's (or idle stretch's) CPU time and its ``device`` charge."""

    task_id: str
    node: str
    kind: str
    model: str
    mode: str
    status: str
    ts: float
    """When the task (or stretch) ended (unix seconds)."""
    wall_s: float
    cpu_s: float
    """All CPU-seconds charged: ``cpu_model_s + cpu_overhead_s``."""
    cpu_kwh: float
    ram_kwh: float
    energy_kwh: float
    carbon_g: float
    intensity_g_per_kwh: float
    intensity_source: str
    pue: float
    power_source: str
    """Where the device's power per core came from."""
    row_type: str = "task"
    started_at: float = 0.0
    cpu_model_s: float = 0.0
    """CPU-seconds of the model run itself."""
    cpu_overhead_s: float = 0.0
    """CPU-seconds around it: message hand-off, input fetch, decode, preprocessing."""
    busy_s: float = 0.0
    """How long the emulated device was busy: ``cpu_s / cpu_quota``."""
    cpu_quota: float = 0.0
    mem_limit_bytes: float = 0.0
    method: str = "device"
    """The accounting method of the charge in this row."""
    tenant: str = ""
    """Whose carbon budget the task counts against ("" for none)."""

    def __post_init__(self) -> None:
        if self.row_type not in ROW_TYPES:
            raise InvalidMessage(f"ledger row_type {self.row_type!r} is not one of "
                                 f"{', '.join(ROW_TYPES)}", field="row_type")

    @property
    def start(self) -> float:
        """When the row's stretch began (older rows without it: end minus wall time)."""
        return self.started_at if self.started_at > 0 else self.ts - self.wall_s

    def to_fields(self) -> dict[str, str]:
        return {k: repr(v) if isinstance(v, float) else str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_fields(cls, raw: Mapping[bytes | str, bytes | str]) -> LedgerRow:
        """Decode a stream entry; InvalidMessage names the first bad field."""
        try:
            f = {_text(k): _text(v) for k, v in raw.items()}
        except UnicodeDecodeError as e:
            raise InvalidMessage(f"ledger row is not UTF-8: {e}") from e
        values: dict[str, object] = {}
        for spec in fields(cls):
            if spec.name not in f and spec.default is not MISSING:
                continue
            if spec.name not in f:
                raise InvalidMessage(f"ledger row lacks {spec.name}", field=spec.name)
            if spec.name in _FLOATS:
                try:
                    number = float(f[spec.name])
                except ValueError:
                    number = math.nan
                if not math.isfinite(number) or number < 0:
                    raise InvalidMessage(
                        f"ledger row {spec.name}={f[spec.name]!r} is not a number >= 0",
                        field=spec.name)
                values[spec.name] = number
            else:
                values[spec.name] = f[spec.name]
        return cls(**values)  # type: ignore[arg-type]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
