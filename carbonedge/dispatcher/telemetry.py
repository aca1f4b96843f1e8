"""The dispatcher's read of node telemetry: registry, heartbeats and in-flight counts.

Everything here comes from Redis and is untrusted (see
:mod:`carbonedge.protocol.untrusted`): a ``ce:nodes`` member that is no node id is
removed from the registry, a heartbeat that is not UTF-8, not valid or not plausible is
ignored until a good one arrives, an in-flight count that is not an integer is reset to
the node's assigned-registry size, a key of the wrong type is moved aside. Each of these
is logged once per cause and counted. A node whose heartbeat is overwritten with garbage
keeps its last valid one until that expires (the agent replaces the hash every beat).
Valid heartbeats then pass the :class:`~carbonedge.dispatcher.quarantine.Quarantine`'s jump
rules.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis

from carbonedge.dispatcher.quarantine import Quarantine, Quarantined
from carbonedge.errors import CarbonEdgeError, InvalidMessage, UnknownNode
from carbonedge.protocol import keys
from carbonedge.protocol.telemetry import Heartbeat, valid_node_id
from carbonedge.protocol.untrusted import (
    Rejections,
    decode_fields,
    move_aside,
    parse_count,
    text,
)
from carbonedge.scheduler import NodeSnapshot
from carbonedge.transport.allowlist import node_allowed
from carbonedge.transport.repair import reset_in_flight

log = logging.getLogger(__name__)

MAX_SEEN = 10_000
"""Node ids remembered from valid heartbeats (read even when the registry lacks them)."""


@dataclass(slots=True)
class NodeTelemetry:
    """One read of every node: who is known, who beats validly, and their counts."""

    known: list[str] = field(default_factory=list)
    """Every valid node id in the registry (dead ones included)."""
    beats: dict[str, Heartbeat] = field(default_factory=dict)
    """Valid, plausible heartbeats of nodes that are not quarantined."""
    quarantined: dict[str, Quarantined] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)

    def snapshots(self) -> list[NodeSnapshot]:
        """The scheduler's view of every node that beats validly, with the in-flight
        counts this read found (a node absent from them has nothing in flight)."""
        return [snapshot_of(beat, self.in_flight.get(node_id, 0))
                for node_id, beat in self.beats.items()]


def snapshot_of(beat: Heartbeat, in_flight: int | None = None) -> NodeSnapshot:
    """The scheduler's view of one heartbeat; ``in_flight`` is the dispatcher's count
    when known (else the agent's own)."""
    return NodeSnapshot(
        node_id=beat.node_id,
        cpu_quota=beat.cpu_quota,
        mem_limit_bytes=beat.mem_limit_bytes,
        mem_used_bytes=beat.mem_used_bytes,
        # the node's own tasks are counted by in_flight (S_L, S_B); S_R asks what else
        # competes for the CPU, or a node that just served looks busy when it is idle
        cpu_util=min(beat.background_util, 1.0),
        power_w=beat.power_w,
        active_power_w=beat.active_power_w,
        carbon_intensity=beat.carbon_intensity,
        in_flight=beat.in_flight if in_flight is None else max(in_flight, 0),
        exec_ms=beat.exec_ms,
        heartbeat_ts=beat.ts,
        pue=beat.pue,
        work_group=beat.work_group,
    )


class TelemetryReader:
    """Reads and vets the telemetry of every node (one per dispatcher)."""

    def __init__(self, rejections: Rejections, *, allowlist: str = "",
                 quarantine: Quarantine | None = None) -> None:
        self.rejections = rejections
        self.allowlist = allowlist
        self.quarantine = quarantine or Quarantine()
        self._published: dict[str, Quarantined] = {}
        self._all_held = False
        self._seen: set[str] = set()
        self._last: dict[str, Heartbeat] = {}

    async def read(self, r: aioredis.Redis, now: float) -> NodeTelemetry:
        """Registry, heartbeats and in-flight counts in two round trips."""
        # nodes that beat validly before stay known if the registry loses them (moved
        # aside, deleted): their agents add them again on their next beat
        out = NodeTelemetry(known=sorted(set(await self.registry(r)) | self._seen))
        pipe = r.pipeline(transaction=False)
        for node_id in out.known:
            pipe.hgetall(keys.node_key(node_id))
        pipe.hgetall(keys.IN_FLIGHT)
        *beats, in_flight = await pipe.execute(raise_on_error=False)
        out.in_flight = await self.counts(r, in_flight)
        valid: dict[str, Heartbeat] = {}
        for node_id, raw in zip(out.known, beats, strict=True):
            if not raw:  # no heartbeat: dead, or withdrawn by its agent
                self._last.pop(node_id, None)
                self.quarantine.forget(node_id)
                continue
            beat = self._heartbeat(node_id, raw, now)
            if beat is None:
                # a heartbeat overwritten with garbage does not take the node out: its last
                # valid one stands until it is older than the heartbeat TTL
                beat = self._last.get(node_id)
                if beat is None:
                    continue
            self._last[node_id] = beat
            valid[node_id] = beat
            if len(self._seen) < MAX_SEEN:
                self._seen.add(node_id)
            held = self.quarantine.observe(beat, now)
            if held is not None:
                out.quarantined[node_id] = held
            else:
                out.beats[node_id] = beat
        if out.quarantined and not out.beats:
            if not self._all_held:
                log.error("every live node is quarantined: scheduling them anyway")
            self._all_held = True
            out.beats = valid
        else:
            self._all_held = False
        await self._publish_quarantine(r, out.quarantined)
        return out

    async def registry(self, r: aioredis.Redis) -> list[str]:
        """The valid node ids of ``ce:nodes``; members that are none are removed."""
        try:
            raw = await r.smembers(keys.NODES)
        except redis.ResponseError as e:
            await self._wrong_type(r, keys.NODES, "set", e)
            return []
        ids, bad = [], []
        for member in raw:
            name = text(member)
            if name is None or not valid_node_id(name):
                bad.append(member)
                continue
            ids.append(name)
        if bad:
            try:
                await r.srem(keys.NODES, *bad)
            except redis.ResponseError as e:  # replaced meanwhile by a key of another type
                await self._wrong_type(r, keys.NODES, "set", e)
            for member in bad:
                self.rejections.reject("node-registry", member, "not a node id: removed from "
                                       f"{keys.NODES}")
        return sorted(ids)

    async def counts(self, r: aioredis.Redis, raw: Any) -> dict[str, int]:
        """In-flight counts (``HGETALL ce:inflight``); bad ones are repaired."""
        if isinstance(raw, Exception):
            await self._wrong_type(r, keys.IN_FLIGHT, "hash", raw)
            return {}
        counts: dict[str, int] = {}
        for raw_id, raw_count in raw.items():
            node_id = text(raw_id)
            if node_id is None or not valid_node_id(node_id):
                continue  # nobody reads it; the writers are dispatchers and agents
            count = parse_count(raw_count)
            if count is None:
                await reset_in_flight(r, node_id, raw_count, self.rejections)
                count = 0
            counts[node_id] = count
        return counts

    def _heartbeat(self, node_id: str, raw: Any, now: float) -> Heartbeat | None:
        """The node's valid heartbeat, or None (absent, or rejected with the reason)."""
        if isinstance(raw, Exception):
            # the agent replaces its hash whole on its next beat, whatever is there now
            self.rejections.reject("heartbeat", node_id, f"unreadable: {raw}")
            return None
        fields = decode_fields(raw)
        try:
            if fields is None:
                raise InvalidMessage("heartbeat is not UTF-8 text")
            beat = Heartbeat.from_fields(fields, now=now)
            if beat.node_id != node_id:
                raise InvalidMessage(f"heartbeat under {node_id} names {beat.node_id}")
            if not node_allowed(node_id, self.allowlist):
                raise UnknownNode(f"node {node_id} is not in node_allowlist", field="node")
        except CarbonEdgeError as e:
            self.rejections.reject("heartbeat", node_id, e.message)
            return None
        self.rejections.accept("heartbeat", node_id)
        return beat

    async def _wrong_type(self, r: aioredis.Redis, key: str, expected: str,
                          error: BaseException) -> None:
        if "WRONGTYPE" not in str(error):
            raise error
        await move_aside(r, key, expected, self.rejections)

    async def _publish_quarantine(self, r: aioredis.Redis,
                                  held: dict[str, Quarantined]) -> None:
        """Name quarantined nodes in ``ce:quarantine`` (for `carbonedge status`)."""
        changed = {n: q for n, q in held.items() if self._published.get(n) != q}
        released = [n for n in self._published if n not in held]
        if not changed and not released:
            return
        pipe = r.pipeline(transaction=False)
        for node_id, q in changed.items():
            pipe.hset(keys.QUARANTINE, node_id, json.dumps(q.to_wire()))
        if released:
            pipe.hdel(keys.QUARANTINE, *released)
        try:
            await pipe.execute()
        except redis.ResponseError as e:
            await self._wrong_type(r, keys.QUARANTINE, "hash", e)
            return
        self._published = dict(held)
