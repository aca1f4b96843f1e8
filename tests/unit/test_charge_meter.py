"""Cutting a node's CPU into start-up, task and idle stretches."""

from __future__ import annotations

import pytest

from carbonedge.node_agent.charging import ChargeMeter


class Clocks:
    """The node's (cgroup) CPU counter, the task process's CPU clock and the wall clock,
    moved by hand. Work in the task process shows on both CPU clocks."""

    def __init__(self) -> None:
        self.node = 0.0
        self.process = 0.0
        self.t = 1000.0

    def burn(self, cpu_s: float, wall_s: float = 0.0, *, other_process: bool = False) -> None:
        self.node += cpu_s
        if not other_process:
            self.process += cpu_s
        self.t += wall_s


def _meter(c: Clocks, quota: float = 0.5) -> ChargeMeter:
    return ChargeMeter(lambda: c.node, quota, task_cpu=lambda: c.process, clock=lambda: c.t)


def test_start_up_is_one_stretch_and_no_task_pays_for_it() -> None:
    c = Clocks()
    meter = _meter(c)
    c.burn(3.0, 8.0)  # imports, model loading, warm-up
    c.burn(1.0, 2.0, other_process=True)  # a model export in a process of its own
    startup = meter.startup_done()
    assert (startup.cpu_s, startup.wall_s) == (4.0, 10.0)
    c.burn(0.01, 5.0)  # heartbeats while nothing arrives
    meter.message_received()
    c.burn(0.05, 0.1)
    split = meter.task_finished(model_cpu_s=0.04)
    assert split.total_s == pytest.approx(0.05)  # not the 4 s, not the idle 10 ms
    assert split.model_s == pytest.approx(0.04) and split.overhead_s == pytest.approx(0.01)


def test_idle_is_the_nodes_cpu_less_its_tasks_with_ram_time_net_of_tasks() -> None:
    c = Clocks()
    meter = _meter(c, quota=0.5)
    meter.startup_done()
    c.burn(0.02, 4.0)
    meter.message_received()
    c.burn(0.1, 0.25)
    meter.task_finished(0.08)
    c.burn(0.03, 5.75)
    c.burn(0.04, 0.0, other_process=True)  # anything else in the node's cgroup is idle's
    idle = meter.flush_idle()
    assert idle is not None
    assert idle.cpu_s == pytest.approx(0.02 + 0.03 + 0.04)
    assert idle.wall_s == pytest.approx(10.0)
    assert idle.busy_s == pytest.approx(0.2)  # 0.1 CPU-s on a 0.5 quota
    assert meter.flush_idle(min_wall_s=1.0) is None  # too soon after the last flush


def test_every_cpu_second_lands_once() -> None:
    c = Clocks()
    meter = _meter(c)
    c.burn(2.0, 3.0)
    total = meter.startup_done().cpu_s
    for i in range(5):
        c.burn(0.01 * i, 0.5)
        meter.message_received()
        c.burn(0.03, 0.05)
        total += meter.task_finished(0.02).total_s
    c.burn(0.2, 1.0, other_process=True)
    total += meter.flush_idle().cpu_s  # type: ignore[union-attr]
    assert total == pytest.approx(c.node)


def test_a_message_that_never_runs_is_idle_time_not_the_next_tasks() -> None:
    c = Clocks()
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
    c = Clocks()
    meter = _meter(c)
    meter.startup_done()
    c.burn(0.2, 2.0)
    meter.task_started()
    c.burn(0.06, 0.1)
    assert meter.task_finished(0.06).total_s == pytest.approx(0.06)
    assert meter.flush_idle().cpu_s == pytest.approx(0.2)  # type: ignore[union-attr]


def test_model_cpu_above_the_stretch_is_clamped() -> None:
    c = Clocks()
    meter = _meter(c)
    meter.startup_done()
    meter.message_received()
    c.burn(0.01, 0.01)
    split = meter.task_finished(0.5)
    assert split.model_s == pytest.approx(0.01) and split.overhead_s == 0.0
