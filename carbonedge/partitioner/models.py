"""The one model registry: named builders, weight loading, and single-image inference.

Models are built without network access (``weights=None`` / ``pretrained=False``) and
their weights are loaded from local files. When no weights file is found the model keeps
its random initialisation; that fallback is logged once per model name per process and
recorded on the :class:`LoadedModel` (``random_init=True``).

Imports stay light: this module is imported by node agents in 512 MiB of memory, so
torchvision and timm are imported inside the builders, only when such a model is created.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from carbonedge.errors import ConfigError, InvalidTensor, UnknownModel
from carbonedge.registry import Registry

logger = logging.getLogger(__name__)

__all__ = [
    "INPUT_SHAPE",
    "LoadedModel",
    "create_model",
    "find_weights",
    "model_names",
    "register_model",
    "run_inference",
    "top_k",
]

INPUT_SHAPE: tuple[int, int, int, int] = (1, 3, 224, 224)
"""The input every registered model takes: one RGB 224x224 image, NCHW float32."""

WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".pt")
"""Weight file suffixes looked for in ``weights_dir``, in order of preference."""

RANDOM_INIT = "random-init"

Builder = Callable[[], nn.Module]

_REGISTRY: Registry[Builder] = Registry("model", unknown=UnknownModel, field="model")
_HUB_FILES: dict[str, tuple[str, ...]] = {}
_random_init_logged: set[str] = set()


@dataclass
class LoadedModel:
    """A built model ready for inference, and where its weights came from."""

    name: str
    module: nn.Module
    num_classes: int
    random_init: bool
    weights_source: str
    param_count: int
    input_shape: tuple[int, int, int, int] = INPUT_SHAPE


def register_model(name: str, *, hub_files: tuple[str, ...] = ()) -> Callable[[Builder], Builder]:
    """Register a builder (no arguments, returns an un-weighted ``nn.Module``) under ``name``.

    ``hub_files`` are file names also looked for in torch's hub checkpoint cache.
    """

    def decorate(builder: Builder) -> Builder:
        _REGISTRY.register(name)(builder)
        _HUB_FILES[name] = tuple(hub_files)
        return builder

    return decorate


def model_names() -> list[str]:
    """The registered model names, sorted."""
    return _REGISTRY.names()


def create_model(name: str, weights_dir: str | Path | None = None) -> LoadedModel:
    """Build model ``name`` in eval mode with gradients off, loading local weights if found.

    Raises :class:`UnknownModel` for a name that is not registered and
    :class:`ConfigError` for a ``weights_dir`` that is not a directory or a weights
    file that does not fit the model.
    """
    builder = _REGISTRY.get(name)
    path = find_weights(name, weights_dir)
    with torch.random.fork_rng(devices=[]):
        # Same seed everywhere: every agent's randomly initialised copy is the same
        # model, so outputs agree across nodes and partitions compose.
        torch.manual_seed(zlib.crc32(name.encode()))
        module = builder()
    if path is None:
        if name not in _random_init_logged:
            _random_init_logged.add(name)
            logger.warning(
                "no weights found for model %r (weights_dir=%s); using random initialisation",
                name,
                weights_dir or None,
            )
        source = RANDOM_INIT
    else:
        _load_weights(module, path)
        source = str(path)
    module.eval()
    module.requires_grad_(False)
    return LoadedModel(
        name=name,
        module=module,
        num_classes=_num_classes(module),
        random_init=path is None,
        weights_source=source,
        param_count=sum(p.numel() for p in module.parameters()),
    )


def find_weights(name: str, weights_dir: str | Path | None = None) -> Path | None:
    """The weights file for ``name``: ``<name>.safetensors|.pth|.pt`` in ``weights_dir``,
    then the model's torchvision file names in torch's hub cache; ``None`` if none exists."""
    if weights_dir:
        directory = Path(weights_dir)
        if not directory.is_dir():
            raise ConfigError(
                f"weights directory {str(directory)!r} does not exist or is not a directory",
                field="weights_dir",
            )
        for suffix in WEIGHT_SUFFIXES:
            candidate = directory / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    hub_files = _HUB_FILES.get(name, ())
    if hub_files:
        checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
        for file_name in hub_files:
            candidate = checkpoints / file_name
            if candidate.is_file():
                return candidate
    return None


def _load_weights(module: nn.Module, path: Path) -> None:
    """Load a state dict file into ``module`` strictly, or raise ConfigError naming it."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        state = _unwrap_state_dict(state)
        module.load_state_dict(state, strict=True)
    except Exception as e:  # torch/safetensors raise many types for a bad file
        raise ConfigError(
            f"weights file {str(path)!r} does not fit model "
            f"{type(module).__name__}: {_first_line(e)}",
            field="weights",
        ) from e


def _unwrap_state_dict(state: Any) -> Mapping[str, torch.Tensor]:
    """Accept a bare state dict or a training checkpoint holding one."""
    if isinstance(state, Mapping):
        for key in ("state_dict", "model", "state_dict_ema"):
            inner = state.get(key)
            if isinstance(inner, Mapping):
                state = inner
                break
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError("the file does not hold a state dict of tensors")
    return state


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _num_classes(module: nn.Module) -> int:
    """Output classes: timm's ``num_classes`` or the last Linear layer's width."""
    n = getattr(module, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    last = None
    for m in module.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise ConfigError(f"cannot tell the number of classes of {type(module).__name__}")
    return int(last.out_features)


def top_k(logits: torch.Tensor | np.ndarray, k: int = 5) -> tuple[list[int], list[float]]:
    """The ``k`` most probable class ids and their softmax probabilities, most probable first.

    ``logits`` is one image's scores, shape ``(C,)`` or ``(1, C)``.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if isinstance(logits, torch.Tensor):
        arr = logits.detach().to("cpu", torch.float64).numpy()
    else:
        arr = np.asarray(logits, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"top_k takes one image's logits, shape (C,) or (1, C); got {arr.shape}")
    exp = np.exp(arr - arr.max())
    probs = exp / exp.sum()
    k = min(k, probs.size)
    ids = np.argsort(-probs, kind="stable")[:k]
    return [int(i) for i in ids], [float(probs[i]) for i in ids]


def run_inference(model: LoadedModel, x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Run one image through ``model``; ``x`` is float32 (1,3,224,224) or (3,224,224).

    Returns the logits, shape ``(1, num_classes)``. A wrong dtype or shape raises
    :class:`InvalidTensor` naming the ``input`` field.
    """
    tensor = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
    if not isinstance(tensor, torch.Tensor):
        raise InvalidTensor(
            f"input must be a numpy array or torch tensor, got {type(x).__name__}", field="input"
        )
    if tensor.dtype != torch.float32:
        raise InvalidTensor(
            f"input dtype must be float32, got {str(tensor.dtype).removeprefix('torch.')}",
            field="input.dtype",
        )
    expected = tuple(model.input_shape)
    if tuple(tensor.shape) == expected[1:]:
        tensor = tensor.unsqueeze(0)
    if tuple(tensor.shape) != expected:
        raise InvalidTensor(
            f"input shape must be {expected} or {expected[1:]}, got {tuple(tensor.shape)}",
            field="input.shape",
        )
    with torch.inference_mode():
        return model.module(tensor)


# --- registered models ------------------------------------------------------------------


@register_model("mobilenetv2", hub_files=("mobilenet_v2-b0353104.pth", "mobilenet_v2-7ebf99e0.pth"))
def _mobilenetv2() -> nn.Module:
    """torchvision MobileNetV2 (the paper's model)."""
    from torchvision.models import mobilenet_v2

    return mobilenet_v2(weights=None)


def _timm(arch: str) -> nn.Module:
    import timm

    return timm.create_model(arch, pretrained=False)


@register_model("mobilenetv2_100")
def _mobilenetv2_100() -> nn.Module:
    """timm MobileNetV2 1.0x."""
    return _timm("mobilenetv2_100")


@register_model("mobilenetv4")
def _mobilenetv4() -> nn.Module:
    """timm MobileNetV4 conv small."""
    return _timm("mobilenetv4_conv_small")


@register_model("efficientnet_b0")
def _efficientnet_b0() -> nn.Module:
    """timm EfficientNet-B0."""
    return _timm("efficientnet_b0")
