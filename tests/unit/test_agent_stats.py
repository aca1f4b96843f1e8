from __future__ import annotations

import pytest

from carbonedge.node_agent.stats import ExecStats


def test_first_samples_are_averaged_then_smoothed() -> None:
    stats = ExecStats(alpha=0.25)
    for ms in (100.0, 50.0, 60.0, 70.0):  # mean of the first 1/alpha = 4 samples
        stats.started()
        stats.finished("m", ms, energy_j=ms / 1e3 * 2.0)  # 2 W during each task
    assert stats.exec_ms()["m"] == pytest.approx(70.0)
    assert stats.task_power_w()["m"] == pytest.approx(2.0)
    stats.started()
    stats.finished("m", 170.0, energy_j=0.17 * 2.0)
    assert stats.exec_ms()["m"] == pytest.approx(70.0 + 0.25 * 100.0)
    assert stats.in_flight == 0 and stats.tasks_done == 5


def test_unmeasured_tasks_count_but_do_not_move_averages() -> None:
    stats = ExecStats()
    stats.started()
    stats.finished(None, None)
    stats.started()
    stats.finished("m", 0.0, 0.0)
    assert stats.exec_ms() == {} and stats.tasks_done == 2
