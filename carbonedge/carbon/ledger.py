"""The per-task energy ledger: one row per finished task, in the ``ce:ledger`` stream.

Agents append a row for every task they run (errors included, if they used CPU); the
carbon service consumes them through a consumer group, so each row is counted once even
across restarts. Values are plain strings so that ``redis-cli XRANGE`` stays readable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields

from carbonedge.errors import InvalidMessage

__all__ = ["LEDGER_MAXLEN", "LedgerRow"]

LEDGER_MAXLEN = 200_000
"""Rows kept when no carbon service reads them (approximate trim): bounded memory."""

_FLOATS = ("ts", "wall_s", "cpu_s", "cpu_kwh", "ram_kwh", "energy_kwh", "carbon_g",
           "intensity_g_per_kwh", "pue")


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One task's measured CPU time and the energy and carbon charged to it."""

    task_id: str
    node: str
    kind: str
    model: str
    mode: str
    status: str
    ts: float
    """When the task finished (unix seconds)."""
    wall_s: float
    cpu_s: float
    cpu_kwh: float
    ram_kwh: float
    energy_kwh: float
    carbon_g: float
    intensity_g_per_kwh: float
    intensity_source: str
    pue: float
    power_source: str
    apportioning: str
    tenant: str = ""
    """Whose carbon budget the task counts against ("" for none)."""

    def to_fields(self) -> dict[str, str]:
        return {k: repr(v) if isinstance(v, float) else str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_fields(cls, raw: Mapping[bytes | str, bytes | str]) -> LedgerRow:
        """Decode a stream entry; InvalidMessage names the first bad field."""
        f = {_text(k): _text(v) for k, v in raw.items()}
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
