"""The segment hand-off script on the real Redis: moves only what this node still owns."""

from __future__ import annotations

import redis

from carbonedge.node_agent.segments import HAND_ON
from carbonedge.protocol import keys

ACT = keys.activation_key("r1", 1)
QUEUE = keys.node_queue("b")


def _hand_on(client: redis.Redis, counted: bool) -> int:
    return int(HAND_ON(client, [keys.assigned_key("a"), keys.assigned_key("b"), ACT, QUEUE,
                                keys.IN_FLIGHT],
                       ["r1", "1" if counted else "0", b"\x00activation", 60, b"task", "b",
                        "a"]))


def test_an_owned_request_moves_with_its_task(redis_client: redis.Redis) -> None:
    """...and its in-flight count: released on this node, taken on by the next."""
    redis_client.hset(keys.assigned_key("a"), "r1", b"request bytes")
    redis_client.hset(keys.IN_FLIGHT, "a", 1)
    assert _hand_on(redis_client, counted=True) == 1
    assert redis_client.hgetall(keys.assigned_key("a")) == {}
    assert redis_client.hget(keys.assigned_key("b"), "r1") == b"request bytes"
    assert redis_client.get(ACT) == b"\x00activation"
    assert 0 < redis_client.ttl(ACT) <= 60
    assert redis_client.lrange(QUEUE, 0, -1) == [b"task"]
    assert redis_client.hget(keys.IN_FLIGHT, "b") == b"1"
    assert redis_client.hget(keys.IN_FLIGHT, "a") == b"0"


def test_a_request_taken_from_this_node_is_not_handed_on(redis_client: redis.Redis) -> None:
    assert _hand_on(redis_client, counted=True) == 0
    assert not redis_client.exists(ACT, QUEUE, keys.assigned_key("b"), keys.IN_FLIGHT)


def test_an_uncounted_request_is_handed_on_without_registry(redis_client: redis.Redis) -> None:
    assert _hand_on(redis_client, counted=False) == 1
    assert redis_client.get(ACT) == b"\x00activation"
    assert redis_client.lrange(QUEUE, 0, -1) == [b"task"]
    assert not redis_client.exists(keys.assigned_key("b"), keys.IN_FLIGHT)
