"""Prometheus metrics: CarbonEdge's state in Redis, read at scrape time, plus the dispatcher's
own decision latency.

:class:`RedisStateCollector` reads the same keys as `carbonedge status` on every scrape, so
any process can export them (the dispatcher with ``--metrics-port``, or ``carbonedge
metrics``); nothing is cached, and several exporters agree. The decision-latency histogram
can only be observed inside a dispatcher.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from carbonedge.connections import redis_client
from carbonedge.ops.status import collect_status
from carbonedge.protocol import keys
from carbonedge.protocol.untrusted import parse_amount, parse_count, parse_number, text
from carbonedge.scheduler.budgets import parse_budgets, period_index
from carbonedge.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1"
"""Exporters bind to loopback unless told otherwise: the metrics name every node."""

LATENCY_BUCKETS = (5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 0.1)


class RedisStateCollector(Collector):
    """Per-node queues, decisions, energy, carbon and telemetry, deferred requests and budget
    spend, read from Redis per scrape."""

    def __init__(self, redis_url: str, *, budgets: Mapping[str, float] | None = None,
                 budget_period_s: float = 86400.0) -> None:
        self._client = redis_client(redis_url, socket_timeout=5)
        self._budgets = dict(budgets or {})
        self._budget_period_s = budget_period_s

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisStateCollector:
        return cls(settings.redis_url, budgets=parse_budgets(settings.carbon_budgets),
                   budget_period_s=settings.carbon_budget_period_s)

    def close(self) -> None:
        self._client.close()

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("ce_redis_up", "1 when the exporter could read CarbonEdge's Redis")
        try:
            families = self._read()
        except redis.RedisError as e:
            log.warning("metrics: cannot read Redis: %s", e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> list[Any]:
        rows = collect_status(self._client)
        pipe = self._client.pipeline(transaction=False)
        pipe.hgetall(keys.DECISIONS)
        pipe.hgetall(keys.ENERGY_TOTALS)
        pipe.xlen(keys.REQUEST_STREAM)
        pipe.xlen(keys.DEAD_LETTER_STREAM)
        pipe.xlen(keys.CARBON_WINDOWS)
        pipe.xrevrange(keys.CARBON_WINDOWS, count=1)
        pipe.zcard(keys.DEFERRED)
        pipe.get(keys.DEFERRED_TOTAL)
        pipe.hgetall(keys.budget_spend_key(period_index(time.time(), self._budget_period_s)))
        pipe.hgetall(keys.REJECTED)
        (decisions, energy, pending, dead, n_windows, last_window, held, ever_deferred,
         spend, rejected) = pipe.execute(raise_on_error=False)
        # every key may hold anything: a reply of the wrong kind exports nothing
        decisions, energy, spend, rejected = (_reply(x, dict) for x in (decisions, energy,
                                                                         spend, rejected))
        pending, dead, n_windows, held = (_reply(x, int) for x in (pending, dead, n_windows,
                                                                   held))
        last_window = _reply(last_window, list)

        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["node"])

        queue = gauge("ce_node_queue_length", "Tasks waiting in the node's own Celery queue")
        in_flight = gauge("ce_node_in_flight", "Requests dispatched to the node, not finished")
        alive = gauge("ce_node_alive", "1 while the node's heartbeat is fresh (it is scheduled)")
        intensity = gauge("ce_node_carbon_intensity_g_per_kwh",
                          "Grid carbon intensity the node reports (gCO2/kWh)")
        power = gauge("ce_node_power_watts", "Node's average power over its last interval")
        util = gauge("ce_node_cpu_utilisation", "Share of the node's CPU quota in use")
        carbon = CounterMetricFamily("ce_node_carbon_grams", "gCO2 of the node's finished tasks",
                                     labels=["node"])
        kwh = CounterMetricFamily("ce_node_energy_kwh", "kWh of the node's finished tasks",
                                  labels=["node"])
        for row in rows:
            queue.add_metric([row.node_id], row.queue_len)
            in_flight.add_metric([row.node_id], row.in_flight)
            alive.add_metric([row.node_id], 1 if row.alive else 0)
            carbon.add_metric([row.node_id], row.carbon_g)
            if row.heartbeat is not None:
                intensity.add_metric([row.node_id], row.heartbeat.carbon_intensity)
                power.add_metric([row.node_id], row.heartbeat.power_w)
                util.add_metric([row.node_id], row.heartbeat.cpu_util)
        for node, value in _numbers(energy, parse_amount):
            kwh.add_metric([node], value)

        decided = CounterMetricFamily("ce_decisions", "Scheduling decisions per node and mode",
                                      labels=["node", "mode"])
        for field, count in _numbers(decisions, parse_count):
            node, _, mode = field.partition("|")
            decided.add_metric([node, mode], count)

        waiting = GaugeMetricFamily("ce_requests_waiting",
                                    "Requests in the stream not yet read by a dispatcher")
        waiting.add_metric([], pending)
        dead_letters = GaugeMetricFamily("ce_dead_letters", "Entries in the dead-letter stream")
        dead_letters.add_metric([], dead)
        windows = GaugeMetricFamily("ce_carbon_windows",
                                    "Reconciliation windows the carbon service has written")
        windows.add_metric([], n_windows)
        latest = GaugeMetricFamily("ce_carbon_window_latest",
                                   "Numeric fields of the latest reconciliation window",
                                   labels=["field"])
        for _, fields in last_window:
            # text fields (node names, sources) are not samples
            for name, value in _numbers(fields, parse_number):
                latest.add_metric([name], value)
        deferred = GaugeMetricFamily("ce_deferred_requests",
                                     "Requests held for a lower-carbon slot right now")
        deferred.add_metric([], held)
        deferred_total = CounterMetricFamily("ce_deferrals", "Requests ever deferred")
        deferred_total.add_metric([], parse_count(ever_deferred) or 0)
        spent = GaugeMetricFamily("ce_budget_spent_grams",
                                  "Tenant's gCO2 in the current budget period", labels=["tenant"])
        for tenant, grams in _numbers(spend, parse_amount):
            spent.add_metric([tenant], grams)
        budget = GaugeMetricFamily("ce_budget_grams", "Tenant's gCO2 budget per period",
                                   labels=["tenant"])
        for tenant, grams in sorted(self._budgets.items()):
            budget.add_metric([tenant], grams)
        ignored = CounterMetricFamily(
            "ce_rejected_values", "Malformed values read from Redis and ignored, by process "
            "and kind (heartbeat, node-registry, in-flight, key-type, queue-item, ...)",
            labels=["process", "source"])
        for field, count in _numbers(rejected, parse_count):
            process, _, source = field.rpartition("|")
            ignored.add_metric([process, source], count)
        return [queue, in_flight, alive, intensity, power, util, carbon, kwh, decided,
                waiting, dead_letters, windows, latest, deferred, deferred_total, spent, budget,
                ignored]


def _reply(raw: Any, kind: type) -> Any:
    """A pipeline reply of the expected type (an error, e.g. a key of the wrong type,
    reads as empty)."""
    return raw if isinstance(raw, kind) else kind()


def _numbers(raw: Mapping[Any, Any],
             parse: Callable[[Any], float | int | None]) -> list[tuple[str, Any]]:
    """The fields of a hash whose names are text and values numbers, sorted by name."""
    out = []
    for name, value in raw.items():
        label, number = text(name), parse(value)
        if label is not None and number is not None and label.isprintable():
            out.append((label, number))
    return sorted(out)


class DecisionLatency:
    """The dispatcher's time to score and pick a node, per mode (a Prometheus histogram)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram("ce_decision_latency_seconds",
                                   "Time to weigh, score and select a node for one request",
                                   labelnames=["mode"], buckets=LATENCY_BUCKETS,
                                   registry=registry)
        self._by_mode: dict[str, Any] = {}

    def observe(self, mode: str, seconds: float) -> None:
        child = self._by_mode.get(mode)
        if child is None:  # labels() costs more than the observation itself
            child = self._by_mode[mode] = self.histogram.labels(mode=mode)
        child.observe(seconds)


def serve_metrics(settings: Settings, port: int, address: str = DEFAULT_ADDRESS,
                  *, registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """Start an HTTP exporter (a daemon thread) of the Redis state; returns its registry."""
    registry = registry or CollectorRegistry()
    registry.register(RedisStateCollector.from_settings(settings))
    start_http_server(port, addr=address, registry=registry)
    log.info("metrics on http://%s:%d/metrics", address, port)
    return registry


def run_exporter(settings: Settings, port: int, address: str = DEFAULT_ADDRESS) -> None:
    """Export the Redis state until interrupted (``carbonedge metrics``)."""
    serve_metrics(settings, port, address)
    while True:
        time.sleep(3600)
