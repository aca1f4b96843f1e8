"""The ONNX Runtime backend: exported graphs (or ONNX files) run without torch.

Each model has one session for the whole graph, created at start-up with intra-op
threads equal to the whole cores of the node's quota and sequential execution. Block
sessions (for partition segments) are created on a segment's first run and kept; profiling
a model creates the ones it lacks only for as long as it measures them, so a node that
never serves a segment holds the whole-model sessions only (what keeps an agent serving
the paper's three models within 256 MiB).

Nothing here imports torch: the test suite checks that no libtorch is mapped into an ONNX
Runtime agent.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import numpy as np
import onnxruntime as ort

from carbonedge.errors import ConfigError, InvalidRequest
from carbonedge.node_agent.backend import ServedModel, ServedModels
from carbonedge.partitioner.catalog import Catalogue, ModelSpec
from carbonedge.partitioner.graphs import BlockGraph, ExportedGraph

log = logging.getLogger(__name__)


class OnnxBackend(ServedModels):
    """Every declared model as ONNX Runtime sessions."""

    runtime = "onnxruntime"

    def __init__(self, models: Catalogue, graphs: dict[str, ExportedGraph], *,
                 threads: int) -> None:
        super().__init__()
        self.threads = threads
        self._options = ort.SessionOptions()
        self._options.intra_op_num_threads = threads
        self._options.inter_op_num_threads = 1
        self._options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._options.log_severity_level = 3
        self._sessions: dict[str, Any] = {}
        self._inputs: dict[str, str] = {}
        self._blocks: dict[str, tuple[BlockGraph, ...]] = {}
        self._block_sessions: dict[tuple[str, int], Any] = {}
        for spec in models:
            if spec.kind == "onnx":
                self._load_file(spec)
            else:
                self._load_graph(spec, graphs[spec.name])
            log.info("loaded model %s with onnxruntime (%s)", spec.name,
                     self._served[spec.name].weights_source)

    def _load_graph(self, spec: ModelSpec, graph: ExportedGraph) -> None:
        self._open(spec, str(graph.whole))
        self._blocks[spec.name] = graph.blocks
        self._served[spec.name] = ServedModel(
            spec=spec, num_classes=graph.num_classes, random_init=graph.random_init,
            weights_source=graph.weights_source, n_blocks=len(graph.blocks))

    def _load_file(self, spec: ModelSpec) -> None:
        """An ONNX file as declared: its input and output must fit the declaration."""
        session = self._open(spec, spec.target)
        declared = list(spec.batch_shape)
        inputs, outputs = session.get_inputs(), session.get_outputs()
        got = inputs[0].shape if len(inputs) == 1 else [i.shape for i in inputs]
        if len(inputs) != 1 or not _fits(inputs[0].shape, declared):
            raise ConfigError(f"model {spec.name!r}: the ONNX file takes {got}, not the "
                              f"declared input_shape {declared}", field="models.input_shape")
        try:
            logits = session.run(None, {inputs[0].name: np.zeros(declared, np.float32)})[0]
        except Exception as e:  # onnxruntime names the node and shape that failed
            raise ConfigError(f"model {spec.name!r} fails on its declared input shape "
                              f"{declared}: {_first_line(e)}", field="models.input_shape") from e
        if len(outputs) < 1 or logits.ndim != 2 or logits.shape[0] != 1:
            raise ConfigError(f"model {spec.name!r} must output one image's logits, shape "
                              f"(1, C); it gives {list(logits.shape)}", field="models.source")
        self._blocks[spec.name] = ()
        self._served[spec.name] = ServedModel(
            spec=spec, num_classes=int(logits.shape[1]), random_init=False,
            weights_source=spec.target, n_blocks=0)

    def _open(self, spec: ModelSpec, path: str) -> Any:
        try:
            session = ort.InferenceSession(path, self._options,
                                           providers=["CPUExecutionProvider"])
        except Exception as e:  # an unknown operator, a corrupt file: named by onnxruntime
            raise ConfigError(f"model {spec.name!r}: ONNX Runtime cannot load {path}: "
                              f"{_first_line(e)}", field="models.source") from e
        self._sessions[spec.name] = session
        self._inputs[spec.name] = session.get_inputs()[0].name
        return session

    # -- serving -----------------------------------------------------------------------

    def run(self, name: str, x: np.ndarray) -> np.ndarray:
        served = self.get(name)
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(served.spec.batch_shape)
        return self._sessions[name].run(None, {self._inputs[name]: x})[0]

    def block_input_shape(self, name: str, index: int) -> tuple[int, ...]:
        return self._block(name, index).input_shape

    def run_segment(self, name: str, start: int, stop: int, x: np.ndarray) -> np.ndarray:
        n = self.get(name).n_blocks
        if not 0 <= start <= stop <= n:
            raise InvalidRequest(f"segment [{start}, {stop}) is not within the model's {n} "
                                 "blocks", field="segment")
        out = np.ascontiguousarray(x, dtype=np.float32)
        for index in range(start, stop):
            session = self._block_session(name, index, keep=True)
            out = session.run(None, {session.get_inputs()[0].name: out})[0]
        return out

    def profile(self, name: str, repeats: int) -> list[dict[str, Any]]:
        """Time each block graph once warm (median of ``repeats``), on the activations the
        chain itself produces."""
        served = self.get(name)
        x = np.random.default_rng(0).random(served.spec.batch_shape, dtype=np.float32)
        profiles = []
        for block in self._blocks[name]:
            session = self._block_session(name, block.index, keep=False)
            feed = {session.get_inputs()[0].name: x}
            out = session.run(None, feed)[0]
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                session.run(None, feed)
                times.append((time.perf_counter() - t0) * 1e3)
            profiles.append(block.profile(float(statistics.median(times))).to_wire())
            x = out
        return profiles

    def _block(self, name: str, index: int) -> BlockGraph:
        self.get(name)
        blocks = self._blocks[name]
        if not 0 <= index < len(blocks):
            raise InvalidRequest(f"block {index} is not within the model's {len(blocks)} blocks",
                                 field="segment")
        return blocks[index]

    def _block_session(self, name: str, index: int, *, keep: bool) -> Any:
        session = self._block_sessions.get((name, index))
        if session is None:
            path = str(self._block(name, index).file)
            try:
                session = ort.InferenceSession(path, self._options,
                                               providers=["CPUExecutionProvider"])
            except Exception as e:  # a store entry deleted under a running agent
                raise ConfigError(f"model {name!r}: cannot load block graph {path}: "
                                  f"{_first_line(e)}", field="export_dir") from e
            if keep:
                self._block_sessions[(name, index)] = session
        return session


def _fits(onnx_shape: list[Any], declared: list[int]) -> bool:
    """Whether a graph input (dims may be symbolic) takes the declared shape."""
    return len(onnx_shape) == len(declared) and all(
        not isinstance(d, int) or d == want for d, want in zip(onnx_shape, declared, strict=True))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
