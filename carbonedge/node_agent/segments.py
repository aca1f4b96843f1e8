"""Partitioned requests on an agent: run this node's block range, hand the activation on.

A partitioned request travels as one ``carbonedge.infer_segment`` task per segment. The
task carries the whole route; segment ``i`` runs its blocks and then, in one Redis
round trip, stores its output activation under ``ce:act:<id>:<i+1>`` (raw msgpack bin,
with an expiry) and pushes segment ``i+1``'s task onto the next node's queue. The next
agent reads the activation with GETDEL, so it is gone once used. Activations never ride
inside a Celery message: kombu's Redis transport would base64 them (+33%).

The last segment stores the final result under the request's id, where the client waits
for it: a task-level result plus ``segments``, one entry per segment with its node, block
range, times, bytes in and out, energy and carbon. An error at any segment ends the
request with an error result whose message names the segment and the node.

Each agent also profiles its models' blocks once, at start-up before it reports ready
(profiling between tasks would hold up the task after it), and stores each profile under
``ce:blocks:<model>:<node>`` for the dispatcher's plans. Blocks run on the node's backend,
torch or ONNX Runtime, on numpy arrays: a route may cross nodes of either runtime.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import redis
from celery import Celery

from carbonedge.errors import (
    CarbonEdgeError,
    DispatchFailed,
    InferenceFailed,
    InvalidRequest,
)
from carbonedge.node_agent.inputs import model_input
from carbonedge.partitioner.outputs import top_k
from carbonedge.protocol import keys
from carbonedge.protocol.codec import decode_tensor, encode_tensor
from carbonedge.protocol.lua import LuaScript
from carbonedge.protocol.messages import PROTOCOL_VERSION, pack, unpack
from carbonedge.protocol.request import thawed
from carbonedge.protocol.routes import Route, RouteSegment
from carbonedge.protocol.task import Task
from carbonedge.transport.publish import TaskEncoder

if TYPE_CHECKING:
    from carbonedge.node_agent.runtime import AgentRuntime

log = logging.getLogger(__name__)

PROFILE_REPEATS = 3
HAND_ON = LuaScript(__package__, "hand_on.lua")
"""Stores the activation and queues the next segment, moving the request's registry entry
to the next node, in one step (see hand_on.lua)."""
_ACTIVATION = "_activation"
"""Result-map slot of the output tensor between running a segment and handing it on."""


class SegmentExecutor:
    """Runs segments for one agent and keeps its flattened models and their profiles."""

    def __init__(self, runtime: AgentRuntime, app: Celery, client: redis.Redis) -> None:
        self.runtime = runtime
        self._encode = TaskEncoder(app)
        """Builds the next segment's task message (Celery's, its envelope made once)."""
        self._redis = client
        self._profiled: dict[str, int] = {}
        """Models profiled here, with their block count (0: served whole only)."""

    # -- profiles ----------------------------------------------------------------------

    def blocks(self, model: str) -> int:
        """How many blocks ``model`` has (profiled on first use); InvalidRequest when it
        cannot be split."""
        if model not in self._profiled:
            self._profile(model)
        n = self._profiled[model]
        if n == 0:
            raise InvalidRequest(f"model {model!r} cannot be split: its architecture has no "
                                 "block flattener (it is served whole)", field="model")
        return n

    def profile_all(self) -> None:
        """Profile every model this node serves that is not profiled yet (at start-up)."""
        for model in self.runtime.models.names:
            if model in self._profiled:
                continue
            try:
                self._profile(model)
            except CarbonEdgeError as e:
                log.warning("model %s could not be profiled here: %s", model, e)
                self._profiled[model] = 0

    def _profile(self, model: str) -> None:
        backend = self.runtime.models
        n = backend.get(model).n_blocks
        self._profiled[model] = n
        if n == 0:
            log.info("model %s is not partitionable here: served whole only", model)
            return
        blocks = backend.profile(model, PROFILE_REPEATS)
        cfg = self.runtime.config
        record = {
            "v": PROTOCOL_VERSION,
            "model": model,
            "node": cfg.node_id,
            "cpu_quota": cfg.cpu_quota,
            "profiled_at": time.time(),
            "runtime": backend.runtime,
            "blocks": blocks,
        }
        try:
            self._redis.set(keys.block_profile_key(model, cfg.node_id), pack(record))
        except redis.RedisError as e:
            log.warning("could not store the block profile of %s: %s", model, e)
        log.info("profiled %s: %d blocks, %.1f ms in all", model, len(blocks),
                 sum(b["time_ms"] for b in blocks))

    # -- running -----------------------------------------------------------------------

    def run(self, task: Task, started_at: float) -> dict[str, Any]:
        """Run this node's segment (called inside the runtime's guarded accounting)."""
        name = task.model_to_run()
        index = task.segment
        assert index is not None  # a segment task without one is refused as poison
        route = Route.from_wire(task.request.route)
        if not 0 <= index < len(route):
            raise InvalidRequest(f"segment {index} is not in a route of {len(route)}",
                                 field="segment")
        seg = route[index]
        node = self.runtime.config.node_id
        try:
            if seg.node != node:
                raise InvalidRequest(f"the task was delivered to node {node}", field="route")
            n_blocks = self.blocks(name)
            if route.n_blocks != n_blocks:
                raise InvalidRequest(f"the route covers {route.n_blocks} blocks but {name} has "
                                     f"{n_blocks} here", field="route")
            x, in_bytes = self._input(task, name, index, seg)
            cpu0 = time.process_time()  # (see AgentRuntime._infer)
            t0 = time.perf_counter()
            out = self.runtime.models.run_segment(name, seg.start, seg.stop, x)
            exec_ms = (time.perf_counter() - t0) * 1e3
            cpu_s = max(time.process_time() - cpu0, 0.0)
        except CarbonEdgeError as e:
            e.message = f"segment {index} [{seg.start}, {seg.stop}) on node {node}: {e.message}"
            e.args = (e.message,)
            raise
        except Exception as e:  # a crash in the blocks is the segment's error, named
            raise InferenceFailed(f"segment {index} [{seg.start}, {seg.stop}) on node {node}: "
                                  f"{type(e).__name__}: {e}") from e
        result = self.runtime.ok_result(task, started_at, exec_ms, cpu_s)
        served = self.runtime.models.get(name)
        result.update(model=name, segment=index, in_bytes=in_bytes,
                      random_init=served.random_init, weights_source=served.weights_source)
        if index + 1 < len(route):
            result[_ACTIVATION] = out
        else:
            ids, scores = top_k(out, 5)
            result["output"] = {"top5_ids": ids, "top5_scores": scores,
                                "logits": encode_tensor(out)}
        return result

    def _input(self, task: Task, model: str, index: int,
               seg: RouteSegment) -> tuple[np.ndarray, int]:
        rt = self.runtime
        if index == 0:  # (a stored input is held until the request ends: Task.input_held)
            tensor = rt.read_input(task)
            arr = model_input(tensor, rt.models.get(model), rt.limits)
            return arr, len(tensor["data"])
        key = _activation_key(task, index)
        raw = self._redis.getdel(key)
        if raw is None:
            raise InvalidRequest(f"its input activation {key} is not in Redis (expired after "
                                 f"{rt.settings.input_ttl_s} s, or already used)",
                                 field="activation")
        tensor = unpack(raw, max_bytes=rt.settings.max_payload_bytes)
        expected = rt.models.block_input_shape(model, seg.start)
        arr = decode_tensor(tensor, rt.limits, expect_shape=[expected], field="activation")
        return arr, len(raw)

    # -- handing on --------------------------------------------------------------------

    def finish(self, task: Task, result: dict[str, Any]) -> dict[str, Any] | None:
        """After a segment: hand on to the next node (returns None), or the map to store
        as the request's result (the final result, or an error result)."""
        activation = result.pop(_ACTIVATION, None)
        if result.get("status") != "ok":
            return self._failed(task, result)
        route = Route.from_wire(task.request.route)
        index = task.segment
        assert index is not None
        hops = (*task.hops, _hop(result, route[index], activation))
        if index + 1 == len(route):
            self._release(task)
            return _final(task, result, route, hops)
        try:
            if not self._forward(task.next_segment(hops, time.time()), route, activation):
                log.warning("request %s was re-dispatched while its segment %d ran here; "
                            "not handing it on", task.id, index)
        except (redis.RedisError, CarbonEdgeError) as e:
            error = DispatchFailed(f"segment {index} on node {route[index].node} could not hand "
                                   f"on to node {route[index + 1].node}: {e}", field="route")
            return self._failed(task, self.runtime.error_result(
                task, error, result["timings"]["started_at"]))
        return None

    def _forward(self, task: Task, route: Route, activation: np.ndarray) -> bool:
        """Store the activation and queue ``task`` (the next segment's), in one script;
        False if the request is no longer this node's."""
        assert task.segment is not None
        node = route[task.segment].node
        queue = keys.node_queue(node)
        # the task id is the request id: the registry of assignments and the delivery of
        # the final result go by it
        message = self._encode(keys.TASK_INFER_SEGMENT, task.to_wire(), task_id=task.id,
                               queue=queue)
        script_keys = [keys.assigned_key(self.runtime.config.node_id), keys.assigned_key(node),
                       _activation_key(task, task.segment), queue, keys.IN_FLIGHT]
        args = [task.id, "1" if task.counted else "0", pack(encode_tensor(activation)),
                int(self.runtime.settings.input_ttl_s), message, node,
                self.runtime.config.node_id]
        return bool(HAND_ON(self._redis, script_keys, args))

    def discard(self, task: Task) -> None:
        """Drop the activation of a segment that will not run (its request was taken from
        this node and re-dispatched; the input stays for the new route)."""
        self._release(task, activation=True, input_too=False)

    def _failed(self, task: Task, result: dict[str, Any]) -> dict[str, Any]:
        result.update(segment=task.segment, route=thawed(task.request.route),
                      segments=thawed(task.hops))
        self._release(task, activation=True)
        return result

    def _release(self, task: Task, *, activation: bool = False, input_too: bool = True) -> None:
        """Delete a held input and (with ``activation``) the activation this segment did
        not read."""
        stale = [keys.input_key(task.id)] if input_too and task.input_held else []
        if activation and task.segment:
            stale.append(_activation_key(task, task.segment))
        if stale:
            try:
                self._redis.delete(*stale)
            except redis.RedisError as e:
                log.warning("could not delete %s: %s", ", ".join(stale), e)


def _activation_key(task: Task, index: int) -> str:
    return keys.activation_key(task.id, index, task.attempt)


def _hop(result: dict[str, Any], seg: RouteSegment,
         activation: np.ndarray | None) -> dict[str, Any]:
    """One segment's entry in the final result's ``segments``."""
    timings = result["timings"]
    out_bytes = int(activation.nbytes) if activation is not None else 0
    return {
        "index": result["segment"],
        "node": result["node"],
        "runtime": result.get("runtime"),
        "start": seg.start,
        "stop": seg.stop,
        "dispatched_at": timings["dispatched_at"],
        "started_at": timings["started_at"],
        "finished_at": timings["finished_at"],
        "queue_ms": timings["queue_ms"],
        "exec_ms": timings["exec_ms"],
        "cpu_s": timings["cpu_s"],
        "in_bytes": result["in_bytes"],
        "out_bytes": out_bytes,
        **{name: result[name] for name in _SUMMED},
        "carbon_g": result["carbon_g"],
        "intensity_g_per_kwh": result["intensity_g_per_kwh"],
    }


_SUMMED = ("energy_kwh", "cpu_energy_kwh", "ram_energy_kwh", "busy_s", "cpu_model_s",
           "cpu_overhead_s")
"""Charge fields that add up over a partitioned request's segments."""


def _final(task: Task, last: dict[str, Any], route: Route,
           hops: tuple[Mapping[str, Any], ...]) -> dict[str, Any]:
    """The request's result: the last segment's map with totals over every segment."""
    energy = sum(h["energy_kwh"] for h in hops)
    carbon = sum(h["carbon_g"] for h in hops)
    first = hops[0]
    final = {k: v for k, v in last.items() if k not in ("segment", "in_bytes")}
    final.update(
        kind="infer",
        timings={
            "submitted_at": last["timings"]["submitted_at"],
            "dispatched_at": first["dispatched_at"],
            "started_at": first["started_at"],
            "finished_at": last["timings"]["finished_at"],
            "queue_ms": first["queue_ms"],
            "exec_ms": sum(h["exec_ms"] for h in hops),
            "cpu_s": sum(h["cpu_s"] for h in hops),
        },
        **{name: sum(h[name] for h in hops) for name in _SUMMED},
        carbon_g=carbon,
        # the energy-weighted intensity of the nodes used (PUE included)
        intensity_g_per_kwh=carbon / energy if energy > 0 else last["intensity_g_per_kwh"],
        intensity_source="segments" if len(hops) > 1 else last["intensity_source"],
        route=route.to_wire(),
        plan=thawed(task.plan),
        segments=thawed(hops),
    )
    return final
