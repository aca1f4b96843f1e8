"""The wire contract every CarbonEdge process shares."""

from carbonedge.protocol import keys
from carbonedge.protocol.codec import TensorLimits, decode_tensor, encode_tensor, tensor_header
from carbonedge.protocol.messages import (
    PROTOCOL_VERSION,
    error_result,
    pack,
    unpack,
    validate_request,
)
from carbonedge.protocol.request import Request

__all__ = [
    "PROTOCOL_VERSION",
    "Request",
    "TensorLimits",
    "decode_tensor",
    "encode_tensor",
    "error_result",
    "keys",
    "pack",
    "tensor_header",
    "unpack",
    "validate_request",
]
