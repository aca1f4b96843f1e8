"""The producer API: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

``submit`` adds a request to the ``ce:requests`` stream and returns a handle; the
dispatcher routes it, an agent runs it, and the handle reads the result from Celery's
result backend under the request's id.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypedDict, Unpack
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from PIL import Image

from carbonedge.broker.celery_app import make_celery_app
from carbonedge.broker.images import preprocess_image
from carbonedge.broker.listener import ResultListener, decode_meta, result_key
from carbonedge.broker.publish import encode_task_message
from carbonedge.broker.results import InferenceResult, parse_result
from carbonedge.errors import NoNodeAvailable, ResultTimeout, RuntimeUnavailable
from carbonedge.protocol import keys
from carbonedge.protocol.codec import TensorLimits, encode_tensor, tensor_header
from carbonedge.protocol.messages import PROTOCOL_VERSION, pack, validate_request
from carbonedge.settings import Settings

__all__ = ["AsyncClient", "Client", "InferenceHandle", "InferenceResult"]

INPUT_SHAPES = ((1, 3, 224, 224), (3, 224, 224))


def to_tensor_map(x: Any, limits: TensorLimits) -> dict[str, Any]:
    """An image (path, bytes, PIL) is preprocessed; an array or tensor is validated as is."""
    if isinstance(x, (str, Path, bytes, bytearray, Image.Image)):
        x = preprocess_image(x)
    tensor = encode_tensor(x)
    tensor_header(tensor, limits)
    return tensor


class RequestOptions(TypedDict, total=False):
    """The options a request may carry (see :func:`build_request`)."""

    mode: str
    weights: Sequence[float]
    normalisation: str
    node: str
    partition: str | int
    route: Sequence[Any]
    latency_bound_ms: float
    deadline_s: float
    forecast: str
    tenant: str
    latency_slo_ms: float


def build_request(
    *,
    kind: str = "infer",
    model: str | None = None,
    tensor: dict[str, Any] | None = None,
    mode: str | None = None,
    weights: Sequence[float] | None = None,
    normalisation: str | None = None,
    node: str | None = None,
    partition: str | int | None = None,
    route: Sequence[Any] | None = None,
    latency_bound_ms: float | None = None,
    deadline_s: float | None = None,
    forecast: str | None = None,
    tenant: str | None = None,
    latency_slo_ms: float | None = None,
) -> dict[str, Any]:
    """A validated request map with a fresh id.

    ``deadline_s`` lets the request wait, up to that many seconds after submission, for
    the lowest-carbon slot the nodes' intensity forecasts show (carbon-aware deferral);
    ``forecast`` names the forecaster it plans with (``oracle``, the default: the nodes'
    providers' own forecasts; ``persistence``; ``yesterday``).
    ``tenant`` charges the request's carbon to that tenant's budget (if one is set).
    ``latency_slo_ms`` picks the least-carbon node predicted to answer within it.

    ``partition`` (``"none"``, ``"auto"``, ``"green"`` or a segment count ``k``) or an
    explicit ``route`` (``[(node, start, stop), ...]`` over the model's blocks) split the
    model across nodes; ``latency_bound_ms`` bounds the ``green``/``auto`` plans.
    """
    request: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "id": uuid.uuid4().hex,
        "kind": kind,
        "submitted_at": time.time(),
    }
    for name, value in (("model", model), ("input", tensor), ("mode", mode),
                        ("normalisation", normalisation), ("node", node), ("tenant", tenant),
                        ("forecast", forecast)):
        if value is not None:
            request[name] = value
    if weights is not None:
        request["weights"] = [float(w) for w in weights]
    if partition is not None:
        request["partition"] = partition
    if route is not None:
        request["route"] = [list(s) if isinstance(s, (tuple, list)) else s for s in route]
    if latency_bound_ms is not None:
        request["latency_bound_ms"] = float(latency_bound_ms)
    if deadline_s is not None:
        request["deadline_s"] = deadline_s
    if latency_slo_ms is not None:
        request["latency_slo_ms"] = latency_slo_ms
    validate_request(request)
    return request


def detach_input(request: dict[str, Any], pipe: Any, settings: Settings) -> None:
    """Move a large input out of the request into ``ce:input:<id>`` (claim check).

    The request then stays small through the stream, the dispatcher and the Celery
    message (whose Redis transport would base64 the tensor: +33%), and the agent reads
    the raw bytes once.
    """
    tensor = request.get("input")
    if tensor is None or len(tensor["data"]) <= settings.inline_input_max_bytes:
        return
    pipe.set(keys.input_key(request["id"]), pack(request.pop("input")),
             ex=settings.input_ttl_s)
    request["input_ref"] = True


def diagnose(client: redis.Redis, request_id: str, timeout: float, ttl_s: float) -> str:
    """Why a result did not arrive: no agent alive, no dispatcher, or still queued."""
    now = time.time()
    nodes = [m.decode() for m in client.smembers(keys.NODES)]
    alive = [n for n in nodes if client.exists(keys.node_key(n))]
    beats = client.hgetall(keys.DISPATCHER_ALIVE)
    dispatchers = [k for k, v in beats.items() if now - float(v) < max(3 * ttl_s, 5.0)]
    head = f"no result for request {request_id} within {timeout:.1f} s: "
    if not dispatchers:
        return head + "no dispatcher is running (start `carbonedge up` or `carbonedge dispatcher`)"
    if not alive:
        return head + "no node agent is alive (every heartbeat under ce:node:* has expired)"
    holder = next((n for n in nodes if client.hexists(keys.assigned_key(n), request_id)), None)
    if holder is not None:
        return head + f"it is queued or running on {holder}"
    if client.xlen(keys.REQUEST_STREAM) == 0 and not client.exists(keys.done_key(request_id)):
        return head + ("Redis holds no trace of it (not waiting for a dispatcher, not assigned "
                       "to a node, not answered): was Redis restarted without persistence?")
    return head + f"it is still queued or running (live nodes: {', '.join(sorted(alive))})"


def _where(url: str) -> str:
    """A Redis URL fit for an error message: host and port, no credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}"


class InferenceHandle:
    """A submitted request; :meth:`result` waits for its outcome."""

    def __init__(self, client: Client, request_id: str, deadline_s: float = 0.0) -> None:
        self.id = request_id
        self._client = client
        self._deadline_s = deadline_s

    def result(self, timeout: float | None = None) -> InferenceResult:
        """The result, or the error it names; :class:`ResultTimeout` after ``timeout``
        (by default the result timeout, plus the deadline of a deferrable request)."""
        if timeout is None and self._deadline_s:
            timeout = self._client.settings.result_timeout_s + self._deadline_s
        return self._client._wait(self.id, timeout)


class _Producer:
    """What both clients share: settings (loaded once if not given) and input limits."""

    def __init__(self, settings: Settings | None = None, *, redis_url: str | None = None) -> None:
        settings = settings or Settings.load()
        if redis_url:
            settings = settings.replace(redis_url=redis_url)
        self.settings = settings
        self._limits = TensorLimits(max_elements=settings.max_tensor_elements)


class Client(_Producer):
    """Blocking producer (one per thread)."""

    def __init__(self, settings: Settings | None = None, *, redis_url: str | None = None) -> None:
        super().__init__(settings, redis_url=redis_url)
        self._redis = redis.Redis.from_url(self.settings.redis_url, socket_timeout=10)
        self._app = make_celery_app(self.settings)
        self._listener = ResultListener(self._redis)

    def submit(self, model: str, image_or_tensor: Any,
               **options: Unpack[RequestOptions]) -> InferenceHandle:
        """Queue one inference of ``model`` on an image (path/bytes/PIL) or a tensor.

        ``partition="auto" | "none" | "green" | k`` or ``route`` split it across nodes
        (see :func:`build_request`); the result's ``segments`` then say where each part ran.
        """
        tensor = to_tensor_map(image_or_tensor, self._limits)
        request = build_request(model=model, tensor=tensor, **options)
        return self._send(request)

    def ping(self, *, mode: str | None = None, node: str | None = None,
             deadline_s: float | None = None, forecast: str | None = None,
             tenant: str | None = None) -> InferenceHandle:
        """A request that runs no model: measures the routing path itself."""
        return self._send(build_request(kind="ping", mode=mode, node=node,
                                        deadline_s=deadline_s, forecast=forecast,
                                        tenant=tenant))

    def map(
        self, model: str, inputs: Iterable[Any], *, timeout: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> list[InferenceResult]:
        """Submit every input, then collect results in order (errors raise)."""
        handles = [self.submit(model, x, **options) for x in inputs]
        return [h.result(timeout) for h in handles]

    def submit_direct(self, node: str, model: str, image_or_tensor: Any) -> InferenceHandle:
        """Send straight to one node's queue, bypassing dispatcher and scheduler (baselines)."""
        if not self._redis.exists(keys.node_key(node)):
            raise NoNodeAvailable(f"node {node!r} has no live heartbeat: nothing would serve "
                                  "its queue", field="node")
        tensor = to_tensor_map(image_or_tensor, self._limits)
        request = build_request(model=model, tensor=tensor, mode="direct", node=node)
        return self._send(request, queue=keys.node_queue(node))

    def submit_raw(self, payload: bytes) -> None:
        """Add raw bytes to the request stream (for tests of malformed requests)."""
        self._redis.xadd(keys.REQUEST_STREAM, {keys.REQUEST_FIELD: payload})

    def _send(self, request: dict[str, Any], queue: str | None = None) -> InferenceHandle:
        """Store a large input under its own key, then queue the request, in one round trip.

        With ``queue`` the request goes straight to that Celery queue (no dispatcher).
        A Redis that cannot be reached raises :class:`RuntimeUnavailable` at once.
        """
        try:
            return self._send_once(request, queue)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise RuntimeUnavailable(
                f"Redis at {_where(self.settings.redis_url)} is unreachable ({e}): request "
                f"{request['id']} was not submitted, or its submission not confirmed") from e

    def _send_once(self, request: dict[str, Any], queue: str | None) -> InferenceHandle:
        self._listener.watch(request["id"])
        pipe = self._redis.pipeline(transaction=True)
        detach_input(request, pipe, self.settings)
        if queue is None:
            pipe.xadd(keys.REQUEST_STREAM, {keys.REQUEST_FIELD: pack(request)})
        else:
            pipe.lpush(queue, encode_task_message(self._app, keys.TASK_INFER, request,
                                                  task_id=request["id"], queue=queue))
        if self._listener.to_delete:  # results already read: delete them on the way
            pipe.delete(*self._listener.to_delete)
            self._listener.to_delete.clear()
        pipe.execute()
        return InferenceHandle(self, request["id"], float(request.get("deadline_s") or 0.0))

    def result_for(self, request_id: str, timeout: float | None = None) -> InferenceResult:
        """The result of any request id (e.g. one sent raw), as :meth:`InferenceHandle.result`."""
        return self._wait(request_id, timeout)

    def _wait(self, request_id: str, timeout: float | None) -> InferenceResult:
        timeout = self.settings.result_timeout_s if timeout is None else timeout
        try:
            raw = self._listener.wait(request_id, timeout)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise RuntimeUnavailable(
                f"lost Redis at {_where(self.settings.redis_url)} while waiting for request "
                f"{request_id} ({e}); it may still complete: ask again with "
                "result_for()") from e
        if raw is None:
            raise ResultTimeout(diagnose(self._redis, request_id, timeout,
                                         self.settings.heartbeat_ttl_s))
        return parse_result(decode_meta(raw), received_at=time.time())

    def close(self) -> None:
        self._listener.close()
        self._redis.close()
        self._app.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Producer):
    """asyncio producer: the same requests, results read through Redis pub/sub."""

    def __init__(self, settings: Settings | None = None, *, redis_url: str | None = None) -> None:
        super().__init__(settings, redis_url=redis_url)
        self._redis = aioredis.Redis.from_url(self.settings.redis_url, socket_timeout=10)

    async def infer(self, model: str, image_or_tensor: Any, *, timeout: float | None = None,
                    **options: Unpack[RequestOptions]) -> InferenceResult:
        """Submit one request and wait for its result."""
        tensor = to_tensor_map(image_or_tensor, self._limits)
        request = build_request(model=model, tensor=tensor, **options)
        return await self._roundtrip(request, timeout)

    async def ping(self, *, timeout: float | None = None, **options: Any) -> InferenceResult:
        return await self._roundtrip(build_request(kind="ping", **options), timeout)

    async def map(self, model: str, inputs: Iterable[Any], *, timeout: float | None = None,
                  **options: Unpack[RequestOptions]) -> list[InferenceResult]:
        return list(await asyncio.gather(*(self.infer(model, x, timeout=timeout, **options)
                                           for x in inputs)))

    async def _roundtrip(self, request: dict[str, Any], timeout: float | None) -> InferenceResult:
        try:
            return await self._roundtrip_once(request, timeout)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise RuntimeUnavailable(
                f"Redis at {_where(self.settings.redis_url)} is unreachable ({e}) for request "
                f"{request['id']}: it was not submitted, or its result may still come "
                "(stored under its id)") from e

    async def _roundtrip_once(self, request: dict[str, Any],
                              timeout: float | None) -> InferenceResult:
        timeout = self.settings.result_timeout_s if timeout is None else timeout
        key = result_key(request["id"])
        async with self._redis.pubsub() as pubsub:
            await pubsub.subscribe(key)  # before sending, so the publish cannot be missed
            pipe = self._redis.pipeline(transaction=True)
            detach_input(request, pipe, self.settings)
            pipe.xadd(keys.REQUEST_STREAM, {keys.REQUEST_FIELD: pack(request)})
            await pipe.execute()
            try:
                raw = await asyncio.wait_for(self._await_meta(pubsub, key), timeout)
            except TimeoutError:
                sync = redis.Redis.from_url(self.settings.redis_url)
                try:
                    reason = diagnose(sync, request["id"], timeout, self.settings.heartbeat_ttl_s)
                finally:
                    sync.close()
                raise ResultTimeout(reason) from None
        await self._redis.delete(key)
        return parse_result(decode_meta(raw), received_at=time.time())

    async def _await_meta(self, pubsub: Any, key: str) -> bytes:
        stored = await self._redis.get(key)
        if stored is not None:
            return stored
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and message["type"] == "message":
                return message["data"]

    async def close(self) -> None:
        await self._redis.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
