"""``carbonedge experiment paper|temporal``: options in, files and a printed summary out."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from typing import Any

from carbonedge.settings import Settings

__all__ = ["run_paper_command", "run_temporal_command"]


def _options(cls: Any, given: Mapping[str, Any], *, quick: bool, progress: bool) -> Any:
    base = cls.quick() if quick else cls()
    return dataclasses.replace(base, progress=progress, **given)


def run_paper_command(settings: Settings, given: Mapping[str, Any], *, quick: bool,
                      progress: bool) -> int:
    from carbonedge.experiments.demo import format_table
    from carbonedge.experiments.paper import PaperOptions, run_paper
    from carbonedge.experiments.paper_report import build_report
    from carbonedge.experiments.writing import write_outputs

    options = _options(PaperOptions, given, quick=quick, progress=progress)
    run = run_paper(settings, options)
    report = build_report(run)
    paths = write_outputs(report, options.out)
    print()
    for model, rows in report.arms.items():
        print(f"{model}: {options.blocks} blocks x {options.n} inferences per configuration")
        print(format_table(rows, run.node_ids, "monolithic"))
        print()
    if report.transition_wc is not None:
        print(f"weight sweep ({run.sweep_model}): the least-carbon node takes most tasks "
              f"from w_C = {report.transition_wc:.2f}")
    print(f"measured charges settled for {run.settled} of {len(run.all_records)} tasks"
          + (" (estimated from CPU load: no hardware counter)" if run.measured_estimated
             else ""))
    if any(r.result.random_init for r in run.all_records):
        print("weights: random initialisation (no pretrained weights here): timings and "
              "carbon are the real architectures', the predictions are meaningless")
    print("ΔCO2 = change in carbon per inference against monolithic (negative = less), "
          "± = 95% interval across blocks, paired by block")
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0


def run_temporal_command(settings: Settings, given: Mapping[str, Any], *, quick: bool,
                         progress: bool) -> int:
    from carbonedge.experiments.temporal import TemporalOptions, run_temporal
    from carbonedge.experiments.temporal_report import build_temporal_report, format_temporal
    from carbonedge.experiments.writing import write_temporal_outputs

    options = _options(TemporalOptions, given, quick=quick, progress=progress)
    run = run_temporal(settings, options)
    report = build_temporal_report(run)
    paths = write_temporal_outputs(report, options.out)
    print()
    print(format_temporal(report))
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0
