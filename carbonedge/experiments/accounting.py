"""Jepsen-style accounting: every submitted request must end in exactly one outcome.

A :class:`OutcomeLedger` subscribes to every result announcement (``celery-task-meta-*``)
before anything is submitted, on a connection of its own, so it sees each result that
was delivered, including any second one for the same request. Requests go straight onto
the request stream (as :class:`~carbonedge.client.Client` sends them), so the
ledger can submit thousands quickly and count them independently of the client code.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import redis

from carbonedge.client.requests import build_request
from carbonedge.connections import confirm_replicated, redis_client
from carbonedge.errors import RuntimeUnavailable
from carbonedge.protocol import keys
from carbonedge.protocol.messages import pack
from carbonedge.transport.listener import RESULT_KEY_PREFIX


@dataclass
class Report:
    """Outcome counts of one fault run."""

    submitted: int
    delivered: int
    """Requests answered with a result."""
    errored: int
    """Requests answered with an error result."""
    duplicated: int
    """Requests answered more than once (must be 0)."""
    lost: int
    """Requests never answered (must be 0)."""
    unconfirmed: int = 0
    """Submissions that raised (Redis lost, or not replicated in time): not acknowledged,
    so not counted as lost when unanswered."""
    errors: Counter[str] = field(default_factory=Counter)
    nodes: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        return (f"submitted={self.submitted} delivered={self.delivered} errored={self.errored} "
                f"duplicated={self.duplicated} lost={self.lost} unconfirmed={self.unconfirmed} "
                f"errors={dict(self.errors)} "
                f"nodes={dict(self.nodes)}")


class OutcomeLedger:
    """Submits requests and counts every result announced for them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client = redis_client(url, socket_timeout=30)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe(RESULT_KEY_PREFIX + "*")
        self._pubsub.get_message(timeout=5)  # the subscription is confirmed before any submit
        self.submitted: dict[str, float] = {}
        self.unconfirmed: dict[str, float] = {}
        """Requests whose submission raised: they may or may not have arrived."""
        self.outcomes: dict[str, list[tuple[float, dict[str, Any]]]] = defaultdict(list)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="ledger", daemon=True)
        self._thread.start()

    # -- submitting --------------------------------------------------------------------

    def submit(self, request: dict[str, Any]) -> str:
        self.submit_many([request])
        return request["id"]

    def submit_many(self, requests: list[dict[str, Any]]) -> list[str]:
        pipe = self._client.pipeline(transaction=False)
        now = time.time()
        with self._lock:
            for request in requests:
                self.submitted[request["id"]] = now
        for request in requests:
            pipe.xadd(keys.REQUEST_STREAM, {keys.REQUEST_FIELD: pack(request)})
        try:
            pipe.execute()
            confirm_replicated(self._client, self.url, f"{len(requests)} request(s)")
        except (redis.RedisError, RuntimeUnavailable):
            with self._lock:
                for request in requests:
                    self.unconfirmed[request["id"]] = self.submitted.pop(request["id"])
            raise
        return [r["id"] for r in requests]

    def expect(self, request_ids: list[str]) -> None:
        """Count requests that the caller submitted some other way."""
        now = time.time()
        with self._lock:
            for request_id in request_ids:
                self.submitted[request_id] = now

    def submit_pings(self, n: int, **options: Any) -> list[str]:
        return self.submit_many([build_request(kind="ping", **options) for _ in range(n)])

    def submit_paced(self, requests: int, rate_per_s: float,
                     after_batch: Callable[[int], None] | None = None) -> None:
        """Submit ``requests`` pings at ``rate_per_s`` in batches of 20 ms; after each
        batch, ``after_batch(sent so far)`` (where a load run injects its faults)."""
        batch = max(1, round(rate_per_s / 50))
        started = time.monotonic()
        sent = 0
        while sent < requests:
            n = min(batch, requests - sent)
            self.submit_pings(n)
            sent += n
            if after_batch is not None:
                after_batch(sent)
            time.sleep(max(0.0, started + sent / rate_per_s - time.monotonic()))

    # -- waiting and counting ----------------------------------------------------------

    def answered(self) -> int:
        with self._lock:
            return sum(1 for i in self.submitted if self.outcomes.get(i))

    def wait(self, timeout_s: float, *, settle_s: float = 1.0) -> Report:
        """Wait until every request is answered (or ``timeout_s``), then a little longer
        so that a duplicate delivered late is seen too."""
        deadline = time.monotonic() + timeout_s
        while self.answered() < len(self.submitted) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(settle_s)
        self._read_stored()
        return self.report()

    def _read_stored(self) -> None:
        """Results stored while the subscription was down (a Redis restart) count too."""
        with self._lock:
            missing = [i for i in self.submitted if not self.outcomes.get(i)]
        for request_id in missing:
            raw = self._client.get(RESULT_KEY_PREFIX + request_id)
            if raw is not None:  # unless its announcement arrived meanwhile: not a second one
                self._record(request_id, raw, only_if_missing=True)

    def missing(self) -> dict[str, dict[str, Any]]:
        """Where each unanswered request is, for a failure message."""
        with self._lock:
            ids = [i for i in self.submitted if not self.outcomes.get(i)]
        out = {}
        for request_id in ids[:20]:
            out[request_id] = {
                "done": self._client.get(keys.done_key(request_id)),
                "assigned": [k.decode() for k in self._client.scan_iter(keys.assigned_key("*"))
                             if self._client.hexists(k, request_id)],
                "attempts": self._client.hget(keys.ATTEMPTS, request_id),
            }
        return out

    def report(self) -> Report:
        with self._lock:
            report = Report(len(self.submitted), 0, 0, 0, 0, unconfirmed=len(self.unconfirmed))
            for request_id in self.submitted:
                results = self.outcomes.get(request_id, [])
                if not results:
                    report.lost += 1
                    continue
                if len(results) > 1:
                    report.duplicated += 1
                first = results[0][1]
                if first.get("status") == "ok":
                    report.delivered += 1
                    report.nodes[str(first.get("node"))] += 1
                else:
                    report.errored += 1
                    report.errors[str((first.get("error") or {}).get("code"))] += 1
            return report

    def duplicates(self) -> dict[str, list[tuple[float, dict[str, Any]]]]:
        """Every request answered more than once, with each of its outcomes."""
        with self._lock:
            return {i: list(self.outcomes[i]) for i in self.submitted
                    if len(self.outcomes.get(i, ())) > 1}

    def delivered_at(self, request_id: str) -> float | None:
        with self._lock:
            results = self.outcomes.get(request_id)
            return results[0][0] if results else None

    def result(self, request_id: str) -> dict[str, Any] | None:
        """The first result delivered for ``request_id``."""
        with self._lock:
            results = self.outcomes.get(request_id)
            return results[0][1] if results else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pubsub.close()
        self._client.close()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.2)
            except redis.ConnectionError:  # a Redis restart: resubscribe and carry on
                time.sleep(0.2)
                continue
            if message is None or message["type"] != "pmessage":
                continue
            self._record(message["channel"].decode()[len(RESULT_KEY_PREFIX):], message["data"])

    def _record(self, request_id: str, raw: bytes, *, only_if_missing: bool = False) -> None:
        meta = msgpack.unpackb(raw, raw=False)
        result = meta.get("result") if isinstance(meta, dict) else None
        with self._lock:
            if only_if_missing and self.outcomes.get(request_id):
                return
            self.outcomes[request_id].append(
                (time.time(), result if isinstance(result, dict) else {"status": "?"}))
