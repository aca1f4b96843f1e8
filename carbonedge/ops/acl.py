"""Redis ACL users per role: producer, dispatcher, agent and a read-only monitor.

``carbonedge acl`` writes a Redis ACL file (``aclfile``) with one user per role, each
password stored as its SHA-256 (the file holds no secret), and the default user switched
off. Each process then gets the URL of its role's user
(``rediss://ce-agent:PASSWORD@redis:6380/0?ssl_ca_certs=ca.pem``).

What each role may touch:

- **producer** (``Client``, ``AsyncClient``): add requests to the request stream, store
  its large inputs, wait for and delete its results (``celery-task-meta-*`` keys and
  channels), read telemetry to explain a timeout, and ``WAIT`` for replicas.
- **dispatcher**: CarbonEdge's and Celery's keys (``ce:*``, node queues ``ce.*``,
  results, kombu's ``unacked*`` registry and ``_kombu.*`` bindings), scripts and
  streams; no administrative or dangerous commands (no FLUSHALL, KEYS, CONFIG, ...).
- **agent**: the same keys as the dispatcher: an agent hands partitioned requests to
  other nodes' queues and re-dispatches its previous life's requests through the request
  stream, so its keys cannot be narrowed to its own node. No administrative or dangerous
  commands either; Celery's control and event channels for Flower.
- **monitor** (``carbonedge status``, ``carbonedge metrics``, Prometheus scrapes): read
  commands on CarbonEdge's keys only; it cannot write anything.

Flower sends control commands to the agents (a write), so it runs as the dispatcher user.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

from carbonedge.errors import ConfigError
from carbonedge.protocol import keys
from carbonedge.transport.listener import RESULT_KEY_PREFIX

ROLES = ("producer", "dispatcher", "agent", "monitor")
USER_PREFIX = "ce-"
PASSWORD_ENV = "CARBONEDGE_ACL_{role}_PASSWORD"

_RESULTS = f"{RESULT_KEY_PREFIX}*"
_KOMBU = (keys.KOMBU_UNACKED, keys.KOMBU_UNACKED_INDEX, f"{keys.KOMBU_UNACKED}_mutex",
          "_kombu.*", "*.celery.pidbox*", "celeryev.*")
"""kombu's unacked registry and bindings, Celery's control (pidbox) and event queues."""
_SERVICE_KEYS = (f"{keys.PREFIX}:*", f"{keys.PREFIX}.*", _RESULTS, *_KOMBU)
_SERVICE_COMMANDS = ("+@all", "-@admin", "-@dangerous", "+info", "+client|setname",
                     "+client|id")

RULES: dict[str, tuple[str, ...]] = {
    "producer": (
        f"~{keys.REQUEST_STREAM}", f"~{keys.PREFIX}:input:*", f"~{_RESULTS}",
        f"%R~{keys.PREFIX}:*", f"&{_RESULTS}",
        "+@connection", "+@read", "+xadd", "+set", "+del", "+unlink", "+expire",
        "+multi", "+exec", "+discard", "+wait", "+subscribe", "+unsubscribe", "+publish",
        "+client|setname", "+client|id",
    ),
    "dispatcher": (*(f"~{k}" for k in _SERVICE_KEYS), "&*", *_SERVICE_COMMANDS),
    "agent": (*(f"~{k}" for k in _SERVICE_KEYS), "&*", *_SERVICE_COMMANDS),
    "monitor": (
        f"%R~{keys.PREFIX}:*", f"%R~{keys.PREFIX}.*", "resetchannels",
        "+@connection", "+@read", "-@dangerous", "+info",
        "+client|setname", "+client|id",
    ),
}
"""ACL rules of each role, after ``resetpass resetkeys resetchannels -@all``."""


def user_name(role: str) -> str:
    return USER_PREFIX + role


def acl_line(role: str, password: str) -> str:
    """One ``aclfile`` line for ``role`` (the password stored as its SHA-256)."""
    if role not in RULES:
        raise ConfigError(f"unknown ACL role {role!r}; roles: {', '.join(ROLES)}", field="role")
    if not password:
        raise ConfigError(f"the {role} user needs a password", field="password")
    digest = hashlib.sha256(password.encode()).hexdigest()
    return " ".join(["user", user_name(role), "on", f"#{digest}", "resetkeys",
                     "resetchannels", "-@all", *RULES[role]])


def acl_file(passwords: Mapping[str, str]) -> str:
    """An ``aclfile`` with the given roles' users and the default user switched off."""
    lines = ["user default off resetkeys resetchannels -@all"]
    lines += [acl_line(role, passwords[role]) for role in ROLES if role in passwords]
    return "\n".join(lines) + "\n"


def passwords_from_env(roles: tuple[str, ...] = ROLES,
                       env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each role's password from ``CARBONEDGE_ACL_<ROLE>_PASSWORD`` (never a command line)."""
    env = os.environ if env is None else env
    out = {}
    for role in roles:
        name = PASSWORD_ENV.format(role=role.upper())
        if not env.get(name):
            raise ConfigError(f"set {name} to the {role} user's password", field=name)
        out[role] = env[name]
    return out
