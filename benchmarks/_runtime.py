"""Shared set-up for benchmarks: a runtime on its own Redis database and compose file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from carbonedge.compose.local_runner import LocalRuntime
from carbonedge.compose.topology import load_topology
from carbonedge.settings import Settings

BENCH_REDIS_URL = os.environ.get("CARBONEDGE_BENCH_REDIS", "redis://127.0.0.1:6379/12")


@contextmanager
def bench_runtime(compose_text: str | None = None, *, preload: tuple[str, ...] = (),
                  redis_url: str = BENCH_REDIS_URL, carbon_service: bool = False,
                  **settings_overrides: object) -> Iterator[LocalRuntime]:
    """Bring a topology up (the default one, or ``compose_text``) and always tear it down."""
    with tempfile.TemporaryDirectory(prefix="carbonedge-bench-") as tmp:
        compose = None
        if compose_text is not None:
            compose = Path(tmp) / "compose.yml"
            compose.write_text(compose_text)
        redis.Redis.from_url(redis_url).flushdb()
        settings = Settings.load(redis_url=redis_url, run_dir=str(Path(tmp) / "run"),
                                 **settings_overrides)
        runtime = LocalRuntime(load_topology(compose), settings, preload=preload,
                               carbon_service=carbon_service)
        runtime.up()
        try:
            yield runtime
        finally:
            runtime.down()
