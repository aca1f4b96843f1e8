"""A tenant over its carbon budget is refused by name; others keep being served."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from carbonedge.client import Client
from carbonedge.compose.local_runner import LocalRuntime
from carbonedge.compose.topology import load_topology
from carbonedge.errors import CarbonBudgetExceeded
from carbonedge.protocol import keys
from carbonedge.scheduler.budgets import period_index
from carbonedge.settings import Settings
from tests.conftest import CGROUP_PARENT, SMALL_RUNTIME_URL, _redis_or_fail, session_export_dir
from tests.integration.conftest import SMALL_TOPOLOGY
from tests.polling import wait_until

pytestmark = pytest.mark.timeout(300)


def _refusal(client: Client) -> CarbonBudgetExceeded | None:
    """The refusal of a ``tiny`` ping, None if it was served."""
    try:
        client.ping(tenant="tiny").result(30)
    except CarbonBudgetExceeded as e:
        return e
    return None


def test_tenant_budget_is_enforced_from_the_agents_ledger(tmp_path: Path) -> None:
    _redis_or_fail(SMALL_RUNTIME_URL).flushdb()
    compose = tmp_path / "compose.yml"
    compose.write_text(SMALL_TOPOLOGY)
    # one ping's RAM energy alone (~1e-7 g) overspends a 1e-12 g budget
    settings = Settings.load(env={}, redis_url=SMALL_RUNTIME_URL, run_dir=str(tmp_path / "run"),
                             cgroup_parent=CGROUP_PARENT, carbon_budgets="tiny=1e-12,ample=1e6",
                             export_dir=str(session_export_dir()))
    runtime = LocalRuntime(load_topology(compose), settings)
    r = redis.Redis.from_url(SMALL_RUNTIME_URL)
    try:
        runtime.up(wait_s=120)
        with Client(settings) as client:
            first = client.ping(tenant="tiny").result(30)
            assert first.decision["budget"] == {"tenant": "tiny", "budget_g": 1e-12,
                                                "spent_g": 0.0, "force_green": False}
            key = keys.budget_spend_key(period_index(time.time(), 86400))
            wait_until(lambda: float(r.hget(key, "tiny") or 0) > 1e-12, 15,
                       "the ping's carbon to reach the budget (the agent's bookkeeping)")
            # the dispatcher re-reads spend with its node view (every view_refresh_s): a
            # ping may still pass until it has; once it has, every one is refused
            refused = wait_until(lambda: _refusal(client), 30, "the spent budget to be enforced")
            assert "tiny" in refused.message and refused.field == "tenant"
            with pytest.raises(CarbonBudgetExceeded, match="tiny"):
                client.ping(tenant="tiny").result(30)
            ample = client.ping(tenant="ample").result(30)
            assert ample.decision["budget"]["force_green"] is False
            assert client.ping().result(30).decision.get("budget") is None
    finally:
        runtime.down()
        r.close()
