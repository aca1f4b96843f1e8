"""Post-task Redis bookkeeping."""

from __future__ import annotations

import logging
import queue
import threading

import redis

from carbonedge.carbon.ledger import LEDGER_MAXLEN, LedgerRow
from carbonedge.protocol import keys
from carbonedge.protocol.untrusted import Rejections, is_wrong_type, move_aside_sync
from carbonedge.scheduler.budgets import period_index
from carbonedge.transport.repair import RESET_FIELD

log = logging.getLogger(__name__)


class TaskBookkeeper:
    """What can wait after a task, from a background thread: deleting its consumed input,
    appending its ledger row and adding its energy and carbon to the node's totals. Work
    queued meanwhile shares one pipeline. (Its in-flight count is released by the script
    that delivers its result or hands it on, before the result is announced.)
    """

    def __init__(self, client: redis.Redis, node_id: str,
                 budget_period_s: float = 86400.0) -> None:
        self._client = client
        self._node_id = node_id
        self._budget_period_s = budget_period_s
        self.rejections = Rejections(f"agent {node_id}", log)
        """Bookkeeping keys found unusable (repaired), logged once per cause."""
        self._later: queue.SimpleQueue[tuple[str | None, LedgerRow | None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ce-bookkeeping", daemon=True)
        self._thread.start()

    def task_done(self, *, input_key: str | None, ledger: LedgerRow | None = None) -> None:
        """After a task: delete its input and record its ledger row in the background."""
        if input_key or ledger is not None:
            self._later.put((input_key, ledger))

    def record(self, row: LedgerRow) -> None:
        """Append a ledger row that is no task's (idle, start-up) in the background."""
        self._later.put((None, row))

    def close(self) -> None:
        self._later.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            item = self._later.get()
            if item is None:
                return
            batch = [item]
            while not self._later.empty():
                more = self._later.get()
                if more is None:
                    self._flush(batch)
                    return
                batch.append(more)
            self._flush(batch)

    def _count_budgets(self, pipe: redis.client.Pipeline,
                       rows: list[LedgerRow]) -> list[tuple[str, str, str | None]]:
        """Add tenants' carbon to the spend of the budget period each task finished in."""
        spend: dict[tuple[int, str], float] = {}
        for row in rows:
            if row.tenant:
                key = (period_index(row.ts, self._budget_period_s), row.tenant)
                spend[key] = spend.get(key, 0.0) + row.carbon_g
        sent: list[tuple[str, str, str | None]] = []
        for (period, tenant), grams in spend.items():
            key = keys.budget_spend_key(period)
            pipe.hincrbyfloat(key, tenant, grams)
            pipe.expire(key, int(self._budget_period_s * 2))
            sent += [("HINCRBYFLOAT", key, tenant), ("EXPIRE", key, None)]
        return sent

    def _flush(self, batch: list[tuple[str | None, LedgerRow | None]]) -> None:
        inputs = [key for key, _ in batch if key]
        rows = [row for _, row in batch if row is not None]
        sent: list[tuple[str, str, str | None]] = []
        """(command, key, hash field) of each command, to repair what one failed on."""
        try:
            pipe = self._client.pipeline(transaction=False)
            if inputs:
                pipe.delete(*inputs)
                sent.append(("DEL", inputs[0], None))
            for row in rows:
                pipe.xadd(keys.LEDGER_STREAM, row.to_fields(),  # type: ignore[arg-type]
                          maxlen=LEDGER_MAXLEN, approximate=True)
                sent.append(("XADD", keys.LEDGER_STREAM, None))
            carbon = sum(row.carbon_g for row in rows)
            energy = sum(row.energy_kwh for row in rows)
            if rows:
                pipe.hincrbyfloat(keys.CARBON_TOTALS, self._node_id, carbon)
                pipe.hincrbyfloat(keys.ENERGY_TOTALS, self._node_id, energy)
                sent += [("HINCRBYFLOAT", keys.CARBON_TOTALS, self._node_id),
                         ("HINCRBYFLOAT", keys.ENERGY_TOTALS, self._node_id)]
            sent += self._count_budgets(pipe, rows)
            for field, n in self.rejections.take_pending().items():
                pipe.hincrby(keys.REJECTED, field, n)
                sent.append(("HINCRBY", keys.REJECTED, field))
            replies = pipe.execute(raise_on_error=False)
            for command, reply in zip(sent, replies, strict=True):
                if isinstance(reply, redis.ResponseError):
                    self._repair(*command, reply)
        except redis.RedisError as e:
            log.warning("post-task bookkeeping failed (%d inputs, %d ledger rows): %s",
                        len(inputs), len(rows), e)

    def _repair(self, command: str, key: str, field: str | None,
                error: redis.ResponseError) -> None:
        """A key someone filled with the wrong thing: repaired for the next task (this
        task's row or total is lost with it, and that is said once)."""
        if is_wrong_type(error):
            move_aside_sync(self._client, key, "stream" if command == "XADD" else "hash",
                            self.rejections)
        elif command == "HINCRBYFLOAT" and field is not None:  # adding to no number fails
            bad = self._client.hget(key, field)
            if bad is not None:
                RESET_FIELD(self._client, [key], [field, bad, ""])
            self.rejections.reject("bookkeeping", f"{key} {field}",
                                   f"value {bad!r:.40} is not a number: removed")
        else:
            self.rejections.reject("bookkeeping", key, str(error)[:200])
