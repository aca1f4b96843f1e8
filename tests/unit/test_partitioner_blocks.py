"""Flattened blocks compose to the model's forward at every cut; profiles are sane."""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgpack
import pytest
import torch
from torch import nn

from carbonedge.errors import ConfigError, InvalidRequest
from carbonedge.partitioner.blocks import (
    Block,
    BlockProfile,
    flatten_model,
    layer_cost,
    profile_blocks,
    run_blocks,
)
from carbonedge.partitioner.models import INPUT_SHAPE, LoadedModel, create_model, model_names

TOLERANCE = 1e-5


@dataclass
class Case:
    loaded: LoadedModel
    blocks: list[Block]
    x: torch.Tensor
    reference: torch.Tensor


@pytest.fixture(scope="module", params=model_names())
def case(request: pytest.FixtureRequest) -> Case:
    loaded = create_model(request.param)
    blocks = flatten_model(loaded)
    x = torch.rand(INPUT_SHAPE, generator=torch.Generator().manual_seed(1234))
    with torch.inference_mode():
        reference = loaded.module(x.clone())
    return Case(loaded, blocks, x, reference)


@pytest.fixture(scope="module")
def profiles(case: Case) -> list[BlockProfile]:
    return profile_blocks(case.loaded, case.blocks, repeats=2)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


def test_blocks_are_indexed_and_named(case: Case) -> None:
    blocks = case.blocks
    assert len(blocks) >= 10
    assert [b.index for b in blocks] == list(range(len(blocks)))
    assert len({b.name for b in blocks}) == len(blocks)
    assert blocks[-1].kind == "classifier"
    model_paths = dict(case.loaded.module.named_modules())
    for block in blocks:
        if block.name in model_paths:
            assert isinstance(block.module, type(model_paths[block.name]))
        else:
            assert block.name == "pool_flatten"


def test_blocks_hold_every_parameter_once(case: Case) -> None:
    assert sum(p.numel() for b in case.blocks for p in b.module.parameters()) == (
        case.loaded.param_count
    )


def test_full_composition_equals_forward(case: Case) -> None:
    out = run_blocks(case.blocks, case.x.clone())
    assert _max_diff(out, case.reference) <= TOLERANCE


def test_every_cut_point_composes_to_forward(case: Case) -> None:
    blocks = case.blocks
    worst = {}
    for k in range(1, len(blocks)):
        head = run_blocks(blocks, case.x.clone(), 0, k)
        out = run_blocks(blocks, head, k)
        worst[blocks[k - 1].name] = _max_diff(out, case.reference)
    bad = {name: d for name, d in worst.items() if not d <= TOLERANCE}
    assert not bad, f"{case.loaded.name}: cuts after these blocks differ: {bad}"


def test_no_block_modifies_its_input(case: Case) -> None:
    x = case.x.clone()
    with torch.inference_mode():
        for block in case.blocks:
            before = x.clone()
            out = block(x)
            assert torch.equal(x, before), f"{block.name} modified its input"
            x = out


def test_profiles(case: Case, profiles: list[BlockProfile]) -> None:
    assert [p.index for p in profiles] == [b.index for b in case.blocks]
    assert profiles[0].input_shape == INPUT_SHAPE
    assert profiles[-1].output_shape == tuple(case.reference.shape)
    for before, after in zip(profiles, profiles[1:], strict=False):
        assert after.input_shape == before.output_shape
    for p, block in zip(profiles, case.blocks, strict=True):
        assert p.activation_bytes == 4 * math.prod(p.output_shape)
        assert p.params == sum(q.numel() for q in block.module.parameters())
        assert p.time_ms >= 0.0
        assert p.layer_cost >= 0
        has_conv = any(isinstance(m, nn.Conv2d) for m in block.module.modules())
        if has_conv or isinstance(block.module, nn.Linear) or p.kind == "classifier":
            assert p.flops > 0, p.name
            assert p.layer_cost > 0, p.name
    assert sum(p.params for p in profiles) == case.loaded.param_count


def test_profile_to_wire_is_msgpack_able(profiles: list[BlockProfile]) -> None:
    wire = [p.to_wire() for p in profiles]
    assert msgpack.unpackb(msgpack.packb(wire), strict_map_key=True) == wire


def test_unknown_architecture_is_a_config_error() -> None:
    class TinyNet(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    loaded = LoadedModel(
        name="tiny",
        module=TinyNet(),
        num_classes=1,
        random_init=True,
        weights_source="random-init",
        param_count=0,
    )
    with pytest.raises(ConfigError, match="TinyNet"):
        flatten_model(loaded)


def test_run_blocks_rejects_a_bad_segment() -> None:
    blocks = [Block(index=0, name="relu", kind="act", module=nn.ReLU())]
    x = torch.ones(2)
    assert run_blocks(blocks, x, 1, 1) is x
    for start, stop in ((0, 2), (1, 0), (-1, None)):
        with pytest.raises(InvalidRequest) as info:
            run_blocks(blocks, x, start, stop)
        assert info.value.field == "segment"


def test_layer_cost_formula() -> None:
    conv = nn.Conv2d(8, 16, kernel_size=3, padding=1, groups=2)
    x = torch.zeros(1, 8, 5, 5)
    assert layer_cost(conv, x, conv(x)) == 3 * 3 * (8 // 2) * 16 * 5 * 5
    linear = nn.Linear(10, 4)
    v = torch.zeros(1, 10)
    assert layer_cost(linear, v, linear(v)) == 10 * 4
    relu = nn.ReLU()
    assert layer_cost(relu, x, relu(x)) == x.numel()
    pool = nn.AdaptiveAvgPool2d(1)
    assert layer_cost(pool, x, pool(x)) == x.numel()
    assert layer_cost(nn.Flatten(), x, x.flatten(1)) == 0
