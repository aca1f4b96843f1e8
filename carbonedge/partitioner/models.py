"""The one model registry: building models from their specs, weight loading, inference.

Models are built without network access (``weights=None`` / ``pretrained=False``) and
their weights are loaded from local files. When no weights file is found the model keeps
its random initialisation, seeded by its name so that every process builds the same
model; that fallback is logged once per model name per process and recorded on the
:class:`LoadedModel` (``random_init=True``).

A model comes from a :class:`~carbonedge.partitioner.catalog.ModelSpec`: a built-in
registered here, any timm or torchvision architecture by name, or a TorchScript or
ExportedProgram file. (An ONNX file has no torch definition: only ONNX Runtime runs it.)

Imports stay light: torchvision and timm are imported inside the builders, only when such
a model is created. Processes that must not load torch (ONNX Runtime agents, the
dispatcher, clients) use :mod:`~carbonedge.partitioner.catalog` instead.
"""

from __future__ import annotations

import logging
import warnings
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from carbonedge.errors import ConfigError, InvalidTensor, UnknownModel
from carbonedge.partitioner import catalog
from carbonedge.partitioner.catalog import BUILTINS, ModelSpec
from carbonedge.partitioner.outputs import top_k
from carbonedge.registry import Registry

logger = logging.getLogger(__name__)

__all__ = [
    "INPUT_SHAPE",
    "LoadedModel",
    "build_module",
    "create_model",
    "find_weights",
    "model_names",
    "register_model",
    "run_inference",
    "top_k",
]

INPUT_SHAPE: tuple[int, int, int, int] = (1, *catalog.DEFAULT_INPUT_SHAPE)
"""The input the built-in models take: one RGB 224x224 image, NCHW float32."""

WEIGHT_SUFFIXES: tuple[str, ...] = catalog.WEIGHT_SUFFIXES
RANDOM_INIT = "random-init"

Builder = Callable[[], nn.Module]

_REGISTRY: Registry[Builder] = Registry("model", unknown=UnknownModel, field="model")
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
    input_shape: tuple[int, ...] = INPUT_SHAPE


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Register a builder (no arguments, returns an un-weighted ``nn.Module``) under
    ``name``; the model's spec (hub files, accuracy) is ``catalog.BUILTINS[name]``."""
    return _REGISTRY.register(name)


def model_names() -> list[str]:
    """The registered model names, sorted."""
    return _REGISTRY.names()


def _spec_of(name_or_spec: str | ModelSpec) -> ModelSpec:
    if isinstance(name_or_spec, ModelSpec):
        return name_or_spec
    _REGISTRY.get(name_or_spec)  # UnknownModel listing the registered names
    return BUILTINS.get(name_or_spec) or ModelSpec(name_or_spec, f"builtin:{name_or_spec}")


def build_module(spec: ModelSpec) -> nn.Module:
    """The un-weighted module of an architecture source, or the module a TorchScript or
    ExportedProgram file holds. An ONNX file or an unknown architecture is a ConfigError."""
    kind, target = spec.kind, spec.target
    try:
        if kind == "builtin":
            return _REGISTRY.get(target)()
        if kind == "timm":
            import timm

            return timm.create_model(target, pretrained=False)
        if kind == "torchvision":
            import torchvision

            return torchvision.models.get_model(target, weights=None)
        if kind == "torchscript":
            with warnings.catch_warnings():  # TorchScript is deprecated, and still loads
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(target, map_location="cpu")
        if kind == "exported":
            return torch.export.load(target).module()
    except UnknownModel:
        raise
    except Exception as e:  # timm/torchvision/torch raise many types for a bad name or file
        raise ConfigError(f"model {spec.name!r}: cannot build {spec.source}: {_first_line(e)}",
                          field="models.source") from e
    raise ConfigError(f"model {spec.name!r} comes from an ONNX file ({target}): it has no torch "
                      "definition, so only an onnxruntime node can serve it", field="runtime")


def create_model(name: str | ModelSpec, weights_dir: str | Path | None = None) -> LoadedModel:
    """Build a model (a registered name or a spec) in eval mode with gradients off, loading
    local weights if found.

    Raises :class:`UnknownModel` for a name that is not registered and
    :class:`ConfigError` for a ``weights_dir`` that is not a directory, a weights file that
    does not fit the model, or a source that cannot be built.
    """
    spec = _spec_of(name)
    path = catalog.find_weights(spec, weights_dir)
    with torch.random.fork_rng(devices=[]):
        # Same seed everywhere: every agent's randomly initialised copy is the same
        # model, so outputs agree across nodes and partitions compose.
        torch.manual_seed(zlib.crc32(spec.name.encode()))
        module = build_module(spec)
    if spec.from_file:
        source, random_init = spec.target, False
    elif path is None:
        if spec.name not in _random_init_logged:
            _random_init_logged.add(spec.name)
            logger.warning(
                "no weights found for model %r (weights_dir=%s); using random initialisation",
                spec.name,
                weights_dir or None,
            )
        source, random_init = RANDOM_INIT, True
    else:
        _load_weights(module, path)
        source, random_init = str(path), False
    if spec.kind != "exported":  # an ExportedProgram's module is traced in eval mode already
        module.eval()
    for parameter in module.parameters():  # (a ScriptModule has no requires_grad_)
        parameter.requires_grad_(False)
    return LoadedModel(
        name=spec.name,
        module=module,
        num_classes=_num_classes(module, spec),
        random_init=random_init,
        weights_source=source,
        param_count=sum(p.numel() for p in module.parameters()),
        input_shape=spec.batch_shape,
    )


def find_weights(name: str, weights_dir: str | Path | None = None) -> Path | None:
    """The weights file for registered model ``name``: ``<name>.safetensors|.pth|.pt`` in
    ``weights_dir``, then its torchvision file names in torch's hub cache; else None."""
    return catalog.find_weights(_spec_of(name), weights_dir)


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


def _num_classes(module: nn.Module, spec: ModelSpec) -> int:
    """Output classes: timm's ``num_classes``, the last Linear layer's width, else the width
    of one forward pass's output (a TorchScript or ExportedProgram module)."""
    n = getattr(module, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    if spec.kind in ("builtin", "timm", "torchvision"):
        last = None
        for m in module.modules():
            if isinstance(m, nn.Linear):
                last = m
        if last is not None:
            return int(last.out_features)
    return logits_width(spec, module)


def logits_width(spec: ModelSpec, module: nn.Module) -> int:
    """Run ``module`` once on zeros of the declared input shape; ConfigError unless it
    accepts them and returns one image's logits, shape (1, C)."""
    try:
        with torch.inference_mode():
            out = module(torch.zeros(spec.batch_shape))
    except Exception as e:  # the module's own error says what it expected
        raise ConfigError(f"model {spec.name!r} does not accept its declared input shape "
                          f"{list(spec.batch_shape)}: {_first_line(e)}",
                          field="models.input_shape") from e
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if shape is None or len(shape) != 2 or shape[0] != 1:
        raise ConfigError(f"model {spec.name!r} must return one image's logits, shape (1, C); "
                          f"it returned {shape if shape is not None else type(out).__name__}",
                          field="models.source")
    return int(shape[1])


def run_inference(model: LoadedModel, x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Run one image through ``model``; ``x`` is float32 of its input shape, with or without
    the batch of one.

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


@register_model("mobilenetv2")
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
