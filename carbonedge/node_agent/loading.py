"""Opening a node's backend: which runtime, its graphs, its models loaded.

An agent opens one backend at start-up (:func:`open_backend`) with every model the
deployment declares, loads them all and only then reports ready. The ONNX Runtime backend
never imports torch (each backend module is imported only when chosen); its graphs come
from the shared export store, exported first (by `carbonedge models export` in a process
of its own) when missing. ``auto`` picks ONNX Runtime when every declared model has a
graph, else torch, and says why.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from carbonedge.errors import ConfigError
from carbonedge.node_agent.backend import AUTO, RUNTIMES, ModelBackend, threads_for_quota
from carbonedge.partitioner.catalog import Catalogue, ModelSpec
from carbonedge.partitioner.graphs import ExportedGraph, GraphStore
from carbonedge.settings import Settings

__all__ = ["open_backend", "prepare_graphs", "run_export"]

log = logging.getLogger(__name__)

EXPORT_TIMEOUT_S = 1800.0


def open_backend(runtime: str, models: Catalogue, settings: Settings, *, cpu_quota: float,
                 compose_file: str | os.PathLike[str] | None = None) -> ModelBackend:
    """The backend for ``runtime`` (``torch``, ``onnxruntime`` or ``auto``) with every model
    of ``models`` loaded; a model it cannot serve is a ConfigError naming it and why."""
    threads = threads_for_quota(cpu_quota)
    weights_dir = settings.model_dir or None
    if runtime == "torch":
        files = [s.name for s in models if s.kind == "onnx"]
        if files:
            raise ConfigError(f"model(s) {files} come from ONNX files, which torch cannot run: "
                              "give this node `runtime: onnxruntime` (or auto)", field="runtime")
        from carbonedge.node_agent.torch_backend import TorchBackend

        return TorchBackend(models, weights_dir=weights_dir, threads=threads)
    if runtime not in (AUTO, "onnxruntime"):
        raise ConfigError(f"runtime {runtime!r} must be one of {[AUTO, *RUNTIMES]}",
                          field="runtime")
    store = GraphStore(settings.graphs_dir)
    graphs, failures = prepare_graphs(models, store, settings, compose_file)
    if failures:
        why = "; ".join(f"{name}: {error}" for name, error in failures.items())
        if runtime == "onnxruntime" or any(s.kind == "onnx" for s in models):
            raise ConfigError(f"cannot serve every model with onnxruntime: {why}",
                              field="runtime")
        log.warning("runtime auto: torch, because not every model exports to ONNX (%s)", why)
        from carbonedge.node_agent.torch_backend import TorchBackend

        return TorchBackend(models, weights_dir=weights_dir, threads=threads)
    from carbonedge.node_agent.onnx_backend import OnnxBackend

    return OnnxBackend(models, graphs, threads=threads)


def prepare_graphs(models: Catalogue, store: GraphStore, settings: Settings,
                   compose_file: str | os.PathLike[str] | None
                   ) -> tuple[dict[str, ExportedGraph], dict[str, str]]:
    """Every torch-defined model's exported graph, exporting the missing ones first in a
    process of their own (this one keeps torch out); and the models whose export failed
    on the model itself, with why."""
    weights_dir = settings.model_dir or None
    graphs: dict[str, ExportedGraph] = {}
    failures: dict[str, str] = {}
    missing: list[ModelSpec] = []
    for spec in models:
        if spec.kind == "onnx":
            continue
        graph = store.lookup(spec, weights_dir)
        if graph is not None:
            graphs[spec.name] = graph
        elif (failure := store.failure(spec, weights_dir)) is not None:
            failures[spec.name] = failure
        else:
            missing.append(spec)
    if missing:
        run_export([s.name for s in missing], settings, compose_file)
        for spec in missing:
            graph = store.lookup(spec, weights_dir)
            if graph is not None:
                graphs[spec.name] = graph
            else:
                failures[spec.name] = (store.failure(spec, weights_dir)
                                       or "the export left no graph (see the log above)")
    return graphs, failures


def run_export(names: Sequence[str], settings: Settings,
               compose_file: str | os.PathLike[str] | None) -> None:
    """`carbonedge models export` for ``names`` in a child process; a failure that is not
    the model's own (the child killed, out of memory) is a RuntimeUnavailable-like
    ConfigError that says how to export beforehand."""
    args = [sys.executable, "-m", "carbonedge.cli", "models", "export", "--keep-going"]
    if compose_file is not None:
        args += ["--compose", str(Path(compose_file))]
    for name in names:
        args += ["--model", name]
    log.info("exporting %s to ONNX (first start with these weights and this torch)",
             ", ".join(names))
    env = {**os.environ, **settings.to_env()}
    done = subprocess.run(args, env=env, stdin=subprocess.DEVNULL, timeout=EXPORT_TIMEOUT_S,
                          check=False)
    if done.returncode not in (0, 2):  # 2: a model failed, recorded in the store
        raise ConfigError(f"exporting {', '.join(names)} failed (exit status "
                          f"{done.returncode}: killed, or out of memory?); export beforehand "
                          f"with `carbonedge models export` where memory allows, into the "
                          f"shared export directory {settings.graphs_dir}", field="export_dir")
