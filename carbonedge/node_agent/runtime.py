"""What an agent does with one task, independent of Celery: decode, run, account, encode."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import redis

from carbonedge.carbon.providers import IntensityReading
from carbonedge.cgroups import CgroupAccounting
from carbonedge.errors import (
    CarbonEdgeError,
    InferenceFailed,
    InvalidMessage,
    InvalidRequest,
)
from carbonedge.node_agent.backend import ModelBackend
from carbonedge.node_agent.bookkeeping import TaskBookkeeper
from carbonedge.node_agent.charging import ChargeMeter, Stretch
from carbonedge.node_agent.config import AgentConfig
from carbonedge.node_agent.energy import EnergyAccountant, charge_fields, ledger_row, stretch_row
from carbonedge.node_agent.inputs import model_input
from carbonedge.node_agent.stats import ExecStats
from carbonedge.partitioner.outputs import top_k
from carbonedge.protocol import keys
from carbonedge.protocol.codec import TensorLimits
from carbonedge.protocol.messages import (
    PROTOCOL_VERSION,
    check_version,
    error_result,
    require,
    unpack,
)
from carbonedge.settings import Settings

log = logging.getLogger(__name__)

WARM_UP_RUNS = 3


class AgentRuntime:
    """Runs inference requests on this node and reports timings, energy and carbon."""

    def __init__(
        self,
        config: AgentConfig,
        settings: Settings,
        *,
        accounting: CgroupAccounting,
        energy: EnergyAccountant,
        models: ModelBackend,
        stats: ExecStats,
        bookkeeper: TaskBookkeeper,
        redis_client: redis.Redis,
        meter: ChargeMeter | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.accounting = accounting
        self.energy = energy
        self.models = models
        """What loads and runs this node's models (torch or onnxruntime)."""
        self.stats = stats
        self._bookkeeper = bookkeeper
        self._redis = redis_client
        self.limits = TensorLimits(max_elements=settings.max_tensor_elements)
        self._warm: set[str] = set()
        self.meter = meter or ChargeMeter(accounting.cpu_usage_s, config.cpu_quota)

    def start_charging(self) -> None:
        """Start-up is over (call it after loading models): its CPU and time go to one
        ``startup`` ledger row; from now on every CPU-second is a task's or idle."""
        self.record_stretch("startup", self.meter.startup_done())

    def flush_idle(self, min_wall_s: float = 0.0) -> None:
        """Record the CPU burnt and the RAM held between tasks since the last flush (if
        that was at least ``min_wall_s`` ago)."""
        self.record_stretch("idle", self.meter.flush_idle(min_wall_s))

    def record_stretch(self, row_type: str, stretch: Stretch | None) -> None:
        if stretch is None or stretch.wall_s <= 0:
            return
        device = self.energy.device
        charge = self.energy.charge_idle(stretch.cpu_s, stretch.wall_s, stretch.busy_s)
        self._bookkeeper.record(stretch_row(row_type, self.config.node_id, charge,
                                            started_at=stretch.started_at,
                                            wall_s=stretch.wall_s, device=device))

    # -- tasks -------------------------------------------------------------------------

    def infer(self, payload: Any) -> dict[str, Any]:
        """Run one whole-model request; never raises, always returns a result map."""
        return self._guarded(payload, self._infer)

    def infer_segment(
        self, payload: Any, run: Callable[[dict[str, Any], float], dict[str, Any]]
    ) -> dict[str, Any]:
        """Run one segment of a partitioned request (``run`` does the work) under the same
        accounting as :meth:`infer`; never raises. A segment's time is not a sample of the
        model's service time."""
        return self._guarded(payload, run, sample=False)

    def ping(self, payload: Any) -> dict[str, Any]:
        """Do no work: measures the dispatch path itself."""
        return self._guarded(payload, self._ping)

    # -- internals ---------------------------------------------------------------------

    def _guarded(self, payload: Any, run: Any, *, sample: bool = True) -> dict[str, Any]:
        started_at = time.time()
        reading = self.energy.intensity()  # a task is priced at the intensity it started in
        self.meter.task_started()  # its stretch began when the consumer saw its message
        req_id = payload.get("id") if isinstance(payload, dict) else None
        req_id = req_id if isinstance(req_id, str) else "unknown"
        self.stats.started()
        result: dict[str, Any] | None = None
        try:
            try:
                if not isinstance(payload, dict):
                    raise InvalidMessage(
                        f"task payload must be a map, got {type(payload).__name__}")
                check_version(payload)
                result = run(payload, started_at)
            except CarbonEdgeError as e:
                log.warning("request %s failed: %s", req_id, e)
                result = self.error_result(payload, req_id, e, started_at)
            except Exception as e:  # a model crash must become an error result, not a dead worker
                log.exception("request %s crashed", req_id)
                result = self.error_result(payload, req_id,
                                     InferenceFailed(f"{type(e).__name__}: {e}"), started_at)
        finally:
            self._account(payload, req_id, result, started_at, reading, sample)
        return result

    def _account(self, payload: Any, req_id: str, result: dict[str, Any] | None,
                 started_at: float, reading: IntensityReading, sample: bool = True) -> None:
        """Charge the task its own CPU (from its message's arrival to now, split into the
        model run and the rest), update the node's stats, and do the Redis bookkeeping
        (in-flight count, input deletion, ledger row)."""
        timings = result.get("timings") if isinstance(result, dict) else None
        model_cpu = timings.get("cpu_s", 0.0) if isinstance(timings, dict) else 0.0
        cpu = self.meter.task_finished(model_cpu if isinstance(model_cpu, float) else 0.0)
        wall_s = max(time.time() - started_at, 0.0)
        model_name, service_ms, ledger = None, None, None
        if result is not None:
            charge = self.energy.charge(cpu, reading)
            result.update(charge_fields(charge))
            if result.get("status") == "ok" and sample:
                model_name = result.get("model")
                if model_name in self._warm:
                    # the scheduler's service time: how long this task kept the emulated
                    # device busy, the T that S_P and S_C (and so the plan) price with
                    service_ms = charge.device.busy_s * 1e3
                elif model_name is not None:  # a first run allocates buffers: not typical
                    self._warm.add(model_name)
            tenant = payload.get("tenant") if isinstance(payload, dict) else None
            ledger = ledger_row(result, charge, started_at=started_at, wall_s=wall_s,
                                device=self.energy.device,
                                tenant=tenant if isinstance(tenant, str) else "")
        self.stats.finished(model_name, service_ms)
        if isinstance(payload, dict):
            self._bookkeeper.task_done(
                counted=payload.get("counted") is True,
                input_key=keys.input_key(req_id) if payload.get("input_ref") is True else None,
                ledger=ledger,
            )

    def _infer(self, payload: dict[str, Any], started_at: float) -> dict[str, Any]:
        name = require(payload, "model", str)
        served = self.models.get(name)
        x = model_input(self.read_input(payload), served, self.limits)
        # the model run's CPU from the process clock: a cgroup counter lags by up to a
        # scheduler tick (4 ms at HZ=250), as long as a whole ONNX Runtime inference
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        logits = self.models.run(name, x)
        t1 = time.perf_counter()
        cpu_s = max(time.process_time() - cpu0, 0.0)
        ids, scores = top_k(logits, 5)
        result = self.ok_result(payload, started_at, (t1 - t0) * 1e3, cpu_s)
        result.update(
            model=name,
            output={"top5_ids": ids, "top5_scores": scores},
            random_init=served.random_init,
            weights_source=served.weights_source,
        )
        return result

    def warm_up(self, model: str, runs: int = WARM_UP_RUNS) -> float:
        """Run ``model`` on zeros so that no real task pays first-run costs (buffers,
        kernels chosen on first use), and seed the model's telemetry with its service time
        here (the best run after the first); the scheduler then knows every model's cost
        on this node before any task. Returns it (ms)."""
        served = self.models.get(model)
        x = np.zeros(served.spec.batch_shape, np.float32)
        costs = []
        for _ in range(max(runs, 1)):
            cpu0 = time.process_time()  # (see _infer)
            t0 = time.perf_counter()
            self.models.run(model, x)
            exec_ms = (time.perf_counter() - t0) * 1e3
            costs.append(self._service_ms({"exec_ms": exec_ms,
                                           "cpu_s": max(time.process_time() - cpu0, 0.0)}))
        service_ms = min(costs[1:] or costs)
        self.stats.seed(model, service_ms)
        self._warm.add(model)
        return service_ms

    def _service_ms(self, timings: dict[str, float]) -> float:
        """A warm-up run's service time: its model run's CPU over the node's quota (a
        task's is its whole CPU over the quota, see :meth:`_account`). Not its wall time:
        within one CFS period a lone run may go unthrottled (0.6 CPU still allows a 60 ms
        burst per 100 ms), which shows a small node as fast as a big one, and on a shared
        host wall times swing with the neighbours. The wall time stands in only where no
        CPU time was measured.
        """
        cpu_ms = timings["cpu_s"] * 1e3
        return cpu_ms / self.config.cpu_quota if cpu_ms > 0 else timings["exec_ms"]

    def read_input(self, payload: dict[str, Any]) -> Any:
        """The request's tensor map: inline, or fetched from its ``ce:input:<id>`` key."""
        if payload.get("input_ref") is not True:
            return payload.get("input")
        raw = self._redis.get(keys.input_key(payload["id"]))
        if raw is None:
            raise InvalidRequest(
                f"the input of request {payload['id']} is no longer in Redis (expired after "
                f"{self.settings.input_ttl_s} s, or already consumed)", field="input")
        return unpack(raw, max_bytes=self.settings.max_payload_bytes)

    def _ping(self, payload: dict[str, Any], started_at: float) -> dict[str, Any]:
        return self.ok_result(payload, started_at, 0.0, 0.0)

    def ok_result(
        self, payload: dict[str, Any], started_at: float, exec_ms: float, cpu_s: float
    ) -> dict[str, Any]:
        """A success result of this node; energy and carbon are added once the whole task is
        measured."""
        return {
            "v": PROTOCOL_VERSION,
            "id": payload["id"],
            "status": "ok",
            "kind": payload.get("kind", "infer"),
            "node": self.config.node_id,
            "runtime": self.models.runtime,
            "model": payload.get("model"),
            "mode": payload.get("mode"),
            "timings": self._timings(payload, started_at, exec_ms, cpu_s),
            "decision": payload.get("decision"),
            "deferred_until": payload.get("deferred_until"),
        }

    def _timings(
        self, payload: dict[str, Any], started_at: float, exec_ms: float, cpu_s: float
    ) -> dict[str, float]:
        sent = payload.get("dispatched_at") or payload.get("submitted_at")
        queue_ms = (started_at - sent) * 1e3 if _is_time(sent) else float("nan")
        return {
            "submitted_at": _time_or_nan(payload.get("submitted_at")),
            "dispatched_at": _time_or_nan(payload.get("dispatched_at")),
            "started_at": started_at,
            "finished_at": time.time(),
            "queue_ms": max(queue_ms, 0.0) if math.isfinite(queue_ms) else queue_ms,
            "exec_ms": exec_ms,
            "cpu_s": cpu_s,
        }

    def error_result(
        self, payload: Any, req_id: str, error: CarbonEdgeError, started_at: float
    ) -> dict[str, Any]:
        """The error result of this node for ``payload``, naming ``error``."""
        extra: dict[str, Any] = {"kind": "infer", "timings": {"started_at": started_at}}
        if isinstance(payload, dict):
            extra.update(model=payload.get("model"), mode=payload.get("mode"),
                         decision=payload.get("decision"))
        return error_result(req_id, error, node=self.config.node_id, **extra)


def _is_time(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _time_or_nan(value: Any) -> float:
    return float(value) if _is_time(value) else float("nan")
