"""The declared models: built-ins, bring-your-own specs, and what a bad declaration says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from carbonedge.errors import ConfigError, UnknownModel
from carbonedge.partitioner.catalog import (
    BUILTINS,
    DEFAULT_MODELS,
    MODEL_NAMES,
    Preprocess,
    default_catalogue,
    load_catalogue,
)
from carbonedge.partitioner.models import model_names
from carbonedge.settings import Settings


def test_torch_free_catalog_matches_the_registry() -> None:
    assert set(model_names()) == MODEL_NAMES


def test_producer_and_dispatcher_do_not_import_torch() -> None:
    code = ("import sys, carbonedge.client, carbonedge.dispatcher.dispatcher, "
            "carbonedge.node_agent.backend, carbonedge.partitioner.graphs; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_builtins_name_their_published_accuracy() -> None:
    for spec in BUILTINS.values():
        assert spec.top1 is not None and 60 < spec.top1 < 90
        assert "torchvision" in spec.top1_source or "timm results" in spec.top1_source
    assert BUILTINS["efficientnet_b0"].top1 > BUILTINS["mobilenetv4"].top1 > \
        BUILTINS["mobilenetv2"].top1


def test_the_repositorys_compose_file_declares_the_papers_three() -> None:
    catalogue = load_catalogue(Settings().compose_path())
    assert catalogue.names == list(DEFAULT_MODELS) == default_catalogue().names
    with pytest.raises(UnknownModel, match="unknown model 'resnet9000'; known: mobilenetv2"):
        catalogue.get("resnet9000")


def _load(tmp_path: Path, models: str) -> object:
    compose = tmp_path / "compose.yml"
    compose.write_text(f"x-carbonedge:\n  models: {models}\nservices: {{}}\n")
    return load_catalogue(compose)


def test_bring_your_own_models(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "r18.safetensors").write_bytes(b"x")
    (tmp_path / "tiny.onnx").write_bytes(b"x")
    catalogue = _load(tmp_path, """
    - mobilenetv2
    - {name: r18, source: "timm:resnet18", weights: w/r18.safetensors, family: resnet,
       top1: {value: 71.504, source: "timm results-imagenet.csv, resnet18.a1_in1k"}}
    - {name: tiny, source: "onnx:tiny.onnx", input_shape: [1, 3, 64, 64]}
    - {name: tv, source: "torchvision:resnet50", input_shape: [3, 160, 160]}""")
    mnv2, r18, tiny, tv = catalogue.specs
    assert mnv2 == BUILTINS["mobilenetv2"]
    assert (r18.kind, r18.target, r18.family, r18.top1) == ("timm", "resnet18", "resnet", 71.504)
    assert r18.weights == str((tmp_path / "w" / "r18.safetensors").resolve())
    assert tiny.kind == "onnx" and tiny.target == str((tmp_path / "tiny.onnx").resolve())
    assert tiny.input_shape == (3, 64, 64) and tiny.batch_shape == (1, 3, 64, 64)
    assert tiny.preprocess == Preprocess(resize=73, crop=64) and tiny.top1 is None
    assert tv.preprocess.crop == 160


@pytest.mark.parametrize(("models", "field", "match"), [
    ("[resnet9000]", "models", "not a built-in model"),
    ("[{name: x}]", "models.source", "needs a source"),
    ("[{name: x, source: 'pip:x'}]", "models.source", "must be timm:<arch>"),
    ("[{name: x, source: 'onnx:missing.onnx'}]", "models.source", "does not exist"),
    ("[{name: x, source: 'timm:resnet18', input_shape: [224, 224]}]", "models.input_shape",
     "must be \\[C, H, W\\]"),
    ("[{name: x, source: 'timm:resnet18', top1: 70.1}]", "models.top1", "without its source"),
    ("[{name: x, source: 'timm:resnet18', top1: {value: 170, source: me}}]", "models.top1",
     "percentage"),
    ("[{name: 'a/b', source: 'timm:resnet18'}]", "models.name", "letters, digits"),
    ("[{name: x, source: 'timm:resnet18', colour: red}]", "models", "unknown key"),
    ("[mobilenetv2, mobilenetv2]", "models", "declared twice"),
    ("[]", "models", "non-empty list"),
    ("[{name: x, source: 'timm:r', preprocess: {crop: 200}}]", "models.preprocess.crop",
     "input is 224x224"),
])
def test_bad_declarations_name_the_problem(tmp_path: Path, models: str, field: str,
                                           match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        _load(tmp_path, models)
    assert info.value.field == field


def test_no_models_block_means_the_default(tmp_path: Path) -> None:
    compose = tmp_path / "compose.yml"
    compose.write_text("services: {}\n")
    assert load_catalogue(compose).names == list(DEFAULT_MODELS)
    assert load_catalogue(None).names == list(DEFAULT_MODELS)
