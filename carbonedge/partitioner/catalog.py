"""The models a deployment serves, declared once; importable without torch.

A :class:`ModelSpec` says where a model comes from (a built-in name, any timm or
torchvision architecture, or a local ONNX, TorchScript or ExportedProgram file), what
input it takes, how an image is preprocessed for it, and its published ImageNet top-1
accuracy with the source of that figure. The compose file's top-level block declares them::

    x-carbonedge:
      models:
        - mobilenetv2                       # a built-in, as below
        - name: resnet18
          source: timm:resnet18
          weights: weights/resnet18.safetensors      # optional, relative to the compose file
          family: resnet
          top1: {value: 71.504, source: "timm results-imagenet.csv, resnet18.a1_in1k @224"}
        - name: tiny
          source: onnx:models/tiny.onnx
          input_shape: [3, 64, 64]

Without that block a deployment serves :data:`DEFAULT_MODELS`, the paper's three. Agents,
the dispatcher and clients all read the same declaration (:func:`load_catalogue`); a model
it does not name is :class:`~carbonedge.errors.UnknownModel` everywhere.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from carbonedge.errors import ConfigError, InvalidRequest, UnknownModel

__all__ = [
    "BUILTINS",
    "DEFAULT_INPUT_SHAPE",
    "DEFAULT_MODELS",
    "MODEL_NAMES",
    "Catalogue",
    "ModelSpec",
    "Preprocess",
    "candidates",
    "default_catalogue",
    "find_weights",
    "load_catalogue",
    "parse_models",
]

DEFAULT_INPUT_SHAPE: tuple[int, int, int] = (3, 224, 224)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".pt")
"""Weight file suffixes looked for in a weights directory, in order of preference."""

ARCH_KINDS = ("builtin", "timm", "torchvision")
"""Sources built from a torch definition (exportable to ONNX, runnable on torch)."""
FILE_KINDS = ("onnx", "torchscript", "exported")
"""Sources read from a local file: an ONNX graph, a TorchScript module, an ExportedProgram."""
SOURCE_KINDS = ARCH_KINDS + FILE_KINDS
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ARCH_RE = re.compile(r"^[A-Za-z0-9_.]{1,128}$")
_SPEC_KEYS = {"name", "source", "weights", "input_shape", "preprocess", "family", "top1"}


@dataclass(frozen=True, slots=True)
class Preprocess:
    """How a client turns an image into the model's input: shorter side resized to
    ``resize``, centre crop ``crop`` x ``crop``, scaled to [0, 1], normalised."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One servable model: where it comes from, what it takes, how accurate it is."""

    name: str
    source: str
    """``builtin:<name>``, ``timm:<arch>``, ``torchvision:<arch>``, or ``onnx:``,
    ``torchscript:``, ``exported:`` followed by an absolute file path."""
    input_shape: tuple[int, int, int] = DEFAULT_INPUT_SHAPE
    """One input image, (C, H, W); requests send it with or without a leading batch of 1."""
    weights: str | None = None
    """A state-dict file (safetensors, .pth) for an architecture source."""
    preprocess: Preprocess = field(default_factory=Preprocess)
    family: str = ""
    top1: float | None = None
    """Published ImageNet-1k top-1 accuracy (%) of the pretrained weights."""
    top1_source: str = ""
    """Where :attr:`top1` is published (a results table, a model card)."""
    hub_files: tuple[str, ...] = ()
    """File names of pretrained weights looked for in torch's hub cache (built-ins)."""

    @property
    def kind(self) -> str:
        return self.source.partition(":")[0]

    @property
    def target(self) -> str:
        """The architecture name or the file path after the source's kind."""
        return self.source.partition(":")[2]

    @property
    def batch_shape(self) -> tuple[int, int, int, int]:
        return (1, *self.input_shape)

    @property
    def from_file(self) -> bool:
        return self.kind in FILE_KINDS

    def describe(self) -> dict[str, Any]:
        """A plain map of the spec (for ``carbonedge models list`` and export records)."""
        return {
            "name": self.name, "source": self.source, "input_shape": list(self.input_shape),
            "weights": self.weights, "family": self.family, "top1": self.top1,
            "top1_source": self.top1_source,
        }


_TORCHVISION_DOCS = "torchvision model docs: MobileNet_V2_Weights.IMAGENET1K_V1 acc@1"
_TIMM_RESULTS = "timm results/results-imagenet.csv"

BUILTINS: dict[str, ModelSpec] = {
    "mobilenetv2": ModelSpec(
        "mobilenetv2", "builtin:mobilenetv2", family="mobilenet", top1=71.878,
        top1_source=_TORCHVISION_DOCS,
        hub_files=("mobilenet_v2-b0353104.pth", "mobilenet_v2-7ebf99e0.pth")),
    "mobilenetv2_100": ModelSpec(
        "mobilenetv2_100", "builtin:mobilenetv2_100", family="mobilenet", top1=72.910,
        top1_source=f"{_TIMM_RESULTS}, mobilenetv2_100.ra_in1k at 224"),
    "mobilenetv4": ModelSpec(
        "mobilenetv4", "builtin:mobilenetv4", family="mobilenet", top1=73.756,
        top1_source=f"{_TIMM_RESULTS}, mobilenetv4_conv_small.e2400_r224_in1k at 224"),
    "efficientnet_b0": ModelSpec(
        "efficientnet_b0", "builtin:efficientnet_b0", family="efficientnet", top1=77.698,
        top1_source=f"{_TIMM_RESULTS}, efficientnet_b0.ra_in1k at 224"),
}
"""The built-in models, with the published top-1 of the pretrained weights each one's
architecture defaults to (torchvision's and timm's default tags)."""

DEFAULT_MODELS: tuple[str, ...] = ("mobilenetv2", "mobilenetv4", "efficientnet_b0")
"""What a deployment serves when its compose file declares no models: the paper's three."""

MODEL_NAMES: frozenset[str] = frozenset(BUILTINS)
"""Names of the built-in models (the torch registry in ``models.py`` has the same)."""


@dataclass(frozen=True, slots=True)
class Catalogue:
    """The declared models, in declaration order."""

    specs: tuple[ModelSpec, ...]

    def __post_init__(self) -> None:
        names = [s.name for s in self.specs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"model {dupes[0]!r} is declared twice", field="models")
        if not self.specs:
            raise ConfigError("no model is declared", field="models")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def __contains__(self, name: object) -> bool:
        return any(s.name == name for s in self.specs)

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def get(self, name: object) -> ModelSpec:
        """The spec of ``name``; UnknownModel (field ``model``) lists the declared ones."""
        for spec in self.specs:
            if spec.name == name:
                return spec
        raise UnknownModel(f"unknown model {name!r}; known: {', '.join(self.names)}",
                           field="model")

    def select(self, names: Sequence[str]) -> Catalogue:
        """The sub-catalogue of ``names`` (each must be declared)."""
        return Catalogue(tuple(self.get(n) for n in names))


def candidates(models: Catalogue, *, family: str | None = None,
               min_accuracy: float | None = None,
               input_shape: Sequence[int] | None = None) -> list[ModelSpec]:
    """The declared models a request may get; InvalidRequest naming the constraint that
    leaves none (and what the declared models offer)."""
    specs = list(models)
    if input_shape is not None:
        shape = tuple(input_shape)[-3:]
        specs = [s for s in specs if s.input_shape == shape]
        if not specs:
            raise InvalidRequest(f"no declared model takes input of shape {list(shape)}",
                                 field="input_shape")
    if family is not None:
        specs = [s for s in specs if s.family == family]
        if not specs:
            known = sorted({s.family for s in models if s.family})
            raise InvalidRequest(f"no declared model of family {family!r}; families: "
                                 f"{', '.join(known) or 'none'}", field="family")
    if min_accuracy is not None:
        rated = [s for s in specs if s.top1 is not None]
        specs = [s for s in rated if s.top1 is not None and s.top1 >= min_accuracy]
        if not specs:
            best = max((s.top1 for s in rated if s.top1 is not None), default=None)
            raise InvalidRequest(
                f"no declared model{' of family ' + repr(family) if family else ''} reaches "
                f"{min_accuracy:g}% ImageNet top-1"
                + (f" (the best is {best:g}%)" if best is not None else
                   " (none has a published top-1)"), field="min_accuracy")
    return specs


def default_catalogue() -> Catalogue:
    return Catalogue(tuple(BUILTINS[n] for n in DEFAULT_MODELS))


def load_catalogue(compose_file: str | os.PathLike[str] | None) -> Catalogue:
    """The models the compose file declares (its top-level ``x-carbonedge.models``), or
    the default catalogue when it declares none or there is no compose file (None)."""
    if compose_file is None:
        return default_catalogue()
    path = Path(compose_file)
    try:
        doc = yaml.safe_load(path.read_bytes())
    except OSError as e:
        raise ConfigError(f"cannot read compose file {path}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    ext = (doc or {}).get("x-carbonedge") if isinstance(doc, dict) else None
    if ext is None:
        return default_catalogue()
    if not isinstance(ext, dict):
        raise ConfigError(f"{path}: top-level x-carbonedge must be a map", field="x-carbonedge")
    unknown = sorted(set(ext) - {"models"})
    if unknown:
        raise ConfigError(f"{path}: top-level x-carbonedge has unknown key(s) {unknown}; "
                          "known: ['models']", field="x-carbonedge")
    if "models" not in ext:
        return default_catalogue()
    return parse_models(ext["models"], where=str(path), base_dir=path.parent)


def parse_models(raw: Any, *, where: str, base_dir: Path) -> Catalogue:
    """Validate a ``models:`` list (names of built-ins or spec maps) into a catalogue."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: x-carbonedge.models must be a non-empty list",
                          field="models")
    specs = [_parse_entry(entry, f"{where}: models[{i}]", base_dir)
             for i, entry in enumerate(raw)]
    try:
        return Catalogue(tuple(specs))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e.message}", field="models") from e


def _parse_entry(entry: Any, where: str, base_dir: Path) -> ModelSpec:
    if isinstance(entry, str):
        if entry not in BUILTINS:
            raise ConfigError(f"{where}: {entry!r} is not a built-in model ({', '.join(BUILTINS)}); "
                              "declare others with a source, e.g. {name: resnet18, source: "
                              "timm:resnet18}", field="models")
        return BUILTINS[entry]
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: a model is a built-in name or a map", field="models")
    unknown = sorted(set(entry) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(_SPEC_KEYS)}",
                          field="models")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"{where}: name {name!r} must be 1-64 letters, digits, '.', '_' "
                          "or '-'", field="models.name")
    where = f"{where} ({name})"
    if "source" in entry:
        base = ModelSpec(name, _source(entry["source"], where, base_dir))
    elif name in BUILTINS:
        base = BUILTINS[name]
    else:
        raise ConfigError(f"{where}: needs a source (timm:<arch>, torchvision:<arch>, "
                          "onnx:<file>, torchscript:<file>, exported:<file>)",
                          field="models.source")
    changes: dict[str, Any] = {}
    if "input_shape" in entry:
        changes["input_shape"] = _input_shape(entry["input_shape"], where)
    shape = changes.get("input_shape", base.input_shape)
    if "preprocess" in entry:
        changes["preprocess"] = _preprocess(entry["preprocess"], shape, where)
    elif shape[1:] != base.input_shape[1:]:
        side = shape[1]
        changes["preprocess"] = Preprocess(resize=round(side * 256 / 224), crop=side)
    if "weights" in entry:
        if base.from_file:
            raise ConfigError(f"{where}: weights apply to an architecture, not to a "
                              f"{base.kind} file", field="models.weights")
        changes["weights"] = str(_path(entry["weights"], where, base_dir, "weights"))
    if "family" in entry:
        if not isinstance(entry["family"], str) or not _NAME_RE.match(entry["family"]):
            raise ConfigError(f"{where}: family must be a short name", field="models.family")
        changes["family"] = entry["family"]
    if "top1" in entry:
        changes["top1"], changes["top1_source"] = _top1(entry["top1"], where)
    elif "source" in entry:  # a published figure belongs to the built-in's own weights only
        changes.update(top1=None, top1_source="")
    if "source" in entry and name in BUILTINS:
        changes["hub_files"] = ()
    return replace(base, **changes)


def _source(value: Any, where: str, base_dir: Path) -> str:
    kind, sep, target = str(value).partition(":") if isinstance(value, str) else ("", "", "")
    if not sep or kind not in SOURCE_KINDS[1:]:
        raise ConfigError(f"{where}: source {value!r} must be timm:<arch>, torchvision:<arch>, "
                          "onnx:<file>, torchscript:<file> or exported:<file>",
                          field="models.source")
    if kind in ARCH_KINDS:
        if not _ARCH_RE.match(target):
            raise ConfigError(f"{where}: {target!r} is not an architecture name",
                              field="models.source")
        return f"{kind}:{target}"
    return f"{kind}:{_path(target, where, base_dir, 'source')}"


def _path(value: Any, where: str, base_dir: Path, what: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {what} must be a file path", field=f"models.{what}")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else (base_dir / path)
    if not path.is_file():
        raise ConfigError(f"{where}: {what} file {str(path)!r} does not exist",
                          field=f"models.{what}")
    return path.resolve()


def _input_shape(value: Any, where: str) -> tuple[int, int, int]:
    dims = list(value) if isinstance(value, (list, tuple)) else None
    if dims is not None and len(dims) == 4 and dims[0] == 1:
        dims = dims[1:]
    if (dims is None or len(dims) != 3
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 8192
                       for d in dims)):
        raise ConfigError(f"{where}: input_shape {value!r} must be [C, H, W] (positive "
                          "integers)", field="models.input_shape")
    return (dims[0], dims[1], dims[2])


def _preprocess(value: Any, shape: tuple[int, int, int], where: str) -> Preprocess:
    if not isinstance(value, dict) or set(value) - {"resize", "crop", "mean", "std"}:
        raise ConfigError(f"{where}: preprocess is a map of resize, crop, mean, std",
                          field="models.preprocess")
    crop = value.get("crop", shape[1])
    resize = value.get("resize", round(crop * 256 / 224) if isinstance(crop, int) else crop)
    mean, std = value.get("mean", IMAGENET_MEAN), value.get("std", IMAGENET_STD)
    for label, n in (("resize", resize), ("crop", crop)):
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise ConfigError(f"{where}: preprocess.{label} must be a positive integer",
                              field=f"models.preprocess.{label}")
    if crop > resize or (crop, crop) != shape[1:]:
        raise ConfigError(f"{where}: preprocess crops {crop}x{crop} (from {resize}) but the "
                          f"input is {shape[1]}x{shape[2]}", field="models.preprocess.crop")
    triples = []
    for label, v in (("mean", mean), ("std", std)):
        if (not isinstance(v, (list, tuple)) or len(v) != 3
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                           and math.isfinite(x) for x in v)
                or (label == "std" and not all(x > 0 for x in v))):
            raise ConfigError(f"{where}: preprocess.{label} must be three finite numbers"
                              + (" > 0" if label == "std" else ""),
                              field=f"models.preprocess.{label}")
        triples.append(tuple(float(x) for x in v))
    return Preprocess(resize=resize, crop=crop, mean=triples[0], std=triples[1])  # type: ignore[arg-type]


def _top1(value: Any, where: str) -> tuple[float, str]:
    if not isinstance(value, dict) or set(value) != {"value", "source"}:
        raise ConfigError(f"{where}: top1 is {{value: <percent>, source: <where it is "
                          "published>}}: a figure without its source is not accepted",
                          field="models.top1")
    number, source = value["value"], value["source"]
    if (not isinstance(number, (int, float)) or isinstance(number, bool)
            or not math.isfinite(number) or not 0 < number <= 100):
        raise ConfigError(f"{where}: top1.value must be a percentage in (0, 100]",
                          field="models.top1")
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"{where}: top1.source must name where the figure is published",
                          field="models.top1")
    return float(number), source.strip()


# --- weight files (torch-free, so that a graph's cache key needs no torch) -------------


def torch_hub_dir() -> Path:
    """torch's hub directory as ``torch.hub.get_dir()`` finds it by default (without
    importing torch): ``$TORCH_HOME/hub``, else ``$XDG_CACHE_HOME/torch/hub``."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache")), "torch")
    return Path(os.path.expanduser(home)) / "hub"


def find_weights(spec: ModelSpec, weights_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The weights file of an architecture source: its declared ``weights``, else
    ``<name>.safetensors|.pth|.pt`` in ``weights_dir``, else its hub file names in torch's
    hub cache; None when there is none (the model keeps a random initialisation)."""
    if spec.from_file:
        return None
    if spec.weights:
        return Path(spec.weights)
    if weights_dir:
        directory = Path(weights_dir)
        if not directory.is_dir():
            raise ConfigError(
                f"weights directory {str(directory)!r} does not exist or is not a directory",
                field="weights_dir",
            )
        for suffix in WEIGHT_SUFFIXES:
            candidate = directory / f"{spec.name}{suffix}"
            if candidate.is_file():
                return candidate
    checkpoints = torch_hub_dir() / "checkpoints"
    for file_name in spec.hub_files:
        candidate = checkpoints / file_name
        if candidate.is_file():
            return candidate
    return None
