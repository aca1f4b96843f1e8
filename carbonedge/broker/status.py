"""A snapshot of every node for people: telemetry, queues, decisions and carbon so far."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import redis

from carbonedge.errors import CarbonEdgeError
from carbonedge.protocol import keys
from carbonedge.protocol.telemetry import Heartbeat

MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node as `carbonedge status` shows it (telemetry fields are None when dead)."""

    node_id: str
    alive: bool
    queue_len: int
    in_flight: int
    decision_share: float
    carbon_g: float
    heartbeat: Heartbeat | None


def collect_status(client: redis.Redis, *, now: float | None = None) -> list[NodeStatus]:
    """Read every known node's heartbeat, queue length, decisions and carbon in one round trip."""
    now = time.time() if now is None else now
    node_ids = sorted(m.decode() for m in client.smembers(keys.NODES))
    pipe = client.pipeline(transaction=False)
    for node_id in node_ids:
        pipe.hgetall(keys.node_key(node_id))
        pipe.llen(keys.node_queue(node_id))
    pipe.hgetall(keys.IN_FLIGHT)
    pipe.hgetall(keys.DECISIONS)
    pipe.hgetall(keys.CARBON_TOTALS)
    *per_node, in_flight, decisions, carbon = pipe.execute()
    per_decision: dict[str, int] = defaultdict(int)
    for field, count in decisions.items():
        per_decision[field.decode().split("|", 1)[0]] += int(count)
    total = sum(per_decision.values()) or 1
    rows = []
    for i, node_id in enumerate(node_ids):
        raw, queue_len = per_node[2 * i], per_node[2 * i + 1]
        beat = None
        if raw:
            try:
                beat = Heartbeat.from_fields({k.decode(): v.decode() for k, v in raw.items()},
                                             now=now)
            except CarbonEdgeError:
                beat = None  # shown as not alive; the dispatcher logs why
        rows.append(NodeStatus(
            node_id=node_id,
            alive=beat is not None,
            queue_len=int(queue_len),
            in_flight=int(in_flight.get(node_id.encode(), 0)),
            decision_share=per_decision[node_id] / total,
            carbon_g=float(carbon.get(node_id.encode(), 0.0)),
            heartbeat=beat,
        ))
    return rows


def format_status(rows: list[NodeStatus]) -> str:
    """A fixed-width table, one line per node."""
    head = (f"{'node':<14} {'alive':<5} {'cpu':>5} {'load':>5} {'mem MiB':>11} {'g/kWh':>6} "
            f"{'power W':>7} {'queue':>5} {'in-fl':>5} {'service ms':>22} {'decided':>7} "
            f"{'gCO2':>9}")
    lines = [head, "-" * len(head)]
    for row in rows:
        b = row.heartbeat
        if b is None:
            telemetry = f"{'no':<5} {'-':>5} {'-':>5} {'-':>11} {'-':>6} {'-':>7}"
            service = "-"
        else:
            mem = f"{b.mem_used_bytes / MIB:.0f}/{b.mem_limit_bytes / MIB:.0f}"
            telemetry = (f"{'yes':<5} {b.cpu_quota:5.2f} {100 * b.cpu_util:4.0f}% {mem:>11} "
                         f"{b.carbon_intensity:6.0f} {b.power_w:7.2f}")
            service = ", ".join(f"{m} {ms:.0f}" for m, ms in sorted(b.exec_ms.items())) or "-"
        lines.append(f"{row.node_id:<14} {telemetry} {row.queue_len:5d} {row.in_flight:5d} "
                     f"{service:>22} {100 * row.decision_share:6.1f}% {row.carbon_g:9.3g}")
    if not rows:
        lines.append("(no node has ever sent a heartbeat to this Redis)")
    return "\n".join(lines)
