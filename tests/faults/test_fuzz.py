"""Seeded fuzzing: random and hand-made bytes into every place a process reads from Redis.

A few hundred items go into the request stream, both node queues, live and forged
heartbeats and the registry keys (``ce:nodes``, ``ce:inflight``, ``ce:assigned:*``,
decisions, budgets, deferred requests, the ledger, dispatcher beats), some of them keys
of the wrong type. Afterwards every process of the runtime (dispatcher, carbon service,
both agents) must be the same live process, `carbonedge status` and the metrics exporter
must read the wreckage without a traceback, and 10 normal requests must be served.

Bounded in count and time; the seed is ``CARBONEDGE_FUZZ_SEED`` (default below), printed
with any failure so that a run can be replayed.
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
import redis

from carbonedge.client import Client
from carbonedge.client.requests import build_request
from carbonedge.compose.local_runner import LocalRuntime, process_alive
from carbonedge.ops.metrics import RedisStateCollector
from carbonedge.ops.status import collect_cluster
from carbonedge.protocol import keys
from carbonedge.protocol.codec import encode_tensor
from carbonedge.protocol.messages import pack
from carbonedge.transport.publish import encode_task_message
from tests.conftest import TEST_REDIS
from tests.faults.conftest import wait_until
from tests.integration.conftest import SMALL_TOPOLOGY, start_runtime

pytestmark = pytest.mark.timeout(240)

URL = f"{TEST_REDIS}/7"
SEED = int(os.environ.get("CARBONEDGE_FUZZ_SEED", "20151515"))
ITEMS = 1500
"""Items injected, all targets together."""
BUDGET_S = 20.0
"""Injection stops after this long, whatever is left."""
NODES = ("node-a", "node-b")


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    compose = tmp / "compose.yml"
    compose.write_text(SMALL_TOPOLOGY)
    rt = start_runtime(tmp, URL, compose, preload=("mobilenetv2",), carbon_service=True)
    yield rt
    rt.down()


class Fuzzer:
    """Makes bytes: random, mutated from valid messages, and hand-made nasties."""

    def __init__(self, rng: random.Random, app: object) -> None:
        self.rng = rng
        self.app = app
        tensor = encode_tensor(np.zeros((1, 3, 8, 8), np.float32))
        self.valid = [
            pack(build_request(kind="ping", mode="green")),
            pack(build_request(model="mobilenetv2", tensor=tensor, mode="performance")),
            encode_task_message(app, keys.TASK_PING, build_request(kind="ping"),  # type: ignore[arg-type]
                                task_id=uuid.uuid4().hex, queue=keys.node_queue("node-a")),
            b"380.0", b"1800000000.5", b"12", b"node-a",
        ]
        self.nasty = [
            b"", b"[]", b"123", b"null", b"{}", b'"x"', b"true", b"-1", b"nan", b"inf",
            b"1e308", b"-0", b"99999999999999999999999", b"\xff\xfe\xfd", b"\x00" * 64,
            b"\xc1", b"\x91" * 5000, b"[" * 5000, b"{" * 100 + b"}" * 100, b"\xed\xa0\x80",
            msgpack.packb({"v": 1, "id": "x" * 5000}), msgpack.packb({"v": 1, "id": None}),
            msgpack.packb([1, 2, 3]), msgpack.packb({"v": 1, "id": "fz", "kind": "ping",
                                                    "submitted_at": 1e308, "deadline_s": 1}),
            json.dumps({"body": "", "headers": "x", "properties": {
                "correlation_id": "fuzz-headers", "delivery_tag": "t",
                "delivery_info": {"exchange": "", "routing_key": "q"}}}).encode(),
            json.dumps({"body": base64.b64encode(msgpack.packb([[], {}, {}])).decode(),
                        "content-type": "application/x-msgpack", "content-encoding": "binary",
                        "headers": {"task": keys.TASK_INFER, "id": "fuzz-noargs"},
                        "properties": {"delivery_tag": "t2", "body_encoding": "base64",
                                       "delivery_info": {"exchange": "",
                                                         "routing_key": "q"}}}).encode(),
            b"x" * 65536, "é".encode("latin-1"), b"exec_ms.mobilenetv2",
        ]

    def random_bytes(self) -> bytes:
        n = self.rng.choice((1, 4, 16, 64, 512))
        return bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(0, n)))

    def mutated(self) -> bytes:
        data = bytearray(self.rng.choice(self.valid))
        for _ in range(self.rng.randint(1, 4)):
            if not data:
                break
            i = self.rng.randrange(len(data))
            action = self.rng.random()
            if action < 0.5:
                data[i] ^= 1 << self.rng.randrange(8)
            elif action < 0.75:
                del data[i:i + self.rng.randint(1, 8)]
            else:
                data[i:i] = self.random_bytes()
        return bytes(data)

    def value(self) -> bytes:
        pick = self.rng.random()
        if pick < 0.3:
            return self.rng.choice(self.nasty)
        if pick < 0.65:
            return self.mutated()
        if pick < 0.8:
            return self.rng.choice(self.valid)
        return self.random_bytes()

    def name(self) -> bytes:
        return self.rng.choice((b"node-a", b"node-b", b"node-x", b"", b"\xff",
                                self.random_bytes()[:20], b"node-a\n", b"../x"))


def inject(r: redis.Redis, fz: Fuzzer, rng: random.Random) -> dict[str, int]:
    """One random item into one random target; returns how many went where."""
    node = rng.choice(NODES)
    targets: dict[str, Callable[[], object]] = {
        "stream": lambda: r.xadd(keys.REQUEST_STREAM, {keys.REQUEST_FIELD: fz.value()}
                                 if rng.random() < 0.8 else {fz.value()[:30] or b"k": fz.value()}),
        "stream-attempt": lambda: r.xadd(keys.REQUEST_STREAM, {keys.REQUEST_FIELD: fz.value(),
                                                               "a": fz.value()[:20]}),
        "queue": lambda: r.lpush(keys.node_queue(node), fz.value()),
        "heartbeat": lambda: r.hset(keys.node_key(node), rng.choice((
            b"carbon_intensity", b"cpu_quota", b"exec_ms.mobilenetv2", b"node_id", b"ts",
            b"mem_limit_bytes", b"ci_forecast", b"started_at", b"tasks_done",
            b"cpu_usage_s", b"intensity_source", fz.random_bytes()[:12] or b"f")),
            fz.value()),
        "forged-node": lambda: (r.hset(keys.node_key("node-x"), fz.value()[:20] or b"f",
                                       fz.value()), r.sadd(keys.NODES, b"node-x")),
        "nodes": lambda: r.sadd(keys.NODES, fz.name() or b"-"),
        "inflight": lambda: r.hset(keys.IN_FLIGHT, fz.name() or b"-", fz.value()),
        "assigned": lambda: r.hset(keys.assigned_key(node), fz.value()[:40] or b"id",
                                   fz.value()),
        "decisions": lambda: r.hset(keys.DECISIONS, fz.value()[:30] or b"d", fz.value()),
        "budget": lambda: r.hset(keys.budget_spend_key(int(time.time() // 86400)),
                                 fz.value()[:30] or b"t", fz.value()),
        "deferred": lambda: r.zadd(keys.DEFERRED, {fz.value() or b"d": time.time() - 1}),
        "ledger": lambda: r.xadd(keys.LEDGER_STREAM, {fz.value()[:20] or b"k": fz.value(),
                                                      b"node": fz.name() or b"-"}),
        "dispatcher-beat": lambda: r.hset(keys.DISPATCHER_ALIVE, fz.name() or b"-",
                                          fz.value()),
        "totals": lambda: r.hset(rng.choice((keys.CARBON_TOTALS, keys.ENERGY_TOTALS)),
                                 fz.name() or b"-", fz.value()),
        "wrong-type": lambda: _wrong_type(r, rng),
    }
    weights = {"stream": 6, "stream-attempt": 1, "queue": 6, "heartbeat": 4,
               "forged-node": 2, "nodes": 2, "inflight": 2, "assigned": 2, "decisions": 1,
               "budget": 1, "deferred": 1, "ledger": 2, "dispatcher-beat": 1, "totals": 1,
               "wrong-type": 0.3}
    name = rng.choices(list(weights), list(weights.values()))[0]
    try:
        targets[name]()
    except redis.ResponseError:
        pass  # e.g. a key a previous item left of the wrong type: the processes repair it
    return {name: 1}


WRONG_TYPED = (keys.IN_FLIGHT, keys.DECISIONS, keys.QUARANTINE, keys.assigned_key("node-a"),
               keys.DEFERRED, keys.DEAD_LETTER_STREAM, keys.REJECTED, keys.LEDGER_STREAM,
               keys.NODES, keys.REQUEST_STREAM, keys.HOST_POWER, keys.DISPATCHER_ALIVE)


def _wrong_type(r: redis.Redis, rng: random.Random) -> None:
    """Replace one of CarbonEdge's keys by one of another type."""
    key = rng.choice(WRONG_TYPED)
    r.delete(key)
    if key.endswith(("inflight", "decisions", "quarantine", "rejected", "nodes", "alive",
                     "host")) or "assigned" in key:
        r.rpush(key, b"not", b"a hash")
    else:
        r.set(key, b"not a " + key.encode())


def test_every_process_survives_the_fuzz_and_serves(runtime: LocalRuntime) -> None:
    seed_note = f"(CARBONEDGE_FUZZ_SEED={SEED})"
    rng = random.Random(SEED)
    r = redis.Redis.from_url(runtime.settings.redis_url)
    pids = {p.name: p.pid for p in runtime.state.processes}
    assert set(pids) == {"carbon", "dispatcher", *NODES}
    client = Client(runtime.settings)
    fz = Fuzzer(rng, client._app)
    injected: dict[str, int] = {}
    started = time.monotonic()
    for _ in range(ITEMS):
        if time.monotonic() - started > BUDGET_S:
            break
        for target, n in inject(r, fz, rng).items():
            injected[target] = injected.get(target, 0) + n
    assert sum(injected.values()) >= ITEMS // 2, (injected, seed_note)
    print(f"fuzz {seed_note}: {sum(injected.values())} items in "
          f"{time.monotonic() - started:.1f} s: {injected}")
    # the poison is consumed: queues drained, stream read, the agents counted it
    wait_until(lambda: all(_llen(r, keys.node_queue(n)) == 0 for n in NODES), 90,
               f"the node queues to drain {seed_note}")
    wait_until(lambda: _stream_done(r), 90, f"the request stream to be read {seed_note}")
    dead = [p for p, pid in pids.items() if not process_alive(pid)]
    assert not dead, f"{dead} died under the fuzz {seed_note}; logs in {runtime.run_dir}"
    rejected = {k.decode(errors="replace"): v for k, v in r.hgetall(keys.REJECTED).items()} \
        if r.type(keys.REJECTED) == b"hash" else {}
    assert any("queue-item" in k for k in rejected), (rejected, seed_note)
    # 10 normal requests, on fresh heartbeats (the agents replace theirs every beat)
    wait_until(lambda: {row.node_id for row in collect_cluster(r).nodes if row.alive}
               >= set(NODES), 30, f"valid heartbeats {seed_note}")
    image = np.random.default_rng(SEED).standard_normal((1, 3, 224, 224)).astype(np.float32)
    handles = [client.submit("mobilenetv2", image, mode=("green", "performance")[i % 2])
               for i in range(10)]
    served = [h.result(120) for h in handles]
    assert len(served) == 10 and {s.node for s in served} <= set(NODES), seed_note
    client.close()
    # and everything that reads Redis for people still can (after the dispatcher's next
    # beat: one may have just been moved aside with the key of the wrong type it was in)
    wait_until(lambda: any(name.endswith(f"-{pids['dispatcher']}")
                           for name in collect_cluster(r).live_dispatchers), 30,
               f"the dispatcher's beat {seed_note}")
    status = subprocess.run([sys.executable, "-m", "carbonedge.cli", "--redis-url",
                             runtime.settings.redis_url, "status"], capture_output=True,
                            text=True, timeout=60)
    assert status.returncode == 0 and "Traceback" not in status.stderr, (status.stderr,
                                                                         seed_note)
    assert "dispatcher: DEAD" not in status.stdout, (status.stdout, seed_note)
    collector = RedisStateCollector(runtime.settings.redis_url)
    try:
        families = {f.name: f for f in collector.collect()}
    finally:
        collector.close()
    assert families["ce_redis_up"].samples[0].value == 1, seed_note
    assert not [p for p, pid in pids.items() if not process_alive(pid)], seed_note
    # nothing was a surprise: every bad value took a path meant for it
    for log_file in sorted((runtime.run_dir / "logs").glob("*.log")):
        assert "Traceback" not in log_file.read_text(errors="replace"), (log_file, seed_note)
    r.close()


def _llen(r: redis.Redis, key: str) -> int:
    try:
        return int(r.llen(key))
    except redis.ResponseError:
        return 0


def _stream_done(r: redis.Redis) -> bool:
    try:
        groups = r.xinfo_groups(keys.REQUEST_STREAM)
        return r.xlen(keys.REQUEST_STREAM) == 0 and all(g["pending"] == 0 for g in groups)
    except redis.ResponseError:
        return False
