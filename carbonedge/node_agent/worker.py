"""Running a node agent: a solo-pool Celery worker on its own queue, plus its heartbeat."""

from __future__ import annotations

import functools
import logging
import os
import socket
from typing import Any

from celery.signals import worker_ready

from carbonedge.carbon.device import DevicePower, cpu_watts_per_core
from carbonedge.cgroups import CgroupAccounting
from carbonedge.connections import redis_client
from carbonedge.node_agent.bookkeeping import TaskBookkeeper
from carbonedge.node_agent.charging import ChargeMeter
from carbonedge.node_agent.config import AgentConfig, work_group
from carbonedge.node_agent.energy import EnergyAccountant
from carbonedge.node_agent.guard import DeliveryGuard
from carbonedge.node_agent.heartbeat import HeartbeatPublisher
from carbonedge.node_agent.loading import open_backend
from carbonedge.node_agent.poison import PoisonHandler
from carbonedge.node_agent.runtime import AgentRuntime
from carbonedge.node_agent.stats import ExecStats
from carbonedge.node_agent.tasks import register_tasks
from carbonedge.partitioner.catalog import Catalogue, default_catalogue
from carbonedge.protocol import keys
from carbonedge.settings import Settings
from carbonedge.transport.allowlist import check_agent_allowed
from carbonedge.transport.celery_app import make_celery_app
from carbonedge.transport.consumer import GuardedConsumer
from carbonedge.transport.handback import hand_back, release_previous_life
from carbonedge.transport.queue_guard import install_queue_guard

log = logging.getLogger(__name__)

IDLE_ROW_S = 10.0
"""How often an agent records its idle stretch as a ledger row."""


def run_agent(
    config: AgentConfig,
    settings: Settings,
    *,
    models: Catalogue | None = None,
    compose_file: str | os.PathLike[str] | None = None,
    preload: tuple[str, ...] = (),
    events: bool = False,
) -> None:
    """Serve ``config.node_id``'s queue until the worker is stopped (SIGTERM / Ctrl-C).

    Every model of ``models`` (the deployment's declared ones; default the paper's three)
    is loaded and warmed up on ``config.runtime`` before the first heartbeat, which is
    published once Celery consumes: nothing is routed here before the node is warm.
    """
    check_agent_allowed(config.node_id, settings.node_allowlist)  # before any queue is touched
    accounting = CgroupAccounting.for_current_process()
    meter = ChargeMeter(accounting.cpu_usage_s, config.cpu_quota)  # start-up begins now
    models = models or default_catalogue()
    for name in preload:  # every declared model is loaded anyway: check the names only
        models.get(name)
    _check_limits(config, accounting)
    watts, watts_source = cpu_watts_per_core(settings.cpu_watts_per_core)
    device = DevicePower(config.cpu_quota, config.mem_limit_bytes, watts, watts_source)
    stats = ExecStats(config.stats_window)
    client = redis_client(settings.redis_url, socket_timeout=5)
    backend = open_backend(config.runtime, models, settings, cpu_quota=config.cpu_quota,
                           compose_file=compose_file)

    energy = EnergyAccountant(config, device)
    bookkeeper = TaskBookkeeper(client, config.node_id, settings.carbon_budget_period_s)
    runtime = AgentRuntime(config, settings, accounting=accounting, energy=energy, models=backend,
                           stats=stats, bookkeeper=bookkeeper, redis_client=client,
                           meter=meter)
    for name in backend.names:  # before the first heartbeat: no task is routed here until warm
        log.info("warmed up %s: %.1f ms per inference here", name, runtime.warm_up(name))
    install_queue_guard()
    app = make_celery_app(settings, worker_consumer=f"{GuardedConsumer.__module__}:{GuardedConsumer.__name__}")
    guard = DeliveryGuard(client, config.node_id, expires_s=int(app.conf.result_expires or 3600),
                          retry_for_s=settings.result_timeout_s)
    poison = PoisonHandler(client, config.node_id, guard)
    GuardedConsumer.poison = poison
    segments = register_tasks(app, runtime, guard, poison, client)
    segments.profile_all()  # block profiles for partition plans, before any task
    heartbeat = HeartbeatPublisher(config, client, accounting=accounting, energy=energy,
                                   stats=stats, interval_s=settings.heartbeat_interval_s,
                                   ttl_s=settings.heartbeat_ttl_s, host_id=settings.host_id,
                                   on_beat=lambda: runtime.flush_idle(IDLE_ROW_S),
                                   work_group=work_group(backend.runtime))
    GuardedConsumer.on_message = meter.message_received
    stats.on_first_sample = heartbeat.nudge
    queue = keys.node_queue(config.node_id)
    worker = app.Worker(
        hostname=f"{config.node_id}@{socket.gethostname()}",
        queues=[queue],
        pool_cls="solo",
        concurrency=1,
        prefetch_multiplier=1,
        without_gossip=True,
        without_mingle=True,
        task_events=events,
        quiet=True,
        loglevel=settings.log_level,
    )
    # What a previous life of this node was running (or had queued) is re-dispatched.
    release_previous_life(client, config.node_id)
    GuardedConsumer.on_reconnect = functools.partial(hand_back, client, config.node_id,
                                                   "agent reconnected to Redis")
    # Whatever waits in our queue is our in-flight work; a previous life's count is not.
    client.hset(keys.IN_FLIGHT, config.node_id, client.llen(queue))
    runtime.start_charging()

    def ready(**_: Any) -> None:  # Celery consumes: the first heartbeat makes the node routable
        if not started:
            started.append(True)
            heartbeat.start()

    started: list[bool] = []

    worker_ready.connect(ready, weak=False)
    reading = energy.intensity()
    log.info("agent %s serving %s (cpu %.2f, mem %d MiB, %.0f g/kWh from %s, CPU from %s; "
             "device power %.2f W, %.2f W per core from %s; %s with %d thread(s): %s)",
             config.node_id, queue, config.cpu_quota, config.mem_limit_bytes >> 20,
             reading.value.g_per_kwh, reading.source, accounting.source, device.watts,
             device.watts_per_core, device.source, backend.runtime, backend.threads,
             ", ".join(backend.names))
    try:
        worker.start()
    finally:
        heartbeat.stop()
        runtime.flush_idle()
        bookkeeper.close()
        client.close()


def _check_limits(config: AgentConfig, accounting: CgroupAccounting) -> None:
    quota = accounting.cpu_quota_cores()
    if accounting.source == "process" or quota is None:
        log.warning("agent %s runs without a CPU limit of its own: its timings are not those "
                    "of a %.2f-CPU node", config.node_id, config.cpu_quota)
    elif abs(quota - config.cpu_quota) > 0.01:
        log.warning("agent %s: cgroup CPU quota %.2f differs from the declared %.2f",
                    config.node_id, quota, config.cpu_quota)
