"""Writing an experiment's folder: results.json, tasks.csv, the paper's tables and the
figures, from a built report (the reports themselves draw nothing)."""

from __future__ import annotations

from pathlib import Path

from carbonedge.experiments import paper_report, temporal_report
from carbonedge.experiments.figures import fig2, fig3, fig_temporal
from carbonedge.experiments.outputs import write_csv, write_json
from carbonedge.experiments.paper_report import PaperReport
from carbonedge.experiments.tables import paper_tables
from carbonedge.experiments.temporal_report import TemporalReport

__all__ = ["write_outputs", "write_temporal_outputs"]


def write_outputs(report: PaperReport, out: Path) -> list[Path]:
    """Every file of a paper run in ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "tasks.csv", out / "tables.md", out / "fig2.png",
             out / "fig3.png"]
    write_json(paths[0], paper_report.results_json(report))
    write_csv(paths[1], paper_report.task_rows(report.run), paper_report.TASK_COLUMNS)
    paths[2].write_text(paper_tables(report), encoding="utf-8")
    fig2(report, paths[3])
    fig3(report, paths[4])
    return paths + [p for p in report.run.emissions_csvs if p.parent == out]


def write_temporal_outputs(report: TemporalReport, out: Path) -> list[Path]:
    """Every file of a temporal run in ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "tasks.csv", out / "fig_temporal.png"]
    write_json(paths[0], temporal_report.results_json(report))
    write_csv(paths[1], temporal_report.task_rows(report.run), temporal_report.TASK_COLUMNS)
    fig_temporal(report, paths[2])
    if report.run.compose is not None:
        paths.append(report.run.compose)
    return paths
