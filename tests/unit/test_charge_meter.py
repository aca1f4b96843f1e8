"""Cutting an agent's CPU counter into start-up, task and idle stretches."""

from __future__ import annotations

import pytest

from carbonedge.node_agent.charging import ChargeMeter


class Clock:
    """A CPU counter and a wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.t = 1000.0

    def burn(self, cpu_s: float, wall_s: float = 0.0) -> None:
        self.cpu += cpu_s
        self.t += wall_s


def _meter(c: Clock, quota: float = 0.5) -> ChargeMeter:
    return ChargeMeter(lambda: c.cpu, quota, clock=lambda: c.t)


def test_start_up_is_one_stretch_and_no_tasks_pays_for_it() -> None:
    c = Clock()
    meter = _meter(c)
    c.burn(3.0, 8.0)  # imports, model loading, warm-up
    startup = meter.startup_done()
    assert (startup.cpu_s, startup.wall_s) == (3.0, 8.0)
    c.burn(0.01, 5.0)  # heartbeats while nothing arrives
    meter.message_received()
    c.burn(0.05, 0.1)
    split = meter.task_finished(model_cpu_s=0.04)
    assert split.total_s == pytest.approx(0.05)  # not the 3 s, not the idle 10 ms
    assert split.model_s == pytest.approx(0.04) and split.overhead_s == pytest.approx(0.01)


def test_idle_between_tasks_goes_to_the_idle_stretch_with_ram_time_net_of_tasks() -> None:
    c = Clock()
    meter = _meter(c, quota=0.5)
    meter.startup_done()
    c.burn(0.02, 4.0)
    meter.message_received()
    c.burn(0.1, 0.25)
    meter.task_finished(0.08)
    c.burn(0.03, 5.75)
    idle = meter.flush_idle()
    assert idle is not None
    assert idle.cpu_s == pytest.approx(0.05)
    assert idle.wall_s == pytest.approx(10.0)
    assert idle.busy_s == pytest.approx(0.2)  # 0.1 CPU-s on a 0.5 quota
    assert meter.flush_idle(min_wall_s=1.0) is None  # too soon after the last flush


def test_a_message_that_never_runs_is_idle_time_not_the_next_tasks() -> None:
    c = Clock()
    meter = _meter(c)
    meter.startup_done()
    meter.message_received()  # dead-lettered: no task follows
    c.burn(0.5, 1.0)
    meter.message_received()
    c.burn(0.04, 0.1)
    meter.task_started()  # the consumer already opened its stretch
    assert meter.task_finished(0.03).total_s == pytest.approx(0.04)
    idle = meter.flush_idle()
    assert idle is not None and idle.cpu_s == pytest.approx(0.5)


def test_a_task_without_a_message_hook_starts_when_it_starts() -> None:
    c = Clock()
    meter = _meter(c)
    meter.startup_done()
    c.burn(0.2, 2.0)
    meter.task_started()
    c.burn(0.06, 0.1)
    assert meter.task_finished(0.06).total_s == pytest.approx(0.06)
    assert meter.flush_idle().cpu_s == pytest.approx(0.2)  # type: ignore[union-attr]


def test_model_cpu_above_the_stretch_is_clamped() -> None:
    c = Clock()
    meter = _meter(c)
    meter.startup_done()
    meter.message_received()
    c.burn(0.01, 0.01)
    split = meter.task_finished(0.5)  # a counter read on another clock edge
    assert split.model_s == pytest.approx(0.01) and split.overhead_s == 0.0
