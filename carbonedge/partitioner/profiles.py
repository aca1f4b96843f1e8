"""What one block of a model costs: the wire profile agents publish for partition plans.

Torch-free: the torch backend measures it with :func:`~carbonedge.partitioner.blocks.profile_blocks`,
the ONNX Runtime backend from its exported block graphs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["BlockProfile"]


@dataclass
class BlockProfile:
    """What one block costs, measured on one input of the model's ``input_shape``."""

    index: int
    name: str
    kind: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    activation_bytes: int
    """Bytes of the block's output as float32: what crosses the wire at a cut after it."""
    flops: int
    """FLOPs counted by :class:`torch.utils.flop_counter.FlopCounterMode` (a MAC is 2)."""
    params: int
    layer_cost: int
    """The layer-type cost of :func:`layer_cost` (paper Eq. 5, in our reading)."""
    time_ms: float
    """Median wall time of the block in this process, in milliseconds."""

    def to_wire(self) -> dict[str, Any]:
        """The profile as a plain map of builtins (msgpack-able)."""
        return {
            "index": self.index,
            "name": self.name,
            "kind": self.kind,
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "activation_bytes": self.activation_bytes,
            "flops": self.flops,
            "params": self.params,
            "layer_cost": self.layer_cost,
            "time_ms": self.time_ms,
        }
