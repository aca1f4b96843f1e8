"""Both experiments end to end in their ``--quick`` forms: real agents in cgroups, the real
dispatcher and carbon service; the outputs exist and agree with themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from carbonedge.cli import main
from tests.conftest import CGROUP_PARENT, SMALL_RUNTIME_URL, _redis_or_fail
from tests.experiment_checks import check_paper_outputs, check_temporal_outputs

pytestmark = pytest.mark.timeout(420)


@pytest.fixture
def redis_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A flushed database, the runtime's files under the test's folder, and cgroups of
    its own: the session's default runtime (same node names) may be up meanwhile."""
    _redis_or_fail(SMALL_RUNTIME_URL).flushdb()
    monkeypatch.setenv("CARBONEDGE_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("CARBONEDGE_CGROUP_PARENT", f"{CGROUP_PARENT}-experiments")
    monkeypatch.delenv("CARBONEDGE_CONFIG", raising=False)
    return SMALL_RUNTIME_URL


def test_paper_quick(redis_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "paper"
    assert main(["--redis-url", redis_db, "experiment", "paper", "--quick", "--out", str(out),
                 "--no-progress"]) == 0
    results = check_paper_outputs(out)
    assert results["options"]["models"] == ["mobilenetv2"]
    rows = {(r["config"], r["method"]): r for r in results["summary"]}
    # pinned through the dispatcher: every Monolithic request ran on node-medium
    assert rows[("monolithic", "device")]["shares"] == {"node-medium": 1.0}
    assert rows[("monolithic", "device")]["delta_vs_mono_pct"]["mean"] == 0
    assert results["measured_settled"]["settled"] > 0
    assert results["cgroup_limits"] is True
    printed = capsys.readouterr().out
    assert "ce-green-partitioned" in printed and "monolithic" in printed


def test_temporal_quick(redis_db: str, tmp_path: Path) -> None:
    out = tmp_path / "temporal"
    assert main(["--redis-url", redis_db, "experiment", "temporal", "--quick", "--out",
                 str(out), "--no-progress"]) == 0
    results = check_temporal_outputs(out)
    rows = {r["arm"]: r for r in results["summary"]}
    # the same requests reached every arm; persistence believes nothing changes, so it
    # never waits, and only deferral arms ever defer
    assert rows["defer-persistence"]["deferred"] == 0
    assert rows["agnostic"]["deferred"] == rows["green"]["deferred"] == 0
    assert rows["agnostic"]["shares"] == pytest.approx(
        {"node-high": 1 / 3, "node-medium": 1 / 3, "node-green": 1 / 3}, abs=0.1)
    # what the agents counted against each tenant's budget is what the results say
    for tenant in results["tenants"]:
        assert tenant["spent_recorded_g"] == pytest.approx(tenant["spent_g"], rel=1e-6)
    assert (out / "replay-compose.yml").is_file()
