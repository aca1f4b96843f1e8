"""Small model files for the tests: TorchScript, ExportedProgram and ONNX, built here.

Each is a real (tiny) network, so that bringing your own model is tested end to end
without downloading anything; ``slow`` takes long enough per inference for a fault test
to act while it runs, ``hungry`` allocates ~50 MB per inference (torch frees it after).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

TINY_SHAPE = (3, 32, 32)


class Tiny(nn.Module):
    """conv, ReLU, global pool, linear: 10 classes from a 3x32x32 image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


class Slow(nn.Module):
    """Many cheap convolutions on 224x224: ~0.1 s of CPU per inference, little memory."""

    def __init__(self, depth: int = 120) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(*[nn.Conv2d(8, 8, 3, padding=1) for _ in range(depth)])
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)).mean((2, 3)))


class Hungry(nn.Module):
    """A 224x224 image blown up to a ~50 MB activation, then pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = nn.functional.interpolate(self.conv(x), scale_factor=4.0)  # 16x896x896 float32
        return self.head(big.mean((2, 3)))


class Unsupported(nn.Module):
    """Uses an operator ONNX has no export for (Bessel J0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(x).mean((2, 3))


def _seeded(module: nn.Module) -> nn.Module:
    return module.eval()


def torchscript(path: Path, module: nn.Module | None = None,
                shape: tuple[int, ...] = TINY_SHAPE, seed: int = 0) -> Path:
    import warnings

    torch.manual_seed(seed)
    module = _seeded(module if module is not None else Tiny())
    with warnings.catch_warnings():  # TorchScript is deprecated: it is one of the formats
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.trace(module, torch.zeros(1, *shape)), str(path))
    return path


def exported_program(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    module = _seeded(Tiny())
    torch.export.save(torch.export.export(module, (torch.zeros(1, *TINY_SHAPE),)), str(path))
    return path


def onnx_file(path: Path, seed: int = 0) -> Path:
    import warnings

    torch.manual_seed(seed)
    module = _seeded(Tiny())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, *TINY_SHAPE),), str(path), dynamo=False,
                          input_names=["input"], output_names=["output"])
    return path


def onnx_with_unknown_operator(path: Path) -> Path:
    """A valid ONNX graph whose one node is an operator no runtime implements."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Frobnicate", ["input"], ["output"], domain="org.example")
    graph = helper.make_graph(
        [node], "frobnicate",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, *TINY_SHAPE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("org.example", 1)])
    onnx.save(model, str(path))
    return path
