"""Exported ONNX graphs against torch: every paper model whole and at every cut, bring-your-own
models, the cache, and models that cannot be exported or loaded (clear errors, early).

Exports go to the session's store (tests/conftest.py), so each model is exported once per
test session and the integration runtimes find them there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from carbonedge.errors import ConfigError
from carbonedge.node_agent.backend import threads_for_quota
from carbonedge.node_agent.loading import open_backend, prepare_graphs
from carbonedge.node_agent.onnx_backend import OnnxBackend
from carbonedge.node_agent.torch_backend import TorchBackend
from carbonedge.partitioner import graphs
from carbonedge.partitioner.blocks import flatten_model, run_blocks
from carbonedge.partitioner.catalog import Catalogue, ModelSpec, default_catalogue, load_catalogue
from carbonedge.partitioner.export import export_model
from carbonedge.partitioner.graphs import GraphStore
from carbonedge.partitioner.models import create_model
from carbonedge.settings import Settings
from tests import model_files
from tests.conftest import session_export_dir

TOL = 1e-4
PAPER_MODELS = ("mobilenetv2", "mobilenetv4", "efficientnet_b0")


@pytest.fixture(scope="module")
def store() -> GraphStore:
    return GraphStore(session_export_dir())


@pytest.fixture(scope="module")
def paper_backend(store: GraphStore) -> OnnxBackend:
    catalogue = default_catalogue()
    exported = {s.name: export_model(s, store)[0] for s in catalogue}
    return OnnxBackend(catalogue, exported, threads=1)


def _close(got: np.ndarray, want: np.ndarray, what: str) -> float:
    """Within 1e-4 absolute (the requirement) and relative to the output's magnitude (so
    the check means something for outputs far below 1, as random-init MobileNetV2's)."""
    assert got.shape == want.shape, what
    diff = float(np.max(np.abs(got.astype(np.float64) - want)))
    scale = float(np.max(np.abs(want)))
    assert diff <= TOL, f"{what}: |onnxruntime - torch| = {diff:.3g}"
    assert diff <= TOL * scale, f"{what}: {diff:.3g} against outputs of magnitude {scale:.3g}"
    return diff


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_every_model_and_every_cut_matches_torch(name: str, paper_backend: OnnxBackend) -> None:
    torch.set_num_threads(1)
    loaded = create_model(name)
    blocks = flatten_model(loaded)
    n = len(blocks)
    assert paper_backend.get(name).n_blocks == n
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(11))
    acts = [x]  # torch's activation at every cut point, the logits last
    with torch.inference_mode():
        for block in blocks:
            acts.append(block.module(acts[-1]))
    want = acts[-1].numpy()
    _close(paper_backend.run(name, x.numpy()), want, f"{name} whole")
    for k in range(n + 1):
        # both halves on onnxruntime (activations handed on as numpy, as between nodes)
        head = paper_backend.run_segment(name, 0, k, x.numpy())
        _close(paper_backend.run_segment(name, k, n, head), want, f"{name} cut {k}")
        # a route crossing runtimes: torch runs [0, k), onnxruntime [k, n), and back
        _close(paper_backend.run_segment(name, k, n, acts[k].numpy()), want,
               f"{name} torch[0,{k}) + onnxruntime[{k},{n})")
        tail = run_blocks(blocks, torch.from_numpy(head), k, n).numpy()
        _close(tail, want, f"{name} onnxruntime[0,{k}) + torch[{k},{n})")
    # positive control: another input moves the output far more than the tolerance
    other = paper_backend.run(name, np.zeros((1, 3, 224, 224), np.float32))
    assert np.max(np.abs(other - want)) > 10 * TOL * np.max(np.abs(want))


def test_exports_are_cached_by_weights_and_exporter(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    store = GraphStore(tmp_path / "store")
    path = model_files.torchscript(tmp_path / "tiny.pt")
    spec = ModelSpec("tiny", f"torchscript:{path}", input_shape=model_files.TINY_SHAPE)
    first, new = export_model(spec, store)
    assert new and first.directory.parent == store.root / "tiny"
    assert export_model(spec, store) == (first, False)
    assert store.lookup(spec, None) == first
    model_files.torchscript(path, seed=1)  # other weights: another entry
    second, new = export_model(spec, store)
    assert new and second.key != first.key
    monkeypatch.setattr(graphs, "exporter_version", lambda: "torch-99+opset17+format1")
    assert store.lookup(spec, None) is None  # a new exporter does not reuse old graphs
    meta = json.loads((second.directory / "meta.json").read_text())
    assert meta["exporter"].startswith("torchscript:") and meta["max_abs_diff"] <= TOL


def test_bring_your_own_architecture_with_weights(tmp_path: Path) -> None:
    """timm's test EfficientNet by name, with a safetensors file of its own weights: served
    by onnxruntime as torch serves it, whole and split."""
    from safetensors.torch import save_file

    base = ModelSpec("tiny-effnet", "timm:test_efficientnet", input_shape=(3, 160, 160))
    torch.manual_seed(5)
    state = create_model(base).module.state_dict()
    weights = tmp_path / "tiny-effnet.safetensors"
    save_file({k: v.contiguous() * 1.01 for k, v in state.items()}, str(weights))
    spec = ModelSpec("tiny-effnet", "timm:test_efficientnet", input_shape=(3, 160, 160),
                     weights=str(weights))
    store = GraphStore(tmp_path / "store")
    graph, _ = export_model(spec, store)
    assert graph.weights_source == str(weights) and not graph.random_init
    assert graph.key != graphs.graph_key(base, None)
    onnx = OnnxBackend(Catalogue((spec,)), {spec.name: graph}, threads=1)
    reference = TorchBackend(Catalogue((spec,)), weights_dir=None, threads=1)
    x = np.random.default_rng(3).random((1, 3, 160, 160), dtype=np.float32)
    want = reference.run(spec.name, x)
    _close(onnx.run(spec.name, x), want, "tiny-effnet whole")
    n = onnx.get(spec.name).n_blocks
    assert n == reference.get(spec.name).n_blocks > 5
    _close(onnx.run_segment(spec.name, n // 2, n, onnx.run_segment(spec.name, 0, n // 2, x)),
           want, "tiny-effnet split")


@pytest.mark.parametrize("kind", ["torchscript", "exported", "onnx"])
def test_model_files(kind: str, tmp_path: Path) -> None:
    write = {"torchscript": model_files.torchscript, "exported": model_files.exported_program,
             "onnx": model_files.onnx_file}[kind]
    path = write(tmp_path / f"tiny.{kind}")
    spec = ModelSpec("tiny", f"{kind}:{path}", input_shape=model_files.TINY_SHAPE)
    catalogue = Catalogue((spec,))
    exported = {} if kind == "onnx" else {"tiny": export_model(spec, GraphStore(tmp_path))[0]}
    onnx = OnnxBackend(catalogue, exported, threads=1)
    x = np.random.default_rng(0).random((1, *model_files.TINY_SHAPE), dtype=np.float32)
    torch.manual_seed(0)
    want = model_files.Tiny().eval()(torch.from_numpy(x)).detach().numpy()
    _close(onnx.run("tiny", x), want, kind)
    assert onnx.get("tiny").n_blocks == 0  # no flattener: served whole
    if kind == "onnx":
        settings = Settings(export_dir=str(tmp_path))
        with pytest.raises(ConfigError, match="ONNX files, which torch cannot run"):
            open_backend("torch", catalogue, settings, cpu_quota=1.0)
    else:
        _close(TorchBackend(catalogue, weights_dir=None, threads=1).run("tiny", x), want, kind)


def test_a_wrong_input_shape_fails_at_export(tmp_path: Path) -> None:
    spec = ModelSpec("mobilenetv2", "builtin:mobilenetv2", input_shape=(1, 224, 224))
    with pytest.raises(ConfigError, match="does not accept its declared input shape") as info:
        export_model(spec, GraphStore(tmp_path))
    assert info.value.field == "models.input_shape"
    onnx_path = model_files.onnx_file(tmp_path / "tiny.onnx")
    declared = ModelSpec("tiny", f"onnx:{onnx_path}", input_shape=(3, 64, 64))
    with pytest.raises(ConfigError, match=r"takes \[1, 3, 32, 32\], not the declared"):
        OnnxBackend(Catalogue((declared,)), {}, threads=1)


def test_an_unsupported_operator_fails_at_export_and_auto_runs_torch(tmp_path: Path) -> None:
    path = model_files.torchscript(tmp_path / "bessel.pt", model_files.Unsupported(),
                                   shape=(3, 8, 8))
    spec = ModelSpec("bessel", f"torchscript:{path}", input_shape=(3, 8, 8))
    store = GraphStore(tmp_path / "store")
    with pytest.raises(ConfigError, match="aten::special_bessel_j0"):
        export_model(spec, store)
    assert "aten::special_bessel_j0" in (store.failure(spec, None) or "")
    settings = Settings(export_dir=str(store.root))
    catalogue = Catalogue((spec,))
    backend = open_backend("auto", catalogue, settings, cpu_quota=0.5)  # recorded: no retry
    assert backend.runtime == "torch"
    with pytest.raises(ConfigError, match="cannot serve every model with onnxruntime: bessel"):
        open_backend("onnxruntime", catalogue, settings, cpu_quota=0.5)


def test_an_unknown_operator_in_an_onnx_file_fails_at_start_up(tmp_path: Path) -> None:
    path = model_files.onnx_with_unknown_operator(tmp_path / "frob.onnx")
    spec = ModelSpec("frob", f"onnx:{path}", input_shape=model_files.TINY_SHAPE)
    with pytest.raises(ConfigError, match="frob.*ONNX Runtime cannot load.*Frobnicate"):
        OnnxBackend(Catalogue((spec,)), {}, threads=1)


def test_first_start_exports_in_a_child_process(tmp_path: Path) -> None:
    """What an ONNX Runtime agent does at first start with an empty store: `carbonedge models
    export` in a process of its own, then the graphs are there."""
    path = model_files.torchscript(tmp_path / "tiny.pt")
    compose = tmp_path / "compose.yml"
    compose.write_text(textwrap.dedent(f"""
        x-carbonedge:
          models: [{{name: tiny, source: "torchscript:{path}", input_shape: [3, 32, 32]}}]
        services: {{}}
        """))
    catalogue = load_catalogue(compose)
    settings = Settings(export_dir=str(tmp_path / "store"))
    found, failures = prepare_graphs(catalogue, GraphStore(settings.graphs_dir), settings,
                                     compose)
    assert failures == {} and set(found) == {"tiny"}
    assert (found["tiny"].whole).is_file()


def test_an_onnxruntime_backend_never_loads_torch(paper_backend: OnnxBackend) -> None:
    """In a fresh process: every paper model served, threads = whole cores of the quota,
    and no libtorch mapped."""
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from carbonedge.node_agent.loading import open_backend
        from carbonedge.partitioner.catalog import default_catalogue
        from carbonedge.settings import Settings
        backend = open_backend("onnxruntime", default_catalogue(),
                               Settings(export_dir={str(session_export_dir())!r}), cpu_quota=2.0)
        for name in backend.names:
            assert backend.run(name, np.zeros((1, 3, 224, 224), np.float32)).shape == (1, 1000)
        maps = open("/proc/self/maps").read()
        print(backend.runtime, backend.threads, "torch" in sys.modules, "libtorch" in maps)
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["onnxruntime", "2", "False", "False"]
    assert [threads_for_quota(q) for q in (0.4, 1.0, 1.5, 2.0)] == [1, 1, 1, 2]
    assert paper_backend.threads == 1
