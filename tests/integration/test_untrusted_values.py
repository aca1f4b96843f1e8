"""Whatever is left in Redis, the dispatcher, its watchdog, `status`, the metrics exporter
and the carbon service keep serving: malformed values are ignored (logged once, counted),
keys of the wrong type moved aside, counters repaired. These run the real processes'
code in-process against the real Redis, without agents."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from carbonedge.carbon.emissions_csv import EmissionsCsv
from carbonedge.carbon.host_tracker import HostReading
from carbonedge.carbon.ledger import LedgerRow
from carbonedge.carbon.service import CarbonService
from carbonedge.client.requests import build_request
from carbonedge.dispatcher.dispatcher import Dispatcher
from carbonedge.dispatcher.recovery import Watchdog
from carbonedge.ops.metrics import RedisStateCollector
from carbonedge.ops.status import collect_cluster, format_cluster
from carbonedge.protocol import keys
from carbonedge.protocol.messages import pack
from carbonedge.protocol.telemetry import Heartbeat
from carbonedge.settings import Settings

pytestmark = pytest.mark.timeout(120)

NODES = {"node-x": 500.0, "node-y": 200.0}
STARTED = time.time() - 60
"""When the nodes' agents started (one life each)."""


def _beat(r: redis.Redis, node: str, intensity: float, *, ts: float | None = None) -> None:
    beat = Heartbeat(node_id=node, ts=time.time() if ts is None else ts, cpu_quota=1.0,
                     mem_limit_bytes=1 << 30, mem_used_bytes=1 << 28, cpu_util=0.0,
                     power_w=1.0, active_power_w=4.0, carbon_intensity=intensity,
                     cpu_usage_s=10.0, tasks_done=3, started_at=STARTED)
    r.delete(keys.node_key(node))
    r.hset(keys.node_key(node), mapping=beat.to_fields())
    r.expire(keys.node_key(node), 60)
    r.sadd(keys.NODES, node)


def _cluster(r: redis.Redis) -> None:
    for node, intensity in NODES.items():
        _beat(r, node, intensity)


def _green_pings(r: redis.Redis, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        request = build_request(kind="ping", mode="green")
        r.xadd(keys.REQUEST_STREAM, {keys.REQUEST_FIELD: pack(request)})
        ids.append(request["id"])
    return ids


def _corrupt_keys(r: redis.Redis, key: str) -> list[bytes]:
    return [k for k in r.keys("ce:corrupt:*") if k.endswith(key.encode())]


def _dispatch(settings: Settings, *steps: object) -> Dispatcher:
    """Run ``steps`` (callables taking the client, sync or async) in one dispatcher."""
    dispatcher = Dispatcher(settings)

    async def main() -> None:
        r = redis.asyncio.Redis.from_url(settings.redis_url)
        try:
            for step in steps:
                out = step(dispatcher, r)  # type: ignore[operator]
                if asyncio.iscoroutine(out):
                    await out
        finally:
            await r.aclose()

    asyncio.run(main())
    return dispatcher


def test_dispatcher_routes_around_garbage_in_every_key_it_reads(
        redis_url: str, redis_client: redis.Redis) -> None:
    r = redis_client
    _cluster(r)
    r.sadd(keys.NODES, b"\xff\xfe", "../evil", "node z")  # not node ids
    r.hset(keys.node_key("node-w"), mapping={b"node_id": b"node-w", b"ts": b"\xff\xfe"})
    r.sadd(keys.NODES, "node-w")  # a heartbeat that is not UTF-8
    r.hset(keys.IN_FLIGHT, mapping={"node-x": "abc", b"\xff": "1"})
    r.hset(keys.DECISIONS, "node-y|green", "not a count")
    r.set(keys.assigned_key("node-y"), "a string, not a registry")
    ids = _green_pings(r, 3)
    settings = Settings.load(env={}, redis_url=redis_url)

    async def step(d: Dispatcher, ar: object) -> None:
        await d._ensure_group(ar)  # type: ignore[arg-type]
        assert await d.step(ar) == 3  # type: ignore[arg-type]

    d = _dispatch(settings, step)
    queued = r.lrange(keys.node_queue("node-y"), 0, -1)
    assert len(queued) == 3 and all(i.encode() in b"".join(queued) for i in ids)
    assert r.smembers(keys.NODES) == {b"node-x", b"node-y", b"node-w"}  # junk removed
    assert r.hget(keys.IN_FLIGHT, "node-x") == b"0"  # reset to its registry's size
    assert _corrupt_keys(r, keys.assigned_key("node-y"))  # moved aside, not deleted
    assert r.hget(keys.DECISIONS, "node-y|green") is None  # the bad count was removed
    assert {"node-registry", "heartbeat", "in-flight", "key-type", "counter"} <= set(
        d.rejections.total)
    # the next batch finds every key usable: recorded, counted, decided
    _green_pings(r, 2)
    d = _dispatch(settings, lambda d, ar: d.step(ar))
    assert r.hlen(keys.assigned_key("node-y")) == 2
    assert r.hget(keys.DECISIONS, "node-y|green") == b"2"
    assert r.hget(keys.IN_FLIGHT, "node-y") == b"5"
    assert set(d.rejections.total) == {"heartbeat"}  # node-w still sends garbage


def test_wrong_typed_stream_and_counters_are_moved_aside(redis_url: str,
                                                        redis_client: redis.Redis) -> None:
    r = redis_client
    _cluster(r)
    r.set(keys.REQUEST_STREAM, "not a stream")
    r.set(keys.IN_FLIGHT, "not a hash")
    r.rpush(keys.DECISIONS, "not", "a", "hash")
    settings = Settings.load(env={}, redis_url=redis_url)

    async def step(d: Dispatcher, ar: object) -> None:
        await d._ensure_group(ar)  # type: ignore[arg-type]
        _green_pings(r, 2)
        assert await d.step(ar) == 2  # type: ignore[arg-type]
        _green_pings(r, 1)
        assert await d.step(ar) == 1  # type: ignore[arg-type]

    _dispatch(settings, step)
    assert r.llen(keys.node_queue("node-y")) == 3
    for key in (keys.REQUEST_STREAM, keys.IN_FLIGHT, keys.DECISIONS):
        assert _corrupt_keys(r, key), key
    assert r.hget(keys.DECISIONS, "node-y|green") == b"1"  # recreated by the next batch


def test_a_node_whose_telemetry_jumps_is_quarantined_and_named(
        redis_url: str, redis_client: redis.Redis) -> None:
    r = redis_client
    _cluster(r)
    settings = Settings.load(env={}, redis_url=redis_url, quarantine_s=60)

    async def refresh(d: Dispatcher, ar: object) -> None:
        await d._refresh_view(ar, force=True)  # type: ignore[arg-type]

    def forge(d: Dispatcher, ar: object) -> None:  # node-x claims 5 g/kWh a second later
        _beat(r, "node-x", 5.0, ts=time.time() + 1)

    async def route(d: Dispatcher, ar: object) -> None:
        await d._ensure_group(ar)  # type: ignore[arg-type]
        _green_pings(r, 4)
        await d.step(ar)  # type: ignore[arg-type]

    _dispatch(settings, refresh, forge, refresh, route)
    assert r.llen(keys.node_queue("node-y")) == 4  # not to the forged 5 g/kWh
    assert r.llen(keys.node_queue("node-x")) == 0
    held = json.loads(r.hget(keys.QUARANTINE, "node-x"))
    assert "carbon intensity jumped from 500 to 5" in held["reason"]
    out = format_cluster(collect_cluster(r))
    assert "quarantined: node-x" in out and "held" in out


def test_watchdog_recovers_a_dead_node_whose_keys_hold_garbage(
        redis_url: str, redis_client: redis.Redis) -> None:
    r = redis_client
    _cluster(r)
    r.sadd(keys.NODES, "node-dead", b"\xc3\x28")
    r.hset(keys.assigned_key("node-dead"), mapping={"req-1": b"\xc1 not msgpack",
                                                     b"\xff\xfe": b"junk"})
    r.hset(keys.ATTEMPTS, "req-1", "many")  # HINCRBY would fail mid-script
    r.hset(keys.IN_FLIGHT, "node-dead", "lots")
    r.set(keys.assigned_key("node-odd"), "wrong type")
    r.sadd(keys.NODES, "node-odd")
    r.xgroup_create(keys.REQUEST_STREAM, keys.DISPATCH_GROUP, id="0", mkstream=True)
    r.xgroup_createconsumer(keys.REQUEST_STREAM, keys.DISPATCH_GROUP, b"\xff-gone")
    r.hset(keys.DISPATCHER_ALIVE, b"\xff-gone", "yesterday")
    settings = Settings.load(env={}, redis_url=redis_url)

    async def check(d: Dispatcher, ar: object) -> None:
        watchdog = Watchdog(settings, d.name, d.handle, d.rejections)
        await watchdog.check(ar)  # type: ignore[arg-type]
        assert [t.requests for t in watchdog.recovered] == [2]
        await d.step(ar)  # type: ignore[arg-type]

    d = _dispatch(settings, check)
    assert not r.exists(keys.assigned_key("node-dead"))
    assert r.hget(keys.IN_FLIGHT, "node-dead") == b"0"
    assert r.hget(keys.ATTEMPTS, "req-1") == b"1"  # "many" started again
    assert _corrupt_keys(r, keys.assigned_key("node-odd"))
    dead = [f for _, f in r.xrange(keys.DEAD_LETTER_STREAM)]
    assert len(dead) == 2 and all(b"msgpack" in f[b"error"] for f in dead)
    consumers = [c["name"] for c in r.xinfo_consumers(keys.REQUEST_STREAM,
                                                      keys.DISPATCH_GROUP)]
    assert b"\xff-gone" not in consumers and d.rejections.total.get("watchdog", 0) == 0


def test_status_metrics_and_cli_read_garbage_without_a_traceback(
        redis_url: str, redis_client: redis.Redis) -> None:
    r = redis_client
    _cluster(r)
    r.sadd(keys.NODES, b"\xff", "bad id!")
    r.hset(keys.node_key("node-w"), mapping={b"node_id": b"\xff"})
    r.sadd(keys.NODES, "node-w")
    r.hset(keys.IN_FLIGHT, mapping={"node-x": "abc", "node-y": "2"})
    r.set(keys.DECISIONS, "wrong type")
    r.hset(keys.CARBON_TOTALS, mapping={"node-x": "NaN-ish", "node-y": "0.5"})
    r.rpush(keys.ENERGY_TOTALS, "wrong type")
    r.hset(keys.QUARANTINE, mapping={"node-x": "{not json", "node-y": json.dumps(
        {"reason": "test", "until": "soon"})})
    r.hset(keys.PROCESSES, mapping={"node-x": b"\xff", "dispatcher": json.dumps([1]),
                                    "evil\x1b[2J": json.dumps({"alive": True, "pid": 1,
                                                                "last_exit": "\x1b[31mred"})})
    r.hset(keys.DISPATCHER_ALIVE, mapping={"d1": repr(time.time() - 100), b"\xff": "x"})
    r.hset(keys.REJECTED, mapping={"agent|queue-item": "3", "x": "y"})
    r.set(keys.DEFERRED_TOTAL, "many")
    r.xadd(keys.CARBON_WINDOWS, {"tasks": "\xff", "cpu_energy": "1e-3", b"\xfe": "1"})
    status = collect_cluster(r)
    rows = {row.node_id: row for row in status.nodes}
    assert set(rows) == {"node-x", "node-y", "node-w"} and not rows["node-w"].alive
    assert rows["node-x"].in_flight == 0 and rows["node-y"].in_flight == 2
    assert rows["node-y"].carbon_g == 0.5 and status.ignored >= 3
    assert status.live_dispatchers == [] and status.dispatchers == {"d1": pytest.approx(
        100, abs=5)}
    out = format_cluster(status)
    assert "dispatcher: DEAD" in out and "agent|queue-item 3" in out
    assert "\x1b" not in out and "evil\\x1b[2J" in out  # no terminal escapes get through
    cli = subprocess.run([sys.executable, "-m", "carbonedge.cli", "--redis-url", redis_url,
                          "status"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and "Traceback" not in cli.stderr, cli.stderr
    assert "dispatcher: DEAD" in cli.stdout and "node-w" in cli.stdout
    collector = RedisStateCollector(redis_url)
    try:
        families = {f.name: f for f in collector.collect()}
    finally:
        collector.close()
    assert families["ce_redis_up"].samples[0].value == 1
    assert [s.value for s in families["ce_rejected_values"].samples
            if s.name.endswith("_total")] == [3]
    latest = {s.labels["field"]: s.value for s in families["ce_carbon_window_latest"].samples}
    assert latest == {"cpu_energy": 1e-3}


class _Host:
    source = "scripted"
    cpu_model = "test-cpu"
    idle_cpu_w = 1.0
    estimated = True
    ram_total_bytes = 8e9

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def sample(self) -> HostReading:
        return HostReading(seconds=0.2, cpu_j=2.0, ram_j=0.4, gpu_j=0.0, cpu_w=10.0,
                           busy_cpu_s=0.3, emissions_kg=1e-9)


def test_carbon_service_survives_garbage_heartbeats_ledger_rows_and_keys(
        redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    r = redis_client
    _cluster(r)
    r.sadd(keys.NODES, b"\xff\xfe")
    r.hset(keys.node_key("node-x"), "cpu_usage_s", b"\xff")
    r.hset(keys.node_key("node-y"), "carbon_intensity", "1e300")
    r.set(keys.node_key("node-z"), "wrong type")
    r.sadd(keys.NODES, "node-z")
    r.set(keys.LEDGER_STREAM, "wrong type")
    settings = Settings.load(env={}, redis_url=redis_url, carbon_window_s=0.5,
                             carbon_sample_s=0.1)
    service = CarbonService(settings, _Host(), EmissionsCsv(tmp_path / "emissions.csv"))
    good = LedgerRow(task_id="t", node="node-y", kind="infer", model="m", mode="green",
                     status="ok", ts=time.time(), wall_s=0.1, cpu_s=0.05, cpu_kwh=1e-7,
                     ram_kwh=1e-8, energy_kwh=1.1e-7, carbon_g=4e-5, intensity_g_per_kwh=400.0,
                     intensity_source="static", pue=1.0, power_source="p")

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        while not _corrupt_keys(r, keys.LEDGER_STREAM):
            await asyncio.sleep(0.05)
        r.xadd(keys.LEDGER_STREAM, {**good.to_fields(), "node": "\xff\xfe"})
        r.xadd(keys.LEDGER_STREAM, {**good.to_fields(), "ts": repr(time.time() + 3600)})
        r.xadd(keys.LEDGER_STREAM, {**good.to_fields(), "cpu_kwh": b"\xff"})
        r.xadd(keys.LEDGER_STREAM, good.to_fields())  # type: ignore[arg-type]
        while service.rows_settled < 1 or service.windows_written < 1:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 20)

    asyncio.run(run())
    assert service.rows_settled == 1
    assert service.rejections.total["ledger-row"] == 3
    assert service.rejections.total["heartbeat"] == 2
    assert r.exists(keys.HOST_POWER)
    assert r.hget(keys.REJECTED, f"{service.rejections.process}|ledger-row") == b"3"


def test_agent_bookkeeping_repairs_what_it_cannot_add_to(redis_url: str,
                                                         redis_client: redis.Redis) -> None:
    from carbonedge.node_agent.bookkeeping import TaskBookkeeper

    r = redis_client
    r.hset(keys.CARBON_TOTALS, "node-y", "lots")
    r.set(keys.LEDGER_STREAM, "wrong type")
    row = LedgerRow(task_id="t", node="node-y", kind="infer", model="m", mode="green",
                    status="ok", ts=time.time(), wall_s=0.1, cpu_s=0.05, cpu_kwh=1e-7,
                    ram_kwh=1e-8, energy_kwh=1.1e-7, carbon_g=4e-5, intensity_g_per_kwh=400.0,
                    intensity_source="static", pue=1.0, power_source="p")
    books = TaskBookkeeper(redis.Redis.from_url(redis_url), "node-y")
    books.task_done(input_key=None, ledger=row)  # lost: said once, repaired
    books.close()
    assert _corrupt_keys(r, keys.LEDGER_STREAM) and r.hget(keys.CARBON_TOTALS, "node-y") is None
    books = TaskBookkeeper(redis.Redis.from_url(redis_url), "node-y")
    books.task_done(input_key=None, ledger=row)
    books.close()
    assert r.xlen(keys.LEDGER_STREAM) == 1
    assert float(r.hget(keys.CARBON_TOTALS, "node-y")) == pytest.approx(4e-5)


def test_a_forged_in_flight_count_is_lowered_to_the_nodes_registry(
        redis_url: str, redis_client: redis.Redis) -> None:
    """99999 requests 'in flight' on node-y would send everything to node-x; no more than
    the requests assigned to node-y can be in flight there."""
    r = redis_client
    _cluster(r)
    r.hset(keys.assigned_key("node-y"), mapping={"a": b"x", "b": b"y"})
    r.hset(keys.IN_FLIGHT, mapping={"node-y": 99999, "node-x": 0})
    settings = Settings.load(env={}, redis_url=redis_url)

    async def check(d: Dispatcher, ar: object) -> None:
        watchdog = Watchdog(settings, d.name, d.handle, d.rejections)
        assert await watchdog.cap_counts(ar) == 1  # type: ignore[arg-type]
        assert await watchdog.cap_counts(ar) == 0  # type: ignore[arg-type]  # not again yet

    d = _dispatch(settings, check)
    assert r.hget(keys.IN_FLIGHT, "node-y") == b"2" and r.hget(keys.IN_FLIGHT, "node-x") == b"0"
    assert d.rejections.total["in-flight"] == 1
