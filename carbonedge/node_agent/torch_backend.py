"""The torch backend: models built from their definitions, run eagerly on numpy input."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from carbonedge.node_agent.backend import ServedModel, ServedModels
from carbonedge.partitioner.blocks import Block, flatten_model, profile_blocks, run_blocks
from carbonedge.partitioner.catalog import Catalogue
from carbonedge.partitioner.models import LoadedModel, create_model, logits_width, run_inference

log = logging.getLogger(__name__)


class TorchBackend(ServedModels):
    """Every declared model built in this process (torch threads = whole cores of quota)."""

    runtime = "torch"

    def __init__(self, models: Catalogue, *, weights_dir: str | None, threads: int) -> None:
        super().__init__()
        self.threads = threads
        torch.set_num_threads(threads)
        if torch.get_num_interop_threads() != 1:
            try:
                torch.set_num_interop_threads(1)
            except RuntimeError as e:  # only before any parallel work (an agent starts so)
                log.warning("torch inter-op threads stay at %d: %s",
                            torch.get_num_interop_threads(), e)
        self._loaded: dict[str, LoadedModel] = {}
        self._blocks: dict[str, list[Block]] = {}
        self._block_shapes: dict[str, list[tuple[int, ...]]] = {}
        for spec in models:
            loaded = create_model(spec, weights_dir)
            logits_width(spec, loaded.module)  # a wrong input shape fails here, not at a request
            try:
                blocks = flatten_model(loaded)
            except Exception as e:  # no flattener for this architecture: served whole
                log.info("model %s is served whole only: %s", spec.name, e)
                blocks = []
            self._loaded[spec.name] = loaded
            self._blocks[spec.name] = blocks
            self._served[spec.name] = ServedModel(
                spec=spec, num_classes=loaded.num_classes, random_init=loaded.random_init,
                weights_source=loaded.weights_source, n_blocks=len(blocks))
            log.info("loaded model %s with torch (%s)", spec.name, loaded.weights_source)

    def run(self, name: str, x: np.ndarray) -> np.ndarray:
        self.get(name)
        return run_inference(self._loaded[name], np.ascontiguousarray(x)).numpy()

    def block_input_shape(self, name: str, index: int) -> tuple[int, ...]:
        shapes = self._block_shapes.get(name)
        if shapes is None:
            shapes, x = [], torch.zeros(self.get(name).spec.batch_shape)
            with torch.inference_mode():
                for block in self._blocks[name]:
                    shapes.append(tuple(x.shape))
                    x = block.module(x)
            self._block_shapes[name] = shapes
        return shapes[index]

    def run_segment(self, name: str, start: int, stop: int, x: np.ndarray) -> np.ndarray:
        self.get(name)
        tensor = torch.from_numpy(np.array(x, dtype=np.float32))
        return run_blocks(self._blocks[name], tensor, start, stop).contiguous().numpy()

    def profile(self, name: str, repeats: int) -> list[dict[str, Any]]:
        self.get(name)
        blocks = self._blocks[name]
        if not blocks:
            return []
        return [p.to_wire() for p in profile_blocks(self._loaded[name], blocks, repeats=repeats)]
