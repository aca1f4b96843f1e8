"""Deferred requests: held in ``ce:deferred`` until their slot, then put back on the stream.

The dispatcher decides (with :func:`carbonedge.scheduler.deferral.plan_deferral`) and
moves a deferred request into the sorted set in the same MULTI that acknowledges its
stream entry, so it is always in exactly one of the two. Every dispatcher runs a
:class:`DeferralReleaser`; its Lua script moves due requests back to the stream and out
of the set atomically, so two dispatchers never release one request twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

import redis
import redis.asyncio as aioredis

from carbonedge.protocol import keys
from carbonedge.protocol.lua import LuaScript
from carbonedge.protocol.request import Request
from carbonedge.protocol.untrusted import Rejections, is_wrong_type, move_aside
from carbonedge.scheduler.deferral import DeferralPlan, plan_deferral

log = logging.getLogger(__name__)

DEFERRAL_MARGIN_S = 2.0
"""Released this long before the deadline at the latest: time to queue and run."""
RELEASE_BATCH = 500
RELEASE = LuaScript(__package__, "release_deferred.lua")


def plan_for(request: Request, now: float, forecasts: Mapping[str, Sequence],
             current: Mapping[str, float], *, settle_s: float = 0.0) -> DeferralPlan:
    """The request's release plan over the live nodes' forecasts.

    A deferred request is released ``settle_s`` after its slot begins: the nodes'
    heartbeats (and the dispatcher's view of them) report a new intensity up to a beat
    late, and the request should be routed on the new one.
    """
    deadline = float(request.submitted_at) + float(request.deadline_s or 0.0) - DEFERRAL_MARGIN_S
    plan = plan_deferral(now, max(deadline, now), forecasts, current)
    if plan.deferred:
        plan = replace(plan, release_at=min(plan.release_at + settle_s, max(deadline, now)))
    return plan


class DeferralReleaser:
    """Moves due deferred requests back to the request stream, every ``interval_s``."""

    def __init__(self, interval_s: float = 0.25, rejections: Rejections | None = None) -> None:
        self.interval_s = interval_s
        self.released = 0
        self.rejections = rejections or Rejections("deferral releaser", log)

    async def release_due(self, r: aioredis.Redis, now: float | None = None) -> int:
        now = time.time() if now is None else now
        count = await RELEASE(r, [keys.DEFERRED, keys.REQUEST_STREAM],
                              [repr(now), RELEASE_BATCH, keys.REQUEST_FIELD])
        self.released += int(count)
        return int(count)

    async def run(self, r: aioredis.Redis, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                while await self.release_due(r) == RELEASE_BATCH:
                    pass
            except redis.ResponseError as e:
                if is_wrong_type(e):  # no deferred request can be in it: out of the way
                    await move_aside(r, keys.DEFERRED, "zset", self.rejections)
                else:
                    self.rejections.reject("deferral", keys.DEFERRED, str(e)[:200])
            except redis.RedisError as e:
                log.warning("deferred requests could not be released (will retry): %s", e)
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
            except TimeoutError:
                pass
