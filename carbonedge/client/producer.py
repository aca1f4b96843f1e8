"""The producer API: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

``submit`` adds a request (:mod:`carbonedge.client.requests`) to the ``ce:requests``
stream and returns a handle; the dispatcher routes it, an agent runs it, and the handle
reads the result from Celery's result backend under the request's id.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any, Unpack

import redis

from carbonedge.client.requests import (
    IMAGE_TYPES,
    RequestOptions,
    check_timeout,
    detach_input,
    make_request,
    to_tensor_map,
)
from carbonedge.client.results import InferenceResult, parse_result
from carbonedge.connections import (
    async_redis_client,
    confirm_replicated,
    confirm_replicated_async,
    redact,
    redis_client,
)
from carbonedge.errors import (
    InvalidRequest,
    NoNodeAvailable,
    ResultTimeout,
    RuntimeUnavailable,
    UnknownModel,
)
from carbonedge.ops.status import collect_cluster
from carbonedge.partitioner.catalog import Catalogue, Preprocess, candidates, load_catalogue
from carbonedge.protocol import keys
from carbonedge.protocol.codec import TensorLimits
from carbonedge.protocol.request import Request
from carbonedge.settings import Settings
from carbonedge.transport.celery_app import make_celery_app
from carbonedge.transport.listener import ResultListener, decode_meta, result_key
from carbonedge.transport.publish import encode_task_message

__all__ = ["AsyncClient", "Client", "InferenceHandle", "InferenceResult"]

def diagnose(client: redis.Redis, request_id: str, timeout: float, ttl_s: float) -> str:
    """Why a result did not arrive: no agent alive, no dispatcher, or still queued."""
    now = time.time()
    status = collect_cluster(client, now=now, heartbeat_ttl_s=ttl_s)
    nodes = [row.node_id for row in status.nodes]
    alive = [row.node_id for row in status.nodes if row.alive]
    dispatchers = status.live_dispatchers
    head = f"no result for request {request_id} within {timeout:.1f} s: "
    if not dispatchers:
        return head + "no dispatcher is running (start `carbonedge up` or `carbonedge dispatcher`)"
    if not alive:
        return head + "no node agent is alive (every heartbeat under ce:node:* has expired)"
    holder = next((n for n in nodes if _holds(client, n, request_id)), None)
    if holder is not None:
        return head + f"it is queued or running on {holder}"
    if client.xlen(keys.REQUEST_STREAM) == 0 and not client.exists(keys.done_key(request_id)):
        return head + ("Redis holds no trace of it (not waiting for a dispatcher, not assigned "
                       "to a node, not answered): was Redis restarted without persistence?")
    return head + f"it is still queued or running (live nodes: {', '.join(sorted(alive))})"


def _holds(client: redis.Redis, node_id: str, request_id: str) -> bool:
    try:
        return bool(client.hexists(keys.assigned_key(node_id), request_id))
    except redis.ResponseError:  # a registry of the wrong type holds nothing
        return False


def _where(url: str) -> str:
    """A Redis URL fit for an error message: no passwords (any form, Sentinel included)."""
    return redact(url)


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
        self._models: Catalogue | None = None

    @property
    def models(self) -> Catalogue:
        """The declared models (the compose file's), read on first use."""
        if self._models is None:
            self._models = load_catalogue(self.settings.compose_path())
        return self._models

    def _tensor(self, model: str | None, x: Any, options: RequestOptions) -> dict[str, Any]:
        """The request's tensor map; an image is resized and cropped as its model declares."""
        if not isinstance(x, IMAGE_TYPES):
            return to_tensor_map(x, self._limits)
        if model is not None:
            try:
                preprocess = self.models.get(model).preprocess
            except UnknownModel:  # the dispatcher names the models it knows
                preprocess = Preprocess()
            return to_tensor_map(x, self._limits, preprocess)
        specs = candidates(self.models, family=options.get("family"),
                           min_accuracy=options.get("min_accuracy"))
        # the node normalises with its model's own mean and std: only the crop must agree
        crops = {(s.preprocess.resize, s.preprocess.crop): s.preprocess for s in specs}
        if len(crops) > 1:
            raise InvalidRequest("the candidate models resize or crop images differently ("
                                 + ", ".join(s.name for s in specs) + "): send a tensor",
                                 field="image")
        return to_tensor_map(x, self._limits, crops.popitem()[1])


class Client(_Producer):
    """Blocking producer (one per thread)."""

    def __init__(self, settings: Settings | None = None, *, redis_url: str | None = None) -> None:
        super().__init__(settings, redis_url=redis_url)
        self._redis = redis_client(self.settings.redis_url, socket_timeout=10)
        self._app = make_celery_app(self.settings)
        self._listener = ResultListener(self._redis)

    def submit(self, model: str | None, image_or_tensor: Any,
               **options: Unpack[RequestOptions]) -> InferenceHandle:
        """Queue one inference of ``model`` on an image (path/bytes/PIL) or a tensor.

        ``partition="auto" | "none" | "green" | k`` or ``route`` split it across nodes
        (see :func:`build_request`); the result's ``segments`` then say where each part ran.
        ``model=None`` with ``family=`` and/or ``min_accuracy=`` lets the broker choose the
        model as well as the node (the result's ``model`` and ``decision["model_choice"]``).
        """
        tensor = self._tensor(model, image_or_tensor, options)
        request = make_request(model=model, tensor=tensor, **options)
        return self._send(request)

    def ping(self, *, mode: str | None = None, node: str | None = None,
             deadline_s: float | None = None, forecast: str | None = None,
             tenant: str | None = None) -> InferenceHandle:
        """A request that runs no model: measures the routing path itself."""
        return self._send(make_request(kind="ping", mode=mode, node=node,
                                        deadline_s=deadline_s, forecast=forecast,
                                        tenant=tenant))

    def map(
        self, model: str | None, inputs: Iterable[Any], *, timeout: float | None = None,
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
        tensor = self._tensor(model, image_or_tensor, {})
        request = make_request(model=model, tensor=tensor, mode="direct", node=node)
        return self._send(request, queue=keys.node_queue(node))

    def submit_raw(self, payload: bytes) -> None:
        """Add raw bytes to the request stream (for tests of malformed requests)."""
        self._redis.xadd(keys.REQUEST_STREAM, {keys.REQUEST_FIELD: payload})

    def _send(self, request: Request, queue: str | None = None) -> InferenceHandle:
        """Store a large input under its own key, then queue the request, in one round trip.

        With ``queue`` the request goes straight to that Celery queue (no dispatcher).
        A Redis that cannot be reached raises :class:`RuntimeUnavailable` at once.
        """
        try:
            return self._send_once(request, queue)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise RuntimeUnavailable(
                f"Redis at {_where(self.settings.redis_url)} is unreachable ({e}): request "
                f"{request.id} was not submitted, or its submission not confirmed") from e

    def _send_once(self, request: Request, queue: str | None) -> InferenceHandle:
        self._listener.watch(request.id)
        pipe = self._redis.pipeline(transaction=True)
        request = detach_input(request, pipe, self.settings)
        if queue is None:
            pipe.xadd(keys.REQUEST_STREAM, {keys.REQUEST_FIELD: request.pack()})
        else:
            pipe.lpush(queue, encode_task_message(self._app, keys.TASK_BY_KIND[request.kind],
                                                  request.to_wire(), task_id=request.id, queue=queue))
        if self._listener.to_delete:  # results already read: delete them on the way
            pipe.delete(*self._listener.to_delete)
            self._listener.to_delete.clear()
        pipe.execute()
        confirm_replicated(self._redis, self.settings.redis_url, f"request {request.id}")
        return InferenceHandle(self, request.id, float(request.deadline_s or 0.0))

    def result_for(self, request_id: str, timeout: float | None = None) -> InferenceResult:
        """The result of any request id (e.g. one sent raw), as :meth:`InferenceHandle.result`."""
        return self._wait(request_id, timeout)

    def _wait(self, request_id: str, timeout: float | None) -> InferenceResult:
        timeout = check_timeout(timeout)
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
        self._redis = async_redis_client(self.settings.redis_url, socket_timeout=10)

    async def infer(self, model: str | None, image_or_tensor: Any, *,
                    timeout: float | None = None,
                    **options: Unpack[RequestOptions]) -> InferenceResult:
        """Submit one request and wait for its result (``model=None``: see Client.submit)."""
        tensor = self._tensor(model, image_or_tensor, options)
        request = make_request(model=model, tensor=tensor, **options)
        return await self._roundtrip(request, timeout)

    async def ping(self, *, timeout: float | None = None, **options: Any) -> InferenceResult:
        return await self._roundtrip(make_request(kind="ping", **options), timeout)

    async def map(self, model: str | None, inputs: Iterable[Any], *,
                  timeout: float | None = None,
                  **options: Unpack[RequestOptions]) -> list[InferenceResult]:
        return list(await asyncio.gather(*(self.infer(model, x, timeout=timeout, **options)
                                           for x in inputs)))

    async def _roundtrip(self, request: Request, timeout: float | None) -> InferenceResult:
        try:
            return await self._roundtrip_once(request, timeout)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise RuntimeUnavailable(
                f"Redis at {_where(self.settings.redis_url)} is unreachable ({e}) for request "
                f"{request.id}: it was not submitted, or its result may still come "
                "(stored under its id)") from e

    async def _roundtrip_once(self, request: Request,
                              timeout: float | None) -> InferenceResult:
        timeout = check_timeout(timeout)
        timeout = self.settings.result_timeout_s if timeout is None else timeout
        key = result_key(request.id)
        async with self._redis.pubsub() as pubsub:
            await pubsub.subscribe(key)  # before sending, so the publish cannot be missed
            pipe = self._redis.pipeline(transaction=True)
            request = detach_input(request, pipe, self.settings)
            pipe.xadd(keys.REQUEST_STREAM, {keys.REQUEST_FIELD: request.pack()})
            await pipe.execute()
            await confirm_replicated_async(self._redis, self.settings.redis_url,
                                           f"request {request.id}")
            try:
                raw = await asyncio.wait_for(self._await_meta(pubsub, key), timeout)
            except TimeoutError:
                sync = redis_client(self.settings.redis_url)
                try:
                    reason = diagnose(sync, request.id, timeout, self.settings.heartbeat_ttl_s)
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
