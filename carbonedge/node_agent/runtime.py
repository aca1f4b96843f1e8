"""What an agent does with one task, independent of Celery: decode, run, account, encode."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import redis

from carbonedge.errors import (
    CarbonEdgeError,
    InferenceFailed,
    InvalidMessage,
    InvalidRequest,
    InvalidTensor,
)
from carbonedge.node_agent.backend import ModelBackend
from carbonedge.node_agent.bookkeeping import TaskBookkeeper
from carbonedge.node_agent.cgroup import CgroupAccounting
from carbonedge.node_agent.config import AgentConfig
from carbonedge.node_agent.energy import EnergyAccountant, charge_fields, ledger_row
from carbonedge.node_agent.stats import ExecStats
from carbonedge.partitioner.outputs import top_k
from carbonedge.protocol import keys
from carbonedge.protocol.codec import TensorLimits, decode_tensor
from carbonedge.protocol.messages import (
    PROTOCOL_VERSION,
    check_version,
    error_result,
    require,
    unpack,
)
from carbonedge.settings import Settings

log = logging.getLogger(__name__)

FLOAT_DTYPES = ("float32", "float16", "float64")
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
        self._limits = TensorLimits(max_elements=settings.max_tensor_elements)
        self._warm: set[str] = set()
        self._charged_cpu: float | None = None

    def start_charging(self) -> None:
        """From now on, tasks are charged all of the agent's CPU time (call it after
        preloading models: loading them is not any task's work)."""
        self._charged_cpu = self.accounting.cpu_usage_s()

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
        cpu_at_start = self.accounting.cpu_usage_s()
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
                result = self._error(payload, req_id, e, started_at)
            except Exception as e:  # a model crash must become an error result, not a dead worker
                log.exception("request %s crashed", req_id)
                result = self._error(payload, req_id,
                                     InferenceFailed(f"{type(e).__name__}: {e}"), started_at)
        finally:
            self._account(payload, req_id, result, started_at, cpu_at_start, sample)
        return result

    def _account(self, payload: Any, req_id: str, result: dict[str, Any] | None,
                 started_at: float, cpu_at_start: float, sample: bool = True) -> None:
        """Charge the task's energy and carbon, update the node's stats, and do the
        Redis bookkeeping (in-flight count, input deletion, ledger row)."""
        # all of the task's CPU (input fetch and decode too): S_R's background
        # utilisation is what is left when the tasks' share is taken away
        cpu_now = self.accounting.cpu_usage_s()
        task_cpu = max(cpu_now - cpu_at_start, 0.0)
        # A task is charged the agent's CPU since the previous task was charged: Celery's
        # hand-off of the previous result and the fetch of this message happen outside
        # any task, yet the node burns them for its tasks (with input decode, 15.5% of the
        # CPU charged in benchmarks/bench_carbon_accuracy.py).
        since = cpu_at_start if self._charged_cpu is None else min(self._charged_cpu,
                                                                     cpu_at_start)
        charged_cpu = max(cpu_now - since, 0.0)
        self._charged_cpu = cpu_now
        wall_s = max(time.time() - started_at, 0.0)
        model_name, exec_ms, ledger = None, None, None
        if result is not None:
            charge = self.energy.charge(cpu_s=charged_cpu, wall_s=wall_s)
            result.update(charge_fields(charge))
            if result.get("status") == "ok" and sample:
                model_name = result.get("model")
                if model_name in self._warm:
                    exec_ms = self._service_ms(result["timings"])
                elif model_name is not None:  # a first run allocates buffers: not typical
                    self._warm.add(model_name)
            tenant = payload.get("tenant") if isinstance(payload, dict) else None
            ledger = ledger_row(result, charge, cpu_s=charged_cpu, wall_s=wall_s,
                                tenant=tenant if isinstance(tenant, str) else "")
        self.stats.finished(model_name, exec_ms, task_cpu)
        if isinstance(payload, dict):
            self._bookkeeper.task_done(
                counted=payload.get("counted") is True,
                input_key=keys.input_key(req_id) if payload.get("input_ref") is True else None,
                ledger=ledger,
            )

    def _infer(self, payload: dict[str, Any], started_at: float) -> dict[str, Any]:
        name = require(payload, "model", str)
        served = self.models.get(name)
        tensor = self._input(payload)
        if isinstance(tensor, dict) and tensor.get("dtype") not in FLOAT_DTYPES:
            raise InvalidTensor(
                f"input.dtype {tensor.get('dtype')!r} is not a float type; a model takes "
                f"normalised float input ({', '.join(FLOAT_DTYPES)})",
                field="input.dtype",
            )
        x = decode_tensor(tensor, self._limits, expect_shape=served.input_shapes)
        if x.dtype != np.float32:
            raise InvalidTensor(f"input dtype must be float32, got {x.dtype.name}",
                                field="input.dtype")
        # the model run's CPU from the process clock: a cgroup counter lags by up to a
        # scheduler tick (4 ms at HZ=250), as long as a whole ONNX Runtime inference
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        logits = self.models.run(name, x)
        t1 = time.perf_counter()
        cpu_s = max(time.process_time() - cpu0, 0.0)
        ids, scores = top_k(logits, 5)
        result = self._ok(payload, started_at, (t1 - t0) * 1e3, cpu_s)
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
        """The time this node needs per task when busy: what the scheduler should expect.

        The model run's CPU time over the node's quota: what the node's share of the host
        needs for the task, sustained. Not its wall time: within one CFS period a lone task
        may run unthrottled (0.6 CPU still allows a 60 ms burst per 100 ms), which shows a
        small node as fast as a big one; and on a shared host wall times swing with the
        neighbours for every node alike (an ONNX Runtime MobileNetV2 needs ~5 ms of CPU, and
        twice that in wall time on a loaded 2-core host), drowning the differences between
        nodes. Contention shows in S_R instead. The wall time stands in only where no CPU
        time was measured.
        """
        cpu_ms = timings["cpu_s"] * 1e3
        return cpu_ms / self.config.cpu_quota if cpu_ms > 0 else timings["exec_ms"]

    def _input(self, payload: dict[str, Any]) -> Any:
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
        return self._ok(payload, started_at, 0.0, 0.0)

    def _ok(
        self, payload: dict[str, Any], started_at: float, exec_ms: float, cpu_s: float
    ) -> dict[str, Any]:
        """A success result; energy and carbon are added once the whole task is measured."""
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

    def _error(
        self, payload: Any, req_id: str, error: CarbonEdgeError, started_at: float
    ) -> dict[str, Any]:
        extra: dict[str, Any] = {"kind": "infer", "timings": {"started_at": started_at}}
        if isinstance(payload, dict):
            extra.update(model=payload.get("model"), mode=payload.get("mode"),
                         decision=payload.get("decision"))
        return error_result(req_id, error, node=self.config.node_id, **extra)


def _is_time(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _time_or_nan(value: Any) -> float:
    return float(value) if _is_time(value) else float("nan")
