"""The carbon service: host samples, settlement of the ledger, per-window reconciliation.

Every sample (default 1 s) it reads the host through CodeCarbon and each live node's
cumulative cgroup CPU time from its heartbeat, keeps the sample (and appends it to
``ce:carbon:samples``, so that a restarted service can still settle what its samples
cover) and publishes the host's power to ``ce:carbon:host`` for ``carbonedge status``.
Where agents run on several hosts, one service runs on each (``host_id`` set): it keeps
its own samples and host power under ``<key>:<host_id>``, reads the ledger through its own
consumer group and settles only the rows of the nodes whose agents say they run on it.
It consumes the ledger through a consumer group and holds each row until samples cover
it, then settles its ``measured`` charge (:mod:`carbonedge.carbon.measured`), writes the
row's two CSV rows (``device`` and ``measured``), appends the settlement to
``ce:carbon:settled`` and acknowledges the entry. Every window (default 10 s) it
reconciles: host energy = Σ node-attributed energy + unattributed by cause.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from carbonedge.carbon.apportion import HostPower
from carbonedge.carbon.emissions_csv import EmissionsCsv
from carbonedge.carbon.host_tracker import HostReading
from carbonedge.carbon.ledger import LEDGER_MAXLEN, LedgerRow
from carbonedge.carbon.measured import HostSample, SampleLog
from carbonedge.carbon.units import kwh_from_joules
from carbonedge.carbon.windows import (
    RowContext,
    Settled,
    Settler,
    Window,
    host_row,
    ledger_rows,
    node_rows,
)
from carbonedge.connections import async_redis_client
from carbonedge.errors import InvalidMessage
from carbonedge.protocol import keys
from carbonedge.protocol.telemetry import CLOCK_SKEW_S, PLAUSIBLE, valid_node_id
from carbonedge.protocol.untrusted import Rejections, is_wrong_type, move_aside, parse_amount
from carbonedge.settings import Settings

log = logging.getLogger(__name__)

WINDOW_GRACE_S = 2.0
"""How long after a window ends its late ledger rows are still awaited."""
WINDOWS_MAXLEN = 10_000
SAMPLES_MAXLEN = 3_600
"""Host samples kept in Redis: an hour at one a second."""
CLAIM_IDLE_MS = 5_000
"""Ledger entries pending this long on another consumer (a dead service) are taken over."""
_NODE_FIELDS = ("cpu_usage_s", "cpu_quota", "mem_limit_bytes", "carbon_intensity", "pue")


class HostSource(Protocol):
    """What the service needs of a host tracker (CodeCarbon's, or a test's)."""

    source: str
    cpu_model: str
    estimated: bool
    ram_total_bytes: float

    def start(self) -> None: ...
    def sample(self) -> HostReading: ...
    def stop(self) -> None: ...
    @property
    def idle_cpu_w(self) -> float: ...


class CarbonService:
    """Samples the host, settles the ledger and writes reconciled emissions."""

    def __init__(self, settings: Settings, tracker: HostSource, csv: EmissionsCsv, *,
                 clock: Callable[[], float] = time.time,
                 host_intensity: tuple[float, str] = (math.nan, "")) -> None:
        self.settings = settings
        self.tracker = tracker
        self.csv = csv
        self.host_cpus = os.cpu_count() or 1
        self.window_s = settings.carbon_window_s
        self.host_intensity = host_intensity
        """What CodeCarbon prices the host rows at (``host_country``/``host_region``)."""
        self._clock = clock
        self._consumer = f"{socket.gethostname()}-{os.getpid()}"
        self.rejections = Rejections(f"carbon service {self._consumer}", log)
        """Malformed heartbeats, ledger rows and keys, logged once per cause and counted."""
        self._windows: dict[int, Window] = {}
        self._node_cpu: dict[str, float] = {}
        self._host_id = settings.host_id
        self._group = keys.ledger_group(settings.host_id)
        self._samples_key = keys.host_samples_key(settings.host_id)
        self._host_nodes: set[str] = set()
        self._run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{os.getpid()}"
        self.samples = SampleLog()
        self.settler = Settler(self.samples, host_mem_bytes=0.0, estimated=True)
        self.windows_written = 0
        self.rows_settled = 0

    @property
    def _ctx(self) -> RowContext:
        return RowContext(self._run_id, self.window_s, self.settings.host_country,
                          self.settings.host_region, self.host_cpus, self.tracker.cpu_model,
                          self.tracker.source)

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then settle what it can and close every window."""
        # anything may be in Redis: bytes that are not UTF-8 read as U+FFFD, and fail the
        # checks of the value they are in, instead of failing the whole read
        client = async_redis_client(self.settings.redis_url, decode_responses=True,
                                    encoding_errors="replace")
        await asyncio.to_thread(self.tracker.start)
        self.settler.host_mem_bytes = self.tracker.ram_total_bytes
        self.settler.estimated = self.tracker.estimated
        log.info("carbon service: window %.0f s, host power %s%s, csv %s", self.window_s,
                 self.tracker.source, " (estimated)" if self.tracker.estimated else "",
                 self.csv.path)
        try:
            await self._ensure_group(client)
            await self._restore(client)
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

    async def _restore(self, client: aioredis.Redis) -> None:
        """Take over what a previous life left: its samples, and its unsettled entries."""
        now = self._clock()
        raw = await client.xrevrange(self._samples_key, count=SAMPLES_MAXLEN)
        restored = []
        for _, fields in raw:
            try:
                sample = HostSample.from_fields(fields)
            except InvalidMessage as e:
                log.warning("carbon service: ignoring a stored host sample: %s", e)
                continue
            if sample.t1 >= now - self.samples.keep_s:
                restored.append(sample)
        self.samples.extend(restored)
        start = "0-0"
        claimed = 0
        while True:
            start, entries, *_ = await client.xautoclaim(
                keys.LEDGER_STREAM, self._group, self._consumer, CLAIM_IDLE_MS, start,
                count=1000)
            for entry_id, row in self._take(entries):  # read (so filtered) by a past life
                self.settler.add(entry_id, row)
                claimed += 1
            if start in ("0-0", b"0-0"):
                break
        if restored or claimed:
            log.info("carbon service: restored %d host samples, took over %d unsettled "
                     "ledger rows", len(restored), claimed)

    async def _drain(self, client: aioredis.Redis) -> None:
        """On shutdown: a last sample and ledger read, settle, then every window closes."""
        try:
            await self._sample(client)
            while await self._read_ledger(client, block_ms=None):
                pass
            await self._settle(client, force=True)
        except RedisError as e:
            log.warning("carbon service: final sample/ledger read failed: %s", e)
        for index in sorted(self._windows):
            await self._close(client, self._windows.pop(index))

    async def _ensure_group(self, client: aioredis.Redis) -> None:
        try:
            await client.xgroup_create(keys.LEDGER_STREAM, self._group, id="0",
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
        sample = HostSample(t0=now - reading.seconds, t1=now, cpu_j=reading.cpu_j,
                            idle_j=min(idle_w * reading.seconds, reading.cpu_j),
                            ram_j=reading.ram_j, gpu_j=reading.gpu_j,
                            busy_cpu_s=reading.busy_cpu_s, node_cpu_s=node_cpu)
        self.samples.add(sample)
        window = self._window(now - reading.seconds / 2)
        window.samples.append(sample)
        window.emissions_kg += reading.emissions_kg
        host = HostPower(cpu_w=reading.cpu_w, idle_cpu_w=min(idle_w, reading.cpu_w),
                         busy_cpus=reading.busy_cpu_s / reading.seconds,
                         host_cpus=self.host_cpus, source=self.tracker.source, ts=now)
        power_key = keys.host_power_key(self._host_id)
        pipe = client.pipeline(transaction=True)
        pipe.delete(power_key)  # whatever was there, of whatever type
        pipe.hset(power_key, mapping=host.to_fields())
        pipe.expire(power_key, max(int(self.window_s * 3), 10))
        pipe.xadd(self._samples_key, sample.to_fields(),  # type: ignore[arg-type]
                  maxlen=SAMPLES_MAXLEN, approximate=True)
        await pipe.execute()
        await self._settle(client)

    async def _node_readings(self, client: aioredis.Redis) -> dict[str, dict[str, float]]:
        """Each live node's cumulative CPU time and declared resources, from its heartbeat."""
        node_ids = sorted(await self._node_ids(client))
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

    async def _node_ids(self, client: aioredis.Redis) -> set[str]:
        """Every node, or this host's where agents run on several."""
        key = keys.host_nodes_key(self._host_id) if self._host_id else keys.NODES
        try:
            members = await client.smembers(key)
        except ResponseError as e:
            if not is_wrong_type(e):
                raise
            members = set()  # the dispatcher moves it aside; no node to read meanwhile
        nodes = {n for n in members if valid_node_id(n)}
        if self._host_id:
            self._host_nodes = nodes
        return nodes

    # -- ledger ---------------------------------------------------------------------------

    async def _ledger_loop(self, client: aioredis.Redis, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                if await self._read_ledger(client, block_ms=500):
                    await self._settle(client)
            except RedisError as e:
                log.warning("carbon service: ledger read failed (will retry): %s", e)
                await _wait(stop, 1.0)
                with contextlib.suppress(RedisError):
                    await self._ensure_group(client)

    async def _read_ledger(self, client: aioredis.Redis, block_ms: int | None) -> int:
        """Read one batch of ledger rows into the settler; returns how many were read.

        A malformed entry is logged and acknowledged at once (it can never settle)."""
        reply = await client.xreadgroup(self._group, self._consumer,
                                        {keys.LEDGER_STREAM: ">"}, count=1000, block=block_ms)
        if not reply:
            return 0
        entries = reply[0][1]
        taken = self._take(entries)
        if self._host_id and any(row.node not in self._host_nodes for _, row in taken):
            await self._node_ids(client)  # a node that joined since the last sample
        ours = [(e, row) for e, row in taken
                if not self._host_id or row.node in self._host_nodes]
        for entry_id, row in ours:
            self.settler.add(entry_id, row)
        kept = {e for e, _ in ours}
        others = [e for e, _ in entries if e not in kept]  # malformed, or another host's
        if others:
            await client.xack(keys.LEDGER_STREAM, self._group, *others)
        return len(entries)

    def _take(self, entries: list[tuple[Any, Any]]) -> list[tuple[Any, LedgerRow]]:
        """The well-formed rows among ``entries``; a malformed one is logged and counted."""
        rows = []
        latest = self._clock() + CLOCK_SKEW_S
        for entry_id, fields in entries:
            if not fields:  # trimmed from the stream meanwhile
                continue
            try:
                row = LedgerRow.from_fields(fields)
                if not valid_node_id(row.node):
                    raise InvalidMessage(f"ledger row names no node: {row.node[:40]!r}",
                                         field="node")
                if row.ts > latest:
                    raise InvalidMessage(f"ledger row is from the future (ts {row.ts:.0f})",
                                         field="ts")
            except InvalidMessage as e:  # acknowledged by the caller: never read again
                self.rejections.reject("ledger-row", entry_id, e.message)
                continue
            rows.append((entry_id, row))
        return rows

    async def _settle(self, client: aioredis.Redis, *, force: bool = False) -> None:
        """Settle the rows the samples now cover: CSV, the settled stream, acknowledge."""
        ready = self.settler.ready(self._clock(), force=force)
        if not ready:
            return
        ctx = self._ctx
        for item in ready:
            self._window(item.row.ts).node(item.row.node).add(item.row, item.measured)
        self.csv.write(r for item in ready for r in ledger_rows(ctx, item))
        pipe = client.pipeline(transaction=False)
        for item in ready:
            pipe.xadd(keys.CARBON_SETTLED, _settled_fields(item),  # type: ignore[arg-type]
                      maxlen=LEDGER_MAXLEN, approximate=True)
        pipe.xack(keys.LEDGER_STREAM, self._group, *[i.entry_id for i in ready])
        await pipe.execute()
        self.rows_settled += len(ready)

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
            waiting_since = self.settler.oldest_pending_end()
            for index in sorted(self._windows):
                window = self._windows[index]
                # a window closes once its grace is over and no row ending in it waits
                if window.end + WINDOW_GRACE_S <= now and waiting_since >= window.end:
                    await self._close(client, self._windows.pop(index))
            await _wait(stop, 0.5)

    async def _close(self, client: aioredis.Redis, window: Window) -> None:
        """Reconcile one window: CSV rows for each node and the host, and a stream entry."""
        shares = window.shares(self.tracker.ram_total_bytes)
        ctx = self._ctx
        host = host_row(ctx, window, shares, intensity=self.host_intensity,
                        estimated=self.tracker.estimated)
        self.csv.write([*node_rows(ctx, window, shares), host])
        self.windows_written += 1
        summary = {k: str(host[k]) for k in ("window_start", "duration", "cpu_energy",
                                               "ram_energy", "energy_consumed",
                                               "attributed_energy", "unattributed_energy",
                                               "unattributed_idle_energy",
                                               "unattributed_other_energy",
                                               "unattributed_ram_energy", "tasks")}
        for node_id, nw in sorted(window.nodes.items()):
            summary[f"node.{node_id}.device_energy"] = repr(nw.device_cpu_kwh + nw.device_ram_kwh)
            summary[f"node.{node_id}.measured_energy"] = repr(
                nw.measured_cpu_kwh + nw.measured_ram_kwh)
        for node_id, joules in sorted(shares.node_cpu_j.items()):
            summary[f"node.{node_id}.attributed_cpu_energy"] = repr(kwh_from_joules(joules))
        try:
            await client.xadd(keys.CARBON_WINDOWS, summary, maxlen=WINDOWS_MAXLEN,
                              approximate=True)
        except RedisError as e:
            log.warning("carbon service: could not publish window %d: %s", window.index, e)
        log.info("window %s: host %.3g kWh, attributed %.3g, unattributed %.3g (idle %.3g, "
                 "other %.3g, RAM %.3g), %d tasks", host["window_start"],
                 host["energy_consumed"], host["attributed_energy"],
                 host["unattributed_energy"], host["unattributed_idle_energy"],
                 host["unattributed_other_energy"], host["unattributed_ram_energy"],
                 host["tasks"])


def _settled_fields(item: Settled) -> dict[str, str]:
    m, row = item.measured, item.row
    fields = {"task_id": row.task_id, "node": row.node, "row_type": row.row_type,
              "settlement": m.settlement, "estimated": str(int(m.estimated)),
              "coverage": repr(m.coverage)}
    if m.settlement == "settled":
        fields.update(cpu_kwh=repr(m.cpu_kwh), ram_kwh=repr(m.ram_kwh),
                      energy_kwh=repr(m.energy_kwh), carbon_g=repr(m.carbon_g))
    return fields


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


def run_carbon_service(settings: Settings) -> None:
    """Run the carbon service on the host until SIGINT/SIGTERM."""
    import signal

    from carbonedge.carbon.codecarbon_adapter import check_host_grid
    from carbonedge.carbon.host_tracker import HostTracker

    csv_path = settings.carbon_csv or str(Path(settings.run_dir) / "emissions.csv")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        host_intensity = check_host_grid(settings.host_country, settings.host_region)
        tracker = HostTracker(country_iso_code=settings.host_country,
                              region=settings.host_region or None,
                              measure_power_secs=settings.carbon_sample_s)
        service = CarbonService(settings, tracker, EmissionsCsv(csv_path),
                                host_intensity=host_intensity)
        await service.run(stop)
        log.info("carbon service stopped: %d ledger rows settled, %d windows written to %s",
                 service.rows_settled, service.windows_written, csv_path)

    asyncio.run(main())
