"""Exporting a model's torch definition to ONNX, whole and block by block, verified.

The TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) exports the
paper's models and each of their blocks in well under a second; the torch.export-based one
takes seconds per graph (minutes for every block of three models), so it is the fallback:
used when the first fails, and for ExportedProgram files, which only it takes. Blocks are
the partitioner's (:func:`~carbonedge.partitioner.blocks.flatten_model`): a partition
segment runs a contiguous range of them, so per-block graphs serve every cut.

Every export is verified before it is stored: ONNX Runtime runs the whole graph and each
block on the activations torch produced, and the chain of block graphs end to end; each
output must equal torch's within :data:`TOLERANCE` (relative to the output's magnitude
where that exceeds 1). A model that does not take its declared input, an operator ONNX or
ONNX Runtime lacks, or a graph that disagrees with torch is a ConfigError naming the model
and the cause, raised here rather than at a request.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from carbonedge.errors import ConfigError
from carbonedge.partitioner.blocks import Block, flatten_model, profile_blocks
from carbonedge.partitioner.catalog import ModelSpec
from carbonedge.partitioner.graphs import (
    BLOCKS_DIR,
    OPSET,
    WHOLE_FILE,
    BlockGraph,
    ExportedGraph,
    GraphStore,
    exporter_version,
    graph_key,
)
from carbonedge.partitioner.models import LoadedModel, create_model

log = logging.getLogger(__name__)

__all__ = ["TOLERANCE", "export_model"]

TOLERANCE = 1e-4
"""Largest |onnxruntime - torch| accepted, per unit of the output's magnitude above 1."""
DYNAMO_OPSET = 18
"""The torch.export-based exporter's lowest opset."""
_INPUT, _OUTPUT = "input", "output"


class _ExportFailed(ConfigError):
    """The exporter or ONNX Runtime rejected the model: recorded, not retried."""


def export_model(spec: ModelSpec, store: GraphStore,
                 weights_dir: str | None = None) -> tuple[ExportedGraph, bool]:
    """``spec``'s entry in ``store``, exporting it first if needed; returns (entry,
    whether it was exported now). Raises ConfigError naming the model and the cause."""
    if spec.kind == "onnx":
        raise ConfigError(f"model {spec.name!r} is an ONNX file already: nothing to export",
                          field="models.source")
    key = graph_key(spec, weights_dir)
    with store.lock(spec.name):
        cached = store.read(spec.name, key)
        if cached is not None:
            return cached, False
        started = time.perf_counter()
        loaded = create_model(spec, weights_dir)
        staging = store.staging_dir(spec.name, key)
        try:
            graph = _export_verified(spec, loaded, key, staging)
            installed = store.install(staging, graph)
        except _ExportFailed as e:
            store.record_failure(spec.name, key, e.message)
            raise
        finally:
            _remove(staging)  # renamed into place, or what a failure left
    log.info("exported %s in %.1f s: %d block graph(s), largest |onnxruntime - torch| %.2g "
             "(%s)", spec.name, time.perf_counter() - started, len(graph.blocks),
             graph.max_abs_diff, graph.exporter)
    return installed, True


def _export_verified(spec: ModelSpec, loaded: LoadedModel, key: str,
                     staging: Path) -> ExportedGraph:
    module = loaded.module
    x = torch.rand(spec.batch_shape, generator=torch.Generator().manual_seed(0))
    reference = _forward(spec, module, x)
    exporter = _export(spec, module, x, staging / WHOLE_FILE, what="the model")
    diffs = [_verify(spec, staging / WHOLE_FILE, x, reference, "the whole model")]
    try:
        blocks = flatten_model(loaded)
    except ConfigError as e:  # not splittable: served whole only
        log.info("model %s has no block flattener (%s): exported whole only", spec.name,
                 e.message)
        blocks = []
    block_graphs = _export_blocks(spec, loaded, blocks, x, staging, diffs)
    return ExportedGraph(
        name=spec.name, key=key, directory=staging, input_shape=spec.batch_shape,
        num_classes=int(reference.shape[1]), random_init=loaded.random_init,
        weights_source=loaded.weights_source, exporter=f"{exporter}:{exporter_version()}",
        blocks=tuple(block_graphs), max_abs_diff=max(diffs))


def _export_blocks(spec: ModelSpec, loaded: LoadedModel, blocks: list[Block], x: torch.Tensor,
                   staging: Path, diffs: list[float]) -> list[BlockGraph]:
    if not blocks:
        return []
    profiles = profile_blocks(loaded, blocks, repeats=1, x=x)
    graphs = []
    activation = x
    with torch.inference_mode():
        outputs = []
        for block in blocks:
            out = block.module(activation)
            outputs.append((activation, out))
            activation = out
    chain = x.numpy()
    for block, profile, (inp, out) in zip(blocks, profiles, outputs, strict=True):
        path = staging / BLOCKS_DIR / f"{block.index:03d}.onnx"
        _export(spec, block.module, inp, path, what=f"block {block.index} ({block.name})")
        session = _session(spec, path)
        diffs.append(_compare(spec, _run(session, inp.numpy()), out,
                              f"block {block.index} ({block.name})"))
        chain = _run(session, chain)
        graphs.append(BlockGraph(file=path, measured=replace(profile, time_ms=0.0)))
    diffs.append(_compare(spec, chain, outputs[-1][1], "the chain of block graphs"))
    return graphs


def _forward(spec: ModelSpec, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    try:
        with torch.inference_mode():
            out = module(x)
    except Exception as e:  # the module's own error says what it expected
        raise ConfigError(f"model {spec.name!r} does not accept its declared input shape "
                          f"{list(spec.batch_shape)}: {_first_line(e)}",
                          field="models.input_shape") from e
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model {spec.name!r} must return one image's logits, shape (1, C); "
                          f"it returned {got}", field="models.source")
    return out


def _export(spec: ModelSpec, module: nn.Module, x: torch.Tensor, path: Path, *,
            what: str) -> str:
    """Export with the TorchScript-based exporter, else the torch.export-based one;
    returns which one wrote ``path``."""
    errors = []
    exporters = ("dynamo",) if spec.kind == "exported" else ("torchscript", "dynamo")
    for exporter in exporters:
        try:
            with _quiet():
                if exporter == "torchscript":
                    torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=OPSET,
                                      input_names=[_INPUT], output_names=[_OUTPUT])
                else:
                    torch.onnx.export(module, (x,), str(path), dynamo=True,
                                      opset_version=DYNAMO_OPSET, input_names=[_INPUT],
                                      output_names=[_OUTPUT], external_data=False)
            return exporter
        except Exception as e:  # each exporter raises its own types; both are reported
            errors.append(f"{exporter} exporter: {_first_line(e)}")
            log.debug("exporting %s of %s with the %s exporter failed", what, spec.name,
                      exporter, exc_info=True)
    raise _ExportFailed(f"model {spec.name!r}: {what} cannot be exported to ONNX: "
                        + "; ".join(errors), field="models.source")


def _session(spec: ModelSpec, path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's errors name the operator it lacks
        raise _ExportFailed(f"model {spec.name!r}: ONNX Runtime cannot load its graph "
                            f"{path.name}: {_first_line(e)}", field="models.source") from e


def _run(session: Any, x: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x)})[0]


def _verify(spec: ModelSpec, path: Path, x: torch.Tensor, reference: torch.Tensor,
            what: str) -> float:
    return _compare(spec, _run(_session(spec, path), x.numpy()), reference, what)


def _compare(spec: ModelSpec, got: np.ndarray, reference: torch.Tensor, what: str) -> float:
    ref = reference.detach().numpy()
    if got.shape != ref.shape:
        raise _ExportFailed(f"model {spec.name!r}: {what} gives shape {list(got.shape)} in ONNX "
                            f"Runtime but {list(ref.shape)} in torch", field="models.source")
    diff = float(np.max(np.abs(got.astype(np.float64) - ref))) if ref.size else 0.0
    scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
    if not diff <= TOLERANCE * scale:
        raise _ExportFailed(f"model {spec.name!r}: {what} differs from torch by {diff:.3g} in "
                            f"ONNX Runtime (tolerance {TOLERANCE * scale:.3g})",
                            field="models.source")
    return diff


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Exporters warn about their own deprecations and print progress: keep it out of logs."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
