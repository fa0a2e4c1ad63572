"""The laptop-scale study: six small models, three seeds each, trained on a CPU.

A reader who has no GPU can still see trained ConvNN models. The study trains the six
``laptop-*`` presets of :mod:`convnn.experiments` (a small VGG with Conv2d, branching λ = 0.5
and pure ConvNN layers; a small CIFAR-native ViT with attention, ConvNN attention over all
tokens and over r = 32 random tokens) on a class-balanced subset of CIFAR-10, three seeds
each. It is **not the paper's protocol**: smaller models, a training subset, 10 epochs instead
of 150, a cosine schedule at lr 1e-3 with flip + crop augmentation (what makes short runs
learn), and a test subset.

The committed runs live in ``data/results/<date>-cpu-laptop-study/`` (see :data:`STUDY_DIR`),
one run folder per preset and seed (``<preset>-seed<seed>``), plus ``weights/<preset>.pt``:
the final ``state_dict`` of seed :data:`WEIGHTS_SEED` of every preset, in float16.

Run it with::

    python -m convnn.study <output folder> [--jobs 2] [--presets ...] [--seeds 0 1 2]

Example:
    >>> from convnn import study
    >>> [p.split("-")[1] for p in study.PRESETS]
    ['vgg', 'vgg', 'vgg', 'vit', 'vit', 'vit']
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from .checkpoint import read_weights
from .experiments import LAPTOP_PRESETS, get_preset
from .models import build_model
from .package_data import results_root
from .run_folder import (
    ImagePredictions,
    RunFolder,
    copy_logs,
    copy_study_log,
    load_weights,
    read_predictions,
    save_weights,
    study_log_path,
    study_predictions_path,
    study_run_folder,
    study_run_folders,
    study_run_seed,
    study_weights_path,
)

__all__ = [
    "INTERVENTIONS_DIR",
    "INTERVENTIONS_FILE",
    "PRESETS",
    "SEEDS",
    "STUDY_DIR",
    "TEST_PER_CLASS",
    "TRAIN_PER_CLASS",
    "WEIGHTS_SEED",
    "build",
    "collect",
    "convnn_layers",
    "correct_per_image",
    "dense_agreement",
    "evaluate",
    "initial_model",
    "intervention_models",
    "interventions_dir",
    "layer_inputs",
    "load_data",
    "predict",
    "predictions",
    "rank_update_norms",
    "rank_weights",
    "read_interventions",
    "run_one",
    "selected_offsets",
    "spatial_fraction",
    "study_dir",
    "study_runs",
    "summary_rows",
    "trained_model",
    "weights_file",
    "with_candidates",
    "with_coordinate_selection",
    "with_initial_rank_weights",
    "with_uniform_rank_weights",
    "write_interventions",
]

PRESETS: tuple[str, ...] = tuple(p.name for p in LAPTOP_PRESETS)
SEEDS: tuple[int, ...] = (0, 1, 2)
WEIGHTS_SEED = 0
TRAIN_PER_CLASS = 200
"""Training images per class (2,000 of CIFAR-10's 50,000)."""
TEST_PER_CLASS = 100
"""Test images per class (1,000 of 10,000; the same images for every run)."""
STUDY_DIR = "2026-11-28-cpu-laptop-study"
"""The committed study's folder under :func:`convnn.package_data.results_root`."""


# the slowest runs first, so that two parallel workers end together
_COST_ORDER = ("laptop-vit-c10-convnn-all-k9", "laptop-vit-c10-convnn-random-r32-k9",
               "laptop-vgg-c10-convnn", "laptop-vgg-c10-branching-r0.5",
               "laptop-vit-c10-attention", "laptop-vgg-c10-conv2d")


def study_dir() -> Path:
    """The committed study (shipped with the package)."""
    return results_root() / STUDY_DIR


def study_runs(root: str | os.PathLike | None = None) -> dict[str, list[Path]]:
    """Run folders of the study by preset: ``{preset: [run folder of each seed]}``."""
    root = root if root is not None else study_dir()
    return {name: study_run_folders(root, name) for name in PRESETS}


def load_data(data_dir=None, *, train_per_class: int = TRAIN_PER_CLASS,
              test_per_class: int = TEST_PER_CLASS, download: bool = True):
    """The study's CIFAR-10 subset (the first n images of each class)."""
    from .data import load_dataset

    return load_dataset("cifar10", data_dir=data_dir, download=download,
                        train_per_class=train_per_class, test_per_class=test_per_class)


def build(name: str) -> torch.nn.Module:
    """A freshly initialised model of a study preset."""
    return build_model(get_preset(name).model_config())


def run_one(name: str, seed: int, out_root: str | os.PathLike, *, data=None, data_dir=None,
            epochs: int | None = None, threads: int = 1, log=print) -> dict:
    """Train one preset with one seed into ``<out_root>/<name>-seed<seed>``."""
    from .train import fit

    torch.set_num_threads(threads)
    preset = get_preset(name)
    model_cfg = preset.model_config()
    overrides = {"seed": seed, **({"epochs": epochs} if epochs else {})}
    train_cfg = preset.train_config(**overrides)
    data = data if data is not None else load_data(data_dir)
    out = study_run_folder(out_root, name, seed)
    data.train_per_class, data.test_per_class = TRAIN_PER_CLASS, TEST_PER_CLASS
    extra = {"preset": name, "study": STUDY_DIR, "smoke": False, "threads": threads,
             "command": " ".join(sys.argv)}
    return fit(model_cfg, data, train_cfg, out, device="cpu",
               progress=False, extra=extra, log=log, overwrite=True)


def collect(runs: str | os.PathLike, dest: str | os.PathLike, *,
            every_seed: bool = False) -> list[Path]:
    """Copy finished runs into a folder to commit: ``config.json`` (with the command written
    as ``python -m convnn.study ...``, without this machine's paths), ``metrics.jsonl``,
    ``summary.json`` and the run's log, plus ``weights/<preset>.pt`` of seed
    :data:`WEIGHTS_SEED`; with ``every_seed``, also ``weights/<preset>-seed<seed>.pt`` of
    the other seeds (the names :func:`weights_file` reads). Checkpoints are not copied.
    Returns the copied run folders."""
    runs, dest = Path(runs), Path(dest)
    copied = []
    for name, folders in study_runs(runs).items():
        for folder in folders:
            run = RunFolder.read(folder, checkpoint="verify")
            if not run.finished:
                continue  # unfinished
            config = run.config
            argv = config.get("extra", {}).get("command", "").split()
            config["extra"]["command"] = " ".join(["python -m convnn.study", *argv[1:]])
            seed = study_run_seed(folder)
            out = copy_logs(folder, study_run_folder(dest, name, seed), config=config,
                            rewrite=lambda text: _short(text, runs))
            copy_study_log(runs, folder, out, rewrite=lambda text: _short(text, runs))
            if seed == WEIGHTS_SEED or every_seed:
                save_weights(folder, weights_file(name, seed, dest))
            copied.append(out)
    return copied


# ---------------------------------------------------------------- reading the committed study

def _stats(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


def summary_rows(root: str | os.PathLike | None = None) -> list[dict]:
    """One row per preset: mean and sample std over its seeds of the best and last-5-mean
    test top-1 and of the train-test gap (last 5 epochs' mean train top-1 minus their mean
    test top-1; train accuracy is the running accuracy of the training epoch, with
    augmentation and dropout on). Accuracies in percent."""
    from .results import load_run

    rows = []
    for name, folders in study_runs(root).items():
        best, last5, gap, seeds, secs = [], [], [], [], []
        for folder in folders:
            run = load_run(folder)
            tail = run.records[-5:]
            best.append(max(m["test_top1"] for m in run.records))
            last5.append(sum(m["test_top1"] for m in tail) / len(tail))
            gap.append(sum(m["train_top1"] - m["test_top1"] for m in tail) / len(tail))
            seeds.append(run.config["train"]["seed"])
            secs.append(sum(m["epoch_seconds"] for m in run.records))
        if not folders:
            continue
        rows.append({"preset": name, "seeds": seeds, "epochs": len(run.records),
                     "best": _stats(best), "last5": _stats(last5), "gap": _stats(gap),
                     "minutes": _stats([s / 60 for s in secs])})
    return rows


def convnn_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The ConvNN layers of a model by name (``ConvNN2d`` or ``ConvNNAttention``)."""
    from .layers import ConvNN2d, ConvNNAttention

    return {n: m for n, m in model.named_modules() if isinstance(m, ConvNN2d | ConvNNAttention)}


def layer_inputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What every ConvNN layer receives when ``model`` (in evaluation mode) sees ``x``."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda _m, args, n=n: seen.__setitem__(n, args[0]))
             for n, m in convnn_layers(model).items()]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def rank_weights(layer: torch.nn.Module) -> torch.Tensor:
    """Root-mean-square aggregation weight of each rank ``1..k`` (``[k]``; rank 1 is the
    first selected neighbour, the query itself when the layer puts itself first)."""
    w = layer.weight.detach().float()
    return w.pow(2).flatten(0, -2).mean(0).sqrt()


def selected_offsets(layer: torch.nn.Module, inp: torch.Tensor) -> torch.Tensor:
    """Chebyshev distance from each query to each neighbour it selects, ``[B, Q, k]``, in the
    layer's own grid (pixels of its feature map, or patches for a ViT; a ViT's class token is
    neither a query nor a spatial neighbour: its distance is ``-1``)."""
    from .layers import ConvNN2d

    idx = layer.neighbours(inp)
    if isinstance(layer, ConvNN2d):
        h, w = inp.shape[-2:]
        p = layer.padding
        rows, cols = idx // (w + 2 * p) - p, idx % (w + 2 * p) - p
        q = torch.arange(h * w)
        qr, qc = (q // w).view(1, -1, 1), (q % w).view(1, -1, 1)
        return torch.maximum((rows - qr).abs(), (cols - qc).abs())
    idx = idx[:, 0, 1:]  # first head; queries without the class token
    side = math.isqrt(inp.shape[1] - 1)
    patch = idx - 1
    q = torch.arange(side * side).view(1, -1, 1)
    dist = torch.maximum((patch // side - q // side).abs(), (patch % side - q % side).abs())
    return torch.where(idx == 0, torch.full_like(dist, -1), dist)


def spatial_fraction(layer: torch.nn.Module, inp: torch.Tensor) -> tuple[float, float]:
    """The share of selected neighbours that are spatial neighbours (Chebyshev distance
    <= 1: inside the 3×3 window, or the same or an adjacent patch), and the share a
    content-blind selection would give (the chance level). A layer that puts each query
    first (``self_first``) always selects the query itself, which is inside its window, so its
    chance level is ``(1 + (k − 1)·(near − 1)/(n − 1)) / k`` per query (``near`` positions
    of the ``n`` inside the window), not ``near / n``."""
    from .layers import ConvNN2d

    d = selected_offsets(layer, inp)
    share = float(((d >= 0) & (d <= 1)).float().mean())
    # chance: every position of the searched map equally likely
    if isinstance(layer, ConvNN2d):
        h, w = inp.shape[-2:]
        p = layer.padding
        rows = torch.arange(-p, h + p).view(-1, 1).expand(-1, w + 2 * p).flatten()
        cols = torch.arange(-p, w + p).view(1, -1).expand(h + 2 * p, -1).flatten()
        q = torch.arange(h * w)
        near = torch.maximum((rows.view(1, -1) - (q // w).view(-1, 1)).abs(),
                             (cols.view(1, -1) - (q % w).view(-1, 1)).abs()) <= 1
        near_count, total = near.float().sum(1), near.shape[1]
    else:
        side = math.isqrt(inp.shape[1] - 1)
        g = torch.arange(side * side)
        near = torch.maximum((g.view(1, -1) // side - g.view(-1, 1) // side).abs(),
                             (g.view(1, -1) % side - g.view(-1, 1) % side).abs()) <= 1
        near_count, total = near.float().sum(1), inp.shape[1]
    k = d.shape[-1]
    if layer.self_first:
        chance = float(((1 + (k - 1) * (near_count - 1) / (total - 1)) / k).mean())
    else:
        chance = float(near_count.mean()) / total
    return share, chance


def dense_agreement(layer: torch.nn.Module, inp: torch.Tensor) -> tuple[float, float]:
    """For a ConvNN attention layer with random candidates: the share of its k selections that
    are also in the dense top-k (the same layer searching every token), and the most it could
    be (the share of the dense top-k that lies among its candidates, or is the token itself
    when the layer puts each token first). The dense search is the same layer with
    ``sampling="all"``, everything else (``self_first`` included) unchanged."""
    import copy

    dense = copy.deepcopy(layer)
    dense.sampling = "all"
    sparse_idx = layer.neighbours(inp)
    dense_idx = dense.neighbours(inp)
    k = sparse_idx.shape[-1]
    same = (sparse_idx.unsqueeze(-1) == dense_idx.unsqueeze(-2)).any(-1).float().sum(-1) / k
    cand = layer._candidates(inp.shape[1], inp.device)
    query = torch.arange(inp.shape[1], device=inp.device).view(1, 1, -1, 1)
    # a token that puts itself first always "finds" itself, candidate or not
    reachable = torch.isin(dense_idx, cand) | ((dense_idx == query) & layer.self_first)
    covered = reachable.float().sum(-1) / k
    return float(same.mean()), float(covered.mean())


# ---------------------------------------------------------------- interventions at test time

INTERVENTIONS_DIR = "2026-12-07-cpu-laptop-study-interventions"
"""The committed interventions (:data:`INTERVENTIONS_FILE`), and the runs and weights of the
seeds other than :data:`WEIGHTS_SEED`, retrained because the study kept only seed 0's
weights (``<preset>-seed<seed>/`` run folders and ``weights/<preset>-seed<seed>.pt``)."""


def interventions_dir() -> Path:
    """The committed interventions folder (shipped with the package)."""
    return results_root() / INTERVENTIONS_DIR


def weights_file(name: str, seed: int, root: str | os.PathLike | None = None) -> Path:
    """Where the committed final weights of ``name`` trained with ``seed`` lie:
    ``weights/<preset>.pt`` of the study for seed :data:`WEIGHTS_SEED`,
    ``weights/<preset>-seed<seed>.pt`` of :func:`interventions_dir` for the others (or of
    ``root``, if given)."""
    if seed == WEIGHTS_SEED:
        return study_weights_path(root if root is not None else study_dir(), name)
    return study_weights_path(root if root is not None else interventions_dir(), name, seed)


def weight_seeds(name: str) -> list[int]:
    """The seeds of preset ``name`` whose trained weights are committed."""
    return [s for s in SEEDS if weights_file(name, s).is_file()]


def trained_model(name: str, seed: int = WEIGHTS_SEED,
                  root: str | os.PathLike | None = None) -> torch.nn.Module:
    """The committed trained model of preset ``name`` and ``seed``, float32, evaluation mode."""
    path = weights_file(name, seed, root)
    if not path.is_file():
        raise FileNotFoundError(f"no committed weights for {name} seed {seed} ({path.name})")
    model = build(name)
    load_weights(model, read_weights(path), path)  # weights_only, SHA-256 checked
    return model.eval()


def predictions(name: str, seed: int = WEIGHTS_SEED,
                root: str | os.PathLike | None = None) -> ImagePredictions:
    """The committed per-image test predictions of the trained model of ``name`` and ``seed``
    (``predictions/<weights stem>.npz`` beside its ``weights/`` folder, written by
    ``scripts/laptop_predictions.py``): for paired tests between models on the same images."""
    if seed == WEIGHTS_SEED:
        path = study_predictions_path(root if root is not None else study_dir(), name)
    else:
        path = study_predictions_path(root if root is not None else interventions_dir(), name,
                                      seed)
    if not path.is_file():
        raise FileNotFoundError(f"no committed predictions for {name} seed {seed} ({path.name})")
    return read_predictions(path)


def initial_model(name: str, seed: int) -> torch.nn.Module:
    """The model of preset ``name`` as ``seed`` initialised it: training seeds the global RNG
    with the run's seed and then builds the model, and so does this."""
    torch.manual_seed(seed)
    return build(name).eval()


def predict(model: torch.nn.Module, data, batch_size: int = 250, *, limit: int | None = None,
            input_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(predicted class, label)`` per test image of ``data``, in order, with ``model`` in
    evaluation mode (the first ``limit`` images only, if given; inputs times
    ``input_scale``, to see how rounding moves the predictions)."""
    model.eval()
    predicted, labels = [], []
    with torch.no_grad():
        for x, y in data.test_loader(batch_size if limit is None else min(batch_size, limit)):
            predicted.append(model(x * input_scale if input_scale != 1.0 else x).argmax(-1))
            labels.append(y)
            if limit is not None and sum(len(t) for t in labels) >= limit:
                break
    return torch.cat(predicted)[:limit], torch.cat(labels)[:limit]


def evaluate(model: torch.nn.Module, data, batch_size: int = 250) -> float:
    """Top-1 accuracy (%) of ``model`` on ``data``'s test split, in evaluation mode."""
    predicted, labels = predict(model, data, batch_size)
    return 100.0 * int((predicted == labels).sum()) / len(labels)


def rank_update_norms(trained: torch.nn.Module, initial: torch.nn.Module
                      ) -> dict[str, torch.Tensor]:
    """For every ConvNN layer, how far training moved the weights of each rank ``j``:
    ``||W_j - W_j^0|| / ||W_j^0||`` (``[k]``; the norm runs over all channels of rank j)."""
    out = {}
    start = convnn_layers(initial)
    for lname, layer in convnn_layers(trained).items():
        w = layer.weight.detach().float().flatten(0, -2)
        w0 = start[lname].weight.detach().float().flatten(0, -2)
        out[lname] = (w - w0).norm(dim=0) / w0.norm(dim=0)
    return out


def with_uniform_rank_weights(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` in which every ConvNN layer gives each of its k ranks the mean of
    its rank weights (per channel pair): the neighbours still count, their order no longer."""
    import copy

    out = copy.deepcopy(model)
    with torch.no_grad():
        for layer in convnn_layers(out).values():
            layer.weight.copy_(layer.weight.mean(-1, keepdim=True).expand_as(layer.weight))
    return out.eval()


def with_initial_rank_weights(model: torch.nn.Module, initial: torch.nn.Module
                              ) -> torch.nn.Module:
    """A copy of ``model`` whose ConvNN layers' rank weights are back at ``initial``'s."""
    import copy

    out = copy.deepcopy(model)
    start = convnn_layers(initial)
    with torch.no_grad():
        for lname, layer in convnn_layers(out).items():
            layer.weight.copy_(start[lname].weight)
    return out.eval()


def with_coordinate_selection(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose ConvNN2d layers select by position instead of by feature
    similarity: the 3×3 window, the pixel itself first, then by distance (the convolution
    special case, with the trained rank weights applied to the window's ranks)."""
    import copy

    from .layers import ConvNN2d

    out = copy.deepcopy(model)
    for layer in convnn_layers(out).values():
        if not isinstance(layer, ConvNN2d):
            raise ValueError(f"with_coordinate_selection needs ConvNN2d layers, got "
                             f"{type(layer).__name__}")
        layer.selection, layer.similarity = "coords", "euclidean"
        layer.self_first, layer.sort_by_position = True, False
        layer._static_cache.clear()
    return out.eval()


def with_candidates(model: torch.nn.Module, candidates: int | None = None, *,
                    resample: bool = False, seed: int | None = None) -> torch.nn.Module:
    """A copy of a random-candidate model evaluated differently: ``candidates=None`` searches
    all tokens (dense top-k, the token itself still first), an integer sets ``r``;
    ``resample=True`` draws new candidates on every forward pass (the paper's evaluation);
    ``seed`` changes the fixed evaluation draw."""
    import copy

    out = copy.deepcopy(model)
    for layer in convnn_layers(out).values():
        if layer.sampling == "all":
            raise ValueError("with_candidates needs layers with sampled candidates")
        if candidates is None:
            layer.sampling, layer.candidates = "all", None
        else:
            layer.candidates = candidates
        if resample:
            layer.eval_sampling = "resample"
        if seed is not None:
            layer.seed = seed
    return out.eval()


INTERVENTIONS_FILE = "interventions.json"
"""The committed test-time interventions (:func:`write_interventions`), in the study folder."""


def intervention_models(name: str, seed: int, root=None) -> dict[str, torch.nn.Module]:
    """The trained model of ``name``/``seed`` and its test-time interventions, by label:
    ``"trained"``; ``"uniform rank weights"``; for ConvNN attention ``"initial rank weights"``;
    for ConvNN2d ``"coordinate selection"``; for random candidates ``"all candidates"``,
    ``"r = 16"``, ``"r = 48"``, ``"other fixed draw"`` and ``"resampled"`` (a new draw on every
    batch, the paper's evaluation)."""
    from .layers import ConvNN2d

    model = trained_model(name, seed, root)
    out = {"trained": model, "uniform rank weights": with_uniform_rank_weights(model)}
    layers = list(convnn_layers(model).values())
    if isinstance(layers[0], ConvNN2d):
        out["coordinate selection"] = with_coordinate_selection(model)
    else:
        out["initial rank weights"] = with_initial_rank_weights(model, initial_model(name, seed))
    if layers[0].sampling != "all":
        out["all candidates"] = with_candidates(model)
        for r in (16, 48):
            out[f"r = {r}"] = with_candidates(model, r)
        out["other fixed draw"] = with_candidates(model, layers[0].candidates, seed=1)
        out["resampled"] = with_candidates(model, layers[0].candidates, resample=True)
    return out


def correct_per_image(model: torch.nn.Module, data, batch_size: int = 250,
                      limit: int | None = None) -> list[int]:
    """1 where ``model`` classifies a test image of ``data`` correctly, else 0 (in order;
    the first ``limit`` images only, if given)."""
    predicted, labels = predict(model, data, batch_size, limit=limit)
    return (predicted == labels).int().tolist()


def write_interventions(dest: str | os.PathLike, names=None, seeds=None, data=None,
                        root=None, log=print) -> dict:
    """Evaluate every intervention of :func:`intervention_models` on the study's test images
    and write ``dest`` (JSON): per preset, seed and intervention, the top-1 accuracy and which
    images were right (a string of 0/1, so that paired differences can be computed)."""
    import platform
    from datetime import datetime, timezone

    names = list(names or ("laptop-vgg-c10-convnn", "laptop-vgg-c10-branching-r0.5",
                           "laptop-vit-c10-convnn-all-k9", "laptop-vit-c10-convnn-random-r32-k9"))
    seeds = list(seeds if seeds is not None else SEEDS)
    data = data if data is not None else load_data()
    rows = []
    for name in names:
        for seed in seeds:
            if not weights_file(name, seed, root).is_file():
                log(f"skip {name} seed {seed}: no committed weights")
                continue
            for label, model in intervention_models(name, seed, root).items():
                torch.manual_seed(seed)  # the resampled draws
                right = correct_per_image(model, data)
                rows.append({"preset": name, "seed": seed, "intervention": label,
                             "top1": 100.0 * sum(right) / len(right),
                             "correct": "".join(map(str, right))})
                log(f"{name} seed {seed} {label}: {rows[-1]['top1']:.1f}")
    out = {"test_images": data.num_test, "dataset": _short(data.source),
           "torch": torch.__version__, "python": platform.python_version(),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": f"study.write_interventions({Path(dest).name!r}, names={names}, "
                      f"seeds={seeds})",
           "rows": rows}
    Path(dest).write_text(json.dumps(out, indent=1) + "\n")
    return out


def read_interventions(root=None) -> dict:
    """The committed interventions (see :func:`write_interventions`)."""
    root = Path(root) if root is not None else interventions_dir()
    return json.loads((root / INTERVENTIONS_FILE).read_text())


def _short(text: str, runs: Path | None = None) -> str:
    """``text`` without this machine's folders: the data folder, the working folder and, if
    given, the folder holding the ``runs`` folder (which is then named by its own name)."""
    data = os.environ.get("CONVNN_DATA_DIR")
    if data:
        text = text.replace(str(Path(data)), "<CONVNN_DATA_DIR>")
    if runs is not None:
        text = text.replace(str(Path(runs).resolve().parent) + os.sep, "")
    return text.replace(str(Path.cwd()) + os.sep, "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convnn.study", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("out", help="output folder (one run folder per preset and seed)")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (1 thread each)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cost = {name: i for i, name in enumerate(_COST_ORDER)}
    jobs = [(n, s) for s in args.seeds
            for n in sorted(args.presets, key=lambda n: cost.get(n, -1))]
    if args.worker or args.jobs <= 1:
        data = load_data(args.data_dir)
        for name, seed in jobs:
            t0 = time.time()
            summary = run_one(name, seed, out, data=data, epochs=args.epochs)
            print(f"DONE {name} seed {seed}: best {summary['best_test_top1']:.2f} "
                  f"in {time.time() - t0:.0f} s", flush=True)
        return 0
    # a queue of single runs, at most --jobs at a time, one thread each, seed by seed
    pending, running, failed = list(jobs), [], 0
    while pending or running:
        while pending and len(running) < args.jobs:
            name, seed = pending.pop(0)
            cmd = [sys.executable, "-m", "convnn.study", str(out), "--worker", "--presets",
                   name, "--seeds", str(seed)]
            cmd += ["--epochs", str(args.epochs)] if args.epochs else []
            cmd += ["--data-dir", args.data_dir] if args.data_dir else []
            env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            with open(study_log_path(out, name, seed), "w") as log:
                running.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                env=env))
            print(f"started {name} seed {seed}", flush=True)
        time.sleep(2)
        for p in [p for p in running if p.poll() is not None]:
            running.remove(p)
            failed += p.returncode != 0
    return 1 if failed else 0

if __name__ == "__main__":
    sys.exit(main())
