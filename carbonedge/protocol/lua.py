"""Lua scripts shipped as ``.lua`` files next to the modules that run them.

The scripts work on the Redis keys every process shares (:mod:`carbonedge.protocol.keys`),
so their loader is part of the shared contract, at the bottom of the layers.

A :class:`LuaScript` reads its file(s) once, on first use, and registers itself on each
Redis client it runs on with redis-py's ``register_script``: every call is an EVALSHA,
and the script is sent again (SCRIPT LOAD) only when the server does not know it (a new or
restarted Redis). On a pipeline, redis-py loads the pipeline's scripts before it executes.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Sequence
from importlib import resources
from typing import Any

__all__ = ["LuaScript"]


class LuaScript:
    """One script of package ``anchor``: the concatenation of ``files`` (shared helpers
    first), run by EVALSHA on any client, blocking or asyncio, or pipeline."""

    def __init__(self, anchor: str, *files: str) -> None:
        if not files:
            raise ValueError("a Lua script needs at least one file")
        self.anchor = anchor
        self.files = files
        self._bound: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LuaScript({self.anchor}:{'+'.join(self.files)})"

    @functools.cached_property
    def source(self) -> str:
        """The script's text, read from the package once."""
        folder = resources.files(self.anchor)
        return "".join(folder.joinpath(name).read_text(encoding="utf-8") for name in self.files)

    def bind(self, client: Any) -> Any:
        """The script registered on ``client`` (once per client object)."""
        with self._lock:
            script = self._bound.get(client)
            if script is None:
                script = client.register_script(self.source)
                self._bound[client] = script
        return script

    def __call__(self, client: Any, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        """Run the script on ``client``: its reply; with an asyncio client (or pipeline) an
        awaitable; on a blocking pipeline, queued like any command."""
        return self.bind(client)(keys=list(keys), args=list(args))
