"""The paper's vocabulary, translated into the presets' (the one module that speaks it).

The paper and the authors' logs (``data/paper_results.json``) name VGG's ConvNN options
``similarity`` and ``aggregation``, each ``"Col"`` or ``"Loc_Col"``, the ViT aggregation
``conv_type``, and the ViT token mixers by their layer names. ``similarity`` there means which
values the neighbours are *selected* on (it clashes with the layer's ``similarity="cosine"``),
so the presets (:mod:`convnn.experiments`) use:

* ``selection``: ``"features"`` (the paper's ``"Col"``) or ``"mixed"`` (``"Loc_Col"``: features
  beside coordinates, α = 0.5, :data:`MIXED_SELECTION_MIX`);
* ``aggregate_coords``: False (aggregation ``"Col"``) or True (``"Loc_Col"``: the two coordinate
  channels are aggregated too);
* ``aggregation`` (ViT): ``"standard"``, ``"depthwise"`` or ``"separable"`` (the paper's
  ``conv_type``, where ``"depthwise-separable"`` is ``"separable"``);
* ``mixer`` (ViT): the names of :data:`VIT_MIXERS`.

:func:`record_settings` maps a row of ``paper_results.json`` to a preset's settings and
:func:`paper_sweeps` lists the paper's experiment grid (tables 6.1-6.10 and "10") in the
presets' vocabulary; :func:`selection_word` / :func:`aggregation_word` give the paper's words
back for descriptions of its rows.
"""

from __future__ import annotations

from ._checks import check_choice, check_fraction

SELECTION = {"Col": "features", "Loc_Col": "mixed", "Loc": "coords"}
"""The paper's VGG ``similarity`` → the layers' ``selection`` (``"Loc"``: coordinates only,
here ranked by Euclidean distance, the convolution limit; in no table)."""
AGGREGATE_COORDS = {"Col": False, "Loc_Col": True}
"""The paper's VGG ``aggregation`` → the layers' ``aggregate_coords``."""
PAPER_SIMILARITY = SELECTION  # the names models.vgg exported
PAPER_AGGREGATION = AGGREGATE_COORDS
MIXED_SELECTION_MIX = 0.5
"""α of the paper's ``"Loc_Col"`` similarity (the reference code's ``lambda_param``)."""
VIT_MIXERS = {"attention": "attention", "local_attention": "local",
              "sparse_local": "sparse_local", "sparse_strided": "sparse_strided",
              "kvt": "kvt", "convnn_attention": "convnn_attention"}
"""The paper's ViT layer names → the presets' ``mixer``."""
CONV_TYPES = {"depthwise-separable": "separable"}
"""The paper's ``conv_type`` names that differ from the presets' ``aggregation``."""
PLAIN = "Col"
"""The paper's word for plain (features-only) VGG similarity and aggregation, a row's default."""
ROW_SETTING_KEYS = ("table", "experiment", "dataset", "model", "layer", "branch_ratio",
                    "similarity", "aggregation", "k", "kernel_size", "sampling", "candidates",
                    "r_prime", "conv_type", "heads", "lr", "epochs")
"""The settings of a row of ``paper_results.json`` (every other key is a number the paper
reports)."""


def selection_word(selection: str) -> str:
    """The paper's word for a VGG ``selection`` (``"features"`` → ``"Col"``)."""
    return {v: k for k, v in SELECTION.items()}[selection]


def aggregation_word(aggregate_coords: bool) -> str:
    """The paper's word for VGG's ``aggregate_coords`` (True → ``"Loc_Col"``)."""
    return {v: k for k, v in AGGREGATE_COORDS.items()}[bool(aggregate_coords)]


def vgg_row_words(record: dict) -> list[str]:
    """The paper's non-default VGG similarity / aggregation of a row, for its description
    (``["sim Loc_Col"]``, ``["agg Loc_Col"]``, or both, or none)."""
    return [f"{short} {record[key]}" for key, short in (("similarity", "sim"),
                                                          ("aggregation", "agg"))
            if record.get(key, PLAIN) != PLAIN]


def vit_row_words(record: dict) -> list[str]:
    """The paper's ViT aggregation (``conv_type``) of a row, for its description."""
    return [f"{record['conv_type']} aggregation"] if record.get("conv_type") else []


def paper_layer_options(similarity: str = "Col", aggregation: str = "Col",
                        lambda_param: float = MIXED_SELECTION_MIX) -> dict:
    """ConvNN layer options for the paper's ``similarity_type`` / ``aggregation_type``.

    Args:
        similarity: ``"Col"`` (features), ``"Loc_Col"`` (features scaled by ``α/std`` beside
            coordinates scaled by ``1 - α``) or ``"Loc"`` (coordinates only; here ranked by
            Euclidean distance, the convolution limit).
        aggregation: ``"Col"`` (aggregate features) or ``"Loc_Col"`` (features and the two
            coordinate channels).
        lambda_param: α of ``"Loc_Col"`` similarity (the reference code's name and default,
            0.5; the book writes α because λ is the branching ratio).

    Returns:
        A dict for ``VGG(layer_options=...)`` / ``ModelConfig.layer_options``.

    Example:
        >>> paper_layer_options("Loc_Col", "Loc_Col")
        {'selection': 'mixed', 'mix': 0.5, 'aggregate_coords': True}
    """
    check_choice("similarity", similarity, SELECTION)
    check_choice("aggregation", aggregation, AGGREGATE_COORDS)
    options: dict = {"selection": SELECTION[similarity]}
    if similarity == "Loc_Col":
        options["mix"] = check_fraction("lambda_param", lambda_param)
    if AGGREGATE_COORDS[aggregation]:
        options["aggregate_coords"] = True
    return options


def _vgg(layer: str, *, similarity: str | None = None, aggregation: str | None = None,
         **settings) -> dict:
    if similarity is not None:
        settings["selection"] = SELECTION[similarity]
    if aggregation is not None:
        settings["aggregate_coords"] = AGGREGATE_COORDS[aggregation]
    return {"layer": layer, **settings}


def record_settings(record: dict) -> tuple[str, str, dict] | None:
    """``(family, dataset, settings)`` of a ``paper_results.json`` row, in the presets'
    vocabulary (None for a model without presets)."""
    common = {"lr": record.get("lr"), "epochs": record.get("epochs")}
    if record["table"] == "6.4":
        common["seed"] = 0
    dataset = record["dataset"]
    if record["model"] == "vgg11":
        return "vgg", dataset, _vgg(
            record["layer"], ratio=record.get("branch_ratio"),
            similarity=record.get("similarity"), aggregation=record.get("aggregation"),
            k=record.get("k"), kernel_size=record.get("kernel_size"),
            sampling=record.get("sampling"), candidates=record.get("candidates"), **common)
    if record["model"] == "resnet50":
        return "resnet", dataset, dict(
            layer=record["layer"], ratio=0.5 if record["layer"] == "branching" else None,
            k=record.get("k"), sampling=record.get("sampling"),
            candidates=record.get("candidates"), **common)
    if record["model"] == "vit_base":
        return "vit", dataset, dict(
            model="vit_base", mixer=VIT_MIXERS[record["layer"]], k=record.get("k"),
            sampling=record.get("sampling"), candidates=record.get("candidates"), num_heads=12,
            **common)
    if record["model"] == "vit_tiny":
        aggregation = record.get("conv_type")
        return "vit", dataset, dict(
            mixer=VIT_MIXERS[record["layer"]], k=record.get("k"),
            sampling=record.get("sampling"), candidates=record.get("candidates"),
            aggregation=CONV_TYPES.get(aggregation, aggregation),
            num_heads=record.get("heads"),
            **common)
    return None


def paper_sweeps() -> list[tuple[str, str, dict]]:
    """The paper's experiment grid, table by table: ``(family, dataset, settings)``."""
    out = []
    ratios = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875]
    for ds in ("cifar10", "cifar100"):
        # 6.1 branching ratio x similarity/aggregation (and 6.2 baselines, 6.5 at lr 1e-4)
        for sim, agg in (("Col", "Col"), ("Loc_Col", "Col"), ("Loc_Col", "Loc_Col")):
            out.append(("vgg", ds, _vgg("conv2d")))
            out += [("vgg", ds, _vgg("branching", ratio=r, similarity=sim, aggregation=agg))
                    for r in ratios]
            out.append(("vgg", ds, _vgg("convnn", similarity=sim, aggregation=agg)))
        # 6.3 candidates
        for r in range(4, 31, 2):
            for sampling in ("random", "spatial"):
                out.append(("vgg", ds, _vgg("branching", ratio=0.5, sampling=sampling,
                                            candidates=r)))
                out.append(("vgg", ds, _vgg("convnn", sampling=sampling, candidates=r)))
        # 6.4 k x kernel size (100 epochs, seed 0)
        for ks in (1, 2, 3):
            out.append(("vgg", ds, _vgg("conv2d", kernel_size=ks, epochs=100, seed=0)))
            for k in range(1, 13):
                out.append(("vgg", ds, _vgg("branching", ratio=0.5, k=k, kernel_size=ks,
                                            epochs=100, seed=0)))
        # 6.5 learning rates
        for lr in (1e-3, 5e-4, 1e-4, 5e-5, 1e-5):
            out.append(("vgg", ds, _vgg("conv2d", lr=lr)))
            out.append(("vgg", ds, _vgg("branching", ratio=0.5, lr=lr)))
            out.append(("vgg", ds, _vgg("convnn", lr=lr)))
        # 6.6 ViT baselines, 6.10 heads
        for heads in (1, 3):
            for mixer in ("attention", "local"):
                out.append(("vit", ds, {"mixer": mixer, "num_heads": heads}))
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
    out.append(("vit", "imagenet", {"model": "vit_base", "num_heads": 12}))
    for k, sampling, r in ((9, "all", None), (9, "random", 32), (9, "spatial", 128),
                           (16, "all", None)):
        out.append(("vit", "imagenet", {"model": "vit_base", "num_heads": 12,
                                        "mixer": "convnn_attention", "k": k,
                                        "sampling": sampling, "candidates": r}))
    return out


__all__ = ["AGGREGATE_COORDS", "CONV_TYPES", "MIXED_SELECTION_MIX", "PAPER_AGGREGATION",
           "PAPER_SIMILARITY", "PLAIN", "ROW_SETTING_KEYS", "SELECTION", "VIT_MIXERS",
           "aggregation_word", "paper_layer_options", "paper_sweeps", "record_settings",
           "selection_word", "vgg_row_words", "vit_row_words"]
