"""The agent's heartbeat: telemetry published to ``ce:node:<id>`` every interval."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from carbonedge.cgroups import CgroupAccounting
from carbonedge.node_agent.config import AgentConfig
from carbonedge.node_agent.energy import EnergyAccountant
from carbonedge.node_agent.stats import ExecStats
from carbonedge.protocol import keys
from carbonedge.protocol.telemetry import ORACLE_FORECAST, Heartbeat
from carbonedge.protocol.untrusted import Rejections, is_wrong_type, move_aside_sync

log = logging.getLogger(__name__)


class HeartbeatPublisher:
    """Measures the node over each interval and publishes one heartbeat per interval."""

    def __init__(
        self,
        config: AgentConfig,
        client: redis.Redis,
        *,
        accounting: CgroupAccounting,
        energy: EnergyAccountant,
        stats: ExecStats,
        interval_s: float,
        ttl_s: float,
        on_beat: Callable[[], None] | None = None,
        work_group: str = "",
        host_id: str = "",
    ) -> None:
        self.config = config
        self._host_id = host_id
        self._client = client
        self._accounting = accounting
        self._energy = energy
        self._on_beat = on_beat
        self._work_group = work_group
        self._stats = stats
        self._interval = interval_s
        self._ttl_ms = max(int(ttl_s * 1000), 1)
        self.rejections = Rejections(f"agent {config.node_id}", log)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_cpu = accounting.cpu_usage_s()
        self._last_own_cpu = time.process_time()
        self._last_t = time.monotonic()
        self._started_at = time.time()

    def measure(self) -> Heartbeat:
        """Telemetry since the previous call."""
        cfg = self.config
        cpu, now = self._accounting.cpu_usage_s(), time.monotonic()
        cpu_delta, wall = max(cpu - self._last_cpu, 0.0), max(now - self._last_t, 1e-6)
        # S_R asks what else competes for the node's CPU: not the agent itself (its tasks,
        # and its hand-offs, acknowledgements and heartbeats, which scale with the work it
        # is given), but other processes in its cgroup or container
        own = time.process_time()
        background = max(cpu_delta - (own - self._last_own_cpu), 0.0)
        self._last_cpu, self._last_t, self._last_own_cpu = cpu, now, own
        mem_limit = self._accounting.memory_limit_bytes() or cfg.mem_limit_bytes
        reading = self._energy.intensity()
        device = self._energy.device
        forecasts = self._energy.forecasts()
        return Heartbeat(
            node_id=cfg.node_id,
            ts=time.time(),
            cpu_quota=cfg.cpu_quota,
            mem_limit_bytes=mem_limit,
            mem_used_bytes=self._accounting.memory_usage_bytes(),
            cpu_util=min(cpu_delta / wall / cfg.cpu_quota, 1.0),
            background_util=min(background / wall / cfg.cpu_quota, 1.0),
            power_w=cpu_delta / wall * device.watts_per_core + device.ram_w,
            active_power_w=device.watts,
            carbon_intensity=reading.value.g_per_kwh,
            pue=cfg.pue,
            in_flight=self._stats.in_flight,
            tasks_done=self._stats.tasks_done,
            intensity_source=reading.source,
            cpu_source=self._accounting.source,
            exec_ms=self._stats.exec_ms(),
            cpu_usage_s=cpu,
            started_at=self._started_at,
            ci_forecast=forecasts.pop(ORACLE_FORECAST, ()),
            forecasts=forecasts,
            work_group=self._work_group,
        )

    def beat(self) -> None:
        """Publish one heartbeat (the hash is replaced whole, then given its expiry)."""
        key = keys.node_key(self.config.node_id)
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(key)  # whatever was there, of whatever type
        pipe.hset(key, mapping=self.measure().to_fields())
        pipe.pexpire(key, self._ttl_ms)
        pipe.sadd(keys.NODES, self.config.node_id)
        if self._host_id:  # the carbon service of this host accounts for this node
            pipe.sadd(keys.host_nodes_key(self._host_id), self.config.node_id)
        replies = pipe.execute(raise_on_error=False)
        if isinstance(replies[3], redis.ResponseError) and is_wrong_type(replies[3]):
            # the registry of the wrong type holds no node: out of the way, and in again
            move_aside_sync(self._client, keys.NODES, "set", self.rejections)
            self._client.sadd(keys.NODES, self.config.node_id)
        elif errors := [e for e in replies if isinstance(e, Exception)]:
            raise errors[0]

    def start(self) -> None:
        self.beat()
        self._thread = threading.Thread(target=self._run, name="ce-heartbeat", daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        """Beat now rather than at the next interval (e.g. a model's first measurement)."""
        self._wake.set()

    def stop(self, *, withdraw: bool = True) -> None:
        """Stop beating; by default remove the heartbeat so no more tasks are routed here."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval * 2)
        if withdraw:
            try:
                self._client.delete(keys.node_key(self.config.node_id))
            except redis.RedisError as e:
                log.warning("could not withdraw heartbeat: %s", e)

    def _run(self) -> None:
        failing = False
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            if self._on_beat is not None:
                try:
                    self._on_beat()
                except Exception:  # bookkeeping must never stop the heartbeat
                    log.exception("periodic agent bookkeeping failed")
            try:
                self.beat()
                if failing:
                    log.info("heartbeat publishing recovered")
                failing = False
            except redis.RedisError as e:
                if not failing:
                    log.warning("heartbeat could not be published (will retry): %s", e)
                failing = True
