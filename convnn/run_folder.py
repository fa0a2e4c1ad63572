"""The run folder of :func:`convnn.train.fit`: its one writer and its one reader.

A run folder holds ``config.json`` (what the run is: training settings, model, dataset),
``metrics.jsonl`` (one line per finished epoch), ``checkpoint.pt`` with its SHA-256 sidecar,
``summary.json`` and ``test_predictions.npz`` (the predicted class of every test image at the
final epoch, for paired tests between runs scored on the same images). The file names appear in this module only; everything else reads a
folder through :meth:`RunFolder.read` and writes it through :class:`RunFolder`.

**The checkpoint is the authority.** A run has finished when its checkpoint, verified
against its SHA-256, holds the last epoch. After every epoch the metrics line is written,
then the checkpoint (at the run's cadence, ``TrainConfig.checkpoint_every`` /
``checkpoint_minutes``), and only then ``summary.json``, which records the checkpoint's
epoch and SHA-256. A kill at any moment therefore leaves a folder that reads as what it
holds: lines past the checkpoint are dropped on resume, and a summary that does not record
the checkpoint on disk is not trusted.

The checkpoint carries the run's fingerprint (training settings, model config, dataset
content), so an edited ``config.json`` is detected when the run is evaluated or resumed.
What the checkpoint holds, and how older formats are read, is :mod:`convnn.checkpoint`'s.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from ._io import (
    CHECKSUM_SUFFIX,
    CheckpointError,
    FolderLockedError,
    HeldLock,
    LinkRefusedError,
    _read_checksums,
    _sha256,
    append_jsonl_atomic,
    atomic_target,
    atomic_write_json,
    atomic_write_text,
    folder_lock,
    read_bytes,
    read_json,
    refuse_link,
    remove_leftovers,
    verify_checksum,
)
from ._version import __version__
from .checkpoint import (
    DATA_LOCATION,
    log_digest,
    log_summary,
    model_weights,
    read_checkpoint,
    upgrade_fingerprint,
    write_checkpoint,
    write_weights,
)

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "LOCK",
    "LOG_FILES",
    "METRICS",
    "PREDICTIONS",
    "RESUMABLE_CHANGES",
    "RESUMABLE_EXTRA",
    "RETURNED_FILES",
    "RUN_FILES",
    "STUDY_PREDICTIONS",
    "STUDY_WEIGHTS",
    "SUMMARY",
    "TRAIN_LOG",
    "ImagePredictions",
    "RunFolder",
    "RunFolderBusyError",
    "RunFolderError",
    "RunRecord",
    "config_fingerprint",
    "copy_logs",
    "copy_study_log",
    "expect_type",
    "find_run_folders",
    "is_run_folder",
    "load_run_checkpoint",
    "load_weights",
    "parse_logs",
    "read_log_bytes",
    "read_predictions",
    "run_fingerprint",
    "run_lock",
    "save_predictions",
    "save_weights",
    "strict_json",
    "study_log_path",
    "study_predictions_path",
    "study_run_folder",
    "study_run_folders",
    "study_run_name",
    "study_run_seed",
    "study_weights_path",
]

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
#: The final epoch's predicted class of every test image, in the test set's order (written by
#: :meth:`RunFolder.save_predictions`; older run folders have none).
PREDICTIONS = "test_predictions.npz"
LOCK = ".lock"
#: The files of a run folder.
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, CHECKPOINT + CHECKSUM_SUFFIX, SUMMARY, PREDICTIONS)
#: The files that are logs (committed and packed; checkpoints are not).
LOG_FILES = (CONFIG, METRICS, SUMMARY)
#: What a campaign packs and ``import-runs`` files of a run: its logs and its test predictions
#: (a few KB; binary).
RETURNED_FILES = (*LOG_FILES, PREDICTIONS)
#: TrainConfig fields that may change when a run is resumed.
RESUMABLE_CHANGES = ("epochs", "log_every", "compile", "eval_batch_size", "deterministic",
                     "checkpoint_every", "checkpoint_minutes")
#: Keys of ``extra`` that may change on resume (the command line, the data's location).
RESUMABLE_EXTRA = ("command", "dataset.root", "dataset.source")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked: locked, damaged, or holding another run.
    Nothing in the folder was changed."""


class RunFolderBusyError(RunFolderError):
    """Another live process holds the run folder's lock (it is busy, not broken)."""


def local_time() -> str:
    return datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds")


def refuse_links(folder: Path) -> None:
    """Refuse a run folder where one of its files (or the lock) is a symbolic link: one
    :class:`~convnn._io.LinkRefusedError` naming the link, before anything is read."""
    for name in (*RUN_FILES, LOCK):
        refuse_link(folder / name)


def is_run_config(cfg) -> bool:
    """Whether a ``config.json``'s content was written by :func:`convnn.train.fit` (a JSON
    object with a ``"train"`` section): a folder whose ``config.json`` is anything else
    belongs to another program and is never resumed, overwritten or read."""
    return isinstance(cfg, dict) and isinstance(cfg.get("train"), dict)


def _refuse_foreign_config(out: Path) -> None:
    path = out / CONFIG
    if not path.is_file():
        return
    cfg = read_json(path)  # not JSON, or not an object: its own one-line error
    if not is_run_config(cfg):
        raise RunFolderError(
            f"{path} is not a convnn run config (it has no \"train\" settings); "
            f"{out} belongs to another program or holds a damaged run, and nothing in it was "
            "changed. Choose another out_dir")


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a run's logs (a config and a metrics log)."""
    path = Path(path)
    return (path / CONFIG).is_file() and (path / METRICS).is_file()


# --------------------------------------------------------------------------- the checkpoint
def load_weights(model: nn.Module, state: dict, path: Path) -> None:
    """``model.load_state_dict(state)``, with a one-line error naming the checkpoint: the one
    place weights are put into a model (a run's checkpoint, or a weights file of
    :func:`read_weights`)."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as err:
        detail = [ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()]
        raise RunFolderError(
            f"the weights in {path} do not fit the model ({detail[0] if detail else err}); "
            "the run folder belongs to another model configuration") from None


def save_weights(run_dir: str | os.PathLike, dest: str | os.PathLike) -> int:
    """Write a run's final model weights to ``dest`` (a float16 ``state_dict`` with a SHA-256
    sidecar, small enough to commit: :func:`convnn.checkpoint.write_weights`), read through
    :meth:`RunFolder.read` (checksum verified, ``weights_only=True``); returns the file's
    size. :func:`convnn.checkpoint.read_weights` reads it back."""
    checkpoint = RunFolder.read(run_dir).checkpoint
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint to take weights from")
    return write_weights(checkpoint, dest)


# --------------------------------------------------------------------------- fingerprints
def _dataset_info(ds) -> dict:
    """The dataset section of ``config.json``: what the data is (with its content hash) and,
    under :data:`DATA_LOCATION`, where it was."""
    from .data import content_digest, dataset_fingerprint

    info = {
        "name": ds.name,
        "source": ds.source,
        "classes": ds.num_classes,
        "image_size": list(ds.image_size),
        "train_images": ds.num_train,
        "test_images": ds.num_test,
        "mean": list(ds.mean),
        "std": list(ds.std),
        "synthetic": bool(getattr(ds, "synthetic", False)),
        "content": dataset_fingerprint(ds),
    }
    digest = content_digest(ds)  # every image and label (older runs recorded the sample only)
    if digest is not None:
        info["content_sha256"] = digest
    for key in ("train_per_class", "test_per_class"):
        if getattr(ds, key, None) is not None:
            info[key] = getattr(ds, key)
    if getattr(ds, "root", None) is not None:
        info["root"] = str(ds.root)
    return info


def _model_info(net: nn.Module, model_config: dict | None) -> dict:
    info = {"class": f"{type(net).__module__}.{type(net).__qualname__}",
            "parameters": sum(p.numel() for p in net.parameters())}
    if model_config is not None:
        info["config"] = model_config
    return info


def _without(d: dict, dotted: tuple[str, ...]) -> dict:
    """A copy of nested dict ``d`` without the ``a.b`` keys in ``dotted``."""
    out = {}
    for k, v in d.items():
        if k in dotted:
            continue
        inner = tuple(x[len(k) + 1:] for x in dotted if x.startswith(f"{k}."))
        out[k] = _without(v, inner) if isinstance(v, dict) and inner else v
    return out


def run_fingerprint(config, ds, extra: dict, net: nn.Module,
                    model_config: dict | None = None) -> dict:
    """Everything that defines a run, except what may change on resume: the training
    settings, the data (what it is, not where it is), the caller's ``extra`` and the model
    (its class, size and config)."""
    fp = {"train": {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_CHANGES},
          "dataset": _dataset_info(ds), "extra": _without(extra, RESUMABLE_EXTRA),
          "model": _model_info(net, model_config)}
    # tuples as lists, as they come from disk
    return upgrade_fingerprint(json.loads(json.dumps(fp)))


def config_fingerprint(cfg_json: dict) -> dict:
    """The fingerprint a ``config.json`` describes (compare it with the checkpoint's)."""
    fp: dict = {}
    if isinstance(cfg_json.get("train"), dict):
        fp["train"] = {k: v for k, v in cfg_json["train"].items() if k not in RESUMABLE_CHANGES}
    if isinstance(cfg_json.get("dataset"), dict):
        fp["dataset"] = dict(cfg_json["dataset"])
    if isinstance(cfg_json.get("extra"), dict):
        fp["extra"] = _without(cfg_json["extra"], RESUMABLE_EXTRA)
    if isinstance(cfg_json.get("model"), dict):
        fp["model"] = {k: v for k, v in cfg_json["model"].items()
                       if k in ("class", "parameters", "config")}
    return upgrade_fingerprint(fp)


_MISSING = "<absent>"


def _differences(saved, current, prefix: str = ""):
    if isinstance(saved, dict) and isinstance(current, dict):
        keys = set(saved) | set(current)
        if prefix == "dataset.":  # facts an older run did not record are not compared, but
            keys = {k for k in saved if k not in DATA_LOCATION  # every fact it recorded
                    and not (saved[k] is None and k not in current)}  # (None: not recorded)
        for k in sorted(keys, key=str):
            yield from _differences(saved.get(k, _MISSING), current.get(k, _MISSING),
                                    f"{prefix}{k}.")
    elif saved != current:
        yield prefix[:-1], saved, current


def _changes(saved: dict, current: dict) -> str:
    """The differences of two fingerprints, as text (``""``: none). Sections absent from
    ``saved`` (older run folders) are not compared."""
    changed = list(_differences(saved, {k: v for k, v in current.items() if k in saved}))
    shown = changed if len(changed) <= 6 else [*changed[:6], ("...", "", "")]
    return ", ".join(f"{k}: {a!r} -> {b!r}" if k != "..." else "..." for k, a, b in shown)


def _check_resumable(saved: dict, current: dict, path: Path) -> None:
    """Raise unless fingerprint ``current`` equals ``saved``."""
    detail = _changes(saved, current)
    if detail:
        raise RunFolderError(
            f"cannot resume {path.parent}: this is not the run it holds ({path.name} differs "
            f"in {detail}); only {list(RESUMABLE_CHANGES)} and the data's location may change "
            "on resume. Choose another out_dir for a new run, or overwrite=True (--overwrite) "
            "to replace it")


def fingerprint_digest(fp: dict) -> str:
    """A SHA-256 of a fingerprint (what ``summary.json`` records of the checkpoint's)."""
    text = json.dumps(upgrade_fingerprint(fp), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_config_matches(cfg_json: dict, checkpoint: dict, run_dir: Path) -> None:
    """Refuse a ``config.json`` that no longer describes the run its checkpoint holds."""
    saved = checkpoint["fingerprint"]
    if not isinstance(saved, dict):
        return  # format 1: the checkpoint recorded nothing to compare with
    detail = _changes(saved, config_fingerprint(cfg_json))
    if detail:
        raise RunFolderError(
            f"{run_dir / CONFIG} does not describe the run its {CHECKPOINT} holds (it differs "
            f"in {detail.replace(' -> ', ' in the checkpoint, now ')}); the file was edited. "
            "Restore it; the checkpoint is the authority")


def _recover_checkpoint(out: Path) -> str | None:
    """Move a complete checkpoint left in a temporary file into place when ``checkpoint.pt``
    is missing and the temporary file matches a hash of the sidecar (a kill between the
    sidecar's write and the rename); returns its old name, or ``None``. Any other temporary
    file is left for :meth:`RunFolder.prepare` to delete."""
    path = out / CHECKPOINT
    try:
        expected = set(_read_checksums(path) or [])
    except CheckpointError:
        return None
    for tmp in sorted(out.glob(f".{CHECKPOINT}.*.tmp")):
        if tmp.is_symlink() or not tmp.is_file():
            continue
        if _sha256(tmp) in expected:
            with contextlib.suppress(FileNotFoundError):  # another rank moved it first
                os.replace(tmp, path)
            return tmp.name
    return None


# --------------------------------------------------------------------------- the metrics log
def _parse_records(path: Path, strict: bool) -> tuple[list[dict], int]:
    """The epoch records of a metrics log and how many lines were skipped.

    ``strict`` (a run to resume): every line must be a JSON object with an int ``epoch``, in
    order from 1, and a numeric ``test_top1``; anything else raises. Otherwise (committed
    logs) a line cut off by a crash or not a record is skipped and counted."""
    if not path.is_file():
        return [], 0
    records, skipped = [], 0
    for n, line in enumerate(read_bytes(path).decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, parse_constant=_reject)
        except ValueError as err:
            if strict:
                raise RunFolderError(f"{path} line {n} is not valid JSON ({err}); the file is "
                                     "damaged or was edited: restore it or start the run "
                                     "again") from None
            skipped += 1
            continue
        epoch = record.get("epoch") if isinstance(record, dict) else None
        ok = (isinstance(epoch, int) and not isinstance(epoch, bool)
              and isinstance(record.get("test_top1"), (int, float))
              and not isinstance(record.get("test_top1"), bool))
        if strict and not (ok and epoch == len(records) + 1):
            raise RunFolderError(
                f"{path} is not in epoch order or not a metrics log (line {n} has epoch "
                f"{epoch!r}, expected {len(records) + 1}, with a numeric test_top1); it was "
                "edited or damaged. Restore it, or start again with overwrite=True "
                "(--overwrite)")
        if ok:
            records.append(record)
        else:
            skipped += 1
    return records, skipped


def _reject(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _checked_log(path: Path, checkpoint: dict) -> list[dict]:
    """The metrics records of a run to resume, checked against its checkpoint (lines past
    the checkpoint, from a crash between the writes, are kept here and dropped later)."""
    epoch = checkpoint["epoch"]
    if not path.is_file():
        raise RunFolderError(f"cannot resume {path.parent}: {path.name} is missing but "
                             f"{CHECKPOINT} is at epoch {epoch}; restore {path}, or start "
                             "again with overwrite=True (--overwrite)")
    try:
        records, _ = _parse_records(path, strict=True)
    except RunFolderError as err:
        raise RunFolderError(f"cannot resume: {err}") from None
    if len(records) < epoch:
        raise RunFolderError(
            f"cannot resume: {path} has {len(records)} epoch(s) but {CHECKPOINT} is at epoch "
            f"{epoch}; the log was edited or damaged. Restore it, or start again with "
            "overwrite=True (--overwrite)")
    kept, saved = records[:epoch], checkpoint["log"]
    if isinstance(saved, dict) and log_digest(kept) != saved.get("sha256"):
        found = log_summary(kept)
        raise RunFolderError(
            f"cannot resume: {path} does not match {CHECKPOINT} (the log's best test_top1 is "
            f"{found['best_test_top1']} at epoch {found['best_epoch']}, the checkpoint recorded "
            f"{saved.get('best_test_top1')} at epoch {saved.get('best_epoch')}; "
            "the log was edited or damaged). Restore it, or start again with "
            "overwrite=True (--overwrite)")
    return records


# --------------------------------------------------------------------------- test predictions
@dataclass(frozen=True)
class ImagePredictions:
    """The predicted class of every test image of one model, in the test set's order.

    Attributes:
        predicted: ``[N]`` integer array, the arg-max class of each test image.
        labels: ``[N]`` integer array, each image's label (the order the predictions follow).
        epoch: the epoch of the run they were made at (``None``: not from a run, e.g. a
            committed weights file).
    """

    predicted: np.ndarray
    labels: np.ndarray
    epoch: int | None = None

    @property
    def correct(self) -> np.ndarray:
        """``[N]`` bool: which images the model classified correctly."""
        return self.predicted == self.labels

    @property
    def top1(self) -> float:
        """Top-1 accuracy in %."""
        return 100.0 * float(self.correct.mean())


def _prediction_dtype(classes: int):
    return np.uint8 if classes <= 256 else np.int16


def save_predictions(path: str | os.PathLike, predicted, labels, *,
                     epoch: int | None = None) -> int:
    """Write ``predicted`` and ``labels`` (integer sequences or tensors of one length) to
    ``path`` as a compressed ``.npz`` (uint8 where the classes fit, else int16), atomically;
    returns the file's size. A run folder's file is written by :meth:`RunFolder.save_predictions`."""
    predicted = np.asarray(predicted.cpu() if hasattr(predicted, "cpu") else predicted)
    labels = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
    if predicted.ndim != 1 or predicted.shape != labels.shape or predicted.size == 0:
        raise ValueError(f"predicted and labels must be 1-D of one non-zero length, got shapes "
                         f"{predicted.shape} and {labels.shape}")
    dtype = _prediction_dtype(int(max(predicted.max(), labels.max())) + 1)
    arrays = {"predicted": predicted.astype(dtype), "labels": labels.astype(dtype)}
    if epoch is not None:
        arrays["epoch"] = np.int64(epoch)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    with atomic_target(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return Path(path).stat().st_size


def read_predictions(path: str | os.PathLike) -> ImagePredictions | None:
    """The test predictions of a run folder (its :data:`PREDICTIONS`) or of a predictions
    file of :func:`save_predictions`; ``None`` for a run folder without them (older runs, or
    a run that has not finished). A run folder's predictions whose epoch is not the last one
    of its metrics log (a resumed run that has not finished again) are ``None`` too.

    Raises:
        ValueError: the file is not a predictions file (one line, naming it).
    """
    path = Path(path)
    folder = path.is_dir()
    file = path / PREDICTIONS if folder else path
    refuse_link(file)
    if folder and not file.is_file():
        return None
    try:
        with np.load(io.BytesIO(read_bytes(file)), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{file} is not a predictions file ({' '.join(str(err).split())[:120]})"
                         ) from None
    predicted, labels = arrays.get("predicted"), arrays.get("labels")
    if (predicted is None or labels is None or predicted.ndim != 1
            or predicted.shape != labels.shape or predicted.dtype.kind not in "iu"
            or labels.dtype.kind not in "iu"):
        raise ValueError(f"{file} is not a predictions file (it needs 1-D integer arrays "
                         "'predicted' and 'labels' of one length)")
    epoch = int(arrays["epoch"]) if "epoch" in arrays else None
    out = ImagePredictions(predicted.astype(np.int64), labels.astype(np.int64), epoch)
    if folder:
        records, _ = _parse_records(path / METRICS, strict=False)
        if not records or records[-1]["epoch"] != epoch:
            return None
    return out


# --------------------------------------------------------------------------- the reader
CHECKPOINT_MODES = ("load", "verify", "none")


def strict_json(data: bytes, where: str):
    """Strict JSON (no NaN, no infinity, UTF-8), or a one-line ValueError naming ``where``."""

    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text} is not a finite number")
        return value

    def constant(text: str):
        raise ValueError(f"{text} is not a number a log may hold")

    try:
        return json.loads(data.decode("utf-8"), parse_float=number, parse_constant=constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        reason = " ".join(str(err).split())[:200]
        raise ValueError(f"{where} is not valid strict JSON ({reason})") from None




def expect_type(value, types, where: str, allow_none: bool = True):
    """``value`` if it has one of ``types`` (bool is not an int), else a ValueError."""
    if value is None and allow_none:
        return value
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in (
        types if isinstance(types, tuple) else (types,)))
    if not ok:
        names = "/".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise ValueError(f"{where} must be {names}, got {value!r:.80}")
    return value


def parse_logs(files: dict[str, bytes], where: str) -> RunRecord:
    """A run folder's logs given as bytes (``{file name: content}``, e.g. from a returned
    archive), read strictly: the reader for logs that are about to be filed.

    ``config.json`` must be a JSON object; every non-empty line of ``metrics.jsonl`` a JSON
    object, those with an ``epoch`` being epoch records (an int, increasing, with a numeric
    ``test_top1``); ``summary.json``, if present, an object. JSON is strict (no NaN or
    infinity, UTF-8). Anything else is a one-line ``ValueError`` naming ``where`` and the
    file (and line).
    """
    config = expect_type(strict_json(files[CONFIG], f"{where}/{CONFIG}"), dict,
                         f"{where}/{CONFIG}", allow_none=False)
    records: list[dict] = []
    for n, line in enumerate(files[METRICS].split(b"\n"), 1):
        if not line.strip():
            continue
        at = f"{where}/{METRICS} line {n}"
        record = expect_type(strict_json(line, at), dict, at, allow_none=False)
        if "epoch" not in record:
            continue
        epoch = expect_type(record["epoch"], int, f"{at}: epoch", allow_none=False)
        if epoch < 1 or (records and epoch <= records[-1]["epoch"]):
            raise ValueError(f"{at}: epoch {epoch} does not follow the epochs before it")
        expect_type(record.get("test_top1"), (int, float), f"{at}: test_top1", allow_none=False)
        records.append(record)
    summary = None
    if SUMMARY in files:
        summary = expect_type(strict_json(files[SUMMARY], f"{where}/{SUMMARY}"), dict,
                              f"{where}/{SUMMARY}", allow_none=False)
    return RunRecord(Path(where), config, records, summary)


@dataclass
class RunRecord:
    """What a run folder holds, as :meth:`RunFolder.read` found it.

    Attributes:
        path: the run folder.
        config: ``config.json``.
        records: the metrics log, one dict per finished epoch (lines cut off by a crash are
            skipped and counted in ``skipped_lines``).
        summary: ``summary.json``, or ``None`` (none, or unreadable).
        checkpoint: the loaded checkpoint (``checkpoint="load"``), else ``None``.
        checkpoint_epoch: the epoch of the verified checkpoint (``None``: no checkpoint, or
            not looked at).
        checkpoint_sha256: its SHA-256 (``None`` as above, or a checkpoint without sidecar).
    """

    path: Path
    config: dict
    records: list[dict] = field(default_factory=list)
    summary: dict | None = None
    checkpoint: dict | None = None
    checkpoint_epoch: int | None = None
    checkpoint_sha256: str | None = None
    skipped_lines: int = 0

    @property
    def extra(self) -> dict:
        extra = self.config.get("extra")
        return extra if isinstance(extra, dict) else {}

    @property
    def model_config(self) -> dict | None:
        """The model's :meth:`ModelConfig.to_dict` (older folders kept it under ``extra``)."""
        model = self.config.get("model")
        if isinstance(model, dict) and isinstance(model.get("config"), dict):
            return model["config"]
        return self.extra.get("model") if isinstance(self.extra.get("model"), dict) else None

    @property
    def dataset(self) -> dict:
        """Every recorded fact about the data (name, sizes, subset, source, content...)."""
        old = self.extra.get("dataset")
        new = self.config.get("dataset")
        return {**(old if isinstance(old, dict) else {}), **(new if isinstance(new, dict) else {})}

    @property
    def epochs_planned(self) -> int | None:
        epochs = (self.config.get("train") or {}).get("epochs")
        return int(epochs) if isinstance(epochs, int) and not isinstance(epochs, bool) else None

    @property
    def finished(self) -> bool:
        """The verified checkpoint holds the last planned epoch and ``summary.json`` records
        that checkpoint (older folders: the summary's epoch count matches it)."""
        if self.checkpoint_epoch is None or self.epochs_planned is None:
            return False
        if self.checkpoint_epoch != self.epochs_planned or not isinstance(self.summary, dict):
            return False
        recorded = self.summary.get("checkpoint")
        if isinstance(recorded, dict):
            return (recorded.get("sha256") == self.checkpoint_sha256
                    and recorded.get("epoch") == self.checkpoint_epoch)
        return self.summary.get("epochs_completed") == self.checkpoint_epoch


def find_run_folders(root: str | os.PathLike, *, max_depth: int | None = None) -> list[Path]:
    """The folders under ``root`` holding a metrics log (at most ``max_depth`` levels down),
    sorted; :func:`is_run_folder` tells which are complete run folders."""
    root = Path(root)
    found = {p.parent for p in root.rglob(METRICS)
             if max_depth is None or len(p.parent.relative_to(root).parts) <= max_depth}
    return sorted(found)


def read_log_bytes(run_dir: str | os.PathLike) -> dict[str, bytes]:
    """``{file name: bytes}`` of a run folder's logs (:data:`LOG_FILES`; plain files only, a
    symbolic link is left out), e.g. to compare them with logs about to be filed."""
    run_dir = Path(run_dir)
    return {name: (run_dir / name).read_bytes() for name in LOG_FILES
            if (run_dir / name).is_file() and not (run_dir / name).is_symlink()}


def copy_logs(run_dir: str | os.PathLike, dest: str | os.PathLike, *,
              config: dict | None = None, rewrite=None) -> Path:
    """Copy a run folder's logs (:data:`LOG_FILES`, never the checkpoint) into ``dest``,
    e.g. to commit them: ``config`` replaces ``config.json`` and ``rewrite(text)`` is applied
    to every file's text (e.g. to remove this machine's paths). Returns ``dest``."""
    run_dir, dest = Path(run_dir), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in LOG_FILES:
        if name == CONFIG and config is not None:
            text = json.dumps(config, indent=2) + "\n"
        elif (run_dir / name).is_file():
            text = read_bytes(run_dir / name).decode("utf-8")
        else:
            continue
        atomic_write_text(dest / name, rewrite(text) if rewrite else text)
    return dest


# --------------------------------------------------------------------------- a study's folder
#: The final weights of a study's runs (:mod:`convnn.study`): ``weights/<preset>.pt`` (the
#: study's weights seed) or ``weights/<preset>-seed<seed>.pt`` (:func:`study_weights_path`).
STUDY_WEIGHTS = "weights"
#: The training log of a study's run, in its committed run folder.
TRAIN_LOG = "train.log"


def study_run_name(preset: str, seed: int) -> str:
    """The run folder's name of ``preset`` trained with ``seed`` in a study folder."""
    return f"{preset}-seed{seed}"


def study_run_folder(root: str | os.PathLike, preset: str, seed: int) -> Path:
    """The run folder of ``preset`` trained with ``seed`` in study folder ``root``."""
    return Path(root) / study_run_name(preset, seed)


def study_run_folders(root: str | os.PathLike, preset: str) -> list[Path]:
    """The run folders of ``preset`` (one per seed: ``<preset>-seed<n>``) in study folder
    ``root``, sorted."""
    return sorted(p for p in Path(root).glob(f"{preset}-seed*")
                  if p.name[len(preset) + len("-seed"):].isdigit() and is_run_folder(p))


def study_run_seed(run_dir: str | os.PathLike) -> int:
    """The seed of a study's run folder, from its name (:func:`study_run_name`)."""
    return int(Path(run_dir).name.rsplit("-seed", 1)[1])


def study_log_path(root: str | os.PathLike, preset: str, seed: int) -> Path:
    """Where a study's run writes its training log while it trains: beside its run folder
    (``<preset>-seed<seed>.log``); :func:`copy_study_log` files it as :data:`TRAIN_LOG`."""
    return _log_beside(root, study_run_name(preset, seed))


def _log_beside(root: str | os.PathLike, run_name: str) -> Path:
    return Path(root) / f"{run_name}.log"


def copy_study_log(root: str | os.PathLike, run_dir: str | os.PathLike,
                   dest: str | os.PathLike, rewrite=None) -> bool:
    """Copy the training log of the study run ``run_dir`` (in study folder ``root``) into
    the run folder ``dest`` as :data:`TRAIN_LOG`, ``rewrite(text)`` applied; ``False`` when
    the run left no log."""
    log = _log_beside(root, Path(run_dir).name)
    if not log.is_file():
        return False
    text = read_bytes(log).decode("utf-8")
    atomic_write_text(Path(dest) / TRAIN_LOG, rewrite(text) if rewrite else text)
    return True


def study_weights_path(root: str | os.PathLike, preset: str, seed: int | None = None) -> Path:
    """The weights file of ``preset`` in study folder ``root``: ``weights/<preset>.pt``
    (``seed=None``: the study's weights seed) or ``weights/<preset>-seed<seed>.pt``."""
    name = preset if seed is None else study_run_name(preset, seed)
    return Path(root) / STUDY_WEIGHTS / f"{name}.pt"


#: The per-image test predictions of a study's committed weights (:func:`save_predictions`):
#: ``predictions/<weights file's stem>.npz`` (:func:`study_predictions_path`).
STUDY_PREDICTIONS = "predictions"


def study_predictions_path(root: str | os.PathLike, preset: str,
                           seed: int | None = None) -> Path:
    """The predictions file of the weights :func:`study_weights_path` names, in study folder
    ``root``: ``predictions/<preset>.npz`` or ``predictions/<preset>-seed<seed>.npz``."""
    stem = study_weights_path(root, preset, seed).stem
    return Path(root) / STUDY_PREDICTIONS / f"{stem}.npz"


def load_run_checkpoint(run_dir: str | os.PathLike) -> tuple[dict, dict]:
    """``(config, checkpoint)`` of a run folder: :meth:`RunFolder.read` with the checkpoint
    loaded (verified, ``weights_only=True``, on the CPU) and checked against ``config.json``.

    ``config["train"]`` is a :meth:`TrainConfig.to_dict`; ``checkpoint`` has ``"model"`` (a
    state dict), ``"optimizer"``, ``"scaler"``, ``"epoch"`` (finished epochs), ``"rng"`` and
    ``"config"``.
    """
    run = RunFolder.read(run_dir, checkpoint="load")
    if run.checkpoint is None:
        raise FileNotFoundError(f"{Path(run_dir) / CHECKPOINT} does not exist: not a (started) "
                                "run folder")
    return run.config, run.checkpoint


# --------------------------------------------------------------------------- the lock
@contextlib.contextmanager
def run_lock(out: Path, ctx, log=None):
    """Rank 0 holds the run folder's lock for the whole run; every rank fails if it cannot.
    Yields rank 0's :class:`~convnn._io.HeldLock` (``None`` on the other ranks)."""
    error, stack, busy, held = None, contextlib.ExitStack(), False, []
    if ctx.rank == 0:
        try:
            held = [stack.enter_context(folder_lock(out, LOCK, log=log))]
        except FolderLockedError as err:
            error, busy = str(err), True
        except LinkRefusedError as err:
            error = str(err)
        except OSError as err:
            where = err.filename or out
            error = (f"cannot use {out} as a run folder: {err.strerror or err} ({where}); "
                     "choose another out_dir")
    if ctx.enabled:
        import torch.distributed as dist

        box = [(error, busy)]
        dist.broadcast_object_list(box, src=0)
        error, busy = box[0]
    if error:
        stack.close()
        raise (RunFolderBusyError if busy else RunFolderError)(error)
    with stack:
        yield held[0] if held else None


# --------------------------------------------------------------------------- the folder
@dataclass
class RunFolder:
    """What a run folder holds when a call opens it: nothing (a fresh run), a checkpoint to
    resume from, or only ``config.json`` (a run that stopped before its first epoch ended);
    and the writes of the run."""

    out: Path
    existing: list[str] = field(default_factory=list)  # run files present when opened
    checkpoint: dict | None = None
    records: list[dict] = field(default_factory=list)  # metrics of the checkpoint's epochs
    saved_fingerprint: dict | None = None
    config_json: dict | None = None
    saved_checkpoint: dict | None = None  # {"epoch", "sha256"} of the checkpoint on disk
    unsaved_first_epoch: bool = False  # a kill during the first checkpoint write
    recovered: str | None = None  # the temporary file the checkpoint was recovered from
    held: HeldLock | None = None  # the lock: checked before every write

    def _check_lock(self) -> None:
        if self.held is not None:
            self.held.check()

    @property
    def paths(self) -> dict[str, Path]:
        return {name: self.out / name for name in RUN_FILES}

    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT

    @property
    def start_epoch(self) -> int:
        return 0 if self.checkpoint is None else int(self.checkpoint["epoch"])

    @classmethod
    def read(cls, path: str | os.PathLike, *, checkpoint: str = "load") -> RunRecord:
        """Read a run folder: the one reader of every file in it.

        Args:
            path: the run folder.
            checkpoint: ``"load"`` (default): load the checkpoint, if any, verified against
                its SHA-256 with ``weights_only=True``, and check ``config.json`` against
                the fingerprint it carries; ``"verify"``: check the checkpoint's SHA-256
                and find its epoch without unpickling the weights where ``summary.json``
                records it; ``"none"``: the logs only (committed runs have no checkpoint).

        Raises:
            FileNotFoundError: no ``config.json``.
            ValueError: ``config.json`` is not a JSON object; a damaged or foreign
                checkpoint (:class:`~convnn._io.CheckpointError`); a ``config.json`` that
                differs from its checkpoint (:class:`RunFolderError`).
        """
        if checkpoint not in CHECKPOINT_MODES:
            raise ValueError(f"checkpoint must be one of {CHECKPOINT_MODES}, got {checkpoint!r}")
        path = Path(path)
        refuse_links(path)
        if not (path / CONFIG).is_file():
            raise FileNotFoundError(f"{path / CONFIG} does not exist: not a run folder (a run "
                                    f"folder has {CONFIG} and {METRICS})")
        _refuse_foreign_config(path)
        config = read_json(path / CONFIG)
        records, skipped = _parse_records(path / METRICS, strict=False)
        summary = None
        if (path / SUMMARY).is_file():
            with contextlib.suppress(ValueError, OSError):
                summary = read_json(path / SUMMARY)
        run = RunRecord(path, config, records, summary, skipped_lines=skipped)
        ckpt_path = path / CHECKPOINT
        if checkpoint == "none" or not ckpt_path.is_file():
            return run
        if not isinstance(config.get("train"), dict):
            raise RunFolderError(f"{path / CONFIG} has no \"train\" settings; it was not "
                                 "written by convnn.train")
        recorded = (summary or {}).get("checkpoint")
        if checkpoint == "verify":
            sha = verify_checksum(ckpt_path)
            if (isinstance(recorded, dict) and sha is not None and recorded.get("sha256") == sha
                    and isinstance(recorded.get("epoch"), int) and recorded.get(
                        "fingerprint") == fingerprint_digest(config_fingerprint(config))):
                run.checkpoint_epoch, run.checkpoint_sha256 = recorded["epoch"], sha
                return run
        loaded = read_checkpoint(ckpt_path)
        _check_config_matches(config, loaded, path)
        run.checkpoint_epoch = int(loaded["epoch"])
        run.checkpoint_sha256 = verify_checksum(ckpt_path)
        if checkpoint == "load":
            run.checkpoint = loaded
        return run

    @classmethod
    def open(cls, out: Path, resume: bool, overwrite: bool) -> RunFolder:
        """Decide fresh, resumed or refused (every rank decides the same way); nothing in the
        folder changes here."""
        folder = cls(out)
        refuse_links(out)
        _refuse_foreign_config(out)  # with or without resume or overwrite
        paths = folder.paths
        folder.existing = [n for n, p in paths.items() if p.exists()]
        if folder.existing and not resume and not overwrite:
            raise FileExistsError(
                f"{out} already holds a run ({', '.join(folder.existing)}); pass resume=True to "
                "continue it, overwrite=True to replace it, or choose another out_dir"
            )
        sidecar = paths[CHECKPOINT + CHECKSUM_SUFFIX]
        if resume and not paths[CHECKPOINT].is_file() and sidecar.is_file():
            folder.recovered = _recover_checkpoint(out)
        if resume and paths[CHECKPOINT].is_file():
            checkpoint = read_checkpoint(paths[CHECKPOINT])
            if not paths[CONFIG].is_file():
                raise RunFolderError(f"cannot resume {out}: {CONFIG} is missing; restore it, "
                                     "or start again with overwrite=True (--overwrite)")
            folder.checkpoint = checkpoint
            folder.config_json = read_json(paths[CONFIG])
            try:
                _check_config_matches(folder.config_json, checkpoint, out)
            except RunFolderError as err:
                raise RunFolderError(f"cannot resume: {err}") from None
            folder.saved_fingerprint = checkpoint["fingerprint"] or config_fingerprint(
                {**folder.config_json, "train": checkpoint["config"]})
            folder.saved_checkpoint = {"epoch": int(checkpoint["epoch"]),
                                       "sha256": verify_checksum(paths[CHECKPOINT]),
                                       "fingerprint": fingerprint_digest(
                                           folder.saved_fingerprint)}
            folder.records = _checked_log(paths[METRICS], checkpoint)
        elif resume and folder.existing:
            recorded = [n for n in folder.existing if n != CONFIG]
            if ([n for n in recorded if n != sidecar.name] == [METRICS]
                    and len(_parse_records(paths[METRICS], False)[0]) <= 1):
                # killed while its first checkpoint was written (no summary yet: the first
                # epoch of a call always ends with one; a sidecar, when the kill came after
                # it, but no complete temporary file to recover): that epoch is redone
                recorded, folder.unsaved_first_epoch = [], True
            if recorded:  # never wipe finished epochs because their checkpoint is gone
                raise RunFolderError(
                    f"cannot resume {out}: {CHECKPOINT} is missing but {', '.join(recorded)} "
                    f"record(s) finished epochs; nothing was changed. Restore {CHECKPOINT}, or "
                    "start again with overwrite=True (--overwrite) or another out_dir")
            # only config.json: the run stopped before its first epoch ended; restart it
            folder.config_json = read_json(paths[CONFIG])
            folder.saved_fingerprint = config_fingerprint(folder.config_json)
        return folder

    def check(self, fingerprint: dict, model: nn.Module, epochs: int) -> None:
        """Refuse a resume of another run, or with fewer epochs than it has finished; load
        the checkpoint's weights into ``model``."""
        if self.saved_fingerprint is not None:
            _check_resumable(self.saved_fingerprint, fingerprint,
                             self.out / (CHECKPOINT if self.checkpoint else CONFIG))
        if self.start_epoch > epochs:
            raise RunFolderError(
                f"cannot resume {self.out} with epochs={epochs}: it has already finished "
                f"{self.start_epoch} epochs; ask for at least {self.start_epoch} (nothing was "
                "changed)")
        if self.checkpoint is not None:
            load_weights(model, model_weights(self.checkpoint), self.checkpoint_path)

    def prepare(self, log) -> None:
        """After every check has passed (rank 0): clear leftovers and what a fresh run
        replaces, and drop metrics lines written after the last checkpoint."""
        self._check_lock()
        paths, start = self.paths, self.start_epoch
        for tmp in remove_leftovers(self.out, RUN_FILES):
            log(f"note: removed {tmp.name}, left by an interrupted write")
        if self.recovered:
            log(f"note: recovered {CHECKPOINT} (epoch {self.start_epoch}) from {self.recovered}"
                ", a complete write stopped before its rename (it matches its SHA-256 sidecar)")
        if self.unsaved_first_epoch:
            log("note: the run was stopped while its first checkpoint was written (the write "
                "was not complete, so nothing could be recovered); its first epoch is trained "
                "again")
        if self.checkpoint is None:
            for n in self.existing:  # overwrite, or resume of a run without a checkpoint
                paths[n].unlink()
        elif len(self.records) > start:  # crash between the log line and the checkpoint
            log(f"note: dropping {len(self.records) - start} metrics line(s) written after the "
                f"last checkpoint (epoch {start})")
            atomic_write_text(paths[METRICS], "".join(
                json.dumps(r, allow_nan=False) + "\n" for r in self.records[:start]))

    def write_config(self, config, ds, extra: dict, net: nn.Module, seeded: bool,
                     run_info: dict, model_config: dict | None = None) -> None:
        """``config.json``: a fresh run's description (training settings, the model with its
        config, the dataset), or a resumed run's updated settings, the data's current
        location and one more ``resumed`` entry."""
        self._check_lock()
        data = _dataset_info(ds)
        if self.checkpoint is None:
            cfg_json = {
                "train": config.to_dict(),
                "extra": extra,
                "dataset": data,
                "model": {**_model_info(net, model_config), "seeded": seeded},
                "run": {**run_info, "convnn": __version__, "started": local_time()},
                "resumed": [],
            }
        else:
            cfg_json = self.config_json
            cfg_json["train"] = config.to_dict()
            if isinstance(cfg_json.get("dataset"), dict):
                for key, value in data.items():  # the location, and facts an older run
                    if key in DATA_LOCATION or key not in cfg_json["dataset"]:  # lacked
                        cfg_json["dataset"][key] = value
            cfg_json.setdefault("resumed", []).append(
                {"from_epoch": self.start_epoch, "time": local_time(), **run_info}
            )
        atomic_write_json(self.paths[CONFIG], cfg_json)

    def save_epoch(self, records: list[dict]) -> None:
        """One finished epoch's metrics line (the checkpoint and the summary follow)."""
        self._check_lock()
        append_jsonl_atomic(self.paths[METRICS], records[-1])

    def save_checkpoint(self, checkpoint: dict) -> None:
        """Write a checkpoint of :func:`convnn.checkpoint.build_checkpoint` (the summary that
        follows records its epoch and SHA-256)."""
        self._check_lock()
        sha = write_checkpoint(checkpoint, self.checkpoint_path)
        self.saved_checkpoint = {"epoch": checkpoint["epoch"], "sha256": sha,
                                 "fingerprint": fingerprint_digest(checkpoint["fingerprint"])}

    def save_predictions(self, epoch: int, predicted, labels) -> None:
        """The final epoch's test predictions (:data:`PREDICTIONS`), written before that
        epoch's checkpoint: a kill in between redoes the epoch and writes them again."""
        self._check_lock()
        save_predictions(self.out / PREDICTIONS, predicted, labels, epoch=epoch)

    def save_summary(self, summary: dict) -> dict:
        """``summary.json``, recording the checkpoint on disk (its epoch and SHA-256): written
        after the checkpoint, so a summary never claims weights that are not there. Returns
        what was written."""
        self._check_lock()
        summary = {**summary, "checkpoint": self.saved_checkpoint}
        atomic_write_json(self.paths[SUMMARY], summary)
        return summary
