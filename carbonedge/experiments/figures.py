"""The experiments' figures, drawn with matplotlib's object API (no pyplot state).

- ``fig2.png``: latency against carbon efficiency (inferences per gCO2) per configuration,
  one panel per model, 95% interval whiskers both ways (the paper's Fig. 2).
- ``fig3.png``: the weight sweep: node shares and carbon per inference against w_C, the
  transition marked (the paper's Fig. 3).
- ``fig_temporal.png``: each node's intensity over the replayed trace with the points at
  which deferred requests were released, and each tenant's spend over time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

from carbonedge.experiments.paper import IN_PAPER

if TYPE_CHECKING:
    from carbonedge.experiments.paper_report import PaperReport
    from carbonedge.experiments.temporal_report import TemporalReport

__all__ = ["fig2", "fig3", "fig_temporal"]

_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")
_ZONE_COLOURS = ("black", "#808080", "#b0b0b0")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_DPI = 130


def _err(mean: float, low: float, high: float) -> tuple[list[float], list[float]]:
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0], [0.0]
    return [max(mean - low, 0.0)], [max(high - mean, 0.0)]


def fig2(report: PaperReport, path: Path) -> None:
    """Latency (x) against inferences per gCO2 (y), device method, per model."""
    models = list(report.arms)
    fig = Figure(figsize=(max(8.0, 5.5 * len(models)), 5.4), layout="constrained")
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, model in zip(axes, models, strict=True):
        rows = [r for r in report.summary if r["model"] == model and r["method"] == "device"]
        for i, row in enumerate(rows):
            lat, eff = row["latency_ms"], row["inf_per_g"]
            if not (math.isfinite(_f(lat["mean"])) and math.isfinite(_f(eff["mean"]))):
                continue
            colour = _COLOURS[i % len(_COLOURS)]
            ax.errorbar(lat["mean"], eff["mean"],
                        xerr=_err(lat["mean"], _f(lat["ci_low"]), _f(lat["ci_high"])),
                        yerr=_err(eff["mean"], _f(eff["ci_low"]), _f(eff["ci_high"])),
                        fmt=_MARKERS[i % len(_MARKERS)], ms=8, capsize=3, color=colour,
                        mfc=colour if row["config"] in IN_PAPER else "white", mew=1.5,
                        label=row["label"] + ("" if row["config"] in IN_PAPER else " *"))
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.set_title(model)
        ax.set_xlabel("latency, submit to result (ms, mean over blocks)")
        ax.set_ylabel("inferences per gCO2 (device method)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=8,
               frameon=False)
    fig.suptitle("Latency against carbon efficiency per configuration\n"
                 "(whiskers: 95% intervals across blocks; * and hollow: beyond the paper)",
                 fontsize=10)
    fig.savefig(path, dpi=_DPI)


def fig3(report: PaperReport, path: Path) -> None:
    """Node shares (stacked) and carbon per inference against w_C."""
    rows = report.sweep
    nodes = report.run.node_ids
    wc = [float(r.name.removeprefix("wc=")) for r in rows]
    fig = Figure(figsize=(7.5, 6.2), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(1, 1.2))
    width = 0.8 * (wc[1] - wc[0]) if len(wc) > 1 else 0.05
    base = [0.0] * len(rows)
    for i, node in enumerate(nodes):
        share = [100 * r.shares.get(node, 0.0) for r in rows]
        top.bar(wc, share, width, bottom=base, color=_COLOURS[i % len(_COLOURS)], label=node)
        base = [b + s for b, s in zip(base, share, strict=True)]
    top.set_ylabel("tasks per node (%)")
    top.set_ylim(0, 100)
    top.legend(loc="upper left", fontsize=8, ncol=len(nodes))
    step = wc[1] - wc[0] if len(wc) > 1 else 0.1
    for method, style, shift in (("device", "-o", -0.06), ("measured", "--s", 0.06)):
        g = [r.device_g if method == "device" else r.measured_g for r in rows]
        means = [x.mean for x in g]
        low = [m - x.low if math.isfinite(x.low) else 0.0 for m, x in zip(means, g, strict=True)]
        high = [x.high - m if math.isfinite(x.high) else 0.0
                for m, x in zip(means, g, strict=True)]
        bottom.errorbar([w + shift * step for w in wc], means, yerr=[low, high], fmt=style,
                        capsize=3, ms=4, label=method)
    bottom.set_ylim(bottom=0)
    bottom.set_ylabel("gCO2 per inference")
    bottom.set_xlabel("carbon weight w_C (other weights in Balanced's proportions, "
                      "scaled to 1 - w_C)")
    bottom.legend(fontsize=8)
    bottom.grid(alpha=0.3)
    if report.transition_wc is not None:
        for ax in (top, bottom):
            ax.axvline(report.transition_wc, color="black", ls=":", lw=1.2)
        top.annotate(f"transition w_C = {report.transition_wc:.2f}",
                     (report.transition_wc, 50), xytext=(6, 0), textcoords="offset points",
                     fontsize=8, backgroundcolor="white")
    fig.suptitle(f"Weight sweep ({report.run.sweep_model}, paper normalisation; "
                 "whiskers: 95% intervals across blocks)", fontsize=10)
    fig.savefig(path, dpi=_DPI)


def _f(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) else math.nan


def fig_temporal(report: TemporalReport, path: Path) -> None:
    """Intensity per zone over trace hours with release points; spend per tenant."""
    fig = Figure(figsize=(11, 8), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(1.2, 1))
    by_zone: dict[str, list[str]] = {}
    for node, zone in report.zones.items():
        by_zone.setdefault(zone, []).append(node)
    for i, (zone, nodes) in enumerate(by_zone.items()):
        series = report.intensity[nodes[0]]
        hours = [h for h, _ in series] + [series[-1][0] + 1]
        values = [v for _, v in series] + [series[-1][1]]
        top.step(hours, values, where="post", color=_ZONE_COLOURS[i % len(_ZONE_COLOURS)],
                 ls=("-", "--", "-.")[i % 3], lw=1.6, label=f"{zone} ({', '.join(nodes)})")
    # one colour per arm in both panels; each deferral arm's starts shifted a little in
    # time so that starts in the same hour by two forecasters stay visible
    arms = list(report.spend)
    deferring = list(report.releases)
    markers = ("v", "^", "D", "P", "X")
    for j, (arm, points) in enumerate(report.releases.items()):
        shift = (j - (len(deferring) - 1) / 2) * 0.18
        top.scatter([h + shift for h, _ in points], [v for _, v in points], s=30,
                    marker=markers[j % len(markers)],
                    color=_COLOURS[arms.index(arm) % len(_COLOURS)] if arm in arms else "k",
                    edgecolor="black", lw=0.5, zorder=3,
                    label=f"deferred starts, {arm} ({len(points)})")
    top.set_ylabel("carbon intensity (gCO2/kWh)")
    top.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    top.grid(alpha=0.3)
    styles = ("-", "--")
    for j, arm in enumerate(arms):
        for k, (tenant, series) in enumerate(report.spend[arm].items()):
            bottom.step([h for h, _ in series], [g for _, g in series], where="post",
                        ls=styles[k % 2], color=_COLOURS[j % len(_COLOURS)],
                        label=f"{arm}.{tenant}")
    for tenant, budget in _budgets(report.budgets).items():
        bottom.axhline(budget, color="grey", ls=":", lw=1)
        bottom.annotate(f"budget of each {tenant} tenant", (0, budget), xytext=(2, 2),
                        textcoords="offset points", fontsize=7, color="grey")
    bottom.set_ylabel("cumulative gCO2 (device method)")
    bottom.set_xlabel(f"trace hours from {report.window_start} UTC "
                      f"(1 trace hour = {3600 / report.speedup:.1f} s of wall time)")
    bottom.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    bottom.grid(alpha=0.3)
    for ax in (top, bottom):
        ax.axvline(report.run.window.hours, color="black", ls=":", lw=1)
    top.annotate("last arrival", (report.run.window.hours, 1), xycoords=("data", "axes fraction"),
                 xytext=(3, -12), textcoords="offset points", fontsize=7)
    fig.suptitle("Temporal replay: intensity and deferred starts (top); each tenant's spend "
                 "(bottom; solid: interactive, dashed: batch)", fontsize=10)
    fig.savefig(path, dpi=_DPI)


def _budgets(budgets: Mapping[str, float]) -> dict[str, float]:
    """One line per distinct budget: ``{"interactive and batch": grams}`` when they agree
    (the tenants of every arm have the same budgets)."""
    by_value: dict[float, list[str]] = {}
    for tenant, grams in budgets.items():
        role = tenant.rsplit(".", 1)[-1]
        roles = by_value.setdefault(grams, [])
        if role not in roles:
            roles.append(role)
    return {" and ".join(roles): grams for grams, roles in by_value.items()}
