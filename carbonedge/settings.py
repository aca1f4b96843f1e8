"""Process settings: defaults < a TOML file < ``CARBONEDGE_*`` environment variables.

Load once per process with :meth:`Settings.load` and pass the object down; nothing in
the library reads the environment at import time.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from carbonedge.errors import ConfigError

ENV_PREFIX = "CARBONEDGE_"
ACCOUNTING_METHODS = ("device", "measured")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a CarbonEdge process can be configured with."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    compose_file: str = ""
    run_dir: str = ".carbonedge"
    cgroup_parent: str = "carbonedge"
    model_dir: str = ""
    """Pretrained weights: ``<model>.safetensors|.pth|.pt`` (empty: none but torch's hub cache)."""
    export_dir: str = ""
    """Exported ONNX graphs, shared by the agents of a deployment (empty: ``<run_dir>/models``)."""
    inference_runtime: str = ""
    """``torch`` or ``onnxruntime`` for every node, overriding each node's
    ``x-carbonedge.runtime`` (empty: as the compose file declares)."""
    heartbeat_interval_s: float = 1.0
    heartbeat_missed_beats: int = 3
    view_refresh_s: float = 0.2
    dispatch_batch: int = 256
    explain_max_nodes: int = 8
    default_mode: str = "balanced"
    normalisation: str = "minmax"
    result_timeout_s: float = 60.0
    max_tensor_elements: int = 1 << 22
    max_payload_bytes: int = 32 << 20
    inline_input_max_bytes: int = 64 << 10
    input_ttl_s: int = 3600
    cpu_watts_per_core: float = 0.0
    """Power of one busy logical CPU of the host (W), the ``device`` method's W_core;
    0: the host CPU's TDP per logical CPU from CodeCarbon's table, else 4 W."""
    accounting: str = "device"
    """The accounting method reports and experiments headline (``device`` or
    ``measured``); every task is charged by both."""
    carbon_window_s: float = 10.0
    carbon_sample_s: float = 1.0
    carbon_csv: str = ""
    host_country: str = "USA"
    """ISO 3166-1 alpha-3 code of the host's grid: CodeCarbon prices the host rows of the
    emissions CSV with it (nodes have intensities of their own)."""
    host_region: str = ""
    """A region of ``host_country`` CodeCarbon has data for (e.g. a US state)."""
    carbon_budgets: str = ""
    """Per-tenant carbon budgets, ``tenant=grams,...``, per ``carbon_budget_period_s``."""
    carbon_budget_period_s: float = 86400.0
    log_level: str = "INFO"
    flower_basic_auth: str = ""
    """``user:password`` that `carbonedge flower` requires (it refuses to run without)."""
    recovery_interval_s: float = 0.5
    """How often a dispatcher looks for dead nodes and dead dispatchers to recover from."""
    orphan_after_s: float = 10.0
    """How long a request may stay assigned to a live node while it is in neither the
    node's queue nor kombu's unacked registry before a dispatcher re-dispatches it."""
    max_attempts: int = 3
    """Nodes a request may be dispatched to before it is answered with an error (each
    one died while holding it)."""
    quarantine_s: float = 30.0
    """How long a dispatcher keeps a node whose telemetry jumped implausibly out of
    scheduling (see carbonedge.dispatcher.quarantine)."""
    telemetry_jump_factor: float = 10.0
    """Change between two heartbeats of a node's carbon intensity or service time that is
    taken as implausible."""
    node_allowlist: str = ""
    """Node ids (or ``fnmatch`` patterns such as ``node-high-*``), comma-separated, whose
    heartbeats the dispatcher believes, and under which an agent agrees to start; empty:
    any well-formed id."""
    redis_wait_s: float = 120.0
    """How long a long-running service (dispatcher, agent, carbon service, Flower) waits at
    start-up for Redis to answer before it gives up."""
    host_id: str = ""
    """The host this process runs on, when agents run on several: each host's carbon
    service publishes its power under this id and its agents charge from it. Empty: one
    host."""

    def __post_init__(self) -> None:
        if self.accounting not in ACCOUNTING_METHODS:
            raise ConfigError(f"accounting {self.accounting!r} is not one of "
                              f"{', '.join(ACCOUNTING_METHODS)}", field="accounting")
        watts = self.cpu_watts_per_core
        if not (math.isfinite(watts) and watts >= 0):
            raise ConfigError(f"cpu_watts_per_core must be a finite number >= 0 (0: from "
                              f"CodeCarbon's CPU table), got {watts!r}",
                              field="cpu_watts_per_core")

    @property
    def heartbeat_ttl_s(self) -> float:
        """How long a heartbeat stays visible: the interval times the missed beats."""
        return self.heartbeat_interval_s * self.heartbeat_missed_beats

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Build settings from defaults, then ``path`` (TOML), then ``env``, then overrides."""
        values: dict[str, Any] = {}
        env = os.environ if env is None else env
        path = path or env.get(ENV_PREFIX + "CONFIG")
        if path:
            values.update(_read_toml(Path(path)))
        known = {f.name: f for f in fields(cls)}
        for key, raw in env.items():
            if key.startswith(ENV_PREFIX) and key != ENV_PREFIX + "CONFIG":
                name = key[len(ENV_PREFIX):].lower()
                if name in known:
                    values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}; known: {sorted(known)}")
        return cls(**{name: _coerce(known[name], value) for name, value in values.items()})

    def to_env(self) -> dict[str, str]:
        """``CARBONEDGE_*`` variables that give a child process these settings (the
        Redis URL always, other settings where they differ from the defaults)."""
        defaults = type(self)()
        return {
            ENV_PREFIX + f.name.upper(): str(getattr(self, f.name))
            for f in fields(self)
            if f.name == "redis_url" or getattr(self, f.name) != getattr(defaults, f.name)
        }

    @property
    def graphs_dir(self) -> Path:
        """Where exported ONNX graphs are cached (:attr:`export_dir`, else under the run dir)."""
        return Path(self.export_dir or Path(self.run_dir) / "models")

    def compose_path(self) -> Path | None:
        """The compose file: :attr:`compose_file` (ConfigError if missing), else
        ``compose/docker-compose.yml`` of the working directory or of this checkout, else None."""
        if self.compose_file:
            path = Path(self.compose_file)
            if not path.is_file():
                raise ConfigError(f"compose file not found: {path}", field="compose_file")
            return path
        for path in compose_candidates():
            if path.is_file():
                return path
        return None

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed."""
        return dataclasses.replace(self, **changes)


COMPOSE_RELATIVE = Path("compose") / "docker-compose.yml"


def compose_candidates() -> list[Path]:
    """Where a compose file is looked for when none is given."""
    return [Path.cwd() / COMPOSE_RELATIVE, Path(__file__).resolve().parents[1] / COMPOSE_RELATIVE]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as e:
        raise ConfigError(f"settings file not found: {path}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"settings file {path} is not valid TOML: {e}") from e
    return dict(data.get("carbonedge", data))


def _coerce(f: dataclasses.Field[Any], value: Any) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "float":
            return float(value)
        if kind == "int":
            return int(value)
        if kind == "str":
            return str(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"setting {f.name}={value!r} is not a valid {kind}") from e
    return value
