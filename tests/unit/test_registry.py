from __future__ import annotations

import pytest

from carbonedge.errors import ConfigError, UnknownModel
from carbonedge.registry import Registry


def test_register_get_and_errors_that_list_what_exists() -> None:
    reg: Registry[int] = Registry("widget", unknown=UnknownModel, field="widget")
    reg.register("b")(2)
    reg.register("a")(1)
    assert reg.get("a") == 1 and "b" in reg and reg.names() == ["a", "b"]
    with pytest.raises(UnknownModel, match="unknown widget 'c'; known: a, b") as e:
        reg.get("c")
    assert e.value.field == "widget"
    with pytest.raises(UnknownModel):
        reg.get(None)
    with pytest.raises(ConfigError, match="already registered"):
        reg.register("a")(3)
