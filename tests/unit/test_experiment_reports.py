"""The experiments' summaries, tables and figures agree with the tasks they summarise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carbonedge.errors import ConfigError
from carbonedge.experiments.paper import PaperOptions, sweep_weights
from carbonedge.experiments.paper_report import build_report
from carbonedge.experiments.temporal_report import build_temporal_report, format_temporal
from carbonedge.experiments.writing import write_outputs, write_temporal_outputs
from tests.experiment_checks import check_paper_outputs, check_temporal_outputs
from tests.unit.experiment_fakes import G_PER_INF, paper_run, temporal_run


def test_paper_outputs_agree_with_their_tasks(tmp_path: Path) -> None:
    report = build_report(paper_run())
    paths = write_outputs(report, tmp_path)
    assert {p.name for p in paths} >= {"results.json", "tasks.csv", "tables.md", "fig2.png",
                                        "fig3.png"}
    summary = check_paper_outputs(tmp_path)["summary"]
    green = next(r for r in summary if r["config"] == "ce-green" and r["method"] == "device")
    assert green["shares"] == {"node-green": 1.0}
    assert green["delta_vs_mono_pct"]["mean"] == pytest.approx(-30, abs=1.5)
    partitioned = next(r for r in summary if r["config"] == "ce-green-partitioned")
    assert partitioned["shares"] == pytest.approx({"node-green": 2 / 3, "node-medium": 1 / 3})


def test_the_oracle_is_the_cheapest_node_and_the_sweep_marks_its_transition(
        tmp_path: Path) -> None:
    report = build_report(paper_run())
    oracle = report.oracles[("mobilenetv2", "device")]
    assert oracle.node == "node-green"
    assert oracle.g_per_inf == pytest.approx(G_PER_INF["node-green"] * 1.1, rel=0.01)
    green = next(r for r in report.summary if r["config"] == "ce-green"
                 and r["method"] == "device")
    assert green["oracle_gap_pct"] == pytest.approx(0, abs=1)
    assert report.transition_wc == pytest.approx(0.6)
    write_outputs(report, tmp_path)
    sweep = json.loads((tmp_path / "results.json").read_text())["sweep"]
    assert [s["wc"] for s in sweep["steps"]] == pytest.approx([i / 10 for i in range(11)])
    for step in sweep["steps"]:
        assert sum(step["weights"]) == pytest.approx(1.0)
        assert step["weights"][4] == pytest.approx(step["wc"])
    assert sweep["transition_wc"] == pytest.approx(0.6)


def test_tables_put_the_papers_values_beside_ours_and_figures_decode(tmp_path: Path) -> None:
    write_outputs(build_report(paper_run()), tmp_path)
    tables = (tmp_path / "tables.md").read_text()
    for heading in ("Table II", "Table IV", "Table V", "Weight sweep", "Oracle"):
        assert heading in tables
    for paper_value in ("254.85", "0.0053", "+22.9", "-26.7", "100% / 0% / 0%", "245.8"):
        assert paper_value in tables
    assert "| CE-Green (partitioned) |" in tables


def test_sweep_weights_run_from_no_carbon_to_all_carbon() -> None:
    steps = sweep_weights(11)
    assert steps[0][1][4] == 0 and steps[-1][1] == [0, 0, 0, 0, 1.0]
    assert all(sum(w) == pytest.approx(1.0) for _, w in steps)
    with pytest.raises(ConfigError) as info:
        PaperOptions(sweep_steps=5)
    assert info.value.field == "sweep_steps"
    with pytest.raises(ConfigError, match="mobilenetv9"):
        PaperOptions(models=("mobilenetv9",))


def test_temporal_summary_counts_misses_deferrals_and_refusals(tmp_path: Path) -> None:
    run = temporal_run(tmp_path)
    report = build_temporal_report(run)
    by_arm = {row["arm"]: row for row in report.summary}
    assert list(by_arm) == [a.name for a in run.arms]
    deferrable = sum(a.deadline_h is not None for a in run.arrivals)
    assert by_arm["defer-oracle"]["deferred"] == deferrable
    assert by_arm["defer-oracle"]["deadline_misses"] == 1
    assert by_arm["defer-persistence"]["deferred"] == 0
    assert by_arm["agnostic"]["refused"] == 1
    assert by_arm["agnostic"]["n"] == len(run.arrivals) - 1
    # at least half an hour of waiting (half the shortest deadline)
    assert by_arm["defer-oracle"]["wait_trace_h"]["mean"] >= 0.5
    assert by_arm["green"]["shares"] == {"node-green": 1.0}
    assert report.oracle["temporal"] <= report.oracle["spatial"]
    for tenant in report.tenants:
        assert tenant["spent_g"] == pytest.approx(tenant["spent_recorded_g"])
    for series in (s for arm in report.spend.values() for s in arm.values()):
        grams = [g for _, g in series]
        assert grams == sorted(grams)
    assert "defer-yesterday" in format_temporal(report)


def test_temporal_outputs_agree_with_their_tasks(tmp_path: Path) -> None:
    report = build_temporal_report(temporal_run(tmp_path))
    paths = write_temporal_outputs(report, tmp_path)
    assert {p.name for p in paths} >= {"results.json", "tasks.csv", "fig_temporal.png"}
    results = check_temporal_outputs(tmp_path)
    assert {r["arm"]: r["deadline_misses"] for r in results["summary"]}["defer-oracle"] == 1
