"""The Celery and kombu whose wire formats the transport writes: installed, pinned, checked."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from carbonedge.errors import RuntimeUnavailable
from carbonedge.transport import compat

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_versions_are_the_checked_ranges_and_pyproject_pins_them() -> None:
    compat.check_supported()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for package, ((lo_major, lo_minor), (hi_major, hi_minor)) in compat.SUPPORTED.items():
        pin = next(d for d in deps if re.match(rf"{package}(\[[^\]]*\])?[><=]", d))
        assert pin.endswith(f">={lo_major}.{lo_minor},<{hi_major}.{hi_minor}"), pin
        assert lo_major == hi_major and hi_minor == lo_minor + 1  # one minor series each


def test_an_unchecked_version_is_refused_naming_the_package(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = compat.installed_version
    monkeypatch.setattr(compat, "installed_version",
                        lambda package: (6, 0) if package == "kombu" else real(package))
    with pytest.raises(RuntimeUnavailable, match=r"kombu 6\.0 is installed.*kombu>=5\.7,<5\.8"):
        compat.check_supported.__wrapped__()
