"""The ``carbonedge`` command."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from carbonedge.errors import CarbonEdgeError, RuntimeUnavailable
from carbonedge.settings import Settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carbonedge", description=__doc__)
    p.add_argument("--config", help="settings file (TOML); CARBONEDGE_* variables override it")
    p.add_argument("--redis-url", help="Redis URL (default redis://127.0.0.1:6379/0)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    def with_compose(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--compose", help="compose file (default compose/docker-compose.yml)")
        return sp

    up = with_compose(sub.add_parser("up", help="start Redis (if needed), dispatcher and agents"))
    up.add_argument("--scale", action="append", default=[], metavar="NODE=N",
                    help="run N agents of a node class")
    up.add_argument("--preload", action="append", default=[], metavar="MODEL",
                    help="a model every agent must serve (agents load every declared model "
                         "before they take work; an undeclared one stops start-up)")
    up.add_argument("--wait", type=float, default=180.0, help="seconds to wait for readiness")
    up.add_argument("--runtime", choices=("local", "docker"), default="local",
                    help="local: processes in cgroups (default); docker: containers via the "
                         "Docker SDK with nano_cpus and mem_limit")
    up.add_argument("--image", default="carbonedge:latest", help="image of --runtime docker")
    up.add_argument("--inference-runtime", choices=("torch", "onnxruntime"),
                    help="run every node's models with this (default: each node's "
                         "x-carbonedge.runtime, auto)")
    up.add_argument("--metrics-port", type=int,
                    help="the dispatcher exports Prometheus metrics on 127.0.0.1:PORT")
    up.add_argument("--no-carbon", action="store_true",
                    help="do not run the carbon service (agents then charge a linear power "
                         "estimate)")
    sub.add_parser("down", help="stop what `carbonedge up` started")
    supervise = sub.add_parser("supervise", help="(started by `up`) run and restart the "
                               "processes listed in RUN_DIR/supervise.json")
    supervise.add_argument("--run-dir", required=True)

    agent = with_compose(sub.add_parser("agent", help="run one node agent (a Celery worker)"))
    agent.add_argument("--node", required=True, help="node id (a node class, or class-N)")
    agent.add_argument("--preload", action="append", default=[], metavar="MODEL")
    agent.add_argument("--events", action="store_true", help="send Celery task events (Flower)")
    agent.add_argument("--instance", metavar="SUFFIX|container|hostname",
                       help="run as <node>-SUFFIX (`container`: the container id, for "
                            "`docker compose up --scale`); settings stay the node class's")
    agent.add_argument("--check", action="store_true",
                       help="health check: exit 0 if this node's heartbeat is fresh, else 1")

    models = sub.add_parser("models", help="the declared models: list them, export them to ONNX")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    with_compose(models_sub.add_parser("list", help="declared models, accuracy, export status"))
    export = with_compose(models_sub.add_parser(
        "export", help="export the declared models to the shared ONNX store (whole and per "
                       "block), verified against torch"))
    export.add_argument("--model", action="append", default=[], metavar="NAME",
                        help="only this model (repeatable; default: every declared model)")
    export.add_argument("--keep-going", action="store_true",
                        help="export the other models when one fails (exit status 2)")

    dispatcher = with_compose(sub.add_parser("dispatcher", help="run the asyncio dispatcher"))
    _metrics_options(dispatcher, "also export Prometheus metrics on this port")

    exporter = sub.add_parser("metrics", help="export Prometheus metrics of the Redis state")
    _metrics_options(exporter, "port of /metrics", default=9808)

    flower = sub.add_parser("flower", help="Flower (Celery monitor), basic auth required")
    flower.add_argument("--port", type=int, default=5555)
    flower.add_argument("--address", default="127.0.0.1",
                        help="bind address (default loopback only)")

    carbon = sub.add_parser("carbon", help="the carbon service: host CodeCarbon tracker, "
                            "ledger, per-window reconciliation, emissions CSV")
    carbon.add_argument("--csv", help="emissions CSV (default <run_dir>/emissions.csv)")
    carbon.add_argument("--window", type=float, help="reconciliation window, seconds")
    _metrics_options(carbon, "also export Prometheus metrics (energy, carbon, windows) here")
    acl = sub.add_parser("acl", help="print a Redis ACL file: one user per role (producer, "
                         "dispatcher, agent, monitor); passwords from "
                         "CARBONEDGE_ACL_<ROLE>_PASSWORD")
    acl.add_argument("--role", action="append", choices=("producer", "dispatcher", "agent",
                                                         "monitor"),
                     help="only these roles (default: all four)")
    report = sub.add_parser("report", help="summarise an emissions CSV")
    report.add_argument("csv", nargs="?", help="emissions CSV (default <run_dir>/emissions.csv)")

    status = sub.add_parser("status", help="a table of nodes: telemetry, queues, carbon so far")
    status.add_argument("--watch", type=float, metavar="SECONDS",
                        help="refresh every SECONDS until Ctrl-C")

    demo = with_compose(sub.add_parser("demo", help="the paper's mode comparison, end to end"))
    demo.add_argument("-n", "--inferences", type=int, default=50,
                      help="inferences per configuration, spread over the blocks")
    demo.add_argument("--blocks", type=int, default=5,
                      help="blocks, each running every configuration in a random order")
    demo.add_argument("--seed", type=int, default=0, help="seed of the block orders and images")
    demo.add_argument("--model", default="mobilenetv2")
    demo.add_argument("--mono-node", default="node-medium",
                      help="node of the monolithic baseline (the paper's average scenario)")
    demo.add_argument("--runtime", choices=("torch", "onnxruntime"),
                      help="run every node's models with this (default: as the compose file "
                           "declares, auto)")
    _experiment_parsers(sub, with_compose)
    return p


def _experiment_parsers(sub: argparse._SubParsersAction, with_compose: Any) -> None:
    """``carbonedge experiment paper|temporal``: options left unset take the defaults of
    the full run, or of ``--quick``."""
    experiment = sub.add_parser("experiment", help="the paper's evaluation; a temporal one")
    kinds = experiment.add_subparsers(dest="experiment", required=True)
    paper = with_compose(kinds.add_parser(
        "paper", help="Tables II, IV, V and Figs. 2, 3 of the paper, with intervals"))
    paper.add_argument("--models", type=_names, metavar="M1,M2",
                       help="models (default mobilenetv2,mobilenetv4,efficientnet_b0)")
    paper.add_argument("--n", type=int, help="inferences per configuration per block (50)")
    paper.add_argument("--blocks", type=int, help="blocks (5), each running every "
                       "configuration in a seeded random order")
    paper.add_argument("--mono-node", help="node of the Monolithic baseline (node-medium)")
    paper.add_argument("--slo-ms", type=float, help="CE-SLO's latency bound and CE-Green "
                       "(partitioned)'s plan bound (default: per model, halfway between the "
                       "fastest and slowest node's warm service time)")
    paper.add_argument("--sweep-steps", type=int, help="steps of w_C from 0 to 1 (11)")
    paper.add_argument("--sweep-n", type=int,
                       help="inferences per sweep step per block (max(2, n/5))")
    temporal = with_compose(kinds.add_parser(
        "temporal", help="replay hourly intensity traces: deferral, forecasters, budgets"))
    temporal.add_argument("--zones", type=_names, metavar="Z1,Z2",
                          help="traces, one per node in order (cycled): packaged names or "
                               "CSV paths (default US-CAL-CISO_2023_week23,GB_2023_week23)")
    temporal.add_argument("--start", help="trace hour the replay starts at, ISO UTC "
                                          "(default: the traces' second day)")
    temporal.add_argument("--hours", type=int, help="trace hours replayed (24)")
    temporal.add_argument("--speedup", type=float,
                          help="trace seconds per wall second (360: a trace hour in 10 s)")
    temporal.add_argument("--forecast", type=_names, metavar="F1,F2",
                          help="forecasters of the deferral arms (oracle,persistence,yesterday)")
    temporal.add_argument("--rate", type=float, help="requests per trace hour per arm (6)")
    temporal.add_argument("--deferrable", type=float,
                          help="share of requests with a deadline of 1-8 trace hours (0.5)")
    temporal.add_argument("--blocks", type=int,
                          help="slices of the replay the intervals are taken across (6)")
    temporal.add_argument("--model", help="model every request runs (mobilenetv2)")
    temporal.add_argument("--budget-g", type=float, help="each tenant's carbon budget in "
                          "grams (default: 1.5 x its projected carbon-agnostic spend)")
    for sp in (paper, temporal):
        sp.add_argument("--seed", type=int, help="seed of orders, images and arrivals (0)")
        sp.add_argument("--out", type=Path, help="output folder (results/<experiment>)")
        sp.add_argument("--quick", action="store_true",
                        help="a minimal run end to end (what the test suite runs)")
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return names


def _metrics_options(sp: argparse.ArgumentParser, port_help: str,
                     default: int | None = None) -> None:
    sp.add_argument("--metrics-port", type=int, default=default, help=port_help)
    sp.add_argument("--metrics-address", default="127.0.0.1",
                    help="bind address of /metrics (default loopback only)")


def _stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so that `with` blocks tear down what they started."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("demo", "up", "experiment"):
        _stop_on_sigterm()
    try:
        settings = Settings.load(args.config, redis_url=args.redis_url,
                                 compose_file=getattr(args, "compose", None),
                                 inference_runtime=getattr(args, "inference_runtime", None)
                                 or (getattr(args, "runtime", None)
                                     if args.command == "demo" else None))
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else getattr(logging, settings.log_level, 20),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        if args.command not in ("down", "report", "acl"):  # a URL that cannot work fails here
            from carbonedge.connections import parse_redis_url, wait_until_reachable

            parse_redis_url(settings.redis_url)
            if args.command == "agent" and not args.check:  # refused before waiting for Redis
                from carbonedge.node_agent.health import instance_node_id
                from carbonedge.transport.allowlist import check_agent_allowed

                check_agent_allowed(instance_node_id(args.node, args.instance),
                                    settings.node_allowlist)
            if args.command in _SERVICES and not getattr(args, "check", False):
                wait_until_reachable(settings.redis_url, settings.redis_wait_s)
        return _COMMANDS[args.command](args, settings) or 0
    except CarbonEdgeError as e:
        print(f"carbonedge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("carbonedge: interrupted; everything it started was stopped", file=sys.stderr)
        return 130


def _up(args: argparse.Namespace, settings: Settings) -> int:
    from carbonedge.compose.local_runner import LocalRuntime
    from carbonedge.compose.topology import load_topology

    metrics = ("--metrics-port", str(args.metrics_port)) if args.metrics_port else ()
    services = "a dispatcher" + ("" if args.no_carbon else " and the carbon service")
    if args.runtime == "docker":
        from carbonedge.compose.docker_runner import DockerRuntime

        containers = DockerRuntime(load_topology(settings.compose_file or None), settings,
                                   scale=_parse_scale(args.scale), preload=tuple(args.preload),
                                   dispatcher_args=metrics, carbon_service=not args.no_carbon,
                                   image=args.image)
        containers.up(wait_s=args.wait)
        print(f"up in containers ({args.image}): {', '.join(containers.node_ids)} and "
              f"{services} on {settings.redis_url}; stop with `carbonedge down`")
        return 0
    runtime = LocalRuntime(load_topology(settings.compose_file or None), settings,
                           scale=_parse_scale(args.scale), preload=tuple(args.preload),
                           dispatcher_args=metrics, carbon_service=not args.no_carbon,
                           supervise=True)
    runtime.up(wait_s=args.wait)
    print(f"up: {', '.join(runtime.node_ids)}, {services} on {settings.redis_url}"
          f"{'' if runtime.state.constrained else ' (no cgroup limits: not permitted here)'}")
    print(f"supervised (pid {runtime.state.supervisor_pid}): a process that exits is "
          "restarted with back-off; `carbonedge status` shows them")
    print(f"logs in {runtime.run_dir / 'logs'}; stop with `carbonedge down`")
    return 0


def _supervise(args: argparse.Namespace, settings: Settings) -> int:
    from carbonedge.compose.supervisor import run_supervisor

    run_supervisor(settings, Path(args.run_dir))
    return 0


def _down(args: argparse.Namespace, settings: Settings) -> int:
    from carbonedge.compose.local_runner import LocalRuntime

    state = LocalRuntime.down_recorded(settings.run_dir)
    if (Path(settings.run_dir) / "docker-state.json").exists():
        from carbonedge.compose.docker_runner import DockerRuntime

        state = DockerRuntime.down_recorded(settings.run_dir) or state
    print("down" if state else f"nothing recorded in {settings.run_dir}: nothing to stop")
    return 0


def _agent(args: argparse.Namespace, settings: Settings) -> int:
    from carbonedge.compose.topology import load_topology
    from carbonedge.node_agent.config import AgentConfig
    from carbonedge.node_agent.health import instance_node_id

    node_id = instance_node_id(args.node, args.instance)
    if args.check:
        return _agent_check(node_id, settings)
    from carbonedge.node_agent.worker import run_agent

    topology = load_topology(settings.compose_file or None)
    spec = topology.node(args.node)
    config = AgentConfig(node_id=node_id, cpu_quota=spec.cpus,
                         mem_limit_bytes=spec.mem_limit_bytes,
                         intensity=spec.intensity_provider(), pue=spec.pue,
                         runtime=spec.runtime_under(settings))
    run_agent(config, settings, models=topology.models, compose_file=topology.source,
              preload=tuple(args.preload), events=args.events)
    return 0


def _models(args: argparse.Namespace, settings: Settings) -> int:
    from carbonedge.partitioner.catalog import load_catalogue
    from carbonedge.partitioner.graphs import GraphStore

    catalogue = load_catalogue(settings.compose_path())
    store = GraphStore(settings.graphs_dir)
    if args.models_command == "list":
        print(f"{'model':<18} {'source':<34} {'input':<12} {'top-1':>6}  {'ONNX graph':<12} "
              "top-1 published in")
        for spec in catalogue:
            if spec.kind == "onnx":
                status = "(ONNX file)"
            elif store.lookup(spec, settings.model_dir or None) is not None:
                status = "exported"
            else:
                status = "failed" if store.failure(spec, settings.model_dir or None) else "missing"
            top1 = f"{spec.top1:.2f}" if spec.top1 is not None else "-"
            shape = "x".join(str(d) for d in spec.input_shape)
            print(f"{spec.name:<18} {spec.source[:34]:<34} {shape:<12} {top1:>6}  "
                  f"{status:<12} {spec.top1_source or '-'}")
        print(f"store: {store.root}")
        return 0
    from carbonedge.partitioner.export import export_model

    failed = 0
    for spec in catalogue.select(args.model) if args.model else catalogue:
        if spec.kind == "onnx":
            print(f"{spec.name}: an ONNX file, served as it is ({spec.target})")
            continue
        try:
            graph, new = export_model(spec, store, settings.model_dir or None)
        except CarbonEdgeError as e:
            if not args.keep_going:
                raise
            print(f"carbonedge: error: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{spec.name}: {'exported' if new else 'cached'} ({len(graph.blocks)} block "
              f"graphs, largest |onnxruntime - torch| {graph.max_abs_diff:.1e}) in "
              f"{graph.directory}")
    return 2 if failed else 0


def _agent_check(node_id: str, settings: Settings) -> int:
    import redis

    from carbonedge.connections import redis_client
    from carbonedge.node_agent.health import check_heartbeat

    client = redis_client(settings.redis_url, socket_timeout=5)
    try:
        health = check_heartbeat(client, node_id, settings.heartbeat_ttl_s)
    except redis.RedisError as e:
        print(f"unhealthy: no Redis at {settings.redis_url}: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(health.detail, file=sys.stdout if health.healthy else sys.stderr)
    return 0 if health.healthy else 1


def _dispatcher(args: argparse.Namespace, settings: Settings) -> int:
    from carbonedge.dispatcher.dispatcher import Dispatcher, run_dispatcher

    setup = None
    if args.metrics_port is not None:
        from carbonedge.ops.metrics import DecisionLatency, serve_metrics

        registry = serve_metrics(settings, args.metrics_port, args.metrics_address)
        latency = DecisionLatency(registry)

        def setup(dispatcher: Dispatcher) -> None:
            dispatcher.on_decision = latency.observe

    run_dispatcher(settings, setup)
    return 0



def _metrics(args: argparse.Namespace, settings: Settings) -> int:
    from carbonedge.ops.metrics import run_exporter

    run_exporter(settings, args.metrics_port, args.metrics_address)
    return 0


def _flower(args: argparse.Namespace, settings: Settings) -> int:
    from carbonedge.ops.flower import run_flower

    return run_flower(settings, address=args.address, port=args.port)


def _carbon(args: argparse.Namespace, settings: Settings) -> int:
    from carbonedge.carbon.service import run_carbon_service

    changes = {"carbon_csv": args.csv, "carbon_window_s": args.window}
    if args.metrics_port is not None:
        from carbonedge.ops.metrics import serve_metrics

        serve_metrics(settings, args.metrics_port, args.metrics_address)
    run_carbon_service(settings.replace(**{k: v for k, v in changes.items() if v is not None}))
    return 0


def _acl(args: argparse.Namespace, settings: Settings) -> int:
    from carbonedge.ops.acl import ROLES, acl_file, passwords_from_env

    print(acl_file(passwords_from_env(tuple(args.role or ROLES))), end="")
    return 0


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from carbonedge.carbon.report import format_report, summarise

    path = args.csv or settings.carbon_csv or str(Path(settings.run_dir) / "emissions.csv")
    print(format_report(summarise(path), headline=settings.accounting))
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    import time

    import redis

    from carbonedge.connections import redact, redis_client
    from carbonedge.ops.status import collect_cluster, format_cluster

    client = redis_client(settings.redis_url, socket_timeout=5)
    try:
        while True:
            table = format_cluster(collect_cluster(client,
                                                   heartbeat_ttl_s=settings.heartbeat_ttl_s))
            if not args.watch:
                print(table)
                return 0
            print("\033[2J\033[H" + time.strftime("%H:%M:%S ") + redact(settings.redis_url))
            print(table, flush=True)
            time.sleep(args.watch)
    except redis.ConnectionError as e:
        raise RuntimeUnavailable(f"no Redis at {redact(settings.redis_url)}: {e}") from e
    finally:
        client.close()


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from carbonedge.experiments.demo import run_demo

    return run_demo(settings, inferences=args.inferences, model=args.model,
                    mono_node=args.mono_node, blocks=args.blocks, seed=args.seed)


def _experiment(args: argparse.Namespace, settings: Settings) -> int:
    if args.experiment == "paper":
        from carbonedge.experiments.commands import run_paper_command

        return run_paper_command(settings, _given(args, "models", "n", "blocks", "mono_node",
                                                  "slo_ms", "sweep_steps", "sweep_n", "seed",
                                                  "out"),
                                 quick=args.quick, progress=not args.no_progress)
    from carbonedge.experiments.commands import run_temporal_command

    return run_temporal_command(settings, _given(args, "zones", "start", "hours", "speedup",
                                                 "forecast", "rate", "deferrable", "blocks",
                                                 "model", "budget_g", "seed", "out"),
                                quick=args.quick, progress=not args.no_progress)


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The options given on the command line (the rest keep their defaults)."""
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _parse_scale(items: list[str]) -> dict[str, int]:
    scale = {}
    for item in items:
        name, _, count = item.partition("=")
        if not count.isdigit() or int(count) < 1:
            raise CarbonEdgeError(f"--scale {item!r}: expected NODE=N with N >= 1")
        scale[name] = int(count)
    return scale


_SERVICES = frozenset({"dispatcher", "agent", "carbon", "flower"})
"""Long-running commands: they wait for Redis at start-up (it may start after them). The
metrics exporter does not: it reports Redis down (``ce_redis_up 0``) instead."""

_COMMANDS = {"up": _up, "down": _down, "supervise": _supervise, "agent": _agent,
             "models": _models,
             "dispatcher": _dispatcher, "metrics": _metrics, "flower": _flower,
             "carbon": _carbon, "acl": _acl, "report": _report, "status": _status,
             "demo": _demo, "experiment": _experiment}

if __name__ == "__main__":
    sys.exit(main())
