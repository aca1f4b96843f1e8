"""Per-tenant carbon budgets: grams of CO2 per period, and what a request may do under one.

Budgets are configured as ``"tenant=grams,tenant=grams"`` (``CARBONEDGE_CARBON_BUDGETS``)
over periods of ``carbon_budget_period_s`` (default a day, aligned to the epoch, UTC). A
tenant at or over its budget is refused until the next period; one past ``near_share``
of it (default 80%) has its requests routed in Green mode, whatever mode they asked for.
Requests without a tenant, and tenants without a budget, are not limited.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from carbonedge.errors import CarbonBudgetExceeded, ConfigError
from carbonedge.protocol.messages import valid_tenant

__all__ = ["BudgetVerdict", "judge", "parse_budgets", "period_index"]

NEAR_SHARE = 0.8


def parse_budgets(text: str) -> dict[str, float]:
    """``"alice=5,bob=0.5"`` as {tenant: grams}; a ConfigError names a bad entry."""
    budgets: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        tenant, sep, grams = item.partition("=")
        tenant = tenant.strip()
        try:
            value = float(grams)
        except ValueError:
            value = math.nan
        if not sep or not valid_tenant(tenant) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"carbon budget {item!r} is not tenant=grams (grams >= 0)",
                              field="carbon_budgets")
        budgets[tenant] = value
    return budgets


def period_index(now: float, period_s: float) -> int:
    """Which budget period ``now`` (unix seconds) falls in."""
    return int(now // period_s)


@dataclass(frozen=True, slots=True)
class BudgetVerdict:
    """What a tenant's request may do now."""

    tenant: str
    budget_g: float
    spent_g: float
    force_green: bool

    def to_wire(self) -> dict[str, object]:
        return {"tenant": self.tenant, "budget_g": self.budget_g, "spent_g": self.spent_g,
                "force_green": self.force_green}


def judge(tenant: str | None, budgets: Mapping[str, float], spent: Mapping[str, float],
          *, period_ends_at: float, near_share: float = NEAR_SHARE) -> BudgetVerdict | None:
    """None when unlimited; a verdict otherwise; CarbonBudgetExceeded when spent."""
    if tenant is None or tenant not in budgets:
        return None
    budget, used = budgets[tenant], spent.get(tenant, 0.0)
    if used >= budget:
        raise CarbonBudgetExceeded(
            f"tenant {tenant!r} has spent {used:.4g} g of its {budget:.4g} g carbon budget "
            f"for this period; the next period starts at unix time {period_ends_at:.0f}",
            field="tenant")
    return BudgetVerdict(tenant, budget, used, force_green=used >= near_share * budget)
