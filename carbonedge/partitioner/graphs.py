"""The store of exported ONNX graphs that a deployment's agents share (no torch here).

A model defined in torch (a built-in, a timm or torchvision architecture, a TorchScript or
ExportedProgram file) is exported once, whole and block by block, into
``<export_dir>/<model>/<key>/``: ``model.onnx``, ``blocks/NNN.onnx`` and ``meta.json``
(shapes, per-block costs, the largest difference from torch measured at export). The key
hashes what determines the graph: the model's name and source, its input shape, its
weights (the file's SHA-256, or its seeded random initialisation) and the exporter
(torch, torchvision and timm versions, opset, this format's version). An ONNX Runtime
agent computes the key without torch and loads the entry; a change of weights or of
torch makes a new entry rather than serving a stale one.

Entries are written to a staging directory and renamed into place under a per-model
file lock, so agents and `carbonedge models export` may race safely. An export that
fails on the model itself (an unsupported operator, a wrong input shape, outputs that
differ from torch's) is recorded next to the entry it would have been, so an ``auto``
node falls back to torch at once instead of retrying at every start.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from carbonedge.errors import ConfigError
from carbonedge.partitioner.catalog import ModelSpec, find_weights
from carbonedge.partitioner.profiles import BlockProfile

log = logging.getLogger(__name__)

__all__ = ["BlockGraph", "ExportedGraph", "GraphStore", "exporter_version", "graph_key"]

EXPORT_FORMAT = 1
"""Version of this store's layout and meta; part of every key."""
OPSET = 17
META_FILE = "meta.json"
WHOLE_FILE = "model.onnx"
BLOCKS_DIR = "blocks"
FAILED_FILE = "failed.json"
RANDOM_INIT = "random-init"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "none"


def exporter_version() -> str:
    """What produced a graph: the packages that define and export models, the opset and
    this store's format (read from package metadata: torch is not imported)."""
    packages = "+".join(f"{p}-{_version(p)}" for p in ("torch", "torchvision", "timm"))
    return f"{packages}+opset{OPSET}+format{EXPORT_FORMAT}"


def file_digest(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_identity(spec: ModelSpec, weights_dir: str | None) -> tuple[str, str]:
    """(what the key hashes, what results report) for the model's weights."""
    if spec.kind in ("torchscript", "exported"):
        return f"file:{file_digest(spec.target)}", spec.target
    path = find_weights(spec, weights_dir)
    if path is None:
        return RANDOM_INIT, RANDOM_INIT
    return f"sha256:{file_digest(path)}", str(path)


def graph_key(spec: ModelSpec, weights_dir: str | None) -> str:
    """The store key of ``spec``'s graphs with the weights ``weights_dir`` provides."""
    identity, _ = weights_identity(spec, weights_dir)
    source = spec.kind if spec.from_file else spec.source  # a file is known by its digest
    payload = {"name": spec.name, "source": source, "input_shape": list(spec.input_shape),
               "weights": identity, "exporter": exporter_version()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class BlockGraph:
    """One block's graph and what the partition planner needs to know about it."""

    file: Path
    measured: BlockProfile
    """Shapes, FLOPs, parameters and layer cost from the export (its ``time_ms`` is 0: a
    block's time is measured where it runs)."""

    @property
    def index(self) -> int:
        return self.measured.index

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.measured.input_shape

    def profile(self, time_ms: float) -> BlockProfile:
        """The block's profile with a time measured where it runs."""
        return replace(self.measured, time_ms=time_ms)


@dataclass(frozen=True, slots=True)
class ExportedGraph:
    """A model's entry in the store."""

    name: str
    key: str
    directory: Path
    input_shape: tuple[int, ...]
    num_classes: int
    random_init: bool
    weights_source: str
    exporter: str
    """Which torch exporter wrote it and the versions it ran under."""
    blocks: tuple[BlockGraph, ...]
    """Per-block graphs; empty for a model that cannot be split (served whole)."""
    max_abs_diff: float
    """Largest |onnxruntime - torch| over the whole model and every block at export."""

    @property
    def whole(self) -> Path:
        return self.directory / WHOLE_FILE

    def to_meta(self) -> dict[str, Any]:
        return {
            "format": EXPORT_FORMAT, "name": self.name, "key": self.key,
            "input_shape": list(self.input_shape), "num_classes": self.num_classes,
            "random_init": self.random_init, "weights_source": self.weights_source,
            "exporter": self.exporter, "max_abs_diff": self.max_abs_diff,
            "blocks": [{**b.measured.to_wire(), "file": b.file.name} for b in self.blocks],
        }

    @classmethod
    def from_meta(cls, directory: Path, meta: dict[str, Any]) -> ExportedGraph:
        blocks = tuple(
            BlockGraph(file=directory / BLOCKS_DIR / str(b["file"]), measured=BlockProfile(
                index=int(b["index"]), name=str(b["name"]), kind=str(b["kind"]),
                input_shape=tuple(int(d) for d in b["input_shape"]),
                output_shape=tuple(int(d) for d in b["output_shape"]),
                activation_bytes=int(b["activation_bytes"]), flops=int(b["flops"]),
                params=int(b["params"]), layer_cost=int(b["layer_cost"]), time_ms=0.0))
            for b in meta["blocks"])
        return cls(name=str(meta["name"]), key=str(meta["key"]), directory=directory,
                   input_shape=tuple(int(d) for d in meta["input_shape"]),
                   num_classes=int(meta["num_classes"]), random_init=bool(meta["random_init"]),
                   weights_source=str(meta["weights_source"]), exporter=str(meta["exporter"]),
                   blocks=blocks, max_abs_diff=float(meta["max_abs_diff"]))


class GraphStore:
    """The export directory: entries by model and key, a lock per model."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def entry_dir(self, name: str, key: str) -> Path:
        return self.root / name / key

    def lookup(self, spec: ModelSpec, weights_dir: str | None) -> ExportedGraph | None:
        """The entry of ``spec`` with its current weights, or None if not exported yet."""
        return self.read(spec.name, graph_key(spec, weights_dir))

    def read(self, name: str, key: str) -> ExportedGraph | None:
        directory = self.entry_dir(name, key)
        try:
            meta = json.loads((directory / META_FILE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ConfigError(f"the exported graph of {name} in {directory} is unreadable: {e}; "
                              "delete it and export again", field="export_dir") from e
        try:
            return ExportedGraph.from_meta(directory, meta)
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{directory / META_FILE} is malformed ({e}); delete it and "
                              "export again", field="export_dir") from e

    def failure(self, spec: ModelSpec, weights_dir: str | None) -> str | None:
        """Why exporting ``spec`` failed on the model itself, if it did (with these weights
        and this exporter)."""
        path = self.root / spec.name / f"{graph_key(spec, weights_dir)}.{FAILED_FILE}"
        try:
            return str(json.loads(path.read_text())["error"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return f"an export failed earlier (unreadable record {path})"

    def record_failure(self, name: str, key: str, message: str) -> None:
        path = self.root / name / f"{key}.{FAILED_FILE}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"error": message, "exporter": exporter_version()}))

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Exclusive, across processes, for exporting ``name`` (blocks while another holds it)."""
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{name}.lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def staging_dir(self, name: str, key: str) -> Path:
        path = self.root / name / f".staging-{key}-{os.getpid()}"
        shutil.rmtree(path, ignore_errors=True)
        (path / BLOCKS_DIR).mkdir(parents=True)
        return path

    def install(self, staging: Path, graph: ExportedGraph) -> ExportedGraph:
        """Write ``graph``'s meta into ``staging`` and move it into place."""
        final = self.entry_dir(graph.name, graph.key)
        installed = ExportedGraph.from_meta(final, graph.to_meta())
        (staging / META_FILE).write_text(json.dumps(installed.to_meta(), indent=1))
        if final.exists():  # written meanwhile by a process that did not hold the lock
            shutil.rmtree(staging, ignore_errors=True)
        else:
            os.rename(staging, final)
        return installed
