"""`carbonedge flower`: Flower on CarbonEdge's Celery app, password-protected, on loopback.

Flower lists every agent (a Celery worker named ``<node>@<host>``) and, through
``/api/queues/length``, each agent's own queue ``ce.node.<id>``: the queue names come from
the workers' ``active_queues`` and the lengths straight from Redis, so no broker HTTP API
is needed. The credentials travel in ``FLOWER_BASIC_AUTH``, never on a command line that
``ps`` would show.
"""

from __future__ import annotations

import os
import re

from carbonedge.errors import ConfigError
from carbonedge.settings import Settings
from carbonedge.transport.celery_app import make_celery_app

DEFAULT_PORT = 5555
OFFLINE_PURGE_S = 60
"""A scaled-down agent leaves Flower's worker list this long after its last event."""

_CREDENTIAL = re.compile(r"^[^:,\s]+:[^,\s]+$")


def check_basic_auth(value: str) -> str:
    """``user:password`` (several separated by commas); anything else is refused."""
    if not value:
        raise ConfigError("Flower needs credentials: set CARBONEDGE_FLOWER_BASIC_AUTH=user:password "
                          "(basic auth is always on)", field="flower_basic_auth")
    for item in value.split(","):
        if not _CREDENTIAL.match(item):
            raise ConfigError("flower_basic_auth must be user:password[,user2:password2] "
                              "without spaces", field="flower_basic_auth")
    return value


def flower_argv(address: str, port: int) -> list[str]:
    """The ``celery flower`` arguments (credentials excluded: they go by environment)."""
    return ["flower", f"--address={address}", f"--port={port}",
            f"--purge_offline_workers={OFFLINE_PURGE_S}"]


def run_flower(settings: Settings, *, address: str = "127.0.0.1", port: int = DEFAULT_PORT) -> int:
    """Serve Flower until interrupted."""
    os.environ["FLOWER_BASIC_AUTH"] = check_basic_auth(settings.flower_basic_auth)
    app = make_celery_app(settings)
    return app.start(flower_argv(address, port)) or 0
