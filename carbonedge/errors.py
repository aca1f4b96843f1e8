"""One error tree for CarbonEdge.

Every error carries a stable machine-readable ``code`` and, where it applies, the
``field`` of the request that caused it, so that an error result travelling across a
process boundary can be turned back into the same exception on the other side.
"""

from __future__ import annotations

from typing import Any


class CarbonEdgeError(Exception):
    """Base class of every error CarbonEdge raises on purpose."""

    code = "error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_wire(self) -> dict[str, Any]:
        """The error as a plain map, for an error result."""
        return {"code": self.code, "message": self.message, "field": self.field}


class ConfigError(CarbonEdgeError):
    """Settings or topology that cannot be used."""

    code = "config"


class InvalidRequest(CarbonEdgeError):
    """A request that is malformed or asks for something that does not exist."""

    code = "invalid_request"


class InvalidTensor(InvalidRequest):
    """A tensor payload with a bad dtype, shape, size or byte length."""

    code = "invalid_tensor"


class InvalidMessage(InvalidRequest):
    """A message that is not a msgpack map of the expected schema and version."""

    code = "invalid_message"


class UnknownModel(InvalidRequest):
    code = "unknown_model"


class UnknownMode(InvalidRequest):
    code = "unknown_mode"


class UnknownNode(InvalidRequest):
    code = "unknown_node"


class NoNodeAvailable(CarbonEdgeError):
    """No live node agent can take the request (all heartbeats expired)."""

    code = "no_node_available"


class DispatchFailed(CarbonEdgeError):
    """The dispatcher could not route or publish the request."""

    code = "dispatch_failed"


class InferenceFailed(CarbonEdgeError):
    """The agent accepted the request but running the model failed."""

    code = "inference_failed"


class ResultTimeout(CarbonEdgeError):
    """No result arrived within the caller's timeout."""

    code = "timeout"


class RuntimeUnavailable(CarbonEdgeError):
    """A runtime dependency (Redis, cgroups, a binary) is missing or unusable."""

    code = "runtime_unavailable"


class CarbonBudgetExceeded(CarbonEdgeError):
    """A tenant has spent its carbon budget for the current period."""

    code = "carbon_budget_exceeded"


class IntensityUnavailable(CarbonEdgeError):
    """A live carbon-intensity source did not answer with a usable value.

    ``reason`` is a short phrase ("timed out", "HTTP 500", "malformed JSON", ...) that
    names the kind of failure, for logs and for a fallback reading's ``source``.
    """

    code = "intensity_unavailable"

    def __init__(self, message: str, *, field: str | None = None,
                 reason: str = "unavailable") -> None:
        super().__init__(message, field=field)
        self.reason = reason


_BY_CODE: dict[str, type[CarbonEdgeError]] = {}


def _register(cls: type[CarbonEdgeError]) -> None:
    _BY_CODE[cls.code] = cls
    for sub in cls.__subclasses__():
        _register(sub)


_register(CarbonEdgeError)


def from_wire(error: dict[str, Any]) -> CarbonEdgeError:
    """Rebuild the exception an error result describes (unknown codes become the base)."""
    cls = _BY_CODE.get(str(error.get("code")), CarbonEdgeError)
    exc = cls(str(error.get("message", "unknown error")), field=error.get("field"))
    return exc
