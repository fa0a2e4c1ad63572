"""The run folder of :func:`convnn.train.fit`: open a fresh run or resume one, its lock and
fingerprint, and the checkpoint format (with its SHA-256 sidecar).

A :class:`RunFolder` decides, before anything in the folder changes, whether the call starts
afresh, resumes after the last checkpoint, or is refused; then it writes ``config.json``, and
after every epoch a metrics line and ``summary.json``, and the checkpoint at the run's
cadence (``TrainConfig.checkpoint_every`` / ``checkpoint_minutes``), each atomically.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ._io import (
    CHECKSUM_SUFFIX,
    CheckpointError,
    FolderLockedError,
    append_jsonl_atomic,
    atomic_write_json,
    atomic_write_text,
    folder_lock,
    load_checkpoint,
    read_json,
    read_jsonl,
    remove_leftovers,
    save_checkpoint,
)
from ._version import __version__

__all__ = [
    "CHECKPOINT_FORMAT",
    "RESUMABLE_CHANGES",
    "RESUMABLE_EXTRA",
    "RUN_FILES",
    "RunFolder",
    "RunFolderError",
    "load_run_checkpoint",
    "load_weights",
    "run_fingerprint",
    "run_lock",
]

#: The files of a run folder.
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt", "checkpoint.pt" + CHECKSUM_SUFFIX,
             "summary.json")
#: TrainConfig fields that may change when a run is resumed.
RESUMABLE_CHANGES = ("epochs", "log_every", "compile", "eval_batch_size", "deterministic",
                     "checkpoint_every", "checkpoint_minutes")
#: Keys of ``extra`` that may change on resume (the command line, the data's location).
RESUMABLE_EXTRA = ("command", "dataset.root")
#: 2: adds the run's fingerprint and a digest of the metrics log (format 1 is still read).
CHECKPOINT_FORMAT = 2




class RunFolderError(ValueError):
    """A run folder that cannot be used as asked: locked, damaged, or holding another run.
    Nothing in the folder was changed."""



def load_run_checkpoint(run_dir: str | os.PathLike) -> tuple[dict, dict]:
    """Read a run folder's ``config.json`` and ``checkpoint.pt``.

    The checkpoint is loaded on the CPU with ``torch.load(..., weights_only=True)``.

    Returns:
        ``(config, checkpoint)``: ``config["train"]`` is a :meth:`TrainConfig.to_dict`;
        ``checkpoint`` has ``"model"`` (a state dict), ``"optimizer"``, ``"scaler"``,
        ``"epoch"`` (finished epochs), ``"rng"`` and ``"config"``.
    """
    run_dir = Path(run_dir)
    for name in ("config.json", "checkpoint.pt"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name} does not exist: not a (started) run folder")
    config = read_json(run_dir / "config.json")
    if not isinstance(config.get("train"), dict):
        raise RunFolderError(f"{run_dir / 'config.json'} has no \"train\" settings; it was not "
                             "written by convnn.train")
    return config, _load_training_checkpoint(run_dir / "checkpoint.pt")


CHECKPOINT_KEYS = {"epoch": int, "model": dict, "optimizer": dict, "rng": list, "config": dict}


def _load_training_checkpoint(path: Path) -> dict:
    """Load and verify a checkpoint written by :func:`train` (checksum, keys, types)."""
    checkpoint = load_checkpoint(path)
    for key, kind in CHECKPOINT_KEYS.items():
        if not isinstance(checkpoint.get(key), kind) or isinstance(checkpoint.get(key), bool):
            raise CheckpointError(f"{path} is not a convnn training checkpoint ({key!r} is "
                                  "missing or has the wrong type)")
    if checkpoint["epoch"] < 1:
        raise CheckpointError(f"{path} has epoch {checkpoint['epoch']}; it must be >= 1")
    sidecar = path.with_name(path.name + CHECKSUM_SUFFIX)
    if checkpoint.get("format", 1) >= 2 and not sidecar.is_file():
        raise CheckpointError(f"{sidecar} is missing, so {path} cannot be verified; restore "
                              "it or start the run again")
    return checkpoint


def load_weights(model: nn.Module, state: dict, path: Path) -> None:
    """``model.load_state_dict(state)``, with a one-line error naming the checkpoint."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as err:
        detail = [ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()]
        raise RunFolderError(
            f"the weights in {path} do not fit the model ({detail[0] if detail else err}); "
            "the run folder belongs to another model configuration") from None


def _dataset_info(ds) -> dict:
    return {
        "name": ds.name,
        "source": ds.source,
        "classes": ds.num_classes,
        "image_size": list(ds.image_size),
        "train_images": ds.num_train,
        "test_images": ds.num_test,
        "mean": list(ds.mean),
        "std": list(ds.std),
    }


def local_time() -> str:
    return datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds")


def _without(d: dict, dotted: tuple[str, ...]) -> dict:
    """A copy of nested dict ``d`` without the ``a.b`` keys in ``dotted``."""
    out = {}
    for k, v in d.items():
        if k in dotted:
            continue
        inner = tuple(x[len(k) + 1:] for x in dotted if x.startswith(f"{k}."))
        out[k] = _without(v, inner) if isinstance(v, dict) and inner else v
    return out


def run_fingerprint(config, ds, extra: dict, net: nn.Module) -> dict:
    """Everything that defines a run, except what may change on resume: the training
    settings, the data (not its location), the caller's ``extra`` and the model class."""
    train_cfg = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_CHANGES}
    data = {k: v for k, v in _dataset_info(ds).items() if k != "source"}
    model = {"class": f"{type(net).__module__}.{type(net).__qualname__}",
             "parameters": sum(p.numel() for p in net.parameters())}
    fp = {"train": train_cfg, "dataset": data, "extra": _without(extra, RESUMABLE_EXTRA),
          "model": model}
    return json.loads(json.dumps(fp))  # tuples as lists, as they come back from disk


def _fingerprint_of(cfg_json: dict, train_cfg: dict | None) -> dict:
    """The fingerprint recorded by a run folder whose checkpoint has none (format 1)."""
    fp: dict = {}
    if isinstance(train_cfg, dict):
        fp["train"] = {k: v for k, v in train_cfg.items() if k not in RESUMABLE_CHANGES}
    if isinstance(cfg_json.get("dataset"), dict):
        fp["dataset"] = {k: v for k, v in cfg_json["dataset"].items() if k != "source"}
    if isinstance(cfg_json.get("extra"), dict):
        fp["extra"] = _without(cfg_json["extra"], RESUMABLE_EXTRA)
    if isinstance(cfg_json.get("model"), dict):
        fp["model"] = {k: cfg_json["model"].get(k) for k in ("class", "parameters")}
    return fp


_MISSING = "<absent>"


def _differences(saved, current, prefix: str = ""):
    if isinstance(saved, dict) and isinstance(current, dict):
        for k in sorted(set(saved) | set(current), key=str):
            yield from _differences(saved.get(k, _MISSING), current.get(k, _MISSING),
                                    f"{prefix}{k}.")
    elif saved != current:
        yield prefix[:-1], saved, current


def _renamed_fields_upgraded(fp: dict) -> dict:
    """A fingerprint whose ``extra.model`` (a saved ``ModelConfig``) uses today's field names,
    so that a run saved before a rename (``heads`` -> ``num_heads``) still resumes."""
    extra = fp.get("extra")
    if isinstance(extra, dict) and isinstance(extra.get("model"), dict):
        from .models import upgrade_model_dict

        fp = {**fp, "extra": {**extra, "model": upgrade_model_dict(extra["model"])}}
    return fp


def _check_resumable(saved: dict, current: dict, path: Path) -> None:
    """Raise unless fingerprint ``current`` equals ``saved`` (sections absent from ``saved``,
    as in older run folders, are not compared; renamed model fields count as the same)."""
    saved, current = _renamed_fields_upgraded(saved), _renamed_fields_upgraded(current)
    changed = list(_differences(saved, {k: v for k, v in current.items() if k in saved}))
    if changed:
        shown = changed if len(changed) <= 6 else [*changed[:6], ("...", "", "")]
        detail = ", ".join(f"{k}: {a!r} -> {b!r}" if k != "..." else "..."
                           for k, a, b in shown)
        raise RunFolderError(
            f"cannot resume {path.parent}: this is not the run it holds ({path.name} differs "
            f"in {detail}); only {list(RESUMABLE_CHANGES)} may change on resume. Choose "
            "another out_dir for a new run, or overwrite=True (--overwrite) to replace it")


def _log_digest(records: list[dict]) -> str:
    text = json.dumps(records, sort_keys=True, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def log_summary(records: list[dict]) -> dict:
    """What a checkpoint records of the metrics log, to check the log against on resume."""
    best = max(records, key=lambda r: r["test_top1"])
    return {"epochs": len(records), "best_epoch": best["epoch"],
            "best_test_top1": best["test_top1"], "sha256": _log_digest(records)}


def _read_log(path: Path, checkpoint: dict) -> list[dict]:
    """The metrics records of epochs ``1..checkpoint["epoch"]``, checked against the
    checkpoint; lines past it (a crash between the two writes) are dropped."""
    epoch = checkpoint["epoch"]
    if not path.is_file():
        raise RunFolderError(f"cannot resume {path.parent}: {path.name} is missing but "
                             f"checkpoint.pt is at epoch {epoch}; restore {path}, or start "
                             "again with overwrite=True (--overwrite)")
    records = read_jsonl(path)
    for i, r in enumerate(records, 1):
        if r.get("epoch") != i or isinstance(r.get("epoch"), bool):
            raise RunFolderError(
                f"cannot resume: {path} is not in epoch order (line {i} has epoch "
                f"{r.get('epoch')!r}, expected {i}); it was edited or damaged. Restore it, or "
                "start again with overwrite=True (--overwrite)")
        if not isinstance(r.get("test_top1"), (int, float)):
            raise RunFolderError(f"cannot resume: {path} epoch {i} has no numeric test_top1")
    if len(records) < epoch:
        raise RunFolderError(
            f"cannot resume: {path} has {len(records)} epoch(s) but checkpoint.pt is at epoch "
            f"{epoch}; the log was edited or damaged. Restore it, or start again with "
            "overwrite=True (--overwrite)")
    kept, saved = records[:epoch], checkpoint.get("log")
    if isinstance(saved, dict) and _log_digest(kept) != saved.get("sha256"):
        found = log_summary(kept)
        raise RunFolderError(
            f"cannot resume: {path} does not match checkpoint.pt (the log's best test_top1 is "
            f"{found['best_test_top1']} at epoch {found['best_epoch']}, the checkpoint recorded "
            f"{saved.get('best_test_top1')} at epoch {saved.get('best_epoch')}; "
            "the log was edited or damaged). Restore it, or start again with "
            "overwrite=True (--overwrite)")
    return records


@contextlib.contextmanager
def run_lock(out: Path, ctx):
    """Rank 0 holds the run folder's lock for the whole run; every rank fails if it cannot."""
    error, stack = None, contextlib.ExitStack()
    if ctx.rank == 0:
        try:
            stack.enter_context(folder_lock(out))
        except FolderLockedError as err:
            error = str(err)
        except OSError as err:
            where = err.filename or out
            error = (f"cannot use {out} as a run folder: {err.strerror or err} ({where}); "
                     "choose another out_dir")
    if ctx.enabled:
        import torch.distributed as dist

        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        stack.close()
        raise RunFolderError(error)
    with stack:
        yield


@dataclass
class RunFolder:
    """What a run folder holds when a call opens it: nothing (a fresh run), a checkpoint to
    resume from, or only ``config.json`` (a run that stopped before its first epoch ended)."""

    out: Path
    existing: list[str] = field(default_factory=list)  # run files present when opened
    checkpoint: dict | None = None
    records: list[dict] = field(default_factory=list)  # metrics of the checkpoint's epochs
    saved_fingerprint: dict | None = None
    config_json: dict | None = None

    @property
    def paths(self) -> dict[str, Path]:
        return {name: self.out / name for name in RUN_FILES}

    @property
    def start_epoch(self) -> int:
        return 0 if self.checkpoint is None else int(self.checkpoint["epoch"])

    @classmethod
    def open(cls, out: Path, resume: bool, overwrite: bool) -> RunFolder:
        """Decide fresh, resumed or refused (every rank decides the same way); nothing in the
        folder changes here."""
        folder = cls(out)
        paths = folder.paths
        folder.existing = [n for n, p in paths.items() if p.exists()]
        if folder.existing and not resume and not overwrite:
            raise FileExistsError(
                f"{out} already holds a run ({', '.join(folder.existing)}); pass resume=True to "
                "continue it, overwrite=True to replace it, or choose another out_dir"
            )
        if resume and paths["checkpoint.pt"].is_file():
            checkpoint = _load_training_checkpoint(paths["checkpoint.pt"])
            if not paths["config.json"].is_file():
                raise RunFolderError(f"cannot resume {out}: config.json is missing; restore it, "
                                     "or start again with overwrite=True (--overwrite)")
            folder.checkpoint = checkpoint
            folder.config_json = read_json(paths["config.json"])
            folder.saved_fingerprint = checkpoint.get("fingerprint") or _fingerprint_of(
                folder.config_json, checkpoint["config"])
            folder.records = _read_log(paths["metrics.jsonl"], checkpoint)
        elif resume and folder.existing:
            recorded = [n for n in folder.existing if n != "config.json"]
            if recorded:  # never wipe finished epochs because their checkpoint is gone
                raise RunFolderError(
                    f"cannot resume {out}: checkpoint.pt is missing but {', '.join(recorded)} "
                    "record(s) finished epochs; nothing was changed. Restore checkpoint.pt, or "
                    "start again with overwrite=True (--overwrite) or another out_dir")
            # only config.json: the run stopped before its first epoch ended; restart it
            folder.config_json = read_json(paths["config.json"])
            folder.saved_fingerprint = _fingerprint_of(folder.config_json,
                                                       folder.config_json.get("train"))
        return folder

    def check(self, fingerprint: dict, model: nn.Module) -> None:
        """Refuse a resume of another run; load the checkpoint's weights into ``model``."""
        paths = self.paths
        if self.saved_fingerprint is not None:
            _check_resumable(self.saved_fingerprint, fingerprint,
                             paths["checkpoint.pt" if self.checkpoint else "config.json"])
        if self.checkpoint is not None:
            load_weights(model, self.checkpoint["model"], paths["checkpoint.pt"])

    def prepare(self, log) -> None:
        """After every check has passed (rank 0): clear leftovers and what a fresh run
        replaces, and drop metrics lines written after the last checkpoint."""
        paths, start = self.paths, self.start_epoch
        for tmp in remove_leftovers(self.out, RUN_FILES):
            log(f"note: removed {tmp.name}, left by an interrupted write")
        if self.checkpoint is None:
            for n in self.existing:  # overwrite, or resume of a run without a checkpoint
                paths[n].unlink()
        elif len(self.records) > start:  # crash between the log line and the checkpoint
            log(f"note: dropping {len(self.records) - start} metrics line(s) written after the "
                f"last checkpoint (epoch {start})")
            atomic_write_text(paths["metrics.jsonl"], "".join(
                json.dumps(r, allow_nan=False) + "\n" for r in self.records[:start]))

    def write_config(self, config, ds, extra: dict, net: nn.Module, seeded: bool,
                     run_info: dict) -> None:
        """``config.json``: a fresh run's description, or a resumed run's updated settings
        and one more ``resumed`` entry."""
        if self.checkpoint is None:
            cfg_json = {
                "train": config.to_dict(),
                "extra": extra,
                "dataset": _dataset_info(ds),
                "model": {
                    "class": f"{type(net).__module__}.{type(net).__qualname__}",
                    "parameters": sum(p.numel() for p in net.parameters()),
                    "seeded": seeded,
                },
                "run": {**run_info, "convnn": __version__, "started": local_time()},
                "resumed": [],
            }
        else:
            cfg_json = self.config_json
            cfg_json["train"] = config.to_dict()
            cfg_json.setdefault("resumed", []).append(
                {"from_epoch": self.start_epoch, "time": local_time(), **run_info}
            )
        atomic_write_json(self.paths["config.json"], cfg_json)

    def save_epoch(self, records: list[dict], summary: dict) -> None:
        """One finished epoch: its metrics line, then ``summary.json`` (every epoch; the
        checkpoint follows the run's cadence, and lines past it are dropped on resume)."""
        append_jsonl_atomic(self.paths["metrics.jsonl"], records[-1])
        atomic_write_json(self.paths["summary.json"], summary)

    def save_checkpoint(self, records: list[dict], checkpoint: dict) -> None:
        """The checkpoint after the last of ``records`` (format :data:`CHECKPOINT_FORMAT`,
        with a digest of the log)."""
        save_checkpoint({"format": CHECKPOINT_FORMAT, "epoch": records[-1]["epoch"],
                         **checkpoint, "log": log_summary(records)},
                        self.paths["checkpoint.pt"])
