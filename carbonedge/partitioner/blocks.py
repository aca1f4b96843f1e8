"""Flattening a model into an ordered list of blocks, running segments, profiling blocks.

A model's blocks compose to exactly its own forward: running ``blocks[:k]`` on one node
and ``blocks[k:]`` on another gives the model's output for every cut point ``k``. Each
supported architecture has a flattener that mirrors the source of its ``forward`` (the
installed torchvision/timm versions); a model class without one raises
:class:`~carbonedge.errors.ConfigError` naming the class, rather than guessing.

Architectures are recognised by the exact class (module path and name), not by
``isinstance``: a subclass may override ``forward``, and matching by name keeps timm and
torchvision out of the imports of an agent that never builds their models.

Pure: torch only, no Redis, no Celery.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.flop_counter import FlopCounterMode

from carbonedge.errors import ConfigError, InvalidRequest
from carbonedge.partitioner.models import LoadedModel
from carbonedge.partitioner.profiles import BlockProfile

__all__ = [
    "Block",
    "BlockProfile",
    "flatten_model",
    "layer_cost",
    "profile_blocks",
    "run_blocks",
]

FLOAT32_BYTES = 4

# Block kinds.
STEM = "stem"
NORM = "norm"
BLOCK = "block"
HEAD_CONV = "head_conv"
ACT = "act"
POOL = "pool"
FLATTEN = "flatten"
CLASSIFIER = "classifier"


@dataclass(frozen=True)
class Block:
    """One step of a flattened model: ``module(x)`` maps the previous block's output on.

    ``name`` is the module's path in the model (``"features.3"``, ``"blocks.2.1"``) or,
    for a step the model's forward does with functions rather than a module,
    a descriptive name (``"pool_flatten"``). No block modifies its input in place.
    """

    index: int
    name: str
    kind: str
    module: nn.Module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


# --- flattening ---------------------------------------------------------------------------

_Flattener = Callable[[nn.Module], list[tuple[str, str, nn.Module]]]
_FLATTENERS: dict[str, _Flattener] = {}


def _flattener(*class_paths: str) -> Callable[[_Flattener], _Flattener]:
    def decorate(fn: _Flattener) -> _Flattener:
        for path in class_paths:
            _FLATTENERS[path] = fn
        return fn

    return decorate


def _class_path(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def flatten_model(loaded: LoadedModel) -> list[Block]:
    """The model's ordered blocks; their sequential composition is the model's forward.

    ``nn.Identity`` steps are left out (a cut after one equals the cut before it), and a
    stand-alone in-place activation is replaced by an out-of-place copy so that no block
    overwrites the activation it is given. Raises :class:`ConfigError` for a model class
    that has no flattener.
    """
    module = loaded.module
    flattener = _FLATTENERS.get(_class_path(module))
    if flattener is None:
        known = ", ".join(sorted(_FLATTENERS))
        raise ConfigError(
            f"cannot split model {loaded.name!r}: architecture {type(module).__name__} "
            f"({_class_path(module)}) has no block flattener; supported: {known}",
            field="model",
        )
    steps = [(n, k, m) for n, k, m in flattener(module) if not isinstance(m, nn.Identity)]
    return [
        Block(index=i, name=name, kind=kind, module=_out_of_place(m))
        for i, (name, kind, m) in enumerate(steps)
    ]


class _PoolFlatten(nn.Module):
    """torchvision MobileNetV2's functional head step: 1x1 average pool, then flatten."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return torch.flatten(x, 1)


@_flattener("torchvision.models.mobilenetv2.MobileNetV2")
def _torchvision_mobilenet_v2(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    # MobileNetV2._forward_impl: features -> adaptive_avg_pool2d(1x1) -> flatten(1) -> classifier
    features = model.features
    last = len(features) - 1
    steps = []
    for i, layer in enumerate(features):
        kind = STEM if i == 0 else HEAD_CONV if i == last else BLOCK
        steps.append((f"features.{i}", kind, layer))
    steps.append(("pool_flatten", POOL, _PoolFlatten()))
    steps.append(("classifier", CLASSIFIER, model.classifier))
    return steps


def _timm_stem_and_blocks(model: nn.Module) -> Iterator[tuple[str, str, nn.Module]]:
    yield "conv_stem", STEM, model.conv_stem
    yield "bn1", NORM, model.bn1
    for s, stage in enumerate(model.blocks):
        for b, block in enumerate(stage):
            yield f"blocks.{s}.{b}", BLOCK, block


@_flattener("timm.models.efficientnet.EfficientNet")
def _timm_efficientnet(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    # forward_features: conv_stem, bn1, blocks, conv_head, bn2
    # forward_head: global_pool, dropout (training only), classifier
    return [
        *_timm_stem_and_blocks(model),
        ("conv_head", HEAD_CONV, model.conv_head),
        ("bn2", NORM, model.bn2),
        ("global_pool", POOL, model.global_pool),
        ("classifier", CLASSIFIER, model.classifier),
    ]


@_flattener("timm.models.mobilenetv3.MobileNetV3")
def _timm_mobilenetv3(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    # forward_features: conv_stem, bn1, blocks
    # forward_head: global_pool, conv_head, norm_head, act2, flatten,
    #               dropout (training only), classifier
    return [
        *_timm_stem_and_blocks(model),
        ("global_pool", POOL, model.global_pool),
        ("conv_head", HEAD_CONV, model.conv_head),
        ("norm_head", NORM, model.norm_head),
        ("act2", ACT, model.act2),
        ("flatten", FLATTEN, model.flatten),
        ("classifier", CLASSIFIER, model.classifier),
    ]


def _out_of_place(module: nn.Module) -> nn.Module:
    """``module``, or an out-of-place copy if it is a parameter-free in-place activation."""
    if getattr(module, "inplace", False) and not any(True for _ in module.parameters()):
        module = copy.deepcopy(module)
        module.inplace = False
    return module


# --- running ------------------------------------------------------------------------------


def run_blocks(
    blocks: Sequence[Block], x: torch.Tensor, start: int = 0, stop: int | None = None
) -> torch.Tensor:
    """Run the contiguous segment ``blocks[start:stop]`` on ``x`` under inference mode.

    An empty segment (``start == stop``) returns ``x``. A range outside
    ``0 <= start <= stop <= len(blocks)`` raises :class:`InvalidRequest` on ``segment``.
    """
    end = len(blocks) if stop is None else stop
    if not 0 <= start <= end <= len(blocks):
        raise InvalidRequest(
            f"segment [{start}, {end}) is not within the model's {len(blocks)} blocks",
            field="segment",
        )
    with torch.inference_mode():
        for block in blocks[start:end]:
            x = block.module(x)
    return x


# --- profiling ----------------------------------------------------------------------------

_NO_OP_LAYERS = (nn.Identity, nn.Flatten, nn.Unflatten, nn.modules.dropout._DropoutNd)
_POOL_LAYERS = (
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._MaxPoolNd,
    _PoolFlatten,
)


def layer_cost(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    """The layer-type cost of one layer call (paper Eq. 5, in our reading), in MAC-like units.

    - convolution: ``k_h·k_w·(C_in/groups)·C_out·H_out·W_out`` (times the batch size;
      generally the kernel volume times ``C_in/groups`` times the output elements),
    - linear: ``in·out`` per row (times the number of rows),
    - pooling: input elements (each is read and added once),
    - identity, flatten and dropout (no-ops in eval mode): 0,
    - any other layer (normalisation, activation): output elements.
    """
    if isinstance(module, nn.modules.conv._ConvNd):
        weight = module.weight
        per_output = math.prod(weight.shape[1:])  # (C_in/groups) · k_h · k_w
        return int(per_output * out.numel())
    if isinstance(module, nn.Linear):
        return int(module.in_features * out.numel())
    if isinstance(module, _NO_OP_LAYERS):
        return 0
    if isinstance(module, _POOL_LAYERS):
        return int(inp.numel())
    return int(out.numel())


def _layers(module: nn.Module) -> Iterator[nn.Module]:
    """The layers :func:`layer_cost` prices inside a block: convolutions, linears, norms
    (timm's norm+act modules too, whose activation is priced as a layer of its own) and
    every other leaf. Functional steps between layers (residual adds, squeeze-excite
    gating) are not priced."""
    for m in module.modules():
        is_leaf = next(iter(m.children()), None) is None
        if is_leaf or isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, _BatchNorm)):
            yield m


def _block_layer_cost(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Run ``module`` on ``x`` once, summing :func:`layer_cost` over its layers' calls."""
    total = 0

    def hook(layer: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        nonlocal total
        if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
            total += layer_cost(layer, args[0], out)

    handles = [m.register_forward_hook(hook) for m in _layers(module)]
    try:
        out = module(x)
    finally:
        for handle in handles:
            handle.remove()
    return out, total


def profile_blocks(
    loaded: LoadedModel,
    blocks: Sequence[Block],
    *,
    repeats: int = 5,
    x: torch.Tensor | None = None,
) -> list[BlockProfile]:
    """Profile every block on one input of ``loaded.input_shape`` (or ``x``).

    Per block: output shape and its float32 bytes, FLOPs (FlopCounterMode), parameter
    count, :func:`layer_cost` summed over its layers, and the median wall time in ms of
    ``repeats`` timed runs after one warm-up run, in this process with its thread settings.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if x is None:
        generator = torch.Generator().manual_seed(0)
        x = torch.rand(loaded.input_shape, generator=generator)
    profiles = []
    with torch.inference_mode():
        for block in blocks:
            counter = FlopCounterMode(display=False)
            with counter:
                out, cost = _block_layer_cost(block.module, x)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                block.module(x)
                times.append((time.perf_counter() - t0) * 1000.0)
            shape = tuple(int(d) for d in out.shape)
            profiles.append(
                BlockProfile(
                    index=block.index,
                    name=block.name,
                    kind=block.kind,
                    input_shape=tuple(int(d) for d in x.shape),
                    output_shape=shape,
                    activation_bytes=FLOAT32_BYTES * math.prod(shape),
                    flops=int(counter.get_total_flops()),
                    params=sum(p.numel() for p in block.module.parameters()),
                    layer_cost=cost,
                    time_ms=float(statistics.median(times)),
                )
            )
            x = out
    return profiles
