"""The local and the Docker runtime start the same services with the same settings."""

from __future__ import annotations

from pathlib import Path

from carbonedge.compose.docker_runner import TOPOLOGY_IN_CONTAINER, DockerRuntime
from carbonedge.compose.local_runner import LocalRuntime
from carbonedge.compose.topology import load_topology
from carbonedge.settings import Settings


def _both(tmp_path: Path, **options: object) -> tuple[LocalRuntime, DockerRuntime]:
    topology = load_topology()
    settings = Settings.load(env={}, run_dir=str(tmp_path / "run"))
    scale = {"node-green": 2}
    local = LocalRuntime(topology, settings, scale=scale, preload=("mobilenetv2",),
                         **options)  # type: ignore[arg-type]
    docker = DockerRuntime(topology, settings, scale=scale, preload=("mobilenetv2",),
                           **options)  # type: ignore[arg-type]
    return local, docker


def test_both_runtimes_start_the_carbon_service_dispatcher_and_agents(tmp_path: Path) -> None:
    local, docker = _both(tmp_path, carbon_service=True,
                          dispatcher_args=("--metrics-port", "9808"))
    names = ["carbon", "dispatcher", "node-high", "node-medium", "node-green-1", "node-green-2"]
    assert [s.name for s in local.services()] == [s.name for s in docker.services()] == names
    for mine, theirs in zip(local.services(), docker.services(), strict=True):
        if mine.name.startswith("node-"):  # the compose file where each agent sees it
            assert mine.args == ("agent", "--node", mine.name, "--compose",
                                 str(local.topology.source.resolve()), "--preload",
                                 "mobilenetv2")
            assert theirs.args == mine.args[:4] + (TOPOLOGY_IN_CONTAINER,) + mine.args[5:]
        else:
            assert mine.args == theirs.args
    assert local.services()[0].args == ("carbon", "--csv", str(tmp_path / "run" / "emissions.csv"))
    assert local.services()[1].args == ("dispatcher", "--metrics-port", "9808")


def test_without_the_carbon_service_neither_runs_it(tmp_path: Path) -> None:
    for runtime in _both(tmp_path):
        assert [s.name for s in runtime.services()][:2] == ["dispatcher", "node-high"]


def test_both_runtimes_give_their_services_the_same_settings(tmp_path: Path) -> None:
    local, docker = _both(tmp_path)
    assert local.settings == docker.settings
    assert local.settings.compose_file == str(load_topology().source.resolve())
    assert local.settings.export_dir == str(tmp_path / "run" / "models")
    assert local.emissions_csv == docker.emissions_csv
