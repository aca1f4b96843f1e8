"""Models loaded on first use and kept for the agent's lifetime."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from carbonedge.partitioner.models import LoadedModel, create_model

log = logging.getLogger(__name__)


class ModelCache:
    """Lazily builds each registered model once per process."""

    def __init__(self, weights_dir: str | Path | None = None) -> None:
        self._weights_dir = weights_dir or None
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> LoadedModel:
        model = self._models.get(name)
        if model is None:
            with self._lock:
                model = self._models.get(name)
                if model is None:
                    model = create_model(name, weights_dir=self._weights_dir)
                    self._models[name] = model
                    log.info("loaded model %s (%s)", name, model.weights_source)
        return model

    @property
    def loaded(self) -> list[str]:
        return sorted(self._models)
