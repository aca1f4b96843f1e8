"""Which node ids may serve: the ``node_allowlist`` setting, shared by dispatcher and agents.

The dispatcher believes heartbeats only of allowed ids; an agent whose id is outside the
list refuses to start (before it touches any queue), so a mistyped id on another host is
a clear error there instead of an agent whose heartbeats are silently ignored.
"""

from __future__ import annotations

import fnmatch

from carbonedge.errors import ConfigError

SETTING = "node_allowlist"


def node_allowed(node_id: str, allowlist: str) -> bool:
    """Whether ``node_id`` matches the comma-separated ids or patterns (empty: all do)."""
    patterns = [p.strip() for p in allowlist.split(",") if p.strip()]
    return not patterns or any(fnmatch.fnmatchcase(node_id, p) for p in patterns)


def check_agent_allowed(node_id: str, allowlist: str) -> None:
    """ConfigError naming the setting when an agent's id is outside the allow-list."""
    if not node_allowed(node_id, allowlist):
        raise ConfigError(
            f"node id {node_id!r} is not in setting {SETTING} (CARBONEDGE_NODE_ALLOWLIST="
            f"{allowlist!r}): the dispatcher would ignore this agent; add the id or a "
            "pattern such as 'node-remote-*' to the allow-list of dispatchers and agents",
            field=SETTING)
