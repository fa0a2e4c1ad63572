"""What a training checkpoint holds: the one module a change of its format touches.

A checkpoint is the state :func:`convnn.train.fit` needs to continue a run exactly. This
module defines its format (:data:`CHECKPOINT_FORMAT`), builds it from the training state
(:func:`build_checkpoint`), gives the training state back (:func:`restore_training_state`,
:func:`restore_rng`) and the model's weights (:func:`model_weights`), writes and reads it
(:func:`write_checkpoint`, :func:`read_checkpoint`), and turns every format convnn ever wrote
into today's (:func:`upgrade_checkpoint`). :mod:`convnn.run_folder` decides where the file
lies and when it is read; the trainer only calls the functions here.

The formats, each still read:

1. ``epoch``, ``model``, ``optimizer``, ``scaler``, ``schedule``, ``rng``, ``world_size``,
   ``config`` (the :class:`~convnn.train.TrainConfig` dict); no SHA-256 sidecar required.
   It records no fingerprint: the reader compares nothing and takes the run's fingerprint
   from ``config.json``.
2. adds ``fingerprint`` (what defines the run) and ``log`` (a digest of the metrics log);
   the SHA-256 sidecar is required. The fingerprint kept the model config and the dataset
   under ``extra``.
3. the fingerprint holds the model config under ``model.config`` and every dataset fact (its
   content hash included) under ``dataset`` (:func:`upgrade_fingerprint`).

A change of the format: bump :data:`CHECKPOINT_FORMAT`, change :func:`build_checkpoint` and
its readers here, and teach :func:`upgrade_checkpoint` to turn the previous layout into the
new one (``tests/test_run_folder.py`` writes each older layout by hand and loads it).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._io import CHECKSUM_SUFFIX, CheckpointError, load_checkpoint, save_checkpoint

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_KEYS",
    "DATA_LOCATION",
    "build_checkpoint",
    "log_digest",
    "log_summary",
    "model_weights",
    "read_checkpoint",
    "read_weights",
    "restore_rng",
    "restore_training_state",
    "rng_state",
    "upgrade_checkpoint",
    "upgrade_fingerprint",
    "write_checkpoint",
    "write_weights",
]

#: The format :func:`build_checkpoint` writes (see the module docstring for every format).
CHECKPOINT_FORMAT = 3
#: The entries every format has, with their types (checked before anything else is read).
CHECKPOINT_KEYS = {"epoch": int, "model": dict, "optimizer": dict, "rng": list, "config": dict}
#: Keys of the dataset section that say where the data is, not what it is.
DATA_LOCATION = ("source", "root")


# --------------------------------------------------------------------------- building it
def rng_state(device: torch.device) -> dict:
    """This process's RNG states, as tensors and plain containers (``weights_only``-loadable):
    one entry of a checkpoint's ``rng`` list."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch_cpu": torch.get_rng_state(),
        "python": [version, torch.tensor(mt, dtype=torch.int64), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss,
                  np_gauss],
    }
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def log_digest(records: list[dict]) -> str:
    """A SHA-256 of metrics records (what a checkpoint records of its log)."""
    text = json.dumps(records, sort_keys=True, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def log_summary(records: list[dict]) -> dict:
    """What a checkpoint records of the metrics log, to check the log against on resume."""
    best = max(records, key=lambda r: r["test_top1"])
    return {"epochs": len(records), "best_epoch": best["epoch"],
            "best_test_top1": best["test_top1"], "sha256": log_digest(records)}


def build_checkpoint(*, records: list[dict], model: nn.Module,
                     optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                     rng: list[dict], config: dict, next_lr: float, fingerprint: dict) -> dict:
    """The checkpoint after the last of ``records`` (format :data:`CHECKPOINT_FORMAT`).

    Args:
        records: the metrics records of every finished epoch.
        model: the plain (not compiled, not DDP-wrapped) model.
        optimizer, scaler: their state is saved (the scaler's is ``{}`` when disabled).
        rng: every process's :func:`rng_state`, indexed by rank.
        config: the :meth:`~convnn.train.TrainConfig.to_dict` of the run.
        next_lr: the learning rate of the next epoch (recorded with the schedule's name).
        fingerprint: what defines the run (:func:`convnn.run_folder.run_fingerprint`).
    """
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": records[-1]["epoch"],  # finished epochs
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),  # {} when disabled
        "schedule": {"name": config.get("schedule"), "next_lr": next_lr},
        "rng": rng,
        "world_size": len(rng),
        "config": config,
        "fingerprint": fingerprint,
        "log": log_summary(records),
    }


# --------------------------------------------------------------------------- reading it
def model_weights(checkpoint: dict) -> dict:
    """The model's ``state_dict`` held by an (upgraded) checkpoint: what is evaluated, and
    what a resumed run starts from."""
    return checkpoint["model"]


def restore_training_state(checkpoint: dict, optimizer: torch.optim.Optimizer,
                           scaler: torch.amp.GradScaler) -> None:
    """Put the optimizer's and the gradient scaler's state back (the weights:
    :func:`model_weights`; the random streams: :func:`restore_rng`)."""
    optimizer.load_state_dict(checkpoint["optimizer"])
    if checkpoint["scaler"]:
        scaler.load_state_dict(checkpoint["scaler"])


def restore_rng(checkpoint: dict, rank: int, world_size: int, device: torch.device) -> bool:
    """Restore process ``rank``'s random streams; ``False`` (nothing restored) when the
    checkpoint holds the states of another number of processes."""
    states = checkpoint["rng"]
    if len(states) != world_size:
        return False
    state = states[rank]
    torch.set_rng_state(state["torch_cpu"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt.tolist()), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss,
                         np_gauss))
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"], device)
    return True


# --------------------------------------------------------------------------- older formats
def upgrade_fingerprint(fp: dict) -> dict:
    """A fingerprint in today's layout: the model config under ``model.config`` (with
    today's field names) and every dataset fact under ``dataset``, without the data's
    location. Format 2 checkpoints and older ``config.json`` files recorded both under
    ``extra``."""
    from .models import upgrade_model_dict

    fp = {k: (dict(v) if isinstance(v, dict) else v) for k, v in fp.items()}
    extra = fp.get("extra")
    if isinstance(extra, dict):
        if isinstance(extra.get("model"), dict):
            fp.setdefault("model", {})
            if isinstance(fp["model"], dict):
                fp["model"] = {**fp["model"], "config": extra["model"]}
            extra.pop("model")
        if isinstance(extra.get("dataset"), dict):
            data = fp.get("dataset") if isinstance(fp.get("dataset"), dict) else {}
            fp["dataset"] = {**extra.pop("dataset"), **data}
    if isinstance(fp.get("dataset"), dict):
        fp["dataset"] = {k: v for k, v in fp["dataset"].items() if k not in DATA_LOCATION}
    model = fp.get("model")
    if isinstance(model, dict) and isinstance(model.get("config"), dict):
        fp["model"] = {**model, "config": upgrade_model_dict(model["config"])}
    return fp


def upgrade_checkpoint(raw: dict, where: str | os.PathLike = "the checkpoint") -> dict:
    """A checkpoint of any format convnn wrote, in today's layout (format
    :data:`CHECKPOINT_FORMAT`; ``upgraded_from`` records the format it had).

    Format 1 gets ``fingerprint`` and ``log`` set to ``None`` (it recorded neither: the
    reader takes the fingerprint from ``config.json``); format 2 gets its fingerprint in
    today's layout. A checkpoint without the entries of :data:`CHECKPOINT_KEYS`, or of a
    newer format than this code knows, is a :class:`~convnn._io.CheckpointError` naming
    ``where``."""
    fmt = raw.get("format", 1)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{where} has checkpoint format {fmt!r}; this convnn reads formats "
                              f"1 to {CHECKPOINT_FORMAT}: update convnn to read it")
    for key, kind in CHECKPOINT_KEYS.items():
        if not isinstance(raw.get(key), kind) or isinstance(raw.get(key), bool):
            raise CheckpointError(f"{where} is not a convnn training checkpoint ({key!r} is "
                                  "missing or has the wrong type)")
    if raw["epoch"] < 1:
        raise CheckpointError(f"{where} has epoch {raw['epoch']}; it must be >= 1")
    checkpoint = {"scaler": {}, "schedule": None, "world_size": len(raw["rng"]),
                  "fingerprint": None, "log": None, **raw,
                  "format": CHECKPOINT_FORMAT, "upgraded_from": fmt}
    if isinstance(checkpoint["fingerprint"], dict):  # formats 2 and 3
        checkpoint["fingerprint"] = upgrade_fingerprint(checkpoint["fingerprint"])
    else:
        checkpoint["fingerprint"] = None
    if not isinstance(checkpoint["log"], dict):
        checkpoint["log"] = None
    if not isinstance(checkpoint["scaler"], dict):
        checkpoint["scaler"] = {}
    return checkpoint


# --------------------------------------------------------------------------- the files
def write_checkpoint(checkpoint: dict, path: str | os.PathLike) -> str:
    """Write a checkpoint of :func:`build_checkpoint` atomically with its SHA-256 sidecar;
    returns the SHA-256."""
    return save_checkpoint(checkpoint, path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a training checkpoint (SHA-256 verified, ``weights_only=True``, on the CPU) and
    :func:`upgrade_checkpoint` it. From format 2 on, the sidecar must be there."""
    path = Path(path)
    raw = load_checkpoint(path)
    sidecar = path.with_name(path.name + CHECKSUM_SUFFIX)
    fmt = raw.get("format", 1)
    if isinstance(fmt, int) and fmt >= 2 and not sidecar.is_file():
        raise CheckpointError(f"{sidecar} is missing, so {path} cannot be verified; restore "
                              "it or start the run again")
    return upgrade_checkpoint(raw, path)


def write_weights(checkpoint: dict, dest: str | os.PathLike) -> int:
    """Write a checkpoint's model weights to ``dest``: a float16 ``state_dict`` with a
    SHA-256 sidecar, small enough to commit. Returns the file's size."""
    state = {k: v.half() if v.is_floating_point() else v
             for k, v in model_weights(checkpoint).items()}
    save_checkpoint(state, dest)
    return Path(dest).stat().st_size


def read_weights(path: str | os.PathLike) -> dict:
    """The float32 ``state_dict`` of a weights file of :func:`write_weights` (its SHA-256
    sidecar required, loaded with ``weights_only=True``); put it into a model with
    :func:`convnn.run_folder.load_weights`."""
    state = load_checkpoint(path, require_checksum=True)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
