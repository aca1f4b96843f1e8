"""Setting up a temporal replay: traces aligned on the nodes, arrivals, arms, budgets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from carbonedge.compose.topology import load_topology
from carbonedge.errors import ConfigError, InvalidRequest
from carbonedge.experiments.arrivals import Arrival, make_arrivals
from carbonedge.experiments.replay import (
    Window,
    assign_zones,
    default_start,
    load_zone,
    parse_start,
    write_compose,
)
from carbonedge.experiments.temporal import (
    BUDGET_HEADROOM,
    TemporalOptions,
    project_budgets,
    temporal_arms,
)

CAL, GB = "US-CAL-CISO_2023_week23", "GB_2023_week23"


def test_packaged_zones_load_and_cycle_over_the_nodes() -> None:
    cal, gb = load_zone(CAL), load_zone(GB)
    assert len(cal.values) == 168 and cal.first == datetime(2023, 6, 5, tzinfo=UTC)
    zones = assign_zones(["a", "b", "c"], [cal, gb])
    assert [zones[n].name for n in "abc"] == [CAL, GB, CAL]
    with pytest.raises(ConfigError, match="at most one zone per node"):
        assign_zones(["a"], [cal, gb])
    with pytest.raises(ConfigError, match="packaged"):
        load_zone("MARS_2023")


def test_the_default_start_leaves_a_day_of_history() -> None:
    assert default_start([load_zone(CAL), load_zone(GB)]) == datetime(2023, 6, 6, tzinfo=UTC)


def test_a_window_outside_the_traces_is_refused_naming_what_it_needs() -> None:
    zones = {"a": load_zone(CAL)}
    Window(datetime(2023, 6, 6, tzinfo=UTC), 24, 360).check(zones, before_h=24, after_h=8)
    with pytest.raises(ConfigError) as info:
        Window(datetime(2023, 6, 5, 12, tzinfo=UTC), 24, 360).check(zones, before_h=24,
                                                                    after_h=8)
    assert info.value.field == "start" and "2023-06-04 12:00" in info.value.message
    with pytest.raises(ConfigError, match="fewer --hours"):
        Window(datetime(2023, 6, 10, tzinfo=UTC), 49, 360).check(zones, before_h=0, after_h=0)


@pytest.mark.parametrize("text", ["yesterday", "2023-06-06T10:30:00Z"])
def test_start_must_be_an_iso_whole_hour(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_start(text)
    assert info.value.field == "start"


def test_every_node_plays_the_same_utc_hour_at_the_same_wall_instant(tmp_path: Path) -> None:
    base = load_topology(None)
    zones = assign_zones([n.name for n in base.nodes], [load_zone(CAL), load_zone(GB)])
    window = Window(datetime(2023, 6, 6, 10, tzinfo=UTC), 6, 900)
    t0 = 2_000_000_000.0
    replay = load_topology(write_compose(base, zones, window, t0, tmp_path / "c.yml"))
    assert [(n.name, n.cpus, n.mem_limit_bytes) for n in replay.nodes] == [
        (n.name, n.cpus, n.mem_limit_bytes) for n in base.nodes]
    for node in replay.nodes:
        provider = node.intensity_provider()
        for hour in range(window.hours):
            wall = datetime.fromtimestamp(t0 + (hour + 0.5) * window.hour_s, UTC)
            expected = zones[node.name].value_at(window.start + timedelta(hours=hour))
            assert provider.intensity_at(wall).value.g_per_kwh == expected, (node.name, hour)


def test_arrivals_are_seeded_and_within_the_window() -> None:
    arrivals = make_arrivals(24, 6.0, 0.5, (1, 8), seed=3)
    assert arrivals == make_arrivals(24, 6.0, 0.5, (1, 8), seed=3)
    assert arrivals != make_arrivals(24, 6.0, 0.5, (1, 8), seed=4)
    assert 100 < len(arrivals) < 190  # Poisson(144)
    assert all(0 <= a.at_h < 24 for a in arrivals)
    deadlines = [a.deadline_h for a in arrivals if a.deadline_h is not None]
    assert set(deadlines) <= set(range(1, 9)) and 0.3 < len(deadlines) / len(arrivals) < 0.7
    with pytest.raises(ConfigError) as info:
        make_arrivals(24, 6.0, 1.5, (1, 8), seed=0)
    assert info.value.field == "deferrable"


def test_arms_differ_only_in_routing_and_deferral() -> None:
    agnostic, green, oracle = temporal_arms(["oracle"])
    urgent, batch = Arrival(4, 1.0, None), Arrival(5, 1.5, 3)
    nodes = ["n0", "n1", "n2"]
    assert agnostic.options(batch, nodes, 10.0) == {"tenant": "agnostic.batch", "node": "n2"}
    assert green.options(batch, nodes, 10.0) == {"tenant": "green.batch", "mode": "green"}
    assert oracle.options(urgent, nodes, 10.0) == {"tenant": "defer-oracle.interactive",
                                                   "mode": "green"}
    assert oracle.options(batch, nodes, 10.0) == {
        "tenant": "defer-oracle.batch", "mode": "green", "deadline_s": 30.0,
        "forecast": "oracle"}


def test_budgets_are_projected_from_round_robin_on_the_traces() -> None:
    zone = load_zone(CAL)
    window = Window(datetime(2023, 6, 6, tzinfo=UTC), 2, 360)
    arrivals = [Arrival(0, 0.5, None), Arrival(1, 1.5, 2)]
    kwh = {"a": 1e-8, "b": 2e-8}
    budgets = project_budgets(temporal_arms(["oracle"]), arrivals, ["a", "b"], kwh,
                              {"a": zone, "b": zone}, window)
    assert set(budgets) == {f"{arm}.{role}" for arm in ("agnostic", "green", "defer-oracle")
                            for role in ("interactive", "batch")}
    assert budgets["green.interactive"] == pytest.approx(BUDGET_HEADROOM * 1e-8 * zone.values[24])
    assert budgets["green.batch"] == pytest.approx(BUDGET_HEADROOM * 2e-8 * zone.values[25])


def test_temporal_options_name_a_bad_forecaster_or_speedup() -> None:
    with pytest.raises(InvalidRequest) as info:
        TemporalOptions(forecast=("oracle", "tomorrow"))
    assert info.value.field == "forecast" and "persistence" in info.value.message
    with pytest.raises(ConfigError) as info2:
        TemporalOptions(speedup=3600)
    assert info2.value.field == "speedup"
