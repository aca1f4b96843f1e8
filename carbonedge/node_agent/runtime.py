"""What an agent does with one task, independent of Celery: decode, run, account, encode."""

from __future__ import annotations

import logging
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
    error_result,
    unpack,
)
from carbonedge.protocol.request import thawed
from carbonedge.protocol.task import Task
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

    def infer(self, task: Task) -> dict[str, Any]:
        """Run one whole-model request; never raises, always returns a result map."""
        return self._guarded(task, self._infer)

    def infer_segment(
        self, task: Task, run: Callable[[Task, float], dict[str, Any]]
    ) -> dict[str, Any]:
        """Run one segment of a partitioned request (``run`` does the work) under the same
        accounting as :meth:`infer`; never raises. A segment's time is not a sample of the
        model's service time."""
        return self._guarded(task, run, sample=False)

    def ping(self, task: Task) -> dict[str, Any]:
        """Do no work: measures the dispatch path itself."""
        return self._guarded(task, self._ping)

    # -- internals ---------------------------------------------------------------------

    def _guarded(self, task: Task, run: Callable[[Task, float], dict[str, Any]], *,
                 sample: bool = True) -> dict[str, Any]:
        started_at = time.time()
        reading = self.energy.intensity()  # a task is priced at the intensity it started in
        self.meter.task_started()  # its stretch began when the consumer saw its message
        self.stats.started()
        result: dict[str, Any] | None = None
        try:
            try:
                result = run(task, started_at)
            except CarbonEdgeError as e:
                log.warning("request %s failed: %s", task.id, e)
                result = self.error_result(task, e, started_at)
            except Exception as e:  # a model crash must become an error result, not a dead worker
                log.exception("request %s crashed", task.id)
                result = self.error_result(task, InferenceFailed(f"{type(e).__name__}: {e}"),
                                           started_at)
        finally:
            self._account(task, result, started_at, reading, sample)
        return result

    def _account(self, task: Task, result: dict[str, Any] | None,
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
            ledger = ledger_row(result, charge, started_at=started_at, wall_s=wall_s,
                                device=self.energy.device, tenant=task.request.tenant or "")
        self.stats.finished(model_name, service_ms)
        consumed = task.request.input_ref and not task.input_held
        # (a counted task's in-flight count is released with its result or hand-on)
        self._bookkeeper.task_done(input_key=keys.input_key(task.id) if consumed else None,
                                   ledger=ledger)

    def _infer(self, task: Task, started_at: float) -> dict[str, Any]:
        name = task.model_to_run()
        served = self.models.get(name)
        x = model_input(self.read_input(task), served, self.limits)
        # the model run's CPU from the process clock: a cgroup counter lags by up to a
        # scheduler tick (4 ms at HZ=250), as long as a whole ONNX Runtime inference
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        logits = self.models.run(name, x)
        t1 = time.perf_counter()
        cpu_s = max(time.process_time() - cpu0, 0.0)
        ids, scores = top_k(logits, 5)
        result = self.ok_result(task, started_at, (t1 - t0) * 1e3, cpu_s)
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

    def read_input(self, task: Task) -> Any:
        """The request's tensor map: inline, or fetched from its ``ce:input:<id>`` key."""
        request = task.request
        if not request.input_ref:
            if request.input is None:
                raise InvalidMessage("missing field 'input'", field="input")
            return request.input
        raw = self._redis.get(keys.input_key(request.id))
        if raw is None:
            raise InvalidRequest(
                f"the input of request {request.id} is no longer in Redis (expired after "
                f"{self.settings.input_ttl_s} s, or already consumed)", field="input")
        return unpack(raw, max_bytes=self.settings.max_payload_bytes)

    def _ping(self, task: Task, started_at: float) -> dict[str, Any]:
        return self.ok_result(task, started_at, 0.0, 0.0)

    def ok_result(self, task: Task, started_at: float, exec_ms: float,
                  cpu_s: float) -> dict[str, Any]:
        """A success result of this node; energy and carbon are added once the whole task is
        measured."""
        request = task.request
        return {
            "v": PROTOCOL_VERSION,
            "id": request.id,
            "status": "ok",
            "kind": request.kind,
            "node": self.config.node_id,
            "runtime": self.models.runtime,
            "model": request.model,
            "mode": request.mode,
            "timings": self._timings(task, started_at, exec_ms, cpu_s),
            "decision": thawed(task.decision),
            "deferred_until": request.deferred_until,
        }

    @staticmethod
    def _timings(task: Task, started_at: float, exec_ms: float,
                 cpu_s: float) -> dict[str, float]:
        submitted = float(task.request.submitted_at)
        sent = task.dispatched_at or submitted
        return {
            "submitted_at": submitted,
            "dispatched_at": float("nan") if task.dispatched_at is None else task.dispatched_at,
            "started_at": started_at,
            "finished_at": time.time(),
            "queue_ms": max((started_at - sent) * 1e3, 0.0),
            "exec_ms": exec_ms,
            "cpu_s": cpu_s,
        }

    def error_result(self, task: Task, error: CarbonEdgeError,
                     started_at: float) -> dict[str, Any]:
        """The error result of this node for ``task``, naming ``error``."""
        return error_result(task.id, error, node=self.config.node_id, kind="infer",
                            timings={"started_at": started_at}, model=task.request.model,
                            mode=task.request.mode, decision=thawed(task.decision))

