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
sweep (6.4) ran 100 epochs with seed 0. VGG similarity "Col" is selection on features and
"Loc_Col" mixes features and coordinates (α = 0.5; λ is the branching ratio); aggregation "Loc_Col" also aggregates the
two coordinate channels. For the pure Conv2d model these options do not apply, so its rows
of table 6.1 are one preset.

Paper mode. Every preset with a ConvNN layer builds it in paper mode: the options of
:data:`~convnn.layers.PAPER_CONVNN2D_OPTIONS` (VGG, ResNet) or
:data:`~convnn.layers.PAPER_ATTENTION_OPTIONS` (ViT), the authors' behaviours of method.md §7
(Loc_Col coordinates over the padded map, random candidates drawn from the padded map,
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

import dataclasses
import json
from dataclasses import dataclass, field
from functools import lru_cache

from ._checks import check_known
from .layers import PAPER_ATTENTION_OPTIONS, PAPER_CONVNN2D_OPTIONS
from .models import PAPER_RESNET50, ModelConfig
from .models.vgg import paper_layer_options
from .package_data import data_file
from .train import TrainConfig

DATASET_SHORT = {"cifar10": "c10", "cifar100": "c100", "imagenet": "in1k"}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
UNSUPPORTED_TABLES: dict[str, str] = {}
"""Tables of ``paper_results.json`` without presets, and why (none at present)."""

IMAGENET_PROTOCOLS = {
    # ResNet: the common SGD recipe (torchvision's, with cosine decay and label smoothing)
    "resnet": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
               "schedule": "cosine", "warmup_epochs": 5, "epochs": 90, "batch_size": 256,
               "grad_clip": None, "label_smoothing": 0.1, "augment": True},
    # ViT-Base: DeiT's optimiser settings (lr 5e-4 per 512 images), without its RandAugment,
    # mixup, cutmix, random erasing and stochastic depth
    "vit": {"optimizer": "adamw", "lr": 2.5e-4, "weight_decay": 0.05, "schedule": "cosine",
            "warmup_epochs": 5, "epochs": 300, "batch_size": 256, "grad_clip": 1.0,
            "label_smoothing": 0.1, "augment": True},
}
"""Our training protocol for the ImageNet presets (the paper does not state one): random-resized
crop + flip at 224, center crop for testing (see :mod:`convnn.imagenet`)."""

VGG_DEFAULTS = {"layer": "conv2d", "ratio": 0.0, "similarity": "Col", "aggregation": "Col",
                "k": 9, "kernel_size": 3, "sampling": "all", "candidates": None,
                "lr": 1e-4, "epochs": 150, "seed": 42}
VIT_DEFAULTS = {"model": "vit_tiny", "mixer": "attention", "k": None, "sampling": None,
                "candidates": None, "aggregation": None, "heads": 1, "lr": 1e-4, "epochs": 150,
                "seed": 42}
RESNET_DEFAULTS = {"layer": "conv2d", "ratio": 0.0, "k": 9, "sampling": "all",
                   "candidates": None, "lr": None, "epochs": None, "seed": 42}
_DEFAULTS = {"vgg": VGG_DEFAULTS, "vit": VIT_DEFAULTS, "resnet": RESNET_DEFAULTS}
VIT_MIXERS = {"attention": "attention", "local_attention": "local",
              "sparse_local": "sparse_local", "sparse_strided": "sparse_strided",
              "kvt": "kvt", "convnn_attention": "convnn_attention"}


@dataclass(frozen=True)
class Preset:
    """One experiment: what to build, what to train it on, how, and which paper rows it is."""

    name: str
    family: str  # "vgg", "resnet" or "vit"
    dataset: str  # "cifar10", "cifar100" or "imagenet"
    spec: tuple  # the canonical configuration, see paper_key()
    description: str = ""
    train_overrides: dict = field(default_factory=dict)
    model_overrides: dict = field(default_factory=dict)

    @property
    def settings(self) -> dict:
        return dict(self.spec)

    def model_config(self) -> ModelConfig:
        """The model, as the paper trained it (with :attr:`model_overrides`, for the
        non-paper presets that change the architecture)."""
        config = self._paper_model_config()
        return dataclasses.replace(config, **self.model_overrides) if self.model_overrides \
            else config

    def _paper_model_config(self) -> ModelConfig:
        s = self.settings
        if self.family == "vgg":
            options: dict = {}
            if s["layer"] != "conv2d":
                options = {"k": s["k"], "similarity": "cosine",
                           **paper_layer_options(s["similarity"], s["aggregation"]),
                           **PAPER_CONVNN2D_OPTIONS}
                if s["sampling"] != "all":
                    options.update(sampling=s["sampling"], candidates=s["candidates"])
            return ModelConfig(name="vgg11", num_classes=NUM_CLASSES[self.dataset],
                               layer=s["layer"],
                               ratio=s["ratio"] if s["layer"] == "branching" else None,
                               kernel_size=s["kernel_size"], head="paper",
                               layer_options=options)
        if self.family == "resnet":
            bias = PAPER_RESNET50[s["layer"]]
            options = dict(bias["layer_options"])
            if s["layer"] != "conv2d":
                options.update(k=s["k"], **PAPER_CONVNN2D_OPTIONS)
                if s["sampling"] != "all":
                    options.update(sampling=s["sampling"], candidates=s["candidates"],
                                   candidate_layout="count")
            return ModelConfig(name="resnet50", num_classes=NUM_CLASSES[self.dataset],
                               layer=s["layer"],
                               ratio=s["ratio"] if s["layer"] == "branching" else None,
                               conv_bias=bias["conv_bias"], layer_options=options)
        options = {}
        if s["mixer"] in ("kvt", "convnn_attention"):
            options["k"] = s["k"]
        if s["mixer"] == "convnn_attention":
            options.update(aggregation=s["aggregation"], **PAPER_ATTENTION_OPTIONS)
            if s["sampling"] != "all":
                options.update(sampling=s["sampling"], candidates=s["candidates"])
        return ModelConfig(name=s["model"], num_classes=NUM_CLASSES[self.dataset],
                           mixer=s["mixer"], heads=s["heads"], layer_options=options)

    def train_config(self, **overrides) -> TrainConfig:
        """The paper's protocol for this preset (ours, :data:`IMAGENET_PROTOCOLS`, for
        ImageNet); keyword arguments override fields."""
        s = self.settings
        if self.dataset == "imagenet":
            values = {**IMAGENET_PROTOCOLS[self.family], "seed": s["seed"]}
        else:
            values = {"optimizer": "adamw", "lr": s["lr"], "weight_decay": 0.01,
                      "epochs": s["epochs"], "batch_size": 256, "grad_clip": 1.0,
                      "schedule": "none", "augment": False, "seed": s["seed"],
                      "resize": 224 if self.family == "vit" else None}
        values.update(self.train_overrides)
        values.update(overrides)
        return TrainConfig(**values)

    def paper_rows(self) -> list[dict]:
        """Every row of ``paper_results.json`` this preset reproduces."""
        return [r for r in paper_records() if paper_key(r) == self.spec]

    def to_dict(self) -> dict:
        return {"name": self.name, "family": self.family, "dataset": self.dataset,
                "description": self.description, "settings": self.settings,
                "model": self.model_config().to_dict(),
                "train": self.train_config().to_dict(),
                "paper_tables": sorted({r["table"] for r in self.paper_rows()})}


def _canonical(family: str, dataset: str, **settings) -> tuple:
    base = dict(_DEFAULTS[family])
    check_known("preset settings", settings, sorted(base))
    base.update({k: v for k, v in settings.items() if v is not None})
    if family == "vgg":
        if base["layer"] == "conv2d":  # selection options do not exist without ConvNN
            base.update(ratio=0.0, similarity="Col", aggregation="Col", k=9, sampling="all",
                        candidates=None)
        elif base["layer"] == "convnn":
            base["ratio"] = 1.0
        if base["sampling"] == "all":
            base["candidates"] = None
        base["ratio"] = float(base["ratio"])
    elif family == "resnet":
        if base["layer"] == "conv2d":
            base.update(ratio=0.0, k=None, sampling="all", candidates=None)
        elif base["layer"] == "convnn":
            base["ratio"] = 1.0
        if base["sampling"] == "all":
            base["candidates"] = None
        base["ratio"] = float(base["ratio"])
    else:
        if base["mixer"] not in ("kvt", "convnn_attention"):
            base["k"] = None
        if base["mixer"] != "convnn_attention":
            base.update(sampling=None, candidates=None, aggregation=None)
        else:
            base["sampling"] = base["sampling"] or "all"
            base["aggregation"] = base["aggregation"] or "depthwise"
            if base["sampling"] == "all":
                base["candidates"] = None
    if base["lr"] is not None:
        base["lr"] = float(base["lr"])
    return (("family", family), ("dataset", dataset), *sorted(base.items()))


def paper_key(record: dict) -> tuple | None:
    """The canonical configuration of a ``paper_results.json`` row (None if unsupported)."""
    if record["table"] in UNSUPPORTED_TABLES:
        return None
    common = {"lr": record.get("lr"), "epochs": record.get("epochs")}
    if record["table"] == "6.4":
        common["seed"] = 0
    if record["model"] == "vgg11":
        return _canonical(
            "vgg", record["dataset"], layer=record["layer"], ratio=record.get("branch_ratio"),
            similarity=record.get("similarity"), aggregation=record.get("aggregation"),
            k=record.get("k"), kernel_size=record.get("kernel_size"),
            sampling=record.get("sampling"), candidates=record.get("candidates"), **common)
    if record["model"] == "resnet50":
        return _canonical(
            "resnet", record["dataset"], layer=record["layer"],
            ratio=0.5 if record["layer"] == "branching" else None, k=record.get("k"),
            sampling=record.get("sampling"), candidates=record.get("candidates"), **common)
    if record["model"] == "vit_base":
        return _canonical(
            "vit", record["dataset"], model="vit_base", mixer=VIT_MIXERS[record["layer"]],
            k=record.get("k"), sampling=record.get("sampling"),
            candidates=record.get("candidates"), heads=12, **common)
    if record["model"] == "vit_tiny":
        aggregation = record.get("conv_type")
        aggregation = "separable" if aggregation == "depthwise-separable" else aggregation
        return _canonical(
            "vit", record["dataset"], mixer=VIT_MIXERS[record["layer"]], k=record.get("k"),
            sampling=record.get("sampling"), candidates=record.get("candidates"),
            aggregation=aggregation, heads=record.get("heads"), **common)
    return None


def _name(family: str, dataset: str, s: dict) -> str:
    ds = DATASET_SHORT[dataset]
    if family == "vgg":
        parts = ["vgg11", ds, s["layer"]]
        if s["layer"] == "branching":
            parts.append(f"r{s['ratio']:g}")
        if s["similarity"] != "Col":
            parts.append("sim-loccol")
        if s["aggregation"] != "Col":
            parts.append("agg-loccol")
        if s["sampling"] != "all":
            parts.append(f"{s['sampling']}-r{s['candidates']}")
        if s["layer"] == "conv2d":
            if s["kernel_size"] != 3 or s["epochs"] != 150:
                parts.append(f"ks{s['kernel_size']}")
        elif (s["k"], s["kernel_size"]) != (9, 3) or s["epochs"] != 150:
            parts.append(f"k{s['k']}-ks{s['kernel_size']}")
    elif family == "resnet":
        parts = ["resnet50", ds, s["layer"]]
        if s["layer"] == "branching":
            parts.append(f"r{s['ratio']:g}")
        if s["layer"] != "conv2d":
            parts.append(s["sampling"] + (f"-r{s['candidates']}" if s["candidates"] else ""))
            parts.append(f"k{s['k']}")
    else:
        mixer = {"sparse_local": "sparse-local", "sparse_strided": "sparse-strided",
                 "convnn_attention": "convnn"}.get(s["mixer"], s["mixer"])
        parts = [s["model"].replace("_", "-"), ds, mixer]
        if s["mixer"] == "convnn_attention":
            parts.append(s["sampling"] + (f"-r{s['candidates']}" if s["candidates"] else ""))
        if s["k"] is not None:
            parts.append(f"k{s['k']}")
        if s["aggregation"] not in (None, "depthwise"):
            parts.append(f"agg-{s['aggregation']}")
        if s["heads"] != (12 if s["model"] == "vit_base" else 1):
            parts.append(f"h{s['heads']}")
    if s["lr"] not in (1e-4, None):
        parts.append(f"lr{s['lr']:g}")
    if s["epochs"] not in (150, None):
        parts.append(f"e{s['epochs']}")
    if s["seed"] != 42:
        parts.append(f"seed{s['seed']}")
    return "-".join(parts)


def _describe(family: str, dataset: str, s: dict) -> str:
    data = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet-1K"}[dataset]
    if family == "vgg":
        what = {"conv2d": "Conv2d (3x3 + 1x1)", "convnn": "pure ConvNN (λ = 1)",
                "branching": f"branching λ = {s['ratio']:g}"}[s["layer"]]
        if s["layer"] != "conv2d":
            what += f", k = {s['k']}, similarity {s['similarity']}, aggregation " \
                    f"{s['aggregation']}"
            if s["sampling"] != "all":
                what += f", {s['sampling']} candidates r = {s['candidates']} (r x r)"
        if s["kernel_size"] != 3:
            what += f", conv kernel {s['kernel_size']}"
        model = f"VGG-11 with {what}"
    elif family == "resnet":
        what = {"conv2d": "Conv2d", "convnn": "ConvNN",
                "branching": f"branching λ = {s['ratio']:g}"}[s["layer"]]
        if s["layer"] != "conv2d":
            what += f" layers, k = {s['k']}, {s['sampling']} candidates"
            if s["candidates"]:
                what += f" r = {s['candidates']}"
        model = f"ResNet-50 with {what}"
    else:
        what = s["mixer"]
        if s["mixer"] == "convnn_attention":
            what = f"ConvNN attention, k = {s['k']}, {s['sampling']} candidates" + \
                (f" r = {s['candidates']}" if s["candidates"] else "") + \
                f", {s['aggregation']} aggregation"
        elif s["mixer"] == "kvt":
            what = f"KVT top-{s['k']} attention"
        size = {"vit_tiny": "ViT-Tiny", "vit_base": "ViT-Base"}[s["model"]]
        model = f"{size} ({s['heads']} head{'s' if s['heads'] > 1 else ''}) with {what}"
    if dataset == "imagenet":
        p = IMAGENET_PROTOCOLS[family]
        return (f"{model} on {data}; our protocol (the paper states none): "
                f"{p['optimizer'].upper() if p['optimizer'] == 'sgd' else 'AdamW'} "
                f"lr {p['lr']:g}, cosine, {p['epochs']} epochs, seed {s['seed']}")
    return f"{model} on {data}; AdamW lr {s['lr']:g}, {s['epochs']} epochs, seed {s['seed']}"


def _sweeps() -> list[tuple[str, str, dict]]:
    """The paper's experiment grid, table by table."""
    out = []
    ratios = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875]
    for ds in ("cifar10", "cifar100"):
        # 6.1 branching ratio x similarity/aggregation (and 6.2 baselines, 6.5 at lr 1e-4)
        for sim, agg in (("Col", "Col"), ("Loc_Col", "Col"), ("Loc_Col", "Loc_Col")):
            out.append(("vgg", ds, {"layer": "conv2d"}))
            out += [("vgg", ds, {"layer": "branching", "ratio": r, "similarity": sim,
                                 "aggregation": agg}) for r in ratios]
            out.append(("vgg", ds, {"layer": "convnn", "similarity": sim, "aggregation": agg}))
        # 6.3 candidates
        for r in range(4, 31, 2):
            for sampling in ("random", "spatial"):
                out.append(("vgg", ds, {"layer": "branching", "ratio": 0.5,
                                        "sampling": sampling, "candidates": r}))
                out.append(("vgg", ds, {"layer": "convnn", "sampling": sampling,
                                        "candidates": r}))
        # 6.4 k x kernel size (100 epochs, seed 0)
        for ks in (1, 2, 3):
            out.append(("vgg", ds, {"layer": "conv2d", "kernel_size": ks, "epochs": 100,
                                    "seed": 0}))
            for k in range(1, 13):
                out.append(("vgg", ds, {"layer": "branching", "ratio": 0.5, "k": k,
                                        "kernel_size": ks, "epochs": 100, "seed": 0}))
        # 6.5 learning rates
        for lr in (1e-3, 5e-4, 1e-4, 5e-5, 1e-5):
            out.append(("vgg", ds, {"layer": "conv2d", "lr": lr}))
            out.append(("vgg", ds, {"layer": "branching", "ratio": 0.5, "lr": lr}))
            out.append(("vgg", ds, {"layer": "convnn", "lr": lr}))
        # 6.6 ViT baselines, 6.10 heads
        for heads in (1, 3):
            for mixer in ("attention", "local"):
                out.append(("vit", ds, {"mixer": mixer, "heads": heads}))
        for mixer in ("sparse_local", "sparse_strided"):
            out.append(("vit", ds, {"mixer": mixer}))
        # 6.7 k sweep (and 6.6's ConvNN-attention rows at k = 9)
        for k in (*range(1, 13), 16, 25, 36, 100):
            out.append(("vit", ds, {"mixer": "kvt", "k": k}))
            if k != 100:
                out.append(("vit", ds, {"mixer": "convnn_attention", "k": k}))
            if k <= 12:
                out.append(("vit", ds, {"mixer": "convnn_attention", "k": k,
                                        "sampling": "random", "candidates": 32}))
        # 6.8 candidates
        for r in range(16, 193, 16):
            for sampling in ("random", "spatial"):
                out.append(("vit", ds, {"mixer": "convnn_attention", "k": 9,
                                        "sampling": sampling, "candidates": r}))
        # 6.9 aggregation
        for k in (9, 16):
            for aggregation in ("standard", "depthwise", "separable"):
                out.append(("vit", ds, {"mixer": "convnn_attention", "k": k,
                                        "aggregation": aggregation}))
    # "10": ImageNet-1K, ResNet-50 and ViT-Base (paper v3)
    out.append(("resnet", "imagenet", {"layer": "conv2d"}))
    out.append(("resnet", "imagenet", {"layer": "convnn"}))
    for sampling, r in (("all", None), ("random", 32), ("spatial", 25)):
        out.append(("resnet", "imagenet", {"layer": "branching", "ratio": 0.5,
                                           "sampling": sampling, "candidates": r}))
    out.append(("vit", "imagenet", {"model": "vit_base", "heads": 12}))
    for k, sampling, r in ((9, "all", None), (9, "random", 32), (9, "spatial", 128),
                           (16, "all", None)):
        out.append(("vit", "imagenet", {"model": "vit_base", "heads": 12,
                                        "mixer": "convnn_attention", "k": k,
                                        "sampling": sampling, "candidates": r}))
    return out


#: Presets that reproduce no row of the paper, each an honestly labelled variant of the
#: paper's setting: ``(family, dataset, settings, train overrides, description)``. The
#: CIFAR-native ViT-Tiny (``vit_tiny_cifar``: 32 px input, patch 4, 65 tokens) is a lean
#: variant of the paper's ViT-Tiny on 224-px upscaled images (197 tokens): several times cheaper
#: per image, but not the paper's model, so its numbers are never compared with the paper's.
NON_PAPER_PRESETS: tuple[tuple[str, str, dict, dict, str], ...] = tuple(
    ("vit", "cifar10", {"model": "vit_tiny_cifar", **settings}, {"resize": None},
     (f"LEAN VARIANT, not in the paper: CIFAR-native ViT-Tiny (32 px, patch 4, 65 tokens; the "
      f"paper's runs upscale to 224 px, 197 tokens) with {what} on CIFAR-10; AdamW lr 0.0001, "
      "150 epochs, seed 42"))
    for settings, what in (
        ({"mixer": "attention"}, "attention"),
        ({"mixer": "convnn_attention", "k": 9, "sampling": "random", "candidates": 32},
         "ConvNN attention, k = 9, random candidates r = 32, depthwise aggregation"),
    ))


#: The laptop-scale study (see :mod:`convnn.study`): a small VGG (VGG-11's layers at a quarter
#: of the width, lean head) and a small CIFAR-native ViT (width 128, depth 4), trained briefly
#: on a CIFAR-10 subset on a CPU. Not the paper's protocol or models: ``(name, family,
#: settings, model overrides, description)``; every one uses :data:`LAPTOP_PROTOCOL`.
LAPTOP_PROTOCOL = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "epochs": 10,
                   "batch_size": 64, "grad_clip": 1.0, "schedule": "cosine",
                   "warmup_epochs": 1, "augment": True, "resize": None, "amp": "off"}
_LAPTOP_VGG = {"head": "lean", "width_multiplier": 0.25}
_LAPTOP_VIT = {"dim": 128, "depth": 4, "mlp_dim": 256}
LAPTOP_PRESETS: tuple[tuple[str, str, dict, dict, str], ...] = (
    ("laptop-vgg-c10-conv2d", "vgg", {"layer": "conv2d"}, _LAPTOP_VGG, "Conv2d (3x3)"),
    ("laptop-vgg-c10-branching-r0.5", "vgg", {"layer": "branching", "ratio": 0.5},
     _LAPTOP_VGG, "branching λ = 0.5, k = 9"),
    ("laptop-vgg-c10-convnn", "vgg", {"layer": "convnn"}, _LAPTOP_VGG,
     "pure ConvNN (λ = 1), k = 9"),
    ("laptop-vit-c10-attention", "vit", {"model": "vit_tiny_cifar", "mixer": "attention"},
     _LAPTOP_VIT, "attention"),
    ("laptop-vit-c10-convnn-all-k9", "vit",
     {"model": "vit_tiny_cifar", "mixer": "convnn_attention", "k": 9}, _LAPTOP_VIT,
     "ConvNN attention, k = 9 over all tokens"),
    ("laptop-vit-c10-convnn-random-r32-k9", "vit",
     {"model": "vit_tiny_cifar", "mixer": "convnn_attention", "k": 9, "sampling": "random",
      "candidates": 32}, _LAPTOP_VIT, "ConvNN attention, k = 9 over r = 32 random tokens"),
)


@lru_cache(maxsize=1)
def _registry() -> dict[str, Preset]:
    presets: dict[str, Preset] = {}
    for family, ds, settings in _sweeps():
        spec = _canonical(family, ds, **settings)
        s = dict(spec)
        name = _name(family, ds, s)
        if name in presets:
            if presets[name].spec != spec:
                raise RuntimeError(f"two configurations named {name!r}")
            continue
        presets[name] = Preset(name, family, ds, spec, _describe(family, ds, s))
    for family, ds, settings, overrides, description in NON_PAPER_PRESETS:
        spec = _canonical(family, ds, **settings)
        name = _name(family, ds, dict(spec))
        if name in presets:
            raise RuntimeError(f"two configurations named {name!r}")
        presets[name] = Preset(name, family, ds, spec, description, dict(overrides))
    for name, family, settings, model, what in LAPTOP_PRESETS:
        # the "protocol" entry keeps the spec apart from every paper row
        spec = (*_canonical(family, "cifar10", **settings), ("protocol", "laptop"))
        size = ("VGG-11 layers at 1/4 width, lean head" if family == "vgg" else
                "CIFAR-native ViT, 32 px, patch 4, width 128, depth 4, 1 head")
        p = LAPTOP_PROTOCOL
        description = (f"LAPTOP STUDY, not the paper's protocol: {size}, with {what}, on a "
                       f"CIFAR-10 subset; AdamW lr {p['lr']:g}, cosine, {p['epochs']} epochs, "
                       f"batch {p['batch_size']}, flip+crop augmentation")
        presets[name] = Preset(name, family, "cifar10", spec, description,
                               dict(LAPTOP_PROTOCOL), dict(model))
    return presets


PRESETS = _registry()


@lru_cache(maxsize=1)
def paper_records() -> tuple[dict, ...]:
    """Every record of ``paper_results.json`` (the paper's numbers, shipped with the package)."""
    with open(data_file("paper_results.json"), encoding="utf-8") as f:
        return tuple(json.load(f)["records"])


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
        if preset.spec == key:
            return preset
    return None


def reduced(preset: Preset) -> tuple[ModelConfig, TrainConfig]:
    """A small, fast version of a preset for smoke runs and tests: same layer types and
    options, narrow VGG with the lean head, a narrow ResNet on 64×64 images, or a narrow
    2-block ViT on 32×32 images with patch 2 (257 tokens, enough for every k and candidate
    count of the paper's sweeps)."""
    model = preset.model_config()
    if preset.family == "vgg":
        model = dataclasses.replace(model, head="lean", width_multiplier=0.125)
    elif preset.family == "resnet":
        model = dataclasses.replace(model, width_multiplier=0.125, image_size=64)
    else:
        model = dataclasses.replace(model, image_size=32, patch_size=2, depth=2, dim=48,
                                    mlp_dim=96)
    return model, preset.train_config(resize=None)


__all__ = ["IMAGENET_PROTOCOLS", "LAPTOP_PRESETS", "LAPTOP_PROTOCOL", "NON_PAPER_PRESETS", "PRESETS", "Preset", "get_preset", "list_presets", "paper_key", "paper_records",
           "preset_for_record", "reduced"]
