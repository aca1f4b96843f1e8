"""What runs a node's models: torch or ONNX Runtime, behind one small interface.

:class:`ModelBackend` is that interface, :class:`ServedModel` a loaded model; the torch and
ONNX Runtime backends implement it, and :mod:`carbonedge.node_agent.loading` opens the one
a node runs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from carbonedge.errors import UnknownModel
from carbonedge.partitioner.catalog import ModelSpec

log = logging.getLogger(__name__)

__all__ = ["AUTO", "RUNTIMES", "ModelBackend", "ServedModel", "ServedModels",
           "threads_for_quota"]

RUNTIMES = ("torch", "onnxruntime")
AUTO = "auto"


def threads_for_quota(cpu_quota: float) -> int:
    """One thread per whole core of quota (at least one): more threads only get throttled."""
    return max(1, math.floor(cpu_quota + 1e-6))


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A model loaded by a backend: what requests of it must look like, and its provenance."""

    spec: ModelSpec
    num_classes: int
    random_init: bool
    weights_source: str
    n_blocks: int
    """How many blocks partition segments may cut it into (0: served whole only)."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def input_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The shapes a request's input may have: with or without the batch of one."""
        return self.spec.batch_shape, self.spec.input_shape


class ServedModels:
    """What both backends share: the loaded models by name, in declaration order."""

    def __init__(self) -> None:
        self._served: dict[str, ServedModel] = {}

    @property
    def names(self) -> list[str]:
        return list(self._served)

    def get(self, name: str) -> ServedModel:
        served = self._served.get(name)
        if served is None:
            raise UnknownModel(f"unknown model {name!r}; this node serves "
                               f"{', '.join(self._served)}", field="model")
        return served


class ModelBackend(Protocol):
    """Loads a node's models once and runs them on numpy arrays."""

    runtime: str
    """``torch`` or ``onnxruntime``: what every result of this node names."""
    threads: int

    @property
    def names(self) -> list[str]: ...

    def get(self, name: str) -> ServedModel:
        """The loaded model ``name``; UnknownModel (listing the served ones) otherwise."""
        ...

    def run(self, name: str, x: np.ndarray) -> np.ndarray:
        """The whole model on one float32 input of its batch shape: logits, (1, C)."""
        ...

    def block_input_shape(self, name: str, index: int) -> tuple[int, ...]:
        """The activation shape block ``index`` takes (a segment starting there)."""
        ...

    def run_segment(self, name: str, start: int, stop: int, x: np.ndarray) -> np.ndarray:
        """Blocks ``[start, stop)`` on ``x``; InvalidRequest for a range outside the model."""
        ...

    def profile(self, name: str, repeats: int) -> list[dict[str, Any]]:
        """Each block's wire profile (shapes, FLOPs, layer cost, median ms here)."""
        ...
