"""The model registry: building, weight loading, fallbacks and inference helpers."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from carbonedge.errors import ConfigError, InvalidTensor, UnknownModel
from carbonedge.partitioner import models
from carbonedge.partitioner.models import (
    LoadedModel,
    create_model,
    model_names,
    run_inference,
    top_k,
)

EXPECTED = {"mobilenetv2", "mobilenetv2_100", "mobilenetv4", "efficientnet_b0"}


@pytest.fixture(autouse=True)
def _no_hub_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Point torch's hub cache at an empty folder so a real cached file cannot leak in."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedModel]:
    """Each registered model, random-initialised, built once for the module."""
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home_built")))
        return {name: create_model(name) for name in model_names()}


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def test_registry_names() -> None:
    assert EXPECTED <= set(model_names())
    assert model_names() == sorted(model_names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builds_random_init(name: str, built: dict[str, LoadedModel], image: torch.Tensor) -> None:
    model = built[name]
    assert model.name == name
    assert model.random_init is True
    assert model.weights_source == "random-init"
    assert model.input_shape == (1, 3, 224, 224)
    assert model.num_classes == 1000
    assert model.param_count > 1_000_000
    assert not model.module.training
    assert not any(p.requires_grad for p in model.module.parameters())
    out = run_inference(model, image)
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reload_weights(
    name: str, suffix: str, built: dict[str, LoadedModel], image: torch.Tensor, tmp_path: Path
) -> None:
    source = built[name]
    state = {k: v.detach().clone().contiguous() for k, v in source.module.state_dict().items()}
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)

    loaded = create_model(name, weights_dir=tmp_path)

    assert loaded.random_init is False
    assert loaded.weights_source == str(path)
    assert torch.equal(run_inference(loaded, image), run_inference(source, image))


def test_safetensors_preferred_and_pt_found(built: dict[str, LoadedModel], tmp_path: Path) -> None:
    state = built["mobilenetv2"].module.state_dict()
    torch.save(state, tmp_path / "mobilenetv2.pt")
    assert create_model("mobilenetv2", tmp_path).weights_source.endswith("mobilenetv2.pt")
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(tmp_path / "mobilenetv2.safetensors")
    )
    assert create_model("mobilenetv2", tmp_path).weights_source.endswith(".safetensors")


def test_wrapped_checkpoint_loads(built: dict[str, LoadedModel], tmp_path: Path) -> None:
    torch.save(
        {"state_dict": built["mobilenetv2"].module.state_dict(), "epoch": 3},
        tmp_path / "mobilenetv2.pth",
    )
    assert create_model("mobilenetv2", tmp_path).random_init is False


def test_torch_hub_cache_file_for_mobilenetv2(
    built: dict[str, LoadedModel], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    path = checkpoints / "mobilenet_v2-b0353104.pth"
    torch.save(built["mobilenetv2"].module.state_dict(), path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    loaded = create_model("mobilenetv2")
    assert loaded.random_init is False
    assert loaded.weights_source == str(path)


def test_mismatched_weights_raise_config_error(
    built: dict[str, LoadedModel], tmp_path: Path
) -> None:
    # efficientnet_b0's weights saved under mobilenetv2's name: keys and shapes do not fit.
    path = tmp_path / "mobilenetv2.pth"
    torch.save(built["efficientnet_b0"].module.state_dict(), path)
    with pytest.raises(ConfigError, match="mobilenetv2.pth") as info:
        create_model("mobilenetv2", tmp_path)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_corrupt_weights_raise_config_error(tmp_path: Path) -> None:
    (tmp_path / "mobilenetv2.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="mobilenetv2.safetensors"):
        create_model("mobilenetv2", tmp_path)
    (tmp_path / "mobilenetv2.safetensors").unlink()
    torch.save([1, 2, 3], tmp_path / "mobilenetv2.pth")
    with pytest.raises(ConfigError, match="mobilenetv2.pth"):
        create_model("mobilenetv2", tmp_path)


def test_missing_weights_dir_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nowhere"):
        create_model("mobilenetv2", tmp_path / "nowhere")


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(UnknownModel) as info:
        create_model("resnet9000")
    assert info.value.field == "model"
    for name in EXPECTED:
        assert name in info.value.message


def test_random_init_logged_once_per_name(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "_random_init_logged", set())
    with caplog.at_level(logging.INFO, logger=models.__name__):
        create_model("mobilenetv2")
        create_model("mobilenetv2")
        create_model("mobilenetv4")
    messages = [r.getMessage() for r in caplog.records if "random initialisation" in r.getMessage()]
    assert len(messages) == 2
    assert sum("'mobilenetv2'" in m for m in messages) == 1
    assert sum("'mobilenetv4'" in m for m in messages) == 1


def test_run_inference_accepts_numpy_and_unbatched(
    built: dict[str, LoadedModel], image: torch.Tensor
) -> None:
    model = built["mobilenetv2"]
    expected = run_inference(model, image)
    assert torch.equal(run_inference(model, image[0].numpy()), expected)
    assert torch.equal(run_inference(model, image.numpy()), expected)


def test_run_inference_rejects_bad_input(built: dict[str, LoadedModel]) -> None:
    model = built["mobilenetv2"]
    with pytest.raises(InvalidTensor) as info:
        run_inference(model, np.zeros((1, 3, 32, 32), dtype=np.float32))
    assert info.value.field == "input.shape"
    with pytest.raises(InvalidTensor) as info:
        run_inference(model, np.zeros((1, 3, 224, 224), dtype=np.float64))
    assert info.value.field == "input.dtype"


def test_top_k_order_and_probabilities() -> None:
    logits = torch.tensor([[0.5, 3.0, -1.0, 2.0, 0.0, 1.0, 2.5]])
    ids, probs = top_k(logits, k=5)
    assert ids == [1, 6, 3, 5, 0]
    assert all(isinstance(i, int) for i in ids)
    assert all(isinstance(p, float) for p in probs)
    assert probs == sorted(probs, reverse=True)
    assert 0 < sum(probs) <= 1.0
    expected = torch.softmax(logits[0].double(), dim=0)[ids].tolist()
    assert probs == pytest.approx(expected)
    # numpy, 1-D, and k larger than the number of classes
    ids_all, probs_all = top_k(logits[0].numpy(), k=100)
    assert len(ids_all) == 7
    assert sum(probs_all) == pytest.approx(1.0)


def test_top_k_rejects_batches() -> None:
    with pytest.raises(ValueError):
        top_k(torch.zeros(2, 10))
    with pytest.raises(ValueError):
        top_k(torch.zeros(10), k=0)


def test_import_does_not_import_timm_or_torchvision() -> None:
    code = (
        "import sys, carbonedge.partitioner.models as m; "
        "assert 'timm' not in sys.modules, 'timm'; "
        "assert 'torchvision' not in sys.modules, 'torchvision'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_random_initialisation_is_the_same_in_every_process() -> None:
    import subprocess
    import sys

    code = ("from carbonedge.partitioner.models import create_model; "
            "m = create_model('mobilenetv4').module; "
            "print(float(sum(p.double().sum() for p in m.parameters())))")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, timeout=120).stdout for _ in range(2)}
    assert len(runs) == 1
