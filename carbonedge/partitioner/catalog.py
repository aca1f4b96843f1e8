"""Names of the registered models, importable without torch (the dispatcher checks them)."""

from __future__ import annotations

MODEL_NAMES: frozenset[str] = frozenset(
    {"mobilenetv2", "mobilenetv2_100", "mobilenetv4", "efficientnet_b0"}
)
