from __future__ import annotations

from carbonedge.node_agent.stats import ExecStats


def _run(stats: ExecStats, ms: float) -> None:
    stats.started()
    stats.finished("m", ms)


def test_medians_ignore_a_spike() -> None:
    stats = ExecStats(window=5)
    for ms in (40.0, 42.0, 400.0, 41.0, 43.0):
        _run(stats, ms)
    assert stats.exec_ms()["m"] == 42.0
    assert stats.in_flight == 0 and stats.tasks_done == 5


def test_window_forgets_old_tasks() -> None:
    stats = ExecStats(window=3)
    for ms in (10.0, 10.0, 10.0, 50.0, 50.0):
        _run(stats, ms)
    assert stats.exec_ms()["m"] == 50.0


def test_first_sample_callback_and_unmeasured_tasks() -> None:
    calls = []
    stats = ExecStats()
    stats.on_first_sample = lambda: calls.append(1)
    stats.started()
    stats.finished(None, None)
    _run(stats, 30.0)
    _run(stats, 30.0)
    assert calls == [1] and stats.tasks_done == 3
