"""Run a preset end to end: data, model, training, run folder. Used by the CLI and the book.

``run_preset("vgg11-c10-branching-r0.5")`` trains the paper's experiment (its protocol, all
epochs); ``smoke=True`` trains a reduced model for 2 epochs on a few hundred images (real
CIFAR or ImageNet when a copy is available; otherwise clearly labelled synthetic data), which
takes about a minute on a CPU. A smoke run checks the mechanics (data, model, training, run
folder); on so few images and steps it is not expected to learn, and a test top-1 near chance
is normal. ImageNet presets stream their images from disk (:mod:`convnn.imagenet`); CIFAR
presets hold the dataset in memory (:mod:`convnn.data`). The smoke sizes are each dataset's
entry in :data:`convnn.data.DATASETS`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import textwrap
from pathlib import Path

import torch

from ._checks import check_bool, check_int, check_path, resolve_device
from .data import DatasetNotFoundError, ImageDataset, dataset_info
from .experiments import Preset, get_preset, reduced
from .imagenet import ImageNetDataset
from .models import ModelConfig, build_model, count_parameters
from .run_folder import RESUMABLE_CHANGES, RunFolder
from .train import TrainConfig, evaluate_run, fit

SMOKE_EPOCHS = 2
SMOKE_BATCH = 64


def smoke_mode(default: bool = False) -> bool:
    """Whether to run the short version: ``CONVNN_SMOKE=1``/``0`` when set (the test suite
    and CI set it), else ``default`` (a notebook's settings cell)."""
    value = os.environ.get("CONVNN_SMOKE", "")
    if value in ("0", "1"):
        return value == "1"
    if value:
        raise ValueError(f"CONVNN_SMOKE must be 0 or 1, got {value!r}")
    return check_bool("default", default)


def default_run_dir(name: str, smoke: bool, root: str | os.PathLike = "runs") -> Path:
    """``<root>/<preset>`` (``<root>/<preset>-smoke`` for smoke runs)."""
    return Path(root) / (f"{name}-smoke" if smoke else name)


#: Where :func:`runs_root` keeps run folders on Google Drive.
DRIVE_RUNS = "/content/drive/MyDrive/convnn-runs"


def runs_root(local: str | os.PathLike = "runs", *, keep_on_drive: bool = False,
              log=print) -> Path:
    """The folder for run folders: ``local``, or on Colab with ``keep_on_drive`` a folder on
    Google Drive (:data:`DRIVE_RUNS`), so that a disconnected runtime loses no checkpoint.

    Mounting asks for permission in the notebook. Outside Colab ``keep_on_drive`` is ignored,
    with a note.
    """
    check_bool("keep_on_drive", keep_on_drive)
    if not keep_on_drive:
        return Path(local)
    try:
        from google.colab import drive  # type: ignore[import-not-found]
    except ImportError:
        log(f"note: keep_on_drive applies on Google Colab only; run folders go to {local}/")
        return Path(local)
    drive.mount("/content/drive")
    root = Path(DRIVE_RUNS)
    root.mkdir(parents=True, exist_ok=True)
    return root


def load_preset_data(preset: Preset, *, smoke: bool, data_dir=None,
                     download: bool = True, log=print, image_size: int | None = None,
                     synthetic: bool = False) -> ImageDataset | ImageNetDataset:
    """The preset's dataset (its :data:`~convnn.data.DATASETS` entry's loader). A smoke run
    uses the entry's small subset. When the dataset is not found and its download fails (or
    it is never downloaded, as ImageNet), a smoke run says so and uses the entry's synthetic
    stand-in instead; with ``download=False`` a missing downloadable dataset is an error,
    :class:`DatasetNotFoundError`, as for a full run, which never falls back.
    ``synthetic=True`` (smoke runs only) asks for the stand-in explicitly. ``image_size`` is
    the crop size of a streamed dataset (ImageNet: default 224)."""
    check_bool("synthetic", synthetic)
    if synthetic and not smoke:
        raise ValueError("synthetic=True (--synthetic) applies to smoke runs only: a full run "
                         "trains on the preset's dataset")
    info = dataset_info(preset.dataset)
    if synthetic:
        log(f"NOTE: --synthetic: this smoke run uses SYNTHETIC data, not {info.title}.")
        return info.stand_in(image_size)
    options = {"data_dir": data_dir, "download": download, "image_size": image_size}
    if not smoke:
        return info.loader(**options)
    try:
        return info.loader(**options, train_per_class=info.smoke_train_per_class,
                           test_per_class=info.smoke_test_per_class)
    except DatasetNotFoundError as err:
        if info.stand_in is None or (info.downloadable and err.download_error is None):
            raise  # nothing was downloaded: missing data is an error
        failed = (f" and its download failed ({err.download_error})"
                  if err.download_error else "")
        log(f"NOTE: {info.title} was not found here{failed}; this smoke run uses SYNTHETIC "
            f"data, not {info.title}. To use real images, {info.data_hint}.")
        return info.stand_in(image_size)


def preset_configs(preset: Preset, *, smoke: bool, epochs: int | None = None,
                   device: torch.device | None = None, **train_overrides
                   ) -> tuple[ModelConfig, TrainConfig]:
    """The model and training configs of a run of ``preset`` (reduced for smoke runs)."""
    if smoke:
        model_cfg, train_cfg = reduced(preset)
        info = dataset_info(preset.dataset)
        smoke_lr = train_cfg.lr if info.smoke_lr is None else info.smoke_lr
        if info.smoke_scale_lr:  # the linear scaling rule: the preset's lr is for its batch
            smoke_lr = smoke_lr * SMOKE_BATCH / train_cfg.batch_size
        train_cfg = dataclasses.replace(train_cfg, epochs=SMOKE_EPOCHS, batch_size=SMOKE_BATCH,
                                        warmup_epochs=0, lr=smoke_lr)
    else:
        model_cfg, train_cfg = preset.model_config(), preset.train_config()
    if epochs is not None:
        train_cfg = dataclasses.replace(train_cfg, epochs=epochs)
    if train_overrides:
        train_cfg = dataclasses.replace(train_cfg, **train_overrides)
    return model_cfg, train_cfg


def run_preset(name: str, *, epochs: int | None = None, smoke: bool | None = None,
               out_dir=None, data_dir=None, device=None, resume: bool = False,
               overwrite: bool = False, progress: bool | None = None, download: bool = True,
               log=print, workers: int | None = None, callback=None,
               synthetic: bool = False, **train_overrides) -> dict:
    """Train preset ``name``; returns the run's summary (also in ``<out_dir>/summary.json``).

    Args:
        name: a preset name (``python -m convnn presets`` lists them).
        epochs: override the number of epochs.
        smoke: a short real run (default: ``CONVNN_SMOKE=1``).
        out_dir: the run folder (default ``runs/<name>`` or ``runs/<name>-smoke``).
        data_dir: where CIFAR is (default: ``CONVNN_DATA_DIR``, then the data cache).
        device: default CUDA when available.
        resume: continue a killed run from its last checkpoint; a run that has already
            finished (same preset and protocol) is loaded, not trained again; a folder
            without a run starts one.
        overwrite: replace an existing run folder.
        workers: image-decoding processes of an ImageNet preset (default:
            :func:`convnn.imagenet.default_num_workers`); an error for CIFAR presets.
        callback: called after every epoch with its metrics record (see
            :func:`convnn.train.fit`); an exception from it stops the run, resumably.
        synthetic: a smoke run on synthetic data, asked for explicitly (see
            :func:`load_preset_data`).
        **train_overrides: :class:`TrainConfig` fields (``amp``, ``compile``, ``batch_size``...).
    """
    preset = get_preset(name)
    _check_workers(workers, preset.dataset)
    if out_dir is not None:
        check_path("out_dir", out_dir)
    smoke = smoke_mode() if smoke is None else smoke
    dev = resolve_device("device", device, cuda_index=int(os.environ.get("LOCAL_RANK", "0")))
    model_cfg, train_cfg = preset_configs(preset, smoke=smoke, epochs=epochs, device=dev,
                                          **train_overrides)
    out = Path(out_dir) if out_dir is not None else default_run_dir(preset.name, smoke)
    if resume:
        finished = _finished_summary(out, preset.name, smoke, train_cfg)
        if finished is not None:
            log(textwrap.fill(f"{preset.name}: the run in {out} has finished all "
                              f"{train_cfg.epochs} epochs; loaded its summary instead of "
                              "training again", 96, subsequent_indent="    "))
            return finished
    dataset = load_preset_data(preset, smoke=smoke, data_dir=data_dir, download=download,
                               log=log, image_size=model_cfg.image_size, synthetic=synthetic)
    if workers is not None:
        dataset.num_workers = workers
    synthetic = dataset.synthetic
    if smoke and synthetic and dataset.num_classes != model_cfg.num_classes:
        model_cfg = dataclasses.replace(model_cfg, num_classes=dataset.num_classes)
    if smoke and not synthetic:  # recorded in config.json, to reload the same subset
        dataset.train_per_class = dataset_info(dataset.name).smoke_train_per_class
        dataset.test_per_class = dataset_info(dataset.name).smoke_test_per_class
    extra = {"preset": preset.name, "smoke": smoke,
             "command": " ".join(sys.argv), "paper_rows": [
                 {k: r.get(k) for k in ("table", "best", "avg5")} for r in preset.paper_rows()]}
    log(textwrap.fill(f"{preset.name}: {preset.description}", 96, subsequent_indent="    "))
    if smoke and train_overrides:
        given = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in sorted(train_overrides.items()))
        log(textwrap.fill(f"smoke run: a reduced model trained briefly ({train_cfg.epochs} "
                          f"epochs on {dataset.num_train} images) with the training settings "
                          f"given ({given}): a check on a subset, not the paper's protocol "
                          "(the full run is the experiment)", 96, subsequent_indent="    "))
    elif smoke:
        log(textwrap.fill(f"smoke run: a reduced model trained briefly ({train_cfg.epochs} "
                          f"epochs on {dataset.num_train} images) to check the mechanics: data, "
                          "model, training, run folder. It is not expected to learn; a test "
                          "top-1 near chance is normal (the full run is the experiment)", 96,
                          subsequent_indent="    "))
    log(textwrap.fill(f"data: {_short_source(dataset.source)}", 96, subsequent_indent="    "))
    log(f"run folder: {out}")
    return fit(model_cfg, dataset, train_cfg, out, resume=resume,
               overwrite=overwrite, device=dev, progress=progress, extra=extra, log=log,
               callback=callback)


def _short_source(source: str) -> str:
    """A dataset source without the folders of its path (they differ per machine)."""
    return re.sub(r" (at|into) /\S*/([^/)]+)\)", r" \1 …/\2)", source)


def _finished_summary(out: Path, name: str, smoke: bool, train_cfg: TrainConfig) -> dict | None:
    """The summary of a finished run of exactly this preset and protocol in ``out``, else
    None (then ``fit(resume=True)`` continues, tidies or refuses the run). Finished means
    a verified checkpoint at the last epoch, recorded by the summary."""
    try:
        run = RunFolder.read(out, checkpoint="verify")
    except (OSError, ValueError):
        return None  # no run, or one that train() will name the problem of
    same = (run.extra.get("preset") == name and run.extra.get("smoke") == smoke
            and _protocol(run.config.get("train")) == _protocol(train_cfg.to_dict()))
    done = run.finished and run.checkpoint_epoch == train_cfg.epochs
    return run.summary if same and done else None


def _protocol(train_dict) -> dict | None:
    """A saved or current ``TrainConfig`` dict without the settings that may change on
    resume, with defaults for fields older run folders lack (``None``: not a config)."""
    try:
        full = TrainConfig.from_dict(train_dict).to_dict()
    except (TypeError, ValueError):
        return None
    return {k: v for k, v in full.items() if k not in RESUMABLE_CHANGES}


def _check_workers(workers, dataset: str) -> None:
    if workers is None:
        return
    if not dataset_info(dataset).streamed:
        raise ValueError(f"workers={workers} applies to streamed datasets (ImageNet) only "
                         f"({dataset} is held in memory and batched on the device, with no "
                         "decoding workers)")
    check_int("workers", workers, minimum=0)


def evaluate_run_dir(run_dir, *, data_dir=None, device=None, workers: int | None = None,
                     download: bool = True) -> dict:
    """Evaluate a finished or partial run folder on its test split (``workers``,
    ``download``: as :func:`run_preset`)."""
    dev = resolve_device("device", device)
    run = RunFolder.read(run_dir, checkpoint="verify")  # eval loads it again, verified
    if run.checkpoint_epoch is None:
        raise FileNotFoundError(f"{RunFolder(Path(run_dir)).checkpoint_path} does not exist: "
                                "not a (started) run folder")
    if run.model_config is None:
        raise ValueError(f"{run_dir} was not written by run_preset (no model config in its "
                         "run record)")
    model_cfg = ModelConfig.from_dict(run.model_config)
    info = run.dataset
    if not isinstance(info.get("name"), str):
        raise ValueError(f"{run_dir}: its run record has no dataset name; it was edited or "
                         "not written by run_preset")
    _check_workers(workers, info.get("name"))
    if info.get("name") == "synthetic":
        raise ValueError(f"{run_dir} trained on synthetic data; there is no test set to "
                         "reload")
    if info.get("synthetic") and info.get("root") and data_dir is None:
        data_dir = info.get("root")  # the synthetic tree the run trained on
    dataset = dataset_info(info["name"]).loader(
        data_dir=data_dir, download=download, train_per_class=info.get("train_per_class"),
        test_per_class=info.get("test_per_class"), image_size=model_cfg.image_size)
    if workers is not None:
        dataset.num_workers = workers
    metrics = evaluate_run(run_dir, model_cfg, dataset, device=dev)
    metrics["parameters"] = count_parameters(build_model(model_cfg, device="meta"))
    return metrics


__all__ = ["DRIVE_RUNS", "default_run_dir", "evaluate_run_dir", "load_preset_data",
           "preset_configs", "run_preset", "runs_root", "smoke_mode"]
