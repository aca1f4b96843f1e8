"""The delivery and recovery scripts on the real Redis, one step at a time."""

from __future__ import annotations

import asyncio
import json

import msgpack
import redis
import redis.asyncio as aioredis

from carbonedge.dispatcher.recovery import Watchdog
from carbonedge.node_agent.guard import DeliveryGuard
from carbonedge.protocol import keys
from carbonedge.protocol.task import Task
from carbonedge.settings import Settings
from carbonedge.transport.celery_app import make_celery_app
from carbonedge.transport.delivery import deliver
from carbonedge.transport.handback import (
    ORPHANS,
    TAKE,
    orphans_call,
    release_previous_life,
    take_call,
)
from carbonedge.transport.listener import result_key
from carbonedge.transport.publish import encode_task_message


def _meta(r: redis.Redis, request_id: str) -> dict:
    return msgpack.unpackb(r.get(result_key(request_id)), raw=False)


def test_first_result_wins_and_the_late_one_is_counted(redis_client: redis.Redis) -> None:
    r = redis_client
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(result_key("req-1"))
    pubsub.get_message(timeout=1)
    r.hset(keys.assigned_key("node-a"), "req-1", b"request")
    r.hset(keys.IN_FLIGHT, mapping={"node-a": 1, "node-b": 1})
    assert deliver(r, "req-1", {"status": "ok", "node": "node-b"}, node="node-b", counted=True)
    assert not deliver(r, "req-1", {"status": "ok", "node": "node-a"}, node="node-a",
                       counted=True)
    assert _meta(r, "req-1")["result"]["node"] == "node-b"
    published = [pubsub.get_message(timeout=1) for _ in range(2)]
    assert sum(1 for m in published if m) == 1
    assert r.hget(keys.DELIVERY_STATS, "late_results") == b"1"
    assert r.hlen(keys.assigned_key("node-a")) == 0  # the late node's registry is cleaned
    # the count is released by the node whose registry held the request, with the result;
    # node-b's registry did not hold it (recovery released that count), so it keeps its own
    assert r.hget(keys.IN_FLIGHT, "node-a") == b"0"
    assert r.hget(keys.IN_FLIGHT, "node-b") == b"1"
    pubsub.close()


def _queued_message(app, request_id: str, node: str) -> bytes:
    return encode_task_message(app, keys.TASK_PING, {"v": 1, "id": request_id}, task_id=request_id,
                               queue=keys.node_queue(node))


def test_take_moves_a_dead_nodes_requests_back_to_the_stream(redis_client: redis.Redis) -> None:
    r = redis_client
    app = make_celery_app(Settings.load(env={}))
    queue = keys.node_queue("node-x")
    for i in range(3):
        r.hset(keys.assigned_key("node-x"), f"q{i}", f"request-{i}".encode())
    direct = _queued_message(app, "direct", "node-x")  # sent past the dispatcher
    r.lpush(queue, _queued_message(app, "q0", "node-x"), b"{{ not json", direct)
    running = json.dumps([json.loads(_queued_message(app, "q1", "node-x")), "", queue])
    other = json.dumps([json.loads(_queued_message(app, "z", "node-y")), "", "ce.node.node-y"])
    r.hset(keys.KOMBU_UNACKED, mapping={"tag1": running, "tag2": other})
    r.zadd(keys.KOMBU_UNACKED_INDEX, {"tag1": 1.0, "tag2": 1.0})
    r.hset(keys.IN_FLIGHT, "node-x", 3)
    r.hset(keys.node_key("node-x"), "ts", "1")

    script_keys, args = take_call("node-x", "test")
    assert TAKE(r, script_keys, args) == [0, 0, 0]  # still alive
    r.delete(keys.node_key("node-x"))
    assert TAKE(r, script_keys, args) == [3, 1, 1]
    assert TAKE(r, script_keys, args) == [0, 0, 0]  # only once

    entries = r.xrange(keys.REQUEST_STREAM)
    assert sorted(f[b"p"] for _, f in entries) == [b"request-0", b"request-1", b"request-2"]
    assert {f[b"a"] for _, f in entries} == {b"1"}
    assert r.lrange(queue, 0, -1) == [direct, b"{{ not json"]  # not ours to move: they stay
    assert r.hkeys(keys.KOMBU_UNACKED) == [b"tag2"]
    assert r.zrange(keys.KOMBU_UNACKED_INDEX, 0, -1) == [b"tag2"]
    assert r.hget(keys.IN_FLIGHT, "node-x") == b"0"
    assert r.xlen(keys.RECOVERIES) == 1
    app.close()


def test_a_restarting_agent_hands_back_its_previous_life(redis_client: redis.Redis) -> None:
    r = redis_client
    r.hset(keys.node_key("node-x"), "ts", "1")  # the old life's heartbeat has not expired
    r.hset(keys.assigned_key("node-x"), "old", b"request")
    taken = release_previous_life(r, "node-x")
    assert (taken.requests, r.xlen(keys.REQUEST_STREAM)) == (1, 1)


def test_a_live_nodes_orphaned_request_is_re_dispatched(redis_client: redis.Redis,
                                                        redis_url: str) -> None:
    """A request assigned to a live node but in neither its queue nor kombu's unacked
    registry (its message was popped as Redis died) is moved after ``orphan_after_s``."""
    r = redis_client
    app = make_celery_app(Settings.load(env={}))
    queue = keys.node_queue("node-x")
    for name in ("queued", "running", "orphan"):
        r.hset(keys.assigned_key("node-x"), name, f"request-{name}".encode())
    r.lpush(queue, _queued_message(app, "queued", "node-x"))
    running = json.dumps([json.loads(_queued_message(app, "running", "node-x")), "", queue])
    elsewhere = json.dumps([json.loads(_queued_message(app, "orphan", "node-y")), "",
                            "ce.node.node-y"])  # the same id unacked on another queue
    r.hset(keys.KOMBU_UNACKED, mapping={"tag1": running, "tag2": elsewhere})
    r.hset(keys.IN_FLIGHT, "node-x", 3)
    r.sadd(keys.NODES, "node-x")
    r.hset(keys.node_key("node-x"), "ts", "1")  # alive: recover_nodes leaves it alone

    script_keys, args = orphans_call("node-x", "find")
    assert ORPHANS(r, script_keys, args) == [b"orphan"]
    script_keys, args = orphans_call("node-x", "move", ["queued", "running"])
    assert ORPHANS(r, script_keys, args) == 0  # held: stay

    async def sweep(watchdog: Watchdog) -> int:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await watchdog.rescue_orphans(client)
        finally:
            await client.aclose()

    watchdog = Watchdog(Settings.load(env={}, orphan_after_s=0.4), "d", lambda *_: None)
    assert asyncio.run(sweep(watchdog)) == 0  # first seen orphaned: not moved yet
    assert asyncio.run(sweep(watchdog)) == 0  # checked again too soon: nothing happens
    asyncio.run(asyncio.sleep(0.45))
    assert asyncio.run(sweep(watchdog)) == 1
    entries = r.xrange(keys.REQUEST_STREAM)
    assert [(f[b"p"], f[b"a"]) for _, f in entries] == [(b"request-orphan", b"1")]
    assert sorted(r.hkeys(keys.assigned_key("node-x"))) == [b"queued", b"running"]
    assert r.hget(keys.IN_FLIGHT, "node-x") == b"2"
    assert r.xrevrange(keys.RECOVERIES, count=1)[0][1][b"reason"] == b"orphaned"
    app.close()


def _task(request_id: str, attempt: int = 1) -> Task:
    """A ping the dispatcher counted in node-x's in-flight work."""
    return Task.from_wire({"v": 1, "id": request_id, "kind": "ping", "submitted_at": 1.0,
                           "node": "node-x", "counted": True, "attempt": attempt})


def test_guard_skips_moved_requests_and_answers_crashes(redis_client: redis.Redis) -> None:
    r = redis_client
    guard = DeliveryGuard(r, "node-x")
    ran = []
    r.hset(keys.ATTEMPTS, "moved", 1)  # what recovery counts when it re-dispatches one
    assert not guard.run("moved", _task("moved"), ran.append)
    assert ran == [] and r.hget(keys.DELIVERY_STATS, "skipped_moved") == b"1"
    # not in the registry, but no recovery moved it (its registry write was lost): run
    ok = {"v": 1, "id": "lost", "status": "ok"}
    assert guard.run("lost", _task("lost"), lambda p: dict(ok))
    assert _meta(r, "lost")["result"]["status"] == "ok"
    # the copy recovery moved away from this node is skipped; a later dispatch runs
    r.hset(keys.ATTEMPTS, "again", 1)
    assert guard.run("again", _task("again", attempt=2),
                     lambda p: {"v": 1, "id": "again", "status": "ok"})

    def crash(payload: object) -> dict:
        raise RuntimeError("boom")

    r.hset(keys.assigned_key("node-x"), "mine", b"request")
    assert guard.run("mine", _task("mine"), crash)
    result = _meta(r, "mine")["result"]
    assert result["status"] == "error" and "boom" in result["error"]["message"]
    assert result["error"]["code"] == "inference_failed"
