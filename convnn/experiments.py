"""Every experiment of the paper as one named preset.

A preset is a model configuration, a dataset and a training configuration, plus the paper
rows it reproduces. Names read as the experiment: ``vgg11-c10-branching-r0.5`` (VGG-11 on
CIFAR-10 with branching layers, λ = 0.5), ``vit-tiny-c100-convnn-random-r32-k9`` (ViT-Tiny on
CIFAR-100 with ConvNN attention over r = 32 random candidates, k = 9).

Presets are built from the paper's sweeps (tables 6.1-6.10 of the authors' logs, see
``data/paper_results.json``); a run of the same configuration that appears in several tables
(e.g. the VGG baselines of 6.2 again in the learning-rate table 6.5) is one preset that lists
every row. :func:`paper_key` maps a row of ``paper_results.json`` to the configuration it
describes, and :func:`preset_for_record` finds its preset.

Conventions (from the paper's protocol, method.md §5): AdamW, lr 1e-4, weight decay 0.01,
batch 256, 150 epochs, gradient clipping 1.0, no augmentation, seed 42; the VGG k × kernel
sweep (6.4) ran 100 epochs with seed 0. The paper's words for the ConvNN options are
translated in :mod:`convnn.paper_vocabulary` (the only module that speaks them): VGG presets
select neighbours on ``selection="features"`` or ``"mixed"`` (features and coordinates,
α = 0.5; λ is the branching ratio), and ``aggregate_coords`` also aggregates the two
coordinate channels. For the pure Conv2d model these options do not apply, so its rows of
table 6.1 are one preset.

A preset is a value (:class:`Preset`): its :class:`~convnn.models.ModelConfig`, its
:class:`~convnn.train.TrainConfig` and the paper rows it reproduces. The paper's settings of each
model family are one entry of :data:`FAMILIES` (its defaults, and how its settings become a
model, a name and a description); the family itself is a :class:`~convnn.models.ModelFamily`.
Experiments that are not paper rows are added with :func:`register_preset`.

Paper mode. Every preset with a ConvNN layer builds it in paper mode: the options of
:data:`~convnn.layers.PAPER_CONVNN2D` (VGG, ResNet) or
:data:`~convnn.layers.PAPER_ATTENTION` (ViT), the authors' behaviours of method.md §7
(mixed-selection coordinates over the padded map, random candidates drawn from the padded map,
truncated spatial indices; in ConvNN attention, the constant self logit and dropout on the
aggregated output). The defect fixes of method.md §6 stay.

How a table's "r" becomes a candidate set. VGG on CIFAR: ``candidates = r`` means r² positions
(``candidate_layout="square"``): an r × r grid of the unpadded image (``"spatial"``, indices
truncated), or r² positions drawn without replacement from the padded (H+2)(W+2) map
(``"random"``). A layer whose map cannot hold them uses all candidates: r > min(H, W) for
spatial, r² > (H+2)(W+2) for random (see :attr:`convnn.models.VGG.layer_plan`). ViT: r tokens
of the 197 (CLS included). ResNet-50 on ImageNet: r positions (see below).

The ImageNet-1K rows (table "10", ResNet-50 and ViT-Base, from v3 of the paper) are presets too
(``resnet50-in1k-...``, ``vit-base-in1k-...``), but the paper states neither their training
protocol nor their code. The models reproduce the paper's parameter counts (see
:mod:`convnn.models.resnet`); the ResNet-50 branching layers use λ = 0.5, and their candidate
counts are literal (random r = 32 is 32 pixels, spatial r = 25 is the 5 × 5 grid written
r' = 5), which is what the paper's GFLOPs imply. The training protocol is ours, a standard
recipe named in :data:`IMAGENET_PROTOCOLS`; results under it are not the paper's protocol.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from . import paper_vocabulary as paper
from ._checks import check_known
from .attention import mixer_spec
from .data import DATASETS, dataset_info
from .layers import PAPER_ATTENTION, PAPER_CONVNN2D
from .models import MODEL_FAMILIES, PAPER_RESNET50, ModelConfig
from .package_data import data_file
from .train import TrainConfig

UNSUPPORTED_TABLES: dict[str, str] = {}
"""Tables of ``paper_results.json`` without presets, and why (none at present)."""

IMAGENET_PROTOCOLS = {name: dict(family.protocol) for name, family in MODEL_FAMILIES.items()
                      if family.protocol is not None}
"""Our training protocol for the ImageNet presets (the paper does not state one), per family:
each family's own recipe (:attr:`convnn.models.ModelFamily.protocol`, ResNet: torchvision's SGD
recipe; ViT: DeiT's optimiser settings), with random-resized crop + flip at 224 and center crop
for testing (see :mod:`convnn.imagenet`)."""

CIFAR_PROTOCOL = {"optimizer": "adamw", "weight_decay": 0.01, "batch_size": 256,
                  "grad_clip": 1.0, "schedule": "none", "augment": False}
"""The paper's CIFAR protocol (lr, epochs and seed are settings of each preset)."""
PAPER_PRECISION = "off"
"""The paper trained without AMP, in float32 (method.md): ``amp_active`` spelling."""


@lru_cache(maxsize=1)
def paper_records() -> tuple[dict, ...]:
    """Every record of ``paper_results.json`` (the paper's numbers, shipped with the package)."""
    with open(data_file("paper_results.json"), encoding="utf-8") as f:
        return tuple(json.load(f)["records"])


# ----------------------------------------------------------------------------- families
@dataclass(frozen=True)
class Family:
    """How the paper's settings of one model family (its sweeps' columns) become a model, a
    name and a description. The family itself (its models, builder, protocol) is a
    :class:`~convnn.models.ModelFamily`; a family without an entry here has presets built
    directly (:func:`register_preset` of a :class:`Preset`).

    Attributes:
        name: the :class:`~convnn.models.ModelFamily`'s name: ``"vgg"``, ``"resnet"`` or
            ``"vit"``.
        defaults: every setting, with its default (a preset's settings are these, updated).
        normalise: puts settings in canonical form, in place (drops options that do not
            apply, so that equal experiments have equal settings).
        model: ``(settings, num_classes) -> ModelConfig``, the model as the paper trained it.
        name_parts: ``settings -> [part, ...]`` of the preset name after the dataset.
        describe: ``settings -> str``, the model part of the description.
        model_name: ``settings -> str``, the first part of the preset name.
        resize: the input size the paper's CIFAR runs upscale to (None: native 32 px).
    """

    name: str
    defaults: dict
    normalise: Callable[[dict], None]
    model: Callable[[dict, int], ModelConfig]
    model_name: Callable[[dict], str]
    name_parts: Callable[[dict], list[str]]
    describe: Callable[[dict], str]
    resize: int | None = None


def _normalise_conv(s: dict, conv2d: dict) -> None:
    if s["layer"] == "conv2d":  # selection options do not exist without ConvNN
        s.update(ratio=0.0, sampling="all", candidates=None, **conv2d)
    elif s["layer"] == "convnn":
        s["ratio"] = 1.0
    if s["sampling"] == "all":
        s["candidates"] = None
    s["ratio"] = float(s["ratio"])


def _vgg_model(s: dict, num_classes: int) -> ModelConfig:
    options: dict = {}
    if s["layer"] != "conv2d":
        options = {"k": s["k"], "similarity": "cosine", "selection": s["selection"]}
        if s["selection"] == "mixed":
            options["mix"] = paper.MIXED_SELECTION_MIX
        if s["aggregate_coords"]:
            options["aggregate_coords"] = True
        options.update(PAPER_CONVNN2D.changes())
        if s["sampling"] != "all":
            options.update(sampling=s["sampling"], candidates=s["candidates"])
    return ModelConfig(name="vgg11", num_classes=num_classes, layer=s["layer"],
                       ratio=s["ratio"] if s["layer"] == "branching" else None,
                       kernel_size=s["kernel_size"], head="paper", layer_options=options)


def _vgg_name(s: dict) -> list[str]:
    parts = [s["layer"]]
    if s["layer"] == "branching":
        parts.append(f"r{s['ratio']:g}")
    if s["selection"] != "features":
        parts.append("sim-loccol")
    if s["aggregate_coords"]:
        parts.append("agg-loccol")
    if s["sampling"] != "all":
        parts.append(f"{s['sampling']}-r{s['candidates']}")
    if s["layer"] == "conv2d":
        if s["kernel_size"] != 3 or s["epochs"] != 150:
            parts.append(f"ks{s['kernel_size']}")
    elif (s["k"], s["kernel_size"]) != (9, 3) or s["epochs"] != 150:
        parts.append(f"k{s['k']}-ks{s['kernel_size']}")
    return parts


def _conv_describe(s: dict, model: str, conv2d: str, convnn: str, convnn_details: str,
                   extra: str = "") -> str:
    """The description of a VGG or ResNet preset: ``"{model} with {layer}{details}{extra}"``,
    the layer's name for each of conv2d/convnn/branching, ``convnn_details`` where it has
    ConvNN layers."""
    what = {"conv2d": conv2d, "convnn": convnn,
            "branching": f"branching λ = {s['ratio']:g}"}[s["layer"]]
    if s["layer"] != "conv2d":
        what += convnn_details
    return f"{model} with {what}{extra}"


def _vgg_describe(s: dict) -> str:
    details = (f", k = {s['k']}, similarity {paper.selection_word(s['selection'])}, "
               f"aggregation {paper.aggregation_word(s['aggregate_coords'])}")
    if s["sampling"] != "all":
        details += (f", {s['sampling']} candidates s = {s['candidates']} "
                    f"(m = s² = {s['candidates'] ** 2})")
    kernel = f", conv kernel {s['kernel_size']}" if s["kernel_size"] != 3 else ""
    return _conv_describe(s, "VGG-11", "Conv2d (3x3 + 1x1)", "pure ConvNN (λ = 1)", details,
                          kernel)


def _resnet_model(s: dict, num_classes: int) -> ModelConfig:
    bias = PAPER_RESNET50[s["layer"]]
    options = dict(bias["layer_options"])
    if s["layer"] != "conv2d":
        options.update(k=s["k"], **PAPER_CONVNN2D.changes())
        if s["sampling"] != "all":
            options.update(sampling=s["sampling"], candidates=s["candidates"],
                           candidate_layout="count")
    return ModelConfig(name="resnet50", num_classes=num_classes, layer=s["layer"],
                       ratio=s["ratio"] if s["layer"] == "branching" else None,
                       conv_bias=bias["conv_bias"], layer_options=options)


def _resnet_name(s: dict) -> list[str]:
    parts = [s["layer"]]
    if s["layer"] == "branching":
        parts.append(f"r{s['ratio']:g}")
    if s["layer"] != "conv2d":
        parts.append(s["sampling"] + (f"-r{s['candidates']}" if s["candidates"] else ""))
        parts.append(f"k{s['k']}")
    return parts


def _resnet_describe(s: dict) -> str:
    details = (f" layers, k = {s['k']}, {s['sampling']} candidates"
               + (f" m = {s['candidates']}" if s["candidates"] else ""))
    return _conv_describe(s, "ResNet-50", "Conv2d", "ConvNN", details)


#: The ViT preset settings that are options of the token mixer; a preset keeps those its
#: mixer takes (:attr:`convnn.attention.MixerSpec.options`), with these defaults.
_VIT_MIXER_SETTINGS = {"k": None, "sampling": "all", "candidates": None,
                       "aggregation": "depthwise"}


def _vit_mixer_options(mixer: str) -> frozenset[str]:
    return mixer_spec(mixer).options


def _vit_normalise(s: dict) -> None:
    takes = _vit_mixer_options(s["mixer"])
    for name, default in _VIT_MIXER_SETTINGS.items():
        s[name] = (default if s[name] is None else s[name]) if name in takes else None
    if s["sampling"] == "all":
        s["candidates"] = None


def _vit_model(s: dict, num_classes: int) -> ModelConfig:
    takes = _vit_mixer_options(s["mixer"])
    options = {name: s[name] for name in ("k", "aggregation") if s[name] is not None}
    # paper mode wherever the mixer has the paper-mode options (the ConvNN attention mixers)
    options.update({k: v for k, v in PAPER_ATTENTION.changes().items() if k in takes})
    if s["sampling"] not in (None, "all"):
        options.update(sampling=s["sampling"], candidates=s["candidates"])
    return ModelConfig(name=s["model"], num_classes=num_classes, mixer=s["mixer"],
                       num_heads=s["num_heads"], layer_options=options)


def _vit_name(s: dict) -> list[str]:
    parts = [{"convnn_attention": "convnn"}.get(s["mixer"], s["mixer"].replace("_", "-"))]
    if s["sampling"] is not None:
        parts.append(s["sampling"] + (f"-r{s['candidates']}" if s["candidates"] else ""))
    if s["k"] is not None:
        parts.append(f"k{s['k']}")
    if s["aggregation"] not in (None, "depthwise"):
        parts.append(f"agg-{s['aggregation']}")
    if s["num_heads"] != (12 if s["model"] == "vit_base" else 1):
        parts.append(f"h{s['num_heads']}")
    return parts


def _vit_describe(s: dict) -> str:
    what = s["mixer"]
    if s["mixer"] == "convnn_attention":
        what = (f"ConvNN attention, k = {s['k']}, {s['sampling']} candidates" +
                (f" m = {s['candidates']}" if s["candidates"] else "") +
                f", {s['aggregation']} aggregation")
    elif s["mixer"] == "kvt":
        what = f"KVT top-{s['k']} attention"
    elif s["k"] is not None:
        what += f", k = {s['k']}"
    size = {"vit_tiny": "ViT-Tiny", "vit_base": "ViT-Base",
            "vit_tiny_cifar": "CIFAR-native ViT-Tiny"}.get(s["model"], s["model"])
    return f"{size} ({s['num_heads']} head{'s' if s['num_heads'] > 1 else ''}) with {what}"


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("vgg",
           defaults={"layer": "conv2d", "ratio": 0.0, "selection": "features",
                     "aggregate_coords": False, "k": 9, "kernel_size": 3, "sampling": "all",
                     "candidates": None, "lr": 1e-4, "epochs": 150, "seed": 42},
           normalise=lambda s: _normalise_conv(
               s, {"selection": "features", "aggregate_coords": False, "k": 9}),
           model=_vgg_model, model_name=lambda s: "vgg11", name_parts=_vgg_name,
           describe=_vgg_describe),
    Family("resnet",
           defaults={"layer": "conv2d", "ratio": 0.0, "k": 9, "sampling": "all",
                     "candidates": None, "lr": None, "epochs": None, "seed": 42},
           normalise=lambda s: _normalise_conv(s, {"k": None}),
           model=_resnet_model, model_name=lambda s: "resnet50", name_parts=_resnet_name,
           describe=_resnet_describe),
    Family("vit",
           defaults={"model": "vit_tiny", "mixer": "attention", "k": None, "sampling": None,
                     "candidates": None, "aggregation": None, "num_heads": 1, "lr": 1e-4,
                     "epochs": 150, "seed": 42},
           normalise=_vit_normalise, model=_vit_model,
           model_name=lambda s: s["model"].replace("_", "-"), name_parts=_vit_name,
           describe=_vit_describe, resize=224),
)}
"""The paper's settings of each of its model families: see :class:`Family`."""


def canonical_settings(family: str, dataset: str, **settings) -> tuple:
    """The canonical form of a family's settings on ``dataset`` (a preset's :attr:`~Preset.spec`:
    equal experiments have equal specs)."""
    fam = FAMILIES[family]
    base = dict(fam.defaults)
    check_known("preset settings", settings, sorted(base))
    base.update({k: v for k, v in settings.items() if v is not None})
    fam.normalise(base)
    if base["lr"] is not None:
        base["lr"] = float(base["lr"])
    return (("family", family), ("dataset", dataset), *sorted(base.items()))


def paper_key(record: dict) -> tuple | None:
    """The canonical configuration of a ``paper_results.json`` row (None if unsupported)."""
    if record["table"] in UNSUPPORTED_TABLES:
        return None
    found = paper.record_settings(record)
    if found is None:
        return None
    family, dataset, settings = found
    return canonical_settings(family, dataset, **settings)


# ----------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    """One experiment, as values: what to build, what to train it on, how, and which paper
    rows it is."""

    name: str
    family: str  # a key of FAMILIES: "vgg", "resnet" or "vit"
    dataset: str  # a key of convnn.data.DATASETS: "cifar10", "cifar100", "imagenet"...
    model: ModelConfig
    train: TrainConfig
    rows: tuple = ()  # the paper_results.json rows it reproduces
    description: str = ""
    spec: tuple = ()  # the canonical settings it was built from (see canonical_settings)
    #: the precision the paper's runs of these rows trained in (``"off"``: float32, no AMP;
    #: a key of :data:`convnn.train.PRECISION_LABELS`), ``None`` without paper rows. Our
    #: runs record theirs as ``amp_active`` in ``config.json``.
    paper_precision: str | None = None

    @property
    def settings(self) -> dict:
        return dict(self.spec)

    def model_config(self) -> ModelConfig:
        """The model (a copy: change it freely)."""
        return copy.deepcopy(self.model)

    def train_config(self, **overrides) -> TrainConfig:
        """The training protocol (the paper's, or ours, :data:`IMAGENET_PROTOCOLS`, for
        ImageNet); keyword arguments override fields."""
        return dataclasses.replace(self.train, **overrides)

    def paper_rows(self) -> list[dict]:
        """Every row of ``paper_results.json`` this preset reproduces."""
        return list(self.rows)

    def to_dict(self) -> dict:
        return {"name": self.name, "family": self.family, "dataset": self.dataset,
                "description": self.description, "settings": self.settings,
                "model": self.model_config().to_dict(),
                "train": self.train_config().to_dict(),
                "paper_tables": sorted({r["table"] for r in self.paper_rows()}),
                "paper_precision": self.paper_precision}


def _family_protocol(family: str, dataset: str) -> dict | None:
    """The family's own recipe where ``dataset`` trains under it (its
    :attr:`~convnn.data.DatasetInfo.protocol` is ``"family"``), None under the paper's."""
    if dataset_info(dataset).protocol != "family":
        return None
    protocol = MODEL_FAMILIES[family].protocol
    if protocol is None:
        raise ValueError(f"dataset {dataset!r} trains under each model family's own recipe, and "
                         f"family {family!r} has none: give its ModelFamily a protocol")
    return dict(protocol)


def _paper_train(family: str, dataset: str, s: dict) -> dict:
    protocol = _family_protocol(family, dataset)
    if protocol is not None:
        return {**protocol, "seed": s["seed"]}
    return {**CIFAR_PROTOCOL, "lr": s["lr"], "epochs": s["epochs"], "seed": s["seed"],
            "resize": FAMILIES[family].resize}


def _paper_name(family: str, dataset: str, s: dict) -> str:
    fam = FAMILIES[family]
    parts = [fam.model_name(s), dataset_info(dataset).short, *fam.name_parts(s)]
    if s["lr"] not in (1e-4, None):
        parts.append(f"lr{s['lr']:g}")
    if s["epochs"] not in (150, None):
        parts.append(f"e{s['epochs']}")
    if s["seed"] != 42:
        parts.append(f"seed{s['seed']}")
    return "-".join(parts)


def _paper_description(family: str, dataset: str, s: dict) -> str:
    model = FAMILIES[family].describe(s)
    data = dataset_info(dataset).title
    p = _family_protocol(family, dataset)
    if p is not None:
        return (f"{model} on {data}; our protocol (the paper states none): "
                f"{p['optimizer'].upper() if p['optimizer'] == 'sgd' else 'AdamW'} "
                f"lr {p['lr']:g}, cosine, {p['epochs']} epochs, seed {s['seed']}")
    return f"{model} on {data}; AdamW lr {s['lr']:g}, {s['epochs']} epochs, seed {s['seed']}"


def make_preset(family: str, dataset: str, settings: dict, *, name: str | None = None,
                description: str | None = None, model_overrides: dict | None = None,
                train_overrides: dict | None = None, rows: tuple = (),
                tag: tuple = ()) -> Preset:
    """A preset of ``family`` built from its settings (see :data:`FAMILIES`), as the paper
    would train it, then changed by ``model_overrides`` (:class:`ModelConfig` fields) and
    ``train_overrides`` (:class:`TrainConfig` fields). The name and description default to the
    paper-style ones; ``tag`` (extra ``(key, value)`` pairs) keeps the spec of a variant apart
    from the paper row of the same settings."""
    spec = canonical_settings(family, dataset, **settings)
    s = dict(spec)
    model = FAMILIES[family].model(s, dataset_info(dataset).num_classes)
    if model_overrides:
        model = dataclasses.replace(model, **model_overrides)
    train = TrainConfig(**{**_paper_train(family, dataset, s), **(train_overrides or {})})
    return Preset(name or _paper_name(family, dataset, s), family, dataset, model, train,
                  tuple(rows), description or _paper_description(family, dataset, s),
                  (*spec, *tag), paper_precision=PAPER_PRECISION if rows else None)


#: Presets that reproduce no row of the paper, each an honestly labelled variant of the
#: paper's setting. The CIFAR-native ViT-Tiny (``vit_tiny_cifar``: 32 px input, patch 4, 65
#: tokens) is a lean variant of the paper's ViT-Tiny on 224-px upscaled images (197 tokens):
#: several times cheaper per image, but not the paper's model, so its numbers are never
#: compared with the paper's.
NON_PAPER_PRESETS: tuple[Preset, ...] = tuple(
    make_preset(
        "vit", "cifar10", {"model": "vit_tiny_cifar", **settings},
        train_overrides={"resize": None},
        description=(
            f"LEAN VARIANT, not in the paper: CIFAR-native ViT-Tiny (32 px, patch 4, 65 tokens; "
            f"the paper's runs upscale to 224 px, 197 tokens) with {what} on CIFAR-10; AdamW lr "
            "0.0001, 150 epochs, seed 42"))
    for settings, what in (
        ({"mixer": "attention"}, "attention"),
        ({"mixer": "convnn_attention", "k": 9, "sampling": "random", "candidates": 32},
         "ConvNN attention, k = 9, random candidates m = 32, depthwise aggregation"),
    ))


#: The laptop-scale study (see :mod:`convnn.study`): a small VGG (VGG-11's layers at a quarter
#: of the width, lean head) and a small CIFAR-native ViT (width 128, depth 4), trained briefly
#: on a CIFAR-10 subset on a CPU. Not the paper's protocol or models; every one uses
#: :data:`LAPTOP_PROTOCOL`.
LAPTOP_PROTOCOL = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "epochs": 10,
                   "batch_size": 64, "grad_clip": 1.0, "schedule": "cosine",
                   "warmup_epochs": 1, "augment": True, "resize": None, "amp": "off"}
_LAPTOP_VGG = {"head": "lean", "width_multiplier": 0.25}
_LAPTOP_VIT = {"dim": 128, "depth": 4, "mlp_dim": 256}


def _laptop(name: str, family: str, settings: dict, model: dict, what: str) -> Preset:
    size = ("VGG-11 layers at 1/4 width, lean head" if family == "vgg" else
            "CIFAR-native ViT, 32 px, patch 4, width 128, depth 4, 1 head")
    p = LAPTOP_PROTOCOL
    description = (f"LAPTOP STUDY, not the paper's protocol: {size}, with {what}, on a "
                   f"CIFAR-10 subset; AdamW lr {p['lr']:g}, cosine, {p['epochs']} epochs, "
                   f"batch {p['batch_size']}, flip+crop augmentation")
    # the "protocol" tag keeps the spec apart from every paper row
    return make_preset(family, "cifar10", settings, name=name, description=description,
                       model_overrides=model, train_overrides=LAPTOP_PROTOCOL,
                       tag=(("protocol", "laptop"),))


LAPTOP_PRESETS: tuple[Preset, ...] = (
    _laptop("laptop-vgg-c10-conv2d", "vgg", {"layer": "conv2d"}, _LAPTOP_VGG, "Conv2d (3x3)"),
    _laptop("laptop-vgg-c10-branching-r0.5", "vgg", {"layer": "branching", "ratio": 0.5},
            _LAPTOP_VGG, "branching λ = 0.5, k = 9"),
    _laptop("laptop-vgg-c10-convnn", "vgg", {"layer": "convnn"}, _LAPTOP_VGG,
            "pure ConvNN (λ = 1), k = 9"),
    _laptop("laptop-vit-c10-attention", "vit", {"model": "vit_tiny_cifar", "mixer": "attention"},
            _LAPTOP_VIT, "attention"),
    _laptop("laptop-vit-c10-convnn-all-k9", "vit",
            {"model": "vit_tiny_cifar", "mixer": "convnn_attention", "k": 9}, _LAPTOP_VIT,
            "ConvNN attention, k = 9 over all tokens"),
    _laptop("laptop-vit-c10-convnn-random-r32-k9", "vit",
            {"model": "vit_tiny_cifar", "mixer": "convnn_attention", "k": 9,
             "sampling": "random", "candidates": 32}, _LAPTOP_VIT,
            "ConvNN attention, k = 9 over m = 32 random tokens"),
)


@lru_cache(maxsize=1)
def _paper_presets() -> dict[str, Preset]:
    rows: dict[tuple, list[dict]] = {}
    for record in paper_records():
        key = paper_key(record)
        if key is not None:
            rows.setdefault(key, []).append(record)
    presets: dict[str, Preset] = {}
    for family, ds, settings in paper.paper_sweeps():
        spec = canonical_settings(family, ds, **settings)
        name = _paper_name(family, ds, dict(spec))
        if name in presets:
            if presets[name].spec != spec:
                raise RuntimeError(f"two configurations named {name!r}")
            continue
        presets[name] = make_preset(family, ds, settings, rows=tuple(rows.get(spec, ())))
    return presets


PRESETS: dict[str, Preset] = dict(_paper_presets())


def register_preset(preset: Preset) -> Preset:
    """Add an experiment that is not a paper row to :data:`PRESETS` (so that
    :func:`get_preset`, :func:`list_presets`, :func:`reduced` and :mod:`convnn.runner` know it);
    returns it. Build it with :func:`make_preset`, or directly as a :class:`Preset` of a
    :class:`ModelConfig` and a :class:`TrainConfig` (its family is its model's
    :class:`~convnn.models.ModelFamily`)."""
    if not isinstance(preset, Preset):
        raise TypeError(f"preset must be a Preset, got {type(preset).__name__}")
    if preset.family not in MODEL_FAMILIES:
        raise ValueError(f"preset {preset.name!r}: unknown family {preset.family!r}; "
                         f"choose from {sorted(MODEL_FAMILIES)}")
    if preset.model.family != preset.family:
        raise ValueError(f"preset {preset.name!r}: family {preset.family!r}, but its model "
                         f"{preset.model.name!r} is of family {preset.model.family!r}")
    if preset.dataset not in DATASETS:
        raise ValueError(f"preset {preset.name!r}: unknown dataset {preset.dataset!r}; "
                         f"choose from {sorted(DATASETS)}")
    name = preset.name.lower()
    if name != preset.name:
        raise ValueError(f"preset names are lower case, got {preset.name!r}")
    if name in PRESETS:
        raise ValueError(f"a preset named {name!r} exists already")
    if preset.spec and any(p.rows and p.spec == preset.spec for p in PRESETS.values()):
        raise ValueError(f"preset {name!r} has the settings of a paper row: give it a tag "
                         "(make_preset(..., tag=...)) so that it does not claim the row")
    PRESETS[name] = preset
    return preset


def unregister_preset(name: str) -> None:
    """Remove a preset added with :func:`register_preset` (a paper row's cannot be removed)."""
    preset = get_preset(name)
    if preset.rows:
        raise ValueError(f"preset {name!r} reproduces paper rows; only presets added with "
                         "register_preset can be removed")
    del PRESETS[preset.name]


for _preset in (*NON_PAPER_PRESETS, *LAPTOP_PRESETS):
    register_preset(_preset)
del _preset


def _has_words(name: str, word: str) -> bool:
    """Whether the ``-``-separated parts of ``word`` are whole consecutive parts of ``name``
    (case-insensitive): ``c10`` matches ``vgg11-c10-...`` but not ``vgg11-c100-...``."""
    parts, want = name.lower().split("-"), word.lower().strip("-").split("-")
    return any(parts[i:i + len(want)] == want for i in range(len(parts) - len(want) + 1))


def list_presets(pattern: str | None = None) -> list[Preset]:
    """Presets whose name has every word of ``pattern`` as whole ``-``-separated parts,
    case-insensitively (all if None): ``"vgg11 c10"`` lists the VGG-11 CIFAR-10 presets."""
    words = (pattern or "").split()
    return [p for name, p in PRESETS.items() if all(_has_words(name, w) for w in words)]


def close_preset_names(pattern: str, n: int = 5) -> list[str]:
    """Preset names close to ``pattern`` (for a search that found nothing)."""
    import difflib

    query = "-".join(pattern.lower().split())
    return difflib.get_close_matches(query, PRESETS, n=n, cutoff=0.6)


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (case-insensitive); a ValueError with close matches
    otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a preset name (str), got {type(name).__name__}")
    if name.lower() in PRESETS:
        return PRESETS[name.lower()]
    close = close_preset_names(name)
    hint = f"; did you mean {close}?" if close else "; list them with `python -m convnn presets`"
    raise ValueError(f"unknown preset {name!r}{hint}")


def preset_for_record(record: dict) -> Preset | None:
    """The preset reproducing a ``paper_results.json`` row (None for unsupported tables)."""
    key = paper_key(record)
    if key is None:
        return None
    for preset in PRESETS.values():
        if preset.rows and preset.spec == key:
            return preset
    return None


def reduced(preset: Preset) -> tuple[ModelConfig, TrainConfig]:
    """A small, fast version of a preset for smoke runs and tests: its family's
    :attr:`~convnn.models.ModelFamily.reduced` fields (same layer types and options, narrow VGG
    with the lean head, a narrow ResNet on 64×64 images, or a narrow 2-block ViT on 32×32
    images with patch 2: 257 tokens, enough for every k and candidate count of the paper's
    sweeps)."""
    reduction = MODEL_FAMILIES[preset.family].reduced
    model = dataclasses.replace(preset.model_config(), **reduction)
    return model, preset.train_config(resize=None)


__all__ = [
    "FAMILIES",
    "IMAGENET_PROTOCOLS",
    "LAPTOP_PRESETS",
    "LAPTOP_PROTOCOL",
    "NON_PAPER_PRESETS",
    "PAPER_PRECISION",
    "PRESETS",
    "Family",
    "Preset",
    "canonical_settings",
    "get_preset",
    "list_presets",
    "make_preset",
    "paper_key",
    "paper_records",
    "preset_for_record",
    "reduced",
    "register_preset",
    "unregister_preset",
]
