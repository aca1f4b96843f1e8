"""The carbon service: host power for the agents, the ledger, and per-window reconciliation.

Every sample (default 1 s) it reads the host through CodeCarbon and each live node's
cumulative cgroup CPU time from its heartbeat, and publishes the host's power to
``ce:carbon:host`` for agents to charge tasks with. It consumes the per-task ledger through
a consumer group, writing a CSV row per task. Every window (default 10 s) it reconciles:
host CPU energy = Σ node-attributed energy + unattributed; each node's attributed energy
is set beside the sum of its task rows, and both go to the CSV and ``ce:carbon:windows``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from carbonedge.carbon.apportion import HostPower, HostSample, check_method, reconcile_window
from carbonedge.carbon.emissions_csv import EmissionsCsv
from carbonedge.carbon.host_tracker import HostReading
from carbonedge.carbon.ledger import LedgerRow
from carbonedge.carbon.power import RAM_WATTS_PER_GB
from carbonedge.carbon.units import JOULES_PER_KWH
from carbonedge.errors import InvalidMessage
from carbonedge.protocol import keys
from carbonedge.protocol.telemetry import CLOCK_SKEW_S, PLAUSIBLE, valid_node_id
from carbonedge.protocol.untrusted import Rejections, is_wrong_type, move_aside, parse_amount
from carbonedge.settings import Settings

log = logging.getLogger(__name__)

WINDOW_GRACE_S = 2.0
"""How long after a window ends its late ledger rows are still awaited."""
WINDOWS_MAXLEN = 10_000
_NODE_FIELDS = ("cpu_usage_s", "cpu_quota", "mem_limit_bytes", "carbon_intensity", "pue")


class HostSource(Protocol):
    """What the service needs of a host tracker (CodeCarbon's, or a test's)."""

    source: str
    cpu_model: str

    def start(self) -> None: ...
    def sample(self) -> HostReading: ...
    def stop(self) -> None: ...
    @property
    def idle_cpu_w(self) -> float: ...


@dataclass(slots=True)
class NodeWindow:
    """One node over one window: its task rows summed, and its cgroup's CPU time."""

    tasks: int = 0
    task_cpu_s: float = 0.0
    cpu_kwh: float = 0.0
    ram_kwh: float = 0.0
    carbon_g: float = 0.0
    intensity_sources: set[str] = field(default_factory=set)
    power_sources: set[str] = field(default_factory=set)
    cgroup_cpu_s: float = 0.0
    present_s: float = 0.0
    mem_limit_bytes: int = 0
    intensity: float = math.nan
    pue: float = 1.0

    def add(self, row: LedgerRow) -> None:
        self.tasks += 1
        self.task_cpu_s += row.cpu_s
        self.cpu_kwh += row.cpu_kwh
        self.ram_kwh += row.ram_kwh
        self.carbon_g += row.carbon_g
        self.intensity_sources.add(row.intensity_source)
        self.power_sources.add(row.power_source)


@dataclass(slots=True)
class Window:
    index: int
    start: float
    end: float
    samples: list[HostSample] = field(default_factory=list)
    ram_j: float = 0.0
    gpu_j: float = 0.0
    emissions_kg: float = 0.0
    nodes: dict[str, NodeWindow] = field(default_factory=dict)
    quotas: dict[str, float] = field(default_factory=dict)

    def node(self, node_id: str) -> NodeWindow:
        return self.nodes.setdefault(node_id, NodeWindow())


class CarbonService:
    """Samples the host, consumes the ledger and writes reconciled emissions."""

    def __init__(self, settings: Settings, tracker: HostSource, csv: EmissionsCsv, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.method = check_method(settings.apportioning)
        self.tracker = tracker
        self.csv = csv
        self.host_cpus = os.cpu_count() or 1
        self.window_s = settings.carbon_window_s
        self._clock = clock
        self._consumer = f"{socket.gethostname()}-{os.getpid()}"
        self.rejections = Rejections(f"carbon service {self._consumer}", log)
        """Malformed heartbeats, ledger rows and keys, logged once per cause and counted."""
        self._windows: dict[int, Window] = {}
        self._node_cpu: dict[str, float] = {}
        self._run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{os.getpid()}"
        self.windows_written = 0
        self.tasks_written = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then close every open window."""
        # anything may be in Redis: bytes that are not UTF-8 read as U+FFFD, and fail the
        # checks of the value they are in, instead of failing the whole read
        client = aioredis.Redis.from_url(self.settings.redis_url, decode_responses=True,
                                         encoding_errors="replace")
        await asyncio.to_thread(self.tracker.start)
        log.info("carbon service: window %.0f s, apportioning %s, host power %s, csv %s",
                 self.window_s, self.method, self.tracker.source, self.csv.path)
        try:
            await self._ensure_group(client)
            loops = [self._sample_loop(client, stop), self._ledger_loop(client, stop),
                     self._close_loop(client, stop)]
            await asyncio.gather(*loops)
        finally:
            try:
                await self._drain(client)
            finally:
                await asyncio.to_thread(self.tracker.stop)
                await client.aclose()
                self.csv.close()

    async def _drain(self, client: aioredis.Redis) -> None:
        """On shutdown: a last sample and ledger read, then every window closes."""
        try:
            await self._sample(client)
            while await self._read_ledger(client, block_ms=None):
                pass
        except RedisError as e:
            log.warning("carbon service: final sample/ledger read failed: %s", e)
        for index in sorted(self._windows):
            await self._close(client, self._windows.pop(index))

    async def _ensure_group(self, client: aioredis.Redis) -> None:
        try:
            await client.xgroup_create(keys.LEDGER_STREAM, keys.LEDGER_GROUP, id="0",
                                       mkstream=True)
        except ResponseError as e:
            if is_wrong_type(e):  # holds no ledger row: out of the way, then a new stream
                await move_aside(client, keys.LEDGER_STREAM, "stream", self.rejections)
                await self._ensure_group(client)
            elif "BUSYGROUP" not in str(e):
                raise

    # -- sampling -------------------------------------------------------------------------

    async def _sample_loop(self, client: aioredis.Redis, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._sample(client)
                await self._flush_rejections(client)
            except RedisError as e:
                log.warning("carbon service: sample failed (will retry): %s", e)
            await _wait(stop, self.settings.carbon_sample_s)

    async def _flush_rejections(self, client: aioredis.Redis) -> None:
        pending = self.rejections.take_pending()
        if pending:
            pipe = client.pipeline(transaction=False)
            for field_name, n in pending.items():
                pipe.hincrby(keys.REJECTED, field_name, n)
            await pipe.execute(raise_on_error=False)

    async def _sample(self, client: aioredis.Redis) -> None:
        reading = await asyncio.to_thread(self.tracker.sample)
        now = self._clock()
        nodes = await self._node_readings(client)
        node_cpu: dict[str, float] = {}
        for node_id, info in nodes.items():
            total = info["cpu_usage_s"]
            previous = self._node_cpu.get(node_id)
            self._node_cpu[node_id] = total
            if previous is not None and total >= previous:  # else: the agent restarted
                node_cpu[node_id] = total - previous
        idle_w = self.tracker.idle_cpu_w
        host = HostPower(cpu_w=reading.cpu_w, idle_cpu_w=min(idle_w, reading.cpu_w),
                         busy_cpus=reading.busy_cpu_s / reading.seconds,
                         host_cpus=self.host_cpus, source=self.tracker.source, ts=now)
        pipe = client.pipeline(transaction=True)
        pipe.delete(keys.HOST_POWER)  # whatever was there, of whatever type
        pipe.hset(keys.HOST_POWER, mapping=host.to_fields())
        pipe.expire(keys.HOST_POWER, max(int(self.window_s * 3), 10))
        await pipe.execute()

        window = self._window(now - reading.seconds / 2)
        window.samples.append(HostSample(
            seconds=reading.seconds, cpu_j=reading.cpu_j,
            idle_j=min(idle_w * reading.seconds, reading.cpu_j),
            busy_cpu_s=reading.busy_cpu_s, node_cpu_s=node_cpu))
        window.ram_j += reading.ram_j
        window.gpu_j += reading.gpu_j
        window.emissions_kg += reading.emissions_kg
        for node_id, info in nodes.items():
            nw = window.node(node_id)
            nw.cgroup_cpu_s += node_cpu.get(node_id, 0.0)
            nw.present_s += reading.seconds
            nw.mem_limit_bytes = int(info["mem_limit_bytes"])
            nw.intensity, nw.pue = info["carbon_intensity"], info["pue"]
            window.quotas[node_id] = info["cpu_quota"]

    async def _node_readings(self, client: aioredis.Redis) -> dict[str, dict[str, float]]:
        """Each live node's cumulative CPU time and declared resources, from its heartbeat."""
        try:
            members = await client.smembers(keys.NODES)
        except ResponseError as e:
            if not is_wrong_type(e):
                raise
            members = set()  # the dispatcher moves it aside; no node to read meanwhile
        node_ids = sorted(n for n in members if valid_node_id(n))
        pipe = client.pipeline(transaction=False)
        for node_id in node_ids:
            pipe.hmget(keys.node_key(node_id), list(_NODE_FIELDS))
        out: dict[str, dict[str, float]] = {}
        for node_id, values in zip(node_ids, await pipe.execute(raise_on_error=False),
                                   strict=True):
            if isinstance(values, Exception) or values[0] is None:
                continue  # no heartbeat (dead), an agent without the counter, a wrong type
            info = {name: parse_amount(v) for name, v in zip(_NODE_FIELDS, values, strict=True)}
            bad = [name for name, v in info.items()
                   if v is None or not PLAUSIBLE[name][0] <= v <= PLAUSIBLE[name][1]]
            if bad:
                self.rejections.reject("heartbeat", node_id, f"{', '.join(bad)} not a "
                                       "plausible number")
                continue
            self.rejections.accept("heartbeat", node_id)
            out[node_id] = info  # type: ignore[assignment]
        return out

    # -- ledger ---------------------------------------------------------------------------

    async def _ledger_loop(self, client: aioredis.Redis, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._read_ledger(client, block_ms=500)
            except RedisError as e:
                log.warning("carbon service: ledger read failed (will retry): %s", e)
                await _wait(stop, 1.0)
                with contextlib.suppress(RedisError):
                    await self._ensure_group(client)

    async def _read_ledger(self, client: aioredis.Redis, block_ms: int | None) -> int:
        """Read, record and acknowledge one batch of ledger rows; returns how many."""
        reply = await client.xreadgroup(keys.LEDGER_GROUP, self._consumer,
                                        {keys.LEDGER_STREAM: ">"}, count=1000, block=block_ms)
        if not reply:
            return 0
        entries = reply[0][1]
        rows = []
        latest = self._clock() + CLOCK_SKEW_S
        for entry_id, fields in entries:
            try:
                row = LedgerRow.from_fields(fields)
                if not valid_node_id(row.node):
                    raise InvalidMessage(f"ledger row names no node: {row.node[:40]!r}",
                                         field="node")
                if row.ts > latest:
                    raise InvalidMessage(f"ledger row is from the future (ts {row.ts:.0f})",
                                         field="ts")
            except InvalidMessage as e:
                # acknowledged below like the others: a bad row is never read again
                self.rejections.reject("ledger-row", entry_id, e.message)
                continue
            rows.append(row)
        for row in rows:
            self._window(row.ts).node(row.node).add(row)
        self.tasks_written += self.csv.write(self._task_row(row) for row in rows)
        await client.xack(keys.LEDGER_STREAM, keys.LEDGER_GROUP, *[e[0] for e in entries])
        return len(entries)

    def _task_row(self, row: LedgerRow) -> dict[str, Any]:
        wall = max(row.wall_s, 1e-9)
        return {
            **self._common(row.ts, row.wall_s), "row_type": "task",
            "emissions": row.carbon_g / 1000, "emissions_rate": row.carbon_g / 1000 / wall,
            "cpu_power": row.cpu_kwh * JOULES_PER_KWH / wall,
            "ram_power": row.ram_kwh * JOULES_PER_KWH / wall,
            "cpu_energy": row.cpu_kwh, "ram_energy": row.ram_kwh, "gpu_energy": 0.0,
            "energy_consumed": row.energy_kwh, "pue": row.pue, "node": row.node,
            "task_id": row.task_id, "kind": row.kind, "model": row.model, "mode": row.mode,
            "status": row.status, "tasks": 1, "cpu_seconds": row.cpu_s,
            "intensity_g_per_kwh": row.intensity_g_per_kwh,
            "intensity_source": row.intensity_source, "power_source": row.power_source,
            "apportioning": row.apportioning,
        }

    # -- windows --------------------------------------------------------------------------

    def _window(self, ts: float) -> Window:
        index = int(ts // self.window_s)
        window = self._windows.get(index)
        if window is None:
            window = Window(index, index * self.window_s, (index + 1) * self.window_s)
            self._windows[index] = window
        return window

    async def _close_loop(self, client: aioredis.Redis, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now = self._clock()
            for index in sorted(self._windows):
                if self._windows[index].end + WINDOW_GRACE_S <= now:
                    await self._close(client, self._windows.pop(index))
            await _wait(stop, 0.5)

    async def _close(self, client: aioredis.Redis, window: Window) -> None:
        """Reconcile one window: CSV rows for each node and the host, and a stream entry."""
        rows = self.reconcile(window)
        self.csv.write(rows)
        self.windows_written += 1
        host = rows[-1]
        summary = {k: str(host[k]) for k in ("window_start", "duration", "cpu_energy",
                                               "ram_energy", "attributed_cpu_energy",
                                               "unattributed_energy", "tasks")}
        for row in rows[:-1]:
            summary[f"node.{row['node']}.cpu_energy"] = repr(row["cpu_energy"])
            summary[f"node.{row['node']}.attributed_cpu_energy"] = repr(
                row["attributed_cpu_energy"])
        try:
            await client.xadd(keys.CARBON_WINDOWS, summary, maxlen=WINDOWS_MAXLEN,
                              approximate=True)
        except RedisError as e:
            log.warning("carbon service: could not publish window %d: %s", window.index, e)
        log.info("window %s: host CPU %.3g kWh, attributed %.3g, unattributed %.3g, %d tasks",
                 host["window_start"], host["cpu_energy"], host["attributed_cpu_energy"],
                 host["unattributed_energy"], host["tasks"])

    def reconcile(self, window: Window) -> list[dict[str, Any]]:
        """The window's node rows, then its host row (last)."""
        shares = reconcile_window(window.samples, self.method, window.quotas, self.host_cpus)
        duration = sum(s.seconds for s in window.samples) or self.window_s
        rows: list[dict[str, Any]] = []
        node_ram_j = 0.0
        for node_id in sorted(window.nodes):
            nw = window.nodes[node_id]
            attributed_kwh = shares.per_node_j.get(node_id, 0.0) / JOULES_PER_KWH
            ram_j = RAM_WATTS_PER_GB * nw.mem_limit_bytes / 1e9 * nw.present_s
            node_ram_j += ram_j
            rows.append({
                **self._common(window.start, duration), "row_type": "node",
                "node": node_id, "tasks": nw.tasks, "cpu_seconds": nw.task_cpu_s,
                "cpu_energy": nw.cpu_kwh, "ram_energy": nw.ram_kwh, "gpu_energy": 0.0,
                "energy_consumed": nw.cpu_kwh + nw.ram_kwh,
                "emissions": nw.carbon_g / 1000, "emissions_rate": nw.carbon_g / 1000 / duration,
                "cpu_power": attributed_kwh * JOULES_PER_KWH / duration,
                "ram_power": ram_j / duration, "pue": nw.pue,
                "intensity_g_per_kwh": nw.intensity,
                "intensity_source": "|".join(sorted(nw.intensity_sources)),
                "power_source": "|".join(sorted(nw.power_sources)),
                "apportioning": self.method,
                "attributed_cpu_energy": attributed_kwh,
                "unattributed_energy": "",
            })
        host_cpu_kwh = shares.host_j / JOULES_PER_KWH
        host_ram_kwh, gpu_kwh = window.ram_j / JOULES_PER_KWH, window.gpu_j / JOULES_PER_KWH
        attributed_kwh = shares.attributed_j / JOULES_PER_KWH
        unattributed = (shares.unattributed_j + max(window.ram_j - node_ram_j, 0.0)
                        + window.gpu_j) / JOULES_PER_KWH
        rows.append({
            **self._common(window.start, duration), "row_type": "host",
            "node": "", "tasks": sum(nw.tasks for nw in window.nodes.values()),
            "cpu_seconds": sum(s.busy_cpu_s for s in window.samples),
            "cpu_energy": host_cpu_kwh, "ram_energy": host_ram_kwh, "gpu_energy": gpu_kwh,
            "energy_consumed": host_cpu_kwh + host_ram_kwh + gpu_kwh,
            "cpu_power": shares.host_j / duration, "ram_power": window.ram_j / duration,
            "gpu_power": window.gpu_j / duration,
            "emissions": window.emissions_kg, "pue": 1.0,
            "power_source": self.tracker.source, "apportioning": self.method,
            "attributed_cpu_energy": attributed_kwh,
            "unattributed_energy": unattributed,
        })
        return rows

    def _common(self, ts: float, duration: float) -> dict[str, Any]:
        return {
            "timestamp": datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds"),
            "window_start": datetime.fromtimestamp(
                (ts // self.window_s) * self.window_s, UTC).isoformat(),
            "project_name": "carbonedge", "run_id": self._run_id, "duration": duration,
            "country_iso_code": self.settings.host_country, "region": self.settings.host_region,
            "cpu_count": self.host_cpus, "cpu_model": self.tracker.cpu_model,
            "tracking_mode": "machine",
        }


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


def run_carbon_service(settings: Settings) -> None:
    """Run the carbon service on the host until SIGINT/SIGTERM."""
    import signal

    from carbonedge.carbon.host_tracker import HostTracker

    csv_path = settings.carbon_csv or str(Path(settings.run_dir) / "emissions.csv")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        tracker = HostTracker(country_iso_code=settings.host_country,
                              region=settings.host_region or None,
                              measure_power_secs=settings.carbon_sample_s)
        service = CarbonService(settings, tracker, EmissionsCsv(csv_path))
        await service.run(stop)
        log.info("carbon service stopped: %d task rows, %d windows written to %s",
                 service.tasks_written, service.windows_written, csv_path)

    asyncio.run(main())
