"""What every output folder of the experiments must satisfy: the files exist, the PNGs
decode, and results.json agrees with tasks.csv (used on synthetic runs by the unit tests
and on real ones by the integration tests)."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from carbonedge.experiments.paper import CONFIG_LABELS

METHOD_COLUMNS = {"device": "device_g", "measured": "measured_g"}


def png_size(path: Path) -> tuple[int, int]:
    """The size of a PNG that decodes whole (``verify`` reads every chunk)."""
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.verify()
    with Image.open(path) as img:
        img.load()
        return img.size


def block_means(rows: list[dict[str, str]], key: str, value: str, column: str
                ) -> dict[int, float]:
    blocks: dict[int, list[float]] = {}
    for row in rows:
        if row[key] == value and row[column]:
            blocks.setdefault(int(row["block"]), []).append(float(row[column]))
    return {b: statistics.fmean(v) for b, v in blocks.items()}


def _check_interval(interval: dict[str, Any], *, mean: float) -> None:
    assert interval["mean"] == pytest.approx(mean, rel=1e-9, abs=1e-12)
    if interval["ci_low"] is not None:
        assert interval["ci_low"] <= mean + 1e-12 and mean <= interval["ci_high"] + 1e-12


def check_paper_outputs(out: Path) -> dict[str, Any]:
    for name in ("results.json", "tasks.csv", "tables.md", "fig2.png", "fig3.png"):
        assert (out / name).is_file(), f"{name} missing from {out}"
    results = json.loads((out / "results.json").read_text())
    rows = list(csv.DictReader((out / "tasks.csv").open()))
    models = results["options"]["models"]
    blocks = results["options"]["blocks"]
    for key in ("machine", "versions", "topology", "seed", "block_order", "random_weights"):
        assert key in results, key
    for model in models:
        order = results["block_order"][model]
        assert len(order) == blocks and all(sorted(b) == sorted(CONFIG_LABELS) for b in order)
    summary = results["summary"]
    assert {(r["config"], r["model"], r["method"]) for r in summary} == {
        (c, m, k) for c in CONFIG_LABELS for m in models for k in METHOD_COLUMNS}
    for row in summary:
        assert sum(row["shares"].values()) == pytest.approx(1.0), row
        assert set(row["latency_ms"]) >= {"mean", "p95"}
        mine = [r for r in rows if r["model"] == row["model"]]
        column = METHOD_COLUMNS[row["method"]]
        arm = block_means(mine, "config", row["config"], column)
        if not arm:  # no settled measured charge at all: nothing to compare
            assert row["method"] == "measured"
            continue
        _check_interval(row["carbon_g_per_inf"], mean=statistics.fmean(arm.values()))
        mono = block_means(mine, "config", "monolithic", column)
        paired = [100 * (arm[b] / mono[b] - 1) for b in sorted(arm) if b in mono]
        _check_interval(row["delta_vs_mono_pct"], mean=statistics.fmean(paired))
    sweep = results["sweep"]["steps"]
    assert len(sweep) >= 11 and sweep[0]["wc"] == 0 and sweep[-1]["wc"] == 1
    for step in sweep:
        assert sum(step["shares"].values()) == pytest.approx(1.0)
    tables = (out / "tables.md").read_text()
    for heading in ("Table II", "Table IV", "Table V", "Weight sweep", "Oracle"):
        assert heading in tables
    for name in ("fig2.png", "fig3.png"):
        width, height = png_size(out / name)
        assert width > 600 and height > 400
    return results


def check_temporal_outputs(out: Path) -> dict[str, Any]:
    for name in ("results.json", "tasks.csv", "fig_temporal.png"):
        assert (out / name).is_file(), f"{name} missing from {out}"
    results = json.loads((out / "results.json").read_text())
    rows = list(csv.DictReader((out / "tasks.csv").open()))
    forecasters = results["options"]["forecasters"]
    arms = ["agnostic", "green", *(f"defer-{f}" for f in forecasters)]
    summary = results["summary"]
    assert [r["arm"] for r in summary] == arms
    arrivals = results["arrivals"]["count"]
    for row in summary:
        mine = [r for r in rows if r["arm"] == row["arm"]]
        assert row["n"] == len(mine) and row["n"] + row["refused"] == arrivals
        assert row["deadline_misses"] == sum(int(r["missed"]) for r in mine)
        assert row["deferred"] == sum(int(r["deferred"]) for r in mine)
        assert set(row["wait_s"]) == {"mean", "p95"}
        if not mine:
            continue
        assert sum(row["shares"].values()) == pytest.approx(1.0)
        arm = block_means(rows, "arm", row["arm"], "device_g")
        _check_interval(row["carbon_g_per_inf"], mean=statistics.fmean(arm.values()))
        base = block_means(rows, "arm", "agnostic", "device_g")
        paired = [100 * (arm[b] / base[b] - 1) for b in sorted(arm) if b in base]
        if paired:
            _check_interval(row["delta_vs_agnostic_pct"], mean=statistics.fmean(paired))
    for tenant in results["tenants"]:
        spent = sum(float(r["device_g"]) for r in rows if r["tenant"] == tenant["tenant"])
        assert tenant["spent_g"] == pytest.approx(spent, rel=1e-9, abs=1e-15)
    assert all(math.isfinite(v) for v in results["oracle_g_per_inf"].values())
    assert results["oracle_g_per_inf"]["temporal"] <= results["oracle_g_per_inf"]["spatial"]
    width, height = png_size(out / "fig_temporal.png")
    assert width > 600 and height > 400
    return results
