"""Per-tenant carbon budgets: parsing, periods and verdicts."""

from __future__ import annotations

import pytest

from carbonedge.errors import CarbonBudgetExceeded, ConfigError, InvalidRequest
from carbonedge.protocol.messages import PROTOCOL_VERSION, validate_request
from carbonedge.scheduler.budgets import judge, parse_budgets, period_index


def test_budgets_parse_and_bad_entries_are_named() -> None:
    assert parse_budgets("alice=5, bob=0.25,") == {"alice": 5.0, "bob": 0.25}
    assert parse_budgets("") == {}
    for bad in ("alice", "alice=-1", "alice=lots", "=3", "a b=1"):
        with pytest.raises(ConfigError, match="tenant=grams") as info:
            parse_budgets(bad)
        assert info.value.field == "carbon_budgets"


def test_periods_are_aligned_windows() -> None:
    assert period_index(86399.9, 86400) == 0 and period_index(86400, 86400) == 1


def test_verdicts_under_near_and_over_budget() -> None:
    budgets = {"alice": 10.0}
    assert judge(None, budgets, {}, period_ends_at=0) is None
    assert judge("carol", budgets, {"carol": 1e9}, period_ends_at=0) is None  # no budget
    under = judge("alice", budgets, {"alice": 5.0}, period_ends_at=0)
    assert under is not None and not under.force_green
    near = judge("alice", budgets, {"alice": 8.5}, period_ends_at=0)
    assert near is not None and near.force_green and near.to_wire()["spent_g"] == 8.5
    with pytest.raises(CarbonBudgetExceeded, match="alice.*10 g.*86400") as info:
        judge("alice", budgets, {"alice": 10.0}, period_ends_at=86400)
    assert info.value.field == "tenant"


@pytest.mark.parametrize("tenant", ["", "x" * 65, "bad tenant", 7])
def test_a_bad_tenant_is_refused_by_name(tenant: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_request({"v": PROTOCOL_VERSION, "id": "r", "kind": "ping",
                          "submitted_at": 1.0, "tenant": tenant})
    assert info.value.field == "tenant"
