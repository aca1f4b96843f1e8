"""A snapshot of the cluster for people: nodes, dispatchers, supervised processes, carbon.

Everything is read from Redis and vetted like any other untrusted value: a member of
``ce:nodes`` that is no node id, a heartbeat that is not UTF-8 or not plausible, a count
that is not a number, a key of the wrong type are shown as absent (and counted under
``ignored``), never a traceback.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import redis

from carbonedge.errors import CarbonEdgeError
from carbonedge.protocol import keys
from carbonedge.protocol.telemetry import CLOCK_SKEW_S, Heartbeat, valid_node_id
from carbonedge.protocol.untrusted import (
    decode_fields,
    parse_amount,
    parse_count,
    printable,
    text,
)

MIB = 1 << 20
CARBON_STALE_S = 5.0
"""The carbon service publishes host power every second; this much older, it is not."""
DISPATCHER_STALE_S = 5.0
"""A dispatcher that has not beaten for this long (or 3 heartbeat TTLs) counts as dead."""


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
    quarantine: str | None = None
    """Why dispatchers keep it out of scheduling, while they do."""


@dataclass(frozen=True, slots=True)
class ProcessStatus:
    """One process `carbonedge up` supervises, as its supervisor last reported it."""

    name: str
    alive: bool
    pid: int | None
    restarts: int
    up_s: float | None
    last_exit: str


@dataclass(slots=True)
class ClusterStatus:
    """Everything `carbonedge status` prints."""

    nodes: list[NodeStatus]
    dispatchers: dict[str, float]
    """Dispatcher name -> seconds since its last beat (every one that ever beat)."""
    stale_after_s: float
    waiting: int
    """Requests in the stream not yet read by a dispatcher."""
    processes: list[ProcessStatus] = field(default_factory=list)
    supervisor_age_s: float | None = None
    """Seconds since the supervisor's last report (None: no supervisor has reported)."""
    carbon_age_s: float | None = None
    """Seconds since the carbon service last published host power (None: not running)."""
    rejected: dict[str, int] = field(default_factory=dict)
    ignored: int = 0
    """Values this read could not use."""

    @property
    def live_dispatchers(self) -> list[str]:
        return sorted(n for n, age in self.dispatchers.items() if age < self.stale_after_s)


def _decisions_per_node(raw: Any) -> dict[str, int]:
    per_node: dict[str, int] = defaultdict(int)
    if isinstance(raw, dict):
        for name, count in raw.items():
            label, n = text(name), parse_count(count)
            if label is not None and n is not None and n > 0:
                per_node[label.split("|", 1)[0]] += n
    return per_node


def _reply(raw: Any, kind: type) -> Any:
    """A pipeline reply of the expected Python type, else an empty one."""
    return raw if isinstance(raw, kind) else kind()


def collect_status(client: redis.Redis, *, now: float | None = None) -> list[NodeStatus]:
    """Read every known node's heartbeat, queue length, decisions and carbon in one round trip."""
    rows, _ = _collect_nodes(client, time.time() if now is None else now)
    return rows


def _collect_nodes(client: redis.Redis, now: float) -> tuple[list[NodeStatus], int]:
    ignored = 0
    try:
        members = client.smembers(keys.NODES)
    except redis.ResponseError:
        members, ignored = set(), 1
    node_ids = sorted(n for n in map(text, members) if n is not None and valid_node_id(n))
    ignored += len(members) - len(node_ids)
    pipe = client.pipeline(transaction=False)
    for node_id in node_ids:
        pipe.hgetall(keys.node_key(node_id))
        pipe.llen(keys.node_queue(node_id))
    pipe.hgetall(keys.IN_FLIGHT)
    pipe.hgetall(keys.DECISIONS)
    pipe.hgetall(keys.CARBON_TOTALS)
    pipe.hgetall(keys.QUARANTINE)
    *per_node, in_flight, decisions, carbon, quarantine = pipe.execute(raise_on_error=False)
    per_decision = _decisions_per_node(decisions)
    total = sum(per_decision.values()) or 1
    in_flight, carbon = _reply(in_flight, dict), _reply(carbon, dict)
    held = _quarantined(_reply(quarantine, dict), now)
    rows = []
    for i, node_id in enumerate(node_ids):
        raw, queue_len = per_node[2 * i], per_node[2 * i + 1]
        beat = None
        if isinstance(raw, dict) and raw:
            fields = decode_fields(raw)
            try:
                beat = Heartbeat.from_fields(fields, now=now) if fields is not None else None
            except CarbonEdgeError:
                beat = None  # shown as not alive; the dispatcher logs why
            ignored += int(beat is None)
        rows.append(NodeStatus(
            node_id=node_id,
            alive=beat is not None,
            queue_len=queue_len if isinstance(queue_len, int) else 0,
            in_flight=parse_count(in_flight.get(node_id.encode(), 0)) or 0,
            decision_share=per_decision[node_id] / total,
            carbon_g=parse_amount(carbon.get(node_id.encode(), 0.0)) or 0.0,
            heartbeat=beat,
            quarantine=held.get(node_id),
        ))
    return rows, ignored


def _quarantined(raw: dict[Any, Any], now: float) -> dict[str, str]:
    """Node -> why it is quarantined, for entries whose hold has not ended."""
    out = {}
    for node, value in raw.items():
        name, entry = text(node), _json(value)
        until = parse_amount(entry.get("until"))
        if name is not None and until is not None and until > now:
            out[name] = f"{printable(entry.get('reason'), 120)} (until {_clock(until)})"
    return out


def collect_cluster(client: redis.Redis, *, now: float | None = None,
                    heartbeat_ttl_s: float = 3.0) -> ClusterStatus:
    """Nodes, dispatchers, supervised processes and the carbon service, for `status`."""
    now = time.time() if now is None else now
    nodes, ignored = _collect_nodes(client, now)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.DISPATCHER_ALIVE)
    pipe.xlen(keys.REQUEST_STREAM)
    pipe.hgetall(keys.PROCESSES)
    pipe.get(keys.PROCESSES_BEAT)
    pipe.hget(keys.HOST_POWER, "ts")
    pipe.hgetall(keys.REJECTED)
    beats, waiting, procs, sup_beat, host_ts, rejected = pipe.execute(raise_on_error=False)
    dispatchers = {}
    for name, beat in _reply(beats, dict).items():
        label, ts = text(name), parse_amount(beat)
        if label is None or ts is None or ts > now + CLOCK_SKEW_S:
            ignored += 1
            continue
        dispatchers[printable(label, 60)] = max(now - ts, 0.0)
    processes = []
    for name, value in sorted(_reply(procs, dict).items()):
        entry, label = _json(value), text(name)
        if label is None or not entry:
            ignored += 1
            continue
        alive = entry.get("alive") is True
        started = parse_amount(entry.get("started_at"))
        processes.append(ProcessStatus(
            name=printable(label, 40), alive=alive, pid=parse_count(entry.get("pid")),
            restarts=parse_count(entry.get("restarts")) or 0,
            up_s=max(now - started, 0.0) if alive and started is not None else None,
            last_exit=printable(entry.get("last_exit") or "", 60)))
    sup_ts, carbon_ts = parse_amount(sup_beat), parse_amount(host_ts)
    return ClusterStatus(
        nodes=nodes, dispatchers=dispatchers,
        stale_after_s=max(3 * heartbeat_ttl_s, DISPATCHER_STALE_S),
        waiting=waiting if isinstance(waiting, int) else 0,
        processes=processes,
        supervisor_age_s=max(now - sup_ts, 0.0) if sup_ts is not None else None,
        carbon_age_s=max(now - carbon_ts, 0.0) if carbon_ts is not None else None,
        rejected={printable(n, 80): c for k, v in _reply(rejected, dict).items()
                  if (n := text(k)) is not None and (c := parse_count(v)) is not None},
        ignored=ignored)


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
            alive = "held" if row.quarantine else "yes"
            telemetry = (f"{alive:<5} {b.cpu_quota:5.2f} {100 * b.cpu_util:4.0f}% {mem:>11} "
                         f"{b.carbon_intensity:6.0f} {b.power_w:7.2f}")
            service = ", ".join(f"{m} {ms:.0f}" for m, ms in sorted(b.exec_ms.items())) or "-"
        lines.append(f"{row.node_id:<14} {telemetry} {row.queue_len:5d} {row.in_flight:5d} "
                     f"{service:>22} {100 * row.decision_share:6.1f}% {row.carbon_g:9.3g}")
    if not rows:
        lines.append("(no node has ever sent a heartbeat to this Redis)")
    for row in rows:
        if row.quarantine:
            lines.append(f"quarantined: {row.node_id}: {row.quarantine}")
    return "\n".join(lines)


def format_cluster(status: ClusterStatus) -> str:
    """The node table, then dispatchers, supervised processes and the carbon service."""
    lines = [format_status(status.nodes), ""]
    live = status.live_dispatchers
    if live:
        ages = ", ".join(f"{n} {status.dispatchers[n]:.1f} s ago" for n in live)
        lines.append(f"dispatcher: {len(live)} alive ({ages}); {status.waiting} request(s) "
                     "waiting")
    elif status.dispatchers:
        latest = min(status.dispatchers.values())
        lines.append(f"dispatcher: DEAD: none has beaten for {latest:.0f} s; {status.waiting} "
                     "request(s) wait unrouted (start `carbonedge dispatcher` or `up`)")
    else:
        lines.append(f"dispatcher: NONE RUNNING on this Redis; {status.waiting} request(s) "
                     "wait unrouted")
    if status.carbon_age_s is None or status.carbon_age_s > CARBON_STALE_S:
        since = "" if status.carbon_age_s is None else \
            f", last host power {status.carbon_age_s:.0f} s ago"
        lines.append(f"carbon service: NOT RUNNING{since} (agents charge a linear power "
                     "estimate)")
    else:
        lines.append(f"carbon service: host power published {status.carbon_age_s:.1f} s ago")
    if status.processes:
        supervisor = (f"supervisor reported {status.supervisor_age_s:.1f} s ago"
                      if status.supervisor_age_s is not None else
                      "SUPERVISOR NOT RUNNING: what follows is its last report")
        lines += ["", f"processes of `carbonedge up` ({supervisor}):",
                  f"  {'name':<16} {'state':<8} {'pid':>7} {'restarts':>8} {'up':>8}  last exit"]
        for p in status.processes:
            up = _duration(p.up_s) if p.up_s is not None else "-"
            lines.append(f"  {p.name:<16} {'running' if p.alive else 'DOWN':<8} "
                         f"{p.pid if p.pid else '-':>7} {p.restarts:>8} {up:>8}  "
                         f"{p.last_exit or '-'}")
    if status.rejected or status.ignored:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(status.rejected.items()))
        lines += ["", f"malformed values ignored: {counts or 'none reported'}"
                  + (f"; {status.ignored} in this read" if status.ignored else "")]
    return "\n".join(lines)


def _json(raw: Any) -> dict[str, Any]:
    value = text(raw)
    try:
        entry = json.loads(value) if value is not None else None
    except ValueError:
        return {}
    return entry if isinstance(entry, dict) else {}


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def _duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
