"""Every Lua script of the package compiles on the real Redis and runs by EVALSHA, also
after the server forgot its scripts (a restarted Redis)."""

from __future__ import annotations

import importlib
from pathlib import Path

import redis

from carbonedge.protocol import keys
from carbonedge.protocol.lua import LuaScript
from carbonedge.protocol.untrusted import MOVE_ASIDE

PACKAGE = Path(__file__).resolve().parents[2] / "carbonedge"


def _scripts() -> dict[str, LuaScript]:
    """Every module-level LuaScript, by ``module.NAME``."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "LuaScript(" not in path.read_text(encoding="utf-8") or path.name == "lua.py":
            continue
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        module = importlib.import_module(name)
        found.update({f"{name}.{k}": v for k, v in vars(module).items()
                      if isinstance(v, LuaScript)})
    return found


def test_every_script_compiles(redis_client: redis.Redis) -> None:
    scripts = _scripts()
    assert len(scripts) >= 9
    for name, script in scripts.items():
        sha = redis_client.script_load(script.source)  # a syntax error raises here
        assert script.bind(redis_client).sha == sha, name
        assert redis_client.script_exists(sha) == [True], name


def test_a_script_is_loaded_again_when_redis_forgot_it(redis_client: redis.Redis) -> None:
    def move(key: str) -> object:
        return MOVE_ASIDE(redis_client, [key, keys.corrupt_key(key, 0.0)], ["hash", 60])

    redis_client.set("ce:test:a", "not a hash")
    assert move("ce:test:a") == b"string"
    # what a restarted Redis knows: no scripts (server-wide; every process reloads them)
    redis_client.script_flush()
    assert redis_client.script_exists(MOVE_ASIDE.bind(redis_client).sha) == [False]
    redis_client.set("ce:test:b", "not a hash")
    assert move("ce:test:b") == b"string"  # NOSCRIPT, loaded, run
    assert redis_client.script_exists(MOVE_ASIDE.bind(redis_client).sha) == [True]
    assert redis_client.exists("ce:test:a", "ce:test:b") == 0


def test_a_script_runs_inside_a_pipeline(redis_client: redis.Redis) -> None:
    redis_client.set("ce:test:c", "not a hash")
    pipe = redis_client.pipeline(transaction=True)
    MOVE_ASIDE(pipe, ["ce:test:c", keys.corrupt_key("ce:test:c", 0.0)], ["hash", 60])
    pipe.hset("ce:test:c", "field", 1)
    assert pipe.execute() == [b"string", 1]
    assert redis_client.type("ce:test:c") == b"hash"
