"""A training campaign: the runs that matter most, in order, fitted into a time budget.

GPU time comes in short sessions. :func:`run_campaign` spends one session's minutes on
:data:`QUEUE`, the ordered list of what to train, and leaves everything needed to go on in a
campaign folder, so the next command on the same machine continues where this one stopped:

1. For each group of the queue (runs compared with each other, e.g. VGG-11 Conv2d and
   branching λ = 0.5) it trains the **first epoch** of every run. That measures the device's
   speed on this run: seconds per epoch (the epoch's own time, ``epoch_seconds`` of its
   log) and the setup cost of a call (loading data, building the model).
2. It then **plans** the group's epoch count ``E``, the same for every run of the group: the
   paper's full 150 epochs where they fit in the time left, otherwise the most epochs that
   fit, stated as a reduced count (never fewer than ``min_epochs``; a group that fits fewer
   waits for the next command, which plans it with fresh time).
3. It **continues** each run to ``E`` epochs from its checkpoint. After every epoch it checks
   that the next one still fits; if not, it stops there (the run stays resumable) and the
   next command continues it.

The campaign folder holds ``campaign.json`` (measurements, plans, commands), ``campaign.log``
and ``runs/<preset>/`` (run folders with checkpoints). After every run segment the logs
(``config.json``, ``metrics.jsonl``, ``summary.json`` of every run, plus ``campaign.json``
and ``campaign.log``; no checkpoints) are packed into ``campaign-logs-N.tar.gz`` files of at
most 16 MB each, in ``logs_dir`` (default: the campaign folder). :func:`import_runs` files
returned logs into ``data/results/`` with their provenance.

Example (a CPU dry run of the mechanics with reduced models and a few hundred images):

    python -m convnn campaign --minutes 5 --out runs/campaign --smoke
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import io
import json
import math
import os
import posixpath
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._checks import check_bool, check_int
from ._io import (
    FolderLockedError,
    LockLostError,
    atomic_write_json,
    atomic_write_text,
    folder_lock,
    open_nofollow,
    read_bytes,
    refuse_link,
)
from .experiments import PRESETS, get_preset, paper_records, preset_for_record
from .run_folder import (
    CONFIG,
    METRICS,
    RETURNED_FILES,
    RunFolder,
    RunFolderBusyError,
    expect_type,
    find_run_folders,
    parse_logs,
    read_log_bytes,
    strict_json,
)

__all__ = [
    "LOG_PACK_BYTES",
    "QUEUE",
    "CampaignError",
    "OutOfTime",
    "QueueItem",
    "default_queue",
    "import_runs",
    "pack_logs",
    "queue_markdown",
    "run_campaign",
]

#: The largest log pack (bytes): each ``campaign-logs-N.tar.gz`` stays under it.
LOG_PACK_BYTES = 16 * 1024 * 1024
STATE_FILE = "campaign.json"
LOG_FILE = "campaign.log"
#: The campaign's lock: one campaign command per folder at a time.
LOCK_FILE = ".campaign.lock"
#: A run that failed this many times is skipped until ``retry_failed`` (``--retry-failed``).
MAX_ATTEMPTS = 3
#: Epochs of a smoke campaign's "full" run (reduced models on a few hundred images).
SMOKE_FULL_EPOCHS = 3
#: Seconds of a first epoch plus setup assumed for a run of a family not measured yet, on a
#: current data-centre GPU (the committed H200 logs: VGG-11 8-12 s per epoch, ViT-Tiny at
#: 224 px 10-19 s, plus 15-30 s of setup per call). Only used to decide whether a first
#: epoch can still start.
PRIOR_FIRST_EPOCH_SECONDS = {"vgg": 45.0, "vit": 60.0, "resnet": 600.0}


class CampaignError(ValueError):
    """A campaign folder that cannot be continued (another queue, a damaged state file)."""


class OutOfTime(Exception):
    """Raised by the epoch callback when the next epoch would not end before the deadline."""


@dataclass(frozen=True)
class QueueItem:
    """One group of the queue: runs trained for the same number of epochs and compared.

    Attributes:
        group: a short name (``"vgg11-c10-conv2d-vs-branching"``).
        presets: the runs, in training order.
        why: one line on why the group is where it is in the queue.
    """

    group: str
    presets: tuple[str, ...]
    why: str


#: The head of the queue: the headline comparisons first, then the lean ViT variant.
HEAD_QUEUE: tuple[QueueItem, ...] = (
    QueueItem("vgg11-c10-conv2d-vs-branching",
              ("vgg11-c10-conv2d", "vgg11-c10-branching-r0.5"),
              "VGG-11 on CIFAR-10: the paper's Conv2d baseline against branching λ = 0.5 "
              "(table 6.1, the first headline claim)"),
    QueueItem("vit-tiny-c10-attention-vs-convnn-random",
              ("vit-tiny-c10-attention", "vit-tiny-c10-convnn-random-r32-k9"),
              "ViT-Tiny on CIFAR-10 at 224 px: attention against ConvNN attention with random "
              "r = 32 (table 6.6, the second headline claim)"),
    QueueItem("vit-tiny-cifar-c10-lean",
              ("vit-tiny-cifar-c10-attention", "vit-tiny-cifar-c10-convnn-random-r32-k9"),
              "LEAN VARIANT, not in the paper: the same ViT comparison on the CIFAR-native "
              "ViT-Tiny (32 px, patch 4, 65 tokens instead of 197), several times cheaper per "
              "epoch; never compared "
              "with the paper's numbers"),
)


def default_queue() -> tuple[QueueItem, ...]:
    """:data:`HEAD_QUEUE`, then every other preset of a CIFAR-10 row of the paper's tables,
    one per group, in table order (a preset in several tables comes once, at its first)."""
    queue = list(HEAD_QUEUE)
    seen = {p for item in queue for p in item.presets}
    for record in paper_records():
        if record["dataset"] != "cifar10":
            continue
        preset = preset_for_record(record)
        if preset is None or preset.name in seen:
            continue
        seen.add(preset.name)
        queue.append(QueueItem(preset.name, (preset.name,),
                               f"table {record['table']} row (CIFAR-10)"))
    return tuple(queue)


#: The committed campaign queue (see :func:`default_queue`).
QUEUE = default_queue()


def queue_markdown(queue: Sequence[QueueItem] = QUEUE, limit: int | None = None) -> str:
    """The queue as a Markdown table (the first ``limit`` groups)."""
    lines = ["| # | group | runs | why |", "|---|---|---|---|"]
    for i, item in enumerate(queue[:limit], 1):
        lines.append(f"| {i} | {item.group} | {', '.join(f'`{p}`' for p in item.presets)} "
                     f"| {item.why} |")
    if limit is not None and len(queue) > limit:
        lines.append(f"| … | {len(queue) - limit} more groups | | |")
    return "\n".join(lines)


def _check_queue(queue: Sequence[QueueItem]) -> tuple[QueueItem, ...]:
    queue = tuple(queue)
    if not queue:
        raise ValueError("queue is empty: nothing to train")
    seen: set[str] = set()
    for item in queue:
        if not isinstance(item, QueueItem) or not item.presets:
            raise ValueError(f"queue items must be QueueItem with presets, got {item!r}")
        for name in item.presets:
            get_preset(name)  # ValueError naming an unknown preset
            if name in seen:
                raise ValueError(f"queue lists preset {name!r} twice")
            seen.add(name)
    return queue


# --------------------------------------------------------------------------- the trainer
#: ``trainer(preset, run_dir, epochs, callback, log)`` trains ``preset`` in ``run_dir`` up
#: to ``epochs`` epochs, resuming from the folder's checkpoint; ``callback(record)`` is called
#: after every epoch and may raise :class:`OutOfTime`.
Trainer = Callable[[str, Path, int, Callable[[dict], None], Callable[[str], None]], None]


def preset_trainer(*, smoke: bool, data_dir=None, device=None, amp: str | None = None
                   ) -> Trainer:
    """The real trainer: :func:`convnn.runner.run_preset` with ``resume=True``."""

    def trainer(preset: str, run_dir: Path, epochs: int, callback, log) -> None:
        from .runner import run_preset

        overrides = {"amp": amp} if amp is not None else {}
        run_preset(preset, epochs=epochs, smoke=smoke, out_dir=run_dir, data_dir=data_dir,
                   device=device, resume=True, progress=False, download=False, log=log,
                   callback=callback, **overrides)
        if device is None or str(device).startswith("cuda"):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    return trainer


# --------------------------------------------------------------------------- state
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(
        timespec="seconds")


def _load_state(out: Path, smoke: bool, queue: Sequence[QueueItem]) -> dict:
    path = out / STATE_FILE
    if not path.is_file():
        return {"format": 1, "smoke": smoke, "created": _now(), "runs": {}, "groups": {},
                "commands": []}
    refuse_link(path)
    try:
        state = json.loads(read_bytes(path).decode("utf-8"))
    except (OSError, ValueError) as err:
        raise CampaignError(f"{path} is not readable JSON ({err}); move the folder away or "
                            "choose another --out") from None
    if state.get("smoke") != smoke:
        raise CampaignError(f"{out} holds a {'smoke' if state.get('smoke') else 'full'} "
                            f"campaign; this one is {'smoke' if smoke else 'full'}: choose "
                            "another --out")
    groups = {item.group: list(item.presets) for item in queue}
    for name, plan in state.get("groups", {}).items():
        if name in groups and plan.get("presets") != groups[name]:
            raise CampaignError(f"group {name} of {path} has runs {plan.get('presets')}, the "
                                f"queue has {groups[name]}: choose another --out")
    return state


def _records(run_dir: Path) -> list[dict]:
    """The epochs the run folder's checkpoint holds (lines past it are dropped when the run
    resumes)."""
    try:
        run = RunFolder.read(run_dir, checkpoint="verify")
    except (OSError, ValueError):
        return []
    return [r for r in run.records if r["epoch"] <= (run.checkpoint_epoch or 0)]


def _epochs_done(run_dir: Path) -> int:
    """The epochs of the run's verified checkpoint (0: none, or one that cannot be trusted;
    resuming then names the problem)."""
    try:
        return RunFolder.read(run_dir, checkpoint="verify").checkpoint_epoch or 0
    except (OSError, ValueError):
        return 0


def _failures(m: dict) -> tuple[int, str]:
    """``(count, last error)`` of a run's failures (older states kept one string)."""
    failed = m.get("failed")
    if isinstance(failed, dict):
        return int(failed.get("count", 1)), str(failed.get("last_error", ""))
    return (1, str(failed)) if failed else (0, "")


# --------------------------------------------------------------------------- the campaign
@dataclass
class _Campaign:
    out: Path
    logs_dir: Path
    queue: tuple[QueueItem, ...]
    trainer: Trainer
    clock: Callable[[], float]
    deadline: float
    full_epochs: int | None
    min_epochs: int
    safety: float
    log: Callable[[str], None]
    state: dict
    smoke: bool
    pack: bool
    did_work: bool = False
    failed_now: set = dataclasses.field(default_factory=set)  # failed in this command
    busy_now: set = dataclasses.field(default_factory=set)  # held by another process now
    held: object = None  # the campaign lock (a HeldLock): checked before every write

    def run_dir(self, preset: str) -> Path:
        return self.out / "runs" / preset

    def save(self) -> None:
        if self.held is not None:
            self.held.check()
        atomic_write_json(self.out / STATE_FILE, self.state)

    def full(self, preset: str) -> int:
        if self.full_epochs is not None:
            return self.full_epochs
        return SMOKE_FULL_EPOCHS if self.smoke else get_preset(preset).train_config().epochs

    def left(self) -> float:
        return self.deadline - self.clock()

    # ---- estimates
    def first_epoch_estimate(self, preset: str) -> float:
        """Setup + first epoch of a run not measured yet: the slowest measured run of the
        same family in this campaign, else :data:`PRIOR_FIRST_EPOCH_SECONDS` (0 in a smoke
        campaign: always try)."""
        family = get_preset(preset).family
        known = [m["setup_seconds"] + m["first_epoch_seconds"]
                 for name, m in self.state["runs"].items()
                 if "first_epoch_seconds" in m and name in PRESETS
                 and get_preset(name).family == family]
        if known:
            return max(known) * self.safety
        return 0.0 if self.smoke else PRIOR_FIRST_EPOCH_SECONDS[family]

    def epoch_seconds(self, preset: str) -> float:
        m = self.state["runs"][preset]
        return m.get("epoch_seconds", m["first_epoch_seconds"])

    # ---- steps
    def train(self, preset: str, epochs: int) -> bool:
        """Train ``preset`` up to ``epochs``; False when the deadline stopped it."""
        run_dir = self.run_dir(preset)
        before = _epochs_done(run_dir)
        last = [self.clock()]
        start = last[0]
        estimate = (self.state["runs"].get(preset, {}).get("epoch_seconds") or
                    self.state["runs"].get(preset, {}).get("first_epoch_seconds"))

        def callback(record: dict) -> None:
            now = self.clock()
            took = now - last[0]
            last[0] = now
            if record["epoch"] >= epochs:
                return
            per_epoch = max(estimate or record["epoch_seconds"], record["epoch_seconds"])
            if record["epoch"] > before + 1:  # a steady epoch: the clock saw all of it
                per_epoch = max(per_epoch, took)
            if now + per_epoch * self.safety > self.deadline:
                raise OutOfTime(f"{preset}: after epoch {record['epoch']}/{epochs} the next "
                                f"epoch (about {per_epoch:.0f} s) would end after the "
                                "deadline")

        self.log(f"== {preset}: epochs {before + 1}..{epochs} "
                 f"({self.left():.0f} s left in this command)")
        self.did_work = True
        stopped = False
        try:
            self.trainer(preset, run_dir, epochs, callback, self.log)
            self.state["runs"].get(preset, {}).pop("failed", None)
        except OutOfTime as err:
            self.log(f"stopped: {err}; the next command continues it from its checkpoint")
            stopped = True
        finally:
            self.note_times(preset, before, self.clock() - start)
            self.save()
            if self.pack:
                pack_logs(self.out, self.logs_dir)
        return not stopped

    def note_times(self, preset: str, before: int, call_seconds: float) -> None:
        records = [r for r in _records(self.run_dir(preset)) if r["epoch"] > before]
        if not records:
            return
        m = self.state["runs"].setdefault(preset, {})
        m.setdefault("device", records[0].get("device"))
        m["epochs_done"] = int(records[-1]["epoch"])
        seconds = sum(r["epoch_seconds"] for r in records)
        if before == 0:
            m["first_epoch_seconds"] = records[0]["epoch_seconds"]
            m["setup_seconds"] = max(0.0, call_seconds - seconds)
        steady = sorted(r["epoch_seconds"] for r in _records(self.run_dir(preset))[1:])
        if steady:
            m["epoch_seconds"] = steady[len(steady) // 2]

    def measure(self, preset: str) -> bool:
        """Train the first epoch of ``preset``; False when there is no time for it."""
        need = self.first_epoch_estimate(preset)
        if self.left() < need:
            self.log(f"no time to measure {preset} (about {need:.0f} s needed, "
                     f"{self.left():.0f} s left)")
            return False
        self.log(f"measuring {preset} on its first epoch")
        self.train(preset, 1)
        m = self.state["runs"].get(preset, {})
        if "first_epoch_seconds" in m:
            self.log(f"    {preset}: first epoch {m['first_epoch_seconds']:.1f} s, setup "
                     f"{m['setup_seconds']:.1f} s")
        return "first_epoch_seconds" in m

    def plan(self, item: QueueItem, group: QueueItem | None = None) -> dict | None:
        """The group's epoch count from the time left; None when fewer than ``min_epochs``
        fit (and this command has done other work: the next command plans it)."""
        full = max(self.full(p) for p in item.presets)
        done = {p: _epochs_done(self.run_dir(p)) for p in item.presets}
        per_epoch = sum(self.epoch_seconds(p) * self.safety for p in item.presets)
        setups = sum(self.state["runs"][p]["setup_seconds"] for p in item.presets)
        budget = self.left() - setups + sum(done[p] * self.epoch_seconds(p) * self.safety
                                            for p in item.presets)
        fit = math.floor(budget / per_epoch) if per_epoch > 0 else full
        low = min(self.min_epochs, full)
        if fit < low and self.state_command()["trained_before_plan"]:
            self.log(f"{item.group}: only {max(fit, 0)} epoch(s) fit in the {self.left():.0f} s "
                     f"left (fewer than {low}); the next command plans it with fresh time")
            return None
        epochs = min(full, max(fit, low if fit >= low else max(done.values())))
        # the plan belongs to the whole group: a run that failed joins it when retried
        plan = {"presets": list((group or item).presets), "epochs": epochs, "full_epochs": full,
                "reduced": epochs < full, "planned": _now(),
                "seconds_per_epoch": {p: round(self.epoch_seconds(p), 3)
                                      for p in item.presets},
                "why": (f"the full {full} epochs fit" if epochs >= full else
                        f"reduced: {epochs} of {full} epochs fit in the {self.left():.0f} s "
                        "left at the measured pace")}
        self.state["groups"][item.group] = plan
        self.save()
        self.log(f"{item.group}: {plan['why']} -> {epochs} epochs for "
                 f"{', '.join(item.presets)}")
        return plan

    def state_command(self) -> dict:
        return self.state["commands"][-1]

    def skipped(self, preset: str) -> bool:
        """A run that failed in this command, or :data:`MAX_ATTEMPTS` times: not tried now."""
        count, _ = _failures(self.state["runs"].get(preset, {}))
        return preset in self.failed_now or preset in self.busy_now or count >= MAX_ATTEMPTS

    def announce_failures(self) -> None:
        for item in self.queue:
            for preset in item.presets:
                count, last = _failures(self.state["runs"].get(preset, {}))
                if count >= MAX_ATTEMPTS:
                    self.log(f"{preset}: SKIPPED, it failed {count} times (last: {last}); "
                             "pass --retry-failed (retry_failed=True) to try it again")
                elif count:
                    self.log(f"{preset}: retrying, it failed {count} time(s) (last: {last})")

    def run(self) -> str:
        """Work through the queue; returns why it stopped."""
        self.announce_failures()
        for item in self.queue:
            plan = self.state["groups"].get(item.group)
            failed = [p for p in item.presets if self.skipped(p)]
            live = [p for p in item.presets if p not in failed]
            if plan is not None and all(_epochs_done(self.run_dir(p)) >= plan["epochs"]
                                        for p in live):
                continue
            if not live:
                continue
            for preset in live:
                if "first_epoch_seconds" in self.state["runs"].get(preset, {}):
                    continue
                if _epochs_done(self.run_dir(preset)) >= 1:  # measured, state not saved
                    self.note_times(preset, 0, 0.0)
                    continue
                try:
                    if not self.measure(preset):
                        return f"out of time: could not measure {preset}"
                except OutOfTime:
                    raise
                except (RunFolderBusyError, LockLostError) as err:
                    self.busy(preset, err)
                except Exception as err:  # noqa: BLE001 - a failed run must not end the queue
                    self.fail(preset, err)
            live = [p for p in live if not self.skipped(p)]
            if not live:
                continue
            if plan is None:
                plan = self.plan(dataclasses.replace(item, presets=tuple(live)), item)
                if plan is None:
                    return f"out of time: {item.group} waits for the next command"
                self.state_command()["trained_before_plan"] = True
            for preset in live:
                if _epochs_done(self.run_dir(preset)) >= plan["epochs"]:
                    continue
                m = self.state["runs"][preset]
                need = (m["setup_seconds"] + self.epoch_seconds(preset)) * self.safety
                if self.left() < need:
                    return (f"out of time: {preset} needs about {need:.0f} s for its next "
                            f"epoch, {self.left():.0f} s left")
                try:
                    if not self.train(preset, plan["epochs"]):
                        return f"out of time: {preset} stopped after an epoch"
                except (RunFolderBusyError, LockLostError) as err:
                    self.busy(preset, err)
                except Exception as err:  # noqa: BLE001
                    self.fail(preset, err)
            self.state_command()["trained_before_plan"] = True
        failed = [p for item in self.queue for p in item.presets
                  if self.skipped(p) and p not in self.busy_now]
        if failed:
            return f"queue done except the failed run(s) {', '.join(failed)}"
        if self.busy_now:
            return f"queue done except the run(s) busy elsewhere {', '.join(sorted(self.busy_now))}"
        return "queue done"

    def busy(self, preset: str, err: Exception) -> None:
        """A run whose folder another live process holds: skipped by this command, not
        counted as a failure."""
        self.busy_now.add(preset)
        self.log(f"{preset}: busy in another process, skipped by this command (not a "
                 f"failure): {err}")

    def fail(self, preset: str, err: Exception) -> None:
        m = self.state["runs"].setdefault(preset, {})
        count = _failures(m)[0] + 1
        self.failed_now.add(preset)
        m["failed"] = {"count": count, "last_error": f"{type(err).__name__}: {err}",
                       "time": _now()}
        self.log(f"{preset}: FAILED ({count} of {MAX_ATTEMPTS} tries) {type(err).__name__}: "
                 f"{err}")
        self.save()

    def complete(self) -> bool:
        """Every run of the queue has reached its group's planned epochs."""
        for item in self.queue:
            plan = self.state["groups"].get(item.group)
            if plan is None or any(_epochs_done(self.run_dir(p)) < plan["epochs"]
                                   for p in item.presets):
                return False
        return True


def run_campaign(minutes: float, out: str | os.PathLike, *,
                 queue: Sequence[QueueItem] | None = None, logs_dir=None,
                 smoke: bool = False, full_epochs: int | None = None, min_epochs: int = 5,
                 safety: float = 1.05, reserve_seconds: float | None = None,
                 data_dir=None, device=None, amp: str | None = None,
                 trainer: Trainer | None = None, clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] = print, pack: bool = True,
                 command: str | None = None, retry_failed: bool = False) -> dict:
    """Spend ``minutes`` on the queue; see the module docstring.

    Args:
        minutes: this command's budget (wall clock, from the call).
        out: the campaign folder (created; a second command with the same folder continues).
        queue: the groups to train (default :data:`QUEUE`).
        logs_dir: where the log packs go (default ``out``).
        smoke: reduced models on a few hundred images (a CPU dry run of the mechanics);
            "full" is then :data:`SMOKE_FULL_EPOCHS` epochs.
        full_epochs: override the full epoch count (default: each preset's protocol, 150).
        min_epochs: a group is planned for at least this many epochs (or the full count if
            smaller); fewer wait for the next command.
        safety: epoch-time estimates are multiplied by this.
        reserve_seconds: kept free at the end for packing logs (default 20, 0 for smoke).
        data_dir, device, amp: as for :func:`convnn.runner.run_preset`.
        trainer, clock: for tests (default: the real trainer, :func:`time.monotonic`).
        log: where progress lines go (they are also appended to ``campaign.log``).
        pack: write the log packs.
        command: the command line, stored in ``campaign.json`` (default: this process's, as
            :func:`command_line` writes it: no absolute path of the package).
        retry_failed: clear the failure counts, so that runs that failed
            :data:`MAX_ATTEMPTS` times are tried again (a run that failed fewer times is
            retried by every command anyway).

    Returns:
        ``{"stopped": why, "runs": {preset: epochs done}, "groups": plans, "packs": paths,
        "failed": {preset: {"count", "last_error"}}, "did_work": whether this command
        trained anything, "complete": whether every run has reached its plan}``.

    Raises:
        ValueError: a bad argument (naming it), or a folder of another campaign.
    """
    if (isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or
            not math.isfinite(minutes) or minutes <= 0):
        raise ValueError(f"minutes must be a positive number, got {minutes!r}")
    check_int("min_epochs", min_epochs, minimum=1)
    if full_epochs is not None:
        check_int("full_epochs", full_epochs, minimum=1)
    if isinstance(safety, bool) or not isinstance(safety, (int, float)) or safety < 1:
        raise ValueError(f"safety must be a number >= 1, got {safety!r}")
    queue = _check_queue(QUEUE if queue is None else queue)
    start = clock()
    reserve = (0.0 if smoke else 20.0) if reserve_seconds is None else float(reserve_seconds)
    if reserve < 0:
        raise ValueError(f"reserve_seconds must be >= 0, got {reserve_seconds!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    logs_dir = Path(logs_dir) if logs_dir is not None else out
    for name in (STATE_FILE, LOG_FILE, LOCK_FILE):
        refuse_link(out / name)
    try:
        with folder_lock(out, LOCK_FILE, log=log) as held:
            return _run_locked(minutes, out, queue, logs_dir, smoke, full_epochs, min_epochs,
                               safety, reserve, data_dir, device, amp, trainer, clock, log,
                               pack, command, retry_failed, start, held)
    except FolderLockedError as err:
        raise CampaignError(f"another campaign command is running in {out} ({err}); one "
                            "campaign per --out: wait for it to finish") from None


def _run_locked(minutes, out, queue, logs_dir, smoke, full_epochs, min_epochs, safety,
                reserve, data_dir, device, amp, trainer, clock, log, pack, command,
                retry_failed, start, held) -> dict:
    """:func:`run_campaign` while holding the campaign folder's lock."""
    state = _load_state(out, smoke, queue)
    log_file = os.fdopen(open_nofollow(out / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT),
                         "a", encoding="utf-8")

    def say(text: str) -> None:
        log(text)
        held.check()  # a campaign taken over by another host writes nothing more
        log_file.write(text + "\n")
        log_file.flush()

    if retry_failed:
        for preset, m in state["runs"].items():
            if m.pop("failed", None):
                say(f"{preset}: failure count cleared (retry_failed)")
    state["commands"].append({"started": _now(), "minutes": minutes,
                              "command": command if command is not None else command_line(),
                              "device": _device_name(device), "trained_before_plan": False})
    say(f"campaign in {out}: {minutes:g} min, {len(queue)} groups in the queue"
        + (" (smoke: reduced models, few images)" if smoke else ""))
    campaign = _Campaign(out, logs_dir, queue, trainer or preset_trainer(
        smoke=smoke, data_dir=data_dir, device=device, amp=amp), clock,
        start + 60.0 * minutes - reserve, full_epochs, min_epochs, float(safety), say, state,
        smoke, pack, held=held)
    campaign.save()
    stopped = "interrupted"
    try:
        stopped = campaign.run()
    finally:
        command_state = state["commands"][-1]
        command_state.pop("trained_before_plan", None)
        command_state.update(ended=_now(), stopped=stopped,
                             seconds=round(clock() - start, 1))
        campaign.save()
        say(f"campaign stopped: {stopped} ({clock() - start:.0f} s)")
        log_file.close()
        packs = pack_logs(out, logs_dir) if pack else []
    runs = {p: _epochs_done(campaign.run_dir(p)) for item in queue for p in item.presets
            if campaign.run_dir(p).is_dir()}
    failed = {p: dict(zip(("count", "last_error"), _failures(m), strict=True))
              for p, m in state["runs"].items() if _failures(m)[0]}
    return {"stopped": stopped, "runs": runs, "groups": state["groups"],
            "packs": [str(p) for p in packs], "failed": failed,
            "did_work": campaign.did_work, "complete": campaign.complete()}


def _device_name(device) -> str:
    try:
        import torch

        if (device is None or str(device).startswith("cuda")) and torch.cuda.is_available():
            return torch.cuda.get_device_name()
    except (ImportError, RuntimeError):
        pass
    return "cpu" if device is None else str(device)


# --------------------------------------------------------------------------- log packs
_RUN_LOGS = RETURNED_FILES  # the logs and the test predictions


def pack_logs(out: str | os.PathLike, logs_dir: str | os.PathLike | None = None, *,
              limit: int = LOG_PACK_BYTES) -> list[Path]:
    """Pack a campaign's logs into ``campaign-logs-N.tar.gz`` files of at most ``limit``
    bytes each (older packs in ``logs_dir`` are replaced). Checkpoints are left out.

    Raises:
        ValueError: one log file is larger than ``limit``.
    """
    out = Path(out)
    logs_dir = Path(logs_dir) if logs_dir is not None else out
    logs_dir.mkdir(parents=True, exist_ok=True)
    for path in (out / STATE_FILE, out / LOG_FILE):
        refuse_link(path)
    files = [p for p in (out / STATE_FILE, out / LOG_FILE) if p.is_file()]
    files += sorted(p for p in (out / "runs").glob("*/*") if p.name in _RUN_LOGS)
    contents = [read_bytes(path) for path in files]  # a link is refused, never packed
    for old in logs_dir.glob("campaign-logs-*.tar.gz"):
        old.unlink()
    packs: list[Path] = []
    batch: list[tuple[str, bytes]] = []
    size = 0
    budget = limit - 64 * 1024  # tar headers and gzip framing

    def flush() -> None:
        path = logs_dir / f"campaign-logs-{len(packs) + 1}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for name, data in batch:
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), int(time.time())
                tar.addfile(info, io.BytesIO(data))
        if path.stat().st_size > limit:  # cannot happen: gzip never grows text by much
            raise RuntimeError(f"{path} is larger than {limit} bytes")
        packs.append(path)

    for path, data in zip(files, contents, strict=True):
        if len(data) > budget:
            raise ValueError(f"{path} is {len(data)} bytes, more than one pack may hold "
                             f"({limit} bytes)")
        if batch and size + len(data) > budget:
            flush()
            batch, size = [], 0
        batch.append((path.relative_to(out).as_posix(), data))
        size += len(data)
    if batch:
        flush()
    return packs


# --------------------------------------------------------------------------- importing
#: Limits of what :func:`import_runs` reads: one pack file (compressed), one log file, all
#: log files together, and the entries of a pack or of a source folder. A campaign writes
#: packs of :data:`LOG_PACK_BYTES` holding smaller files, so real logs are far below them.
IMPORT_PACK_BYTES = 4 * LOG_PACK_BYTES
IMPORT_FILE_BYTES = LOG_PACK_BYTES
IMPORT_TOTAL_BYTES = 16 * LOG_PACK_BYTES
IMPORT_ENTRIES = 20_000
#: A name that may become part of a path: a run folder's, ``--name``.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SAFE_COMMIT = re.compile(r"[0-9A-Za-z][0-9A-Za-z._+-]{0,63}")
_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})(?:$|[T ])")


def _device_slug(device: str) -> str:
    """``"NVIDIA H200"`` -> ``"h200"``, ``"NVIDIA H100 80GB HBM3"`` -> ``"h100"``,
    ``"cpu"`` -> ``"cpu"``."""
    name = re.sub(r"^(NVIDIA|Tesla)\s+", "", device.strip(), flags=re.IGNORECASE)
    first = name.split()[0] if name.split() else "unknown"
    return re.sub(r"[^a-z0-9]+", "-", first.lower()).strip("-")[:40] or "unknown"


def _check_safe_name(what: str, name) -> str:
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"{what} must be letters, digits, '.', '_' or '-' (starting with a "
                         f"letter or digit, no '..', at most 100 characters), got {name!r}")
    return name


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command line as a user types it: ``python -m convnn ...`` for the package's own
    ``__main__.py`` (never its absolute path), other paths inside the repository relative
    to it."""
    argv = list(sys.argv if argv is None else argv)
    root = Path(__file__).resolve().parents[1]
    words = []
    for i, word in enumerate(argv):
        if i == 0 and re.search(r"(^|[\\/])convnn[\\/]__main__\.py$", word):
            words.append("python -m convnn")
            continue
        path = Path(word)
        if path.is_absolute():
            try:
                word = path.resolve().relative_to(root).as_posix() or "."
            except (ValueError, OSError):
                pass
        words.append(word)
    return " ".join(words)


def _portable_command(text: str) -> str:
    """A recorded command without the absolute path of ``convnn/__main__.py`` (older
    campaign states stored ``sys.argv`` as it was)."""
    return re.sub(r"\S*convnn[\\/]__main__\.py", "python -m convnn", text)


@dataclass
class _RunLogs:
    """One run folder's log files as read from the source (not yet filed)."""

    name: str
    origin: str
    files: dict[str, bytes]
    config: dict
    records: list[dict]


def _check_run_logs(name: str, origin: str, files: dict[str, bytes]) -> _RunLogs:
    """Parse (:func:`~convnn.run_folder.parse_logs`, the run folder's reader) and type-check
    what the importer and the results reader use."""
    where = f"{origin}: run {name}"
    run = parse_logs(files, where)
    config, at = run.config, f"{where}/{CONFIG}"
    for key in ("extra", "run", "train", "dataset"):
        expect_type(config.get(key), dict, f"{at}: {key}")
    extra = run.extra
    expect_type(extra.get("preset"), str, f"{at}: extra.preset")
    expect_type(extra.get("smoke"), bool, f"{at}: extra.smoke")
    expect_type(extra.get("dataset"), dict, f"{at}: extra.dataset")
    for part in (extra.get("dataset") or {}, config.get("dataset") or {}):
        expect_type(part.get("source"), str, f"{at}: dataset source")
    for key in ("torch", "amp_active", "device"):
        expect_type((config.get("run") or {}).get(key), str, f"{at}: run.{key}")
    train = config.get("train") or {}
    expect_type(train.get("epochs"), int, f"{at}: train.epochs")
    expect_type(train.get("amp"), str, f"{at}: train.amp")
    for record in run.records:
        at = f"{where}/{METRICS} epoch {record['epoch']}"
        if not 0 <= record["test_top1"] <= 100:
            raise ValueError(f"{at}: test_top1 must be a percentage, got {record['test_top1']}")
        for key in ("device", "git_commit", "time"):
            expect_type(record.get(key), str, f"{at}: {key}")
        if record.get("time") is not None:
            match = _DATE.match(record["time"])
            try:
                datetime.date.fromisoformat(match[1] if match else "")
            except ValueError:
                raise ValueError(f"{at}: time must start with a date YYYY-MM-DD (an ISO time), got "
                                 f"{record['time']!r:.80}") from None
    return _RunLogs(name, origin, files, config, run.records)


def _check_state(state, where: str) -> dict:
    """A campaign state as the importer uses it: ``commands`` and ``groups``."""
    expect_type(state, dict, where, allow_none=False)
    for i, command in enumerate(expect_type(state.get("commands"), list, f"{where}: commands")
                                or []):
        expect_type(command, dict, f"{where}: commands[{i}]", allow_none=False)
        expect_type(command.get("command"), str, f"{where}: commands[{i}].command")
    for name, plan in (expect_type(state.get("groups"), dict, f"{where}: groups") or {}).items():
        at = f"{where}: groups[{name!r:.60}]"
        expect_type(plan, dict, at, allow_none=False)
        presets = expect_type(plan.get("presets"), list, f"{at}.presets") or []
        for preset in presets:
            expect_type(preset, str, f"{at}.presets", allow_none=False)
        expect_type(plan.get("epochs"), int, f"{at}.epochs", allow_none=False)
        expect_type(plan.get("reduced"), bool, f"{at}.reduced", allow_none=False)
    return state


class _Budget:
    """Counts what the importer reads against the IMPORT_* limits."""

    def __init__(self) -> None:
        self.bytes = 0
        self.entries = 0

    def entry(self, where: str) -> None:
        self.entries += 1
        if self.entries > IMPORT_ENTRIES:
            raise ValueError(f"{where} holds more than {IMPORT_ENTRIES} entries; import-runs "
                             "reads campaign folders and log packs, not whole trees")

    def file(self, size: int, where: str) -> None:
        if size > IMPORT_FILE_BYTES:
            raise ValueError(f"{where} is {size} bytes, more than a log file may be "
                             f"({IMPORT_FILE_BYTES} bytes)")
        self.bytes += size
        if self.bytes > IMPORT_TOTAL_BYTES:
            raise ValueError(f"the logs to import are more than {IMPORT_TOTAL_BYTES} bytes "
                             "in all; import them in parts")


def _read_pack(pack: Path, budget: _Budget) -> dict[str, bytes]:
    """The regular files of one log pack, by normalised member name (nothing is written)."""
    where = f"log pack {pack}"
    size = pack.stat().st_size
    if size > IMPORT_PACK_BYTES:
        raise ValueError(f"{where} is {size} bytes, more than a log pack may be "
                         f"({IMPORT_PACK_BYTES} bytes)")
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(pack, "r:gz") as tar:
            for member in tar:
                budget.entry(where)
                if member.name.startswith(("/", "\\")) or ".." in re.split(r"[\\/]",
                                                                           member.name):
                    raise ValueError(f"{where} holds an unsafe member {member.name!r:.120} "
                                     "(absolute or with '..'); log packs hold plain relative "
                                     "files")
                name = posixpath.normpath(member.name)
                if member.isdir():
                    continue
                if not member.isfile():
                    raise ValueError(f"{where} holds {member.name!r:.120}, which is not a "
                                     "regular file (a link or a device); log packs hold files")
                if name in files:
                    raise ValueError(f"{where} holds {member.name!r:.120} twice; a pack must "
                                     "name each file once")
                # the tar layer's own checks: no absolute path, no '..', nothing special
                member = tarfile.data_filter(member, "/nonexistent-destination")
                budget.file(member.size, f"{member.name!r:.120} in {where}")
                data = tar.extractfile(member)
                files[name] = data.read() if data is not None else b""
    except tarfile.FilterError as err:
        raise ValueError(f"{where} holds an unsafe member ({' '.join(str(err).split())[:200]}"
                         "); log packs hold plain relative files") from None
    except (tarfile.TarError, EOFError, zlib.error) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise ValueError(f"{where} is not a readable .tar.gz log pack ({reason})") from None
    except OSError as err:  # gzip.BadGzipFile, a read error
        raise ValueError(f"{where} cannot be read as a .tar.gz log pack "
                         f"({' '.join(str(err).split())[:200]})") from None
    return files


def _read_folder(source: Path, budget: _Budget) -> dict[str, bytes]:
    """The log files under a source folder, by relative name. Links are never followed:
    a linked log file is refused, a linked folder is not entered."""
    files: dict[str, bytes] = {}
    wanted = {*_RUN_LOGS, STATE_FILE}
    for folder, dirs, names in os.walk(source, followlinks=False):
        dirs.sort()
        for name in sorted(names):
            budget.entry(f"source {source}")
            if name not in wanted:
                continue
            path = Path(folder) / name
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                raise ValueError(f"{path} is a symbolic link; import-runs copies no linked "
                                 "file (replace the link with the file)")
            if not stat.S_ISREG(info.st_mode):
                continue
            budget.file(info.st_size, str(path))
            files[path.relative_to(source).as_posix()] = path.read_bytes()
    return files


def _collect(source: Path) -> tuple[list[_RunLogs], dict | None]:
    """The run folders (``config.json`` + ``metrics.jsonl``) of ``source`` (a folder, one
    ``.tar.gz`` pack, or a folder with ``campaign-logs-*.tar.gz`` packs) and the campaign
    state if any. A run found twice (a campaign folder holds its runs and its packs) must
    have the same logs both times."""
    budget = _Budget()
    trees: list[tuple[str, dict[str, bytes]]] = []
    if source.is_file():
        trees.append((f"log pack {source}", _read_pack(source, budget)))
    else:
        packs = sorted(source.glob("campaign-logs-*.tar.gz"))
        for pack in packs:
            if pack.is_symlink():
                raise ValueError(f"{pack} is a symbolic link; import-runs follows no links "
                                 "(copy the pack in)")
            trees.append((f"log pack {pack}", _read_pack(pack, budget)))
        trees.append((f"source {source}", _read_folder(source, budget)))
    runs: dict[str, _RunLogs] = {}
    state: tuple[str, bytes] | None = None
    for origin, files in trees:
        folders = sorted({posixpath.dirname(name) for name in files
                          if posixpath.basename(name) == METRICS
                          and posixpath.join(posixpath.dirname(name), CONFIG) in files})
        for folder in folders:
            name = _check_safe_name(f"{origin}: run folder name", posixpath.basename(folder)
                                    or source.name)
            logs = {f: files[posixpath.join(folder, f)] for f in _RUN_LOGS
                    if posixpath.join(folder, f) in files}
            if name in runs:
                if runs[name].files != logs:
                    raise ValueError(f"run {name} is in {runs[name].origin} and in {origin} "
                                     "with different logs; import them separately")
                continue
            runs[name] = _check_run_logs(name, origin, logs)
        for name in sorted(n for n in files if posixpath.basename(n) == STATE_FILE):
            if state is not None and state[1] != files[name]:
                raise ValueError(f"{origin} holds a {STATE_FILE} that differs from the one "
                                 f"in {state[0]}; import one campaign at a time")
            state = state or (origin, files[name])
    parsed = None
    if state is not None:
        parsed = _check_state(strict_json(state[1], f"{state[0]}: {STATE_FILE}"),
                              f"{state[0]}: {STATE_FILE}")
    return list(runs.values()), parsed


def _already_filed(dest: Path, runs: Sequence[_RunLogs]) -> None:
    """Refuse a run whose ``metrics.jsonl`` is already in ``dest`` (filed under any name)."""
    incoming = {_normalised(run.files[METRICS]): run.name for run in runs}
    for folder in find_run_folders(dest, max_depth=2):
        metrics = read_log_bytes(folder).get(METRICS)
        name = incoming.get(_normalised(metrics)) if metrics is not None else None
        if name is not None:
            raise ValueError(f"run {name} is already filed in {folder}; nothing "
                             "was imported")


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]~|])")


def _normalised(metrics: bytes) -> tuple:
    """A metrics log's content, whatever its whitespace and key order: its records as sorted
    JSON (the raw lines, stripped, where one is not JSON)."""
    lines = []
    for line in metrics.decode("utf-8", "replace").splitlines():
        if line.strip():
            try:
                lines.append(json.dumps(json.loads(line), sort_keys=True))
            except ValueError:
                lines.append(line.strip())
    return tuple(lines)


def _cell(text: str) -> str:
    """Text for a Markdown table cell or list item: one line, HTML characters as entities
    (no raw HTML reaches the README) and Markdown's punctuation escaped (no links, images
    or emphasis either)."""
    text = " ".join(str(text).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _code(text: str) -> str:
    """``text`` as one Markdown code span (a longer fence where it holds backticks): shown
    as typed, HTML included, in one table cell."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _results_dest(dest) -> Path:
    """The resolved results folder: ``dest``, else the checkout's ``data/results/``."""
    from .package_data import results_root

    if dest is None:
        dest = results_root()
        if not (dest.parents[1] / "pyproject.toml").is_file():  # an installed package
            raise ValueError("import-runs files logs into a checkout's data/results/; this "
                             f"convnn is installed at {dest.parent.parent}, so pass --dest")
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise ValueError(f"--dest {dest} is a file, not a folder")
    return dest.resolve()


def import_runs(source: str | os.PathLike, *, dest: str | os.PathLike | None = None,
                name: str | None = None, commit: str | None = None,
                command: str | None = None, allow_smoke: bool = False,
                readme: bool = True) -> Path:
    """File returned logs into ``data/results/<date>-<device>-<name>/`` with their provenance.

    Everything is checked before anything is written, and the folder is filed at once (built
    in a hidden folder of ``dest``, then renamed), so a refused import leaves nothing behind.
    Nothing is written outside ``dest``: the names that become paths (``name``, the run
    folders', the date of the logs' ``time``) are checked, links in a source folder are not
    followed, and pack members are read as regular files only (the tar layer's ``data``
    filter), within the ``IMPORT_*`` size limits.

    Args:
        source: a campaign folder, a folder of log packs, one pack, or a folder of run folders.
        dest: the results folder (default: the checkout's ``data/results/``).
        name: the folder's last part (default ``"campaign"``): letters, digits, ``.``,
            ``_``, ``-``.
        commit: the commit the runs used (default: the one their logs name; required when
            they say ``"unknown"``).
        command: the command that produced them (default: the campaign's own, else required).
        allow_smoke: also import smoke runs (reduced models; never for ``data/results/``).
        readme: add a row and a notes paragraph to ``dest/README.md``.

    Returns:
        The new folder.

    Raises:
        ValueError (one line): no runs; smoke runs without ``allow_smoke``; an unknown commit
            or command; a folder that already exists; a run already filed, or found twice
            with different logs; a damaged, oversized or unsafe source (not a .tar.gz pack,
            a link, a duplicate member, wrong JSON types, NaN metrics, an unsafe name).
    """
    from .results import dataset_label, load_run

    check_bool("allow_smoke", allow_smoke)
    check_bool("readme", readme)
    name = _check_safe_name("name (--name)", "campaign" if name is None else name)
    for what, value in (("commit", commit), ("command", command)):
        expect_type(value, str, what)
    source = Path(source)
    if not source.exists():
        raise ValueError(f"source {source} does not exist")
    dest = _results_dest(dest)
    runs, state = _collect(source)
    if not runs:
        raise ValueError(f"source {source} holds no run folder ({CONFIG} + "
                         f"{METRICS}) and no campaign-logs-*.tar.gz pack")
    runs = [r for r in runs if r.records]
    if not runs:
        raise ValueError(f"source {source}: no run has a finished epoch")
    smoke = [r.name for r in runs if (r.config.get("extra") or {}).get("smoke")]
    if smoke and not allow_smoke:
        raise ValueError(f"source {source} holds smoke runs ({', '.join(smoke)}); they "
                         "are not experiments (pass allow_smoke=True / --allow-smoke to "
                         "file them anyway, never into the committed results)")
    if commit is None:
        commits = {r.records[-1].get("git_commit") or "unknown" for r in runs} - {"unknown"}
        if len(commits) != 1:
            raise ValueError(f"commit: the logs name {sorted(commits) or 'no commit'}; "
                             "pass the commit the runs were trained on (--commit)")
        commit = commits.pop()
    if not _SAFE_COMMIT.fullmatch(commit):
        raise ValueError(f"commit must be a commit hash (letters, digits, '.', '_', '+', "
                         f"'-'), got {commit!r:.80}")
    if command is None:
        cmds = [c.get("command") for c in (state or {}).get("commands") or []]
        cmds = list(dict.fromkeys(_portable_command(c) for c in cmds if c))
        if not cmds:
            raise ValueError("command: the logs do not say which command produced them; "
                             "pass it (--command)")
        command = " ; then ".join(cmds)
    if not command.strip():
        raise ValueError("command must not be empty")
    dates = sorted({_DATE.match(r.records[-1]["time"])[1] for r in runs
                    if r.records[-1].get("time")})
    date = dates[-1] if dates else datetime.date.today().isoformat()
    readme_path = dest / "README.md"
    if readme and readme_path.is_symlink():
        raise ValueError(f"{readme_path} is a symbolic link; import-runs writes no linked file")
    created = [p for p in (dest, *dest.parents) if not p.exists()]
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=dest))
    filed = False
    try:
        staged = staging / "folder"
        for run in runs:
            (staged / run.name).mkdir(parents=True)
            for file, data in run.files.items():
                (staged / run.name / file).write_bytes(data)
        if state is not None:
            for entry in state.get("commands") or []:
                if isinstance(entry.get("command"), str):
                    entry["command"] = _portable_command(entry["command"])
            atomic_write_json(staged / STATE_FILE, state)
        loaded = [load_run(staged / run.name) for run in runs]
        devices = sorted({r.device for r in loaded})
        folder = dest / f"{date}-{_device_slug(devices[0])}-{name}"
        if folder.parent != dest:  # cannot happen with the checked parts; never write elsewhere
            raise ValueError(f"{folder} is not directly inside {dest}")
        if folder.exists() or folder.is_symlink():
            raise ValueError(f"{folder} already exists; pass another name (--name)")
        _already_filed(dest, runs)
        text = (_provenance_text(readme_path, folder, loaded, state, commit, command,
                                 devices, date, dataset_label) if readme else None)
        os.rename(staged, folder)
        filed = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for path in created if not filed else ():  # folders this refused import created
            with contextlib.suppress(OSError):
                path.rmdir()
    if text is not None:
        try:
            atomic_write_text(readme_path, text)
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    return folder


def _protocol_text(run, state: dict | None) -> str:
    train = run.config.get("train") or {}
    full = run.protocol_epochs
    done = run.epochs_done
    plan = None
    for group in ((state or {}).get("groups") or {}).values():
        if run.preset in (group.get("presets") or []):
            plan = group
    text = f"{done}" + (f" of {full}" if full else "") + " epochs"
    if plan is not None and plan["reduced"]:
        text += f" (reduced: {plan['epochs']} planned to fit the session)"
    if plan is not None and done < plan["epochs"]:
        text += f" (unfinished: {plan['epochs']} planned)"
    amp = (run.config.get("run") or {}).get("amp_active") or train.get("amp")
    if run.smoke:
        text += ", SMOKE RUN (reduced model, few images)"
    return _cell(f"{text}, precision {amp}")


def _provenance_text(readme: Path, folder: Path, runs, state, commit, command, devices,
                     date, dataset_label) -> str:
    """``readme``'s new text: a table row and a notes paragraph for ``folder``."""
    lines = readme.read_text(encoding="utf-8").splitlines() if readme.is_file() else [
        "# Committed run logs", "",
        "| folder / file | device | commit | command | date |", "|---|---|---|---|---|"]
    torch_versions = sorted({(r.config.get("run") or {}).get("torch") or "?" for r in runs})
    row = (f"| `{folder.name}/` ({', '.join(f'`{r.path.name}`' for r in runs)}) | "
           f"{_cell(' + '.join(devices))} (torch {_cell(', '.join(torch_versions))}) | "
           f"`{commit}` | {_code(command)} | {date} |")
    last = max((i for i, ln in enumerate(lines) if ln.startswith("|")), default=len(lines) - 1)
    lines.insert(last + 1, row)
    datasets = sorted({_cell(dataset_label(r.dataset_source)) for r in runs})
    notes = ["", f"Notes on `{folder.name}/` (filed by `python -m convnn import-runs`):",
             f"- Data: {', '.join(datasets)}.",
             ("- Protocol: the paper's for each preset (AdamW lr 1e-4, weight decay 0.01, batch "
             "256, clipping 1.0, no augmentation, seed 42; ViT at 224 px) except as stated "
             "per run; random-candidate runs also log the redrawn evaluation "
             "(`test_top1_resampled`, the paper's way)."),
             "- Epochs run:"]
    notes += [f"  - `{r.path.name}`: {_protocol_text(r, state)}" for r in runs]
    return "\n".join(lines + notes) + "\n"


# --------------------------------------------------------------------------- CLI
def add_cli(sub, **shared) -> None:
    """Register the ``campaign`` and ``import-runs`` commands on an argparse sub-parser
    (``shared``: the keyword arguments every sub-command gets, e.g. the ``--debug`` parent)."""
    camp = sub.add_parser("campaign", **shared, help="train the queue of runs within a time budget",
                          description=__doc__.split("\n\n")[0])
    camp.add_argument("--minutes", type=float, help="this command's time budget")
    camp.add_argument("--out", help="the campaign folder (the next command continues it)")
    camp.add_argument("--logs", help="where the log packs go (default: --out)")
    camp.add_argument("--smoke", action="store_true",
                      help="reduced models, a few hundred images, 3-epoch runs (CPU dry run)")
    camp.add_argument("--only", nargs="+", metavar="GROUP",
                      help="train only these groups of the queue")
    camp.add_argument("--list", action="store_true", help="print the queue and exit")
    camp.add_argument("--data-dir", help="where CIFAR is (default: $CONVNN_DATA_DIR)")
    camp.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    camp.add_argument("--retry-failed", action="store_true",
                      help=f"try again the runs that failed {MAX_ATTEMPTS} times (runs that "
                           "failed fewer times are retried anyway)")
    camp.set_defaults(func=_campaign_cli)

    imp = sub.add_parser("import-runs", **shared, help="file returned logs into data/results/")
    imp.add_argument("source", help="a campaign folder, log packs, or run folders")
    imp.add_argument("--dest", help="the results folder (default: data/results/)")
    imp.add_argument("--name", help="the new folder's last part (default: campaign)")
    imp.add_argument("--commit", help="the commit the runs used (default: from the logs)")
    imp.add_argument("--command", help="the command that produced them (default: from "
                                       "campaign.json)")
    imp.add_argument("--allow-smoke", action="store_true", help="also file smoke runs")
    imp.set_defaults(func=_import_cli)


def _campaign_cli(args: argparse.Namespace) -> int:
    if args.list:
        print(queue_markdown())
        return 0
    if args.minutes is None or args.out is None:
        raise ValueError("campaign needs --minutes and --out (or --list)")
    queue = QUEUE
    if args.only:
        known = {item.group: item for item in QUEUE}
        unknown = [g for g in args.only if g not in known]
        if unknown:
            raise ValueError(f"--only: unknown group(s) {unknown}; see `python -m convnn "
                             "campaign --list`")
        queue = tuple(known[g] for g in args.only)
    result = run_campaign(args.minutes, args.out, queue=queue, logs_dir=args.logs,
                          smoke=args.smoke, data_dir=args.data_dir, device=args.device,
                          retry_failed=args.retry_failed)
    print(f"stopped: {result['stopped']}")
    for preset, done in result["runs"].items():
        print(f"  {preset}: {done} epoch(s)")
    for preset, f in result["failed"].items():
        print(f"  {preset}: FAILED {f['count']} time(s), last: {f['last_error']}")
    print("logs: " + ", ".join(result["packs"]))
    if result["did_work"]:
        return 0
    if result["complete"]:
        print("nothing to train: every run of the queue has finished its planned epochs")
        return 0
    print(f"error: this command trained nothing ({result['stopped']})"
          + ("; pass --retry-failed to try the failed runs again" if result["failed"] else ""),
          file=sys.stderr)
    return 1


def _import_cli(args: argparse.Namespace) -> int:
    folder = import_runs(args.source, dest=args.dest, name=args.name, commit=args.commit,
                         command=args.command, allow_smoke=args.allow_smoke)
    print(f"filed into {folder}; provenance added to {folder.parent / 'README.md'}")
    return 0
