"""A small plain-PyTorch trainer for image classification, with crash-safe run folders.

One call of :func:`fit` runs the paper's protocol (method.md §5: AdamW, lr 1e-4, weight
decay 0.01 on all parameters, no schedule, batch 256, 150 epochs, cross-entropy, gradient
clipping at norm 1.0, no augmentation, seed 42) or any variation of it set in a
:class:`TrainConfig`, and leaves a run folder::

    out_dir/
        config.json     TrainConfig + dataset + model description + caller's ``extra``
        metrics.jsonl   one JSON line per finished epoch
        checkpoint.pt   model, optimizer, scaler, epoch, RNG states (see checkpoint_minutes)
        checkpoint.pt.sha256   the checkpoint's SHA-256, checked when it is loaded
        summary.json    best and last-5-mean test top-1, final metrics, time, parameters
        .lock           the PID of the process training in the folder, while it runs

Two defects of the paper's public code are avoided on purpose (method.md §6.6, §6.8): the
seed is set *before* the model is built (so :func:`fit` takes a model *factory*), and
the run writes atomic checkpoints (after the first epoch, every 2 minutes by default, and at
the end), so a killed run continues with ``resume=True`` exactly from its last checkpoint:
same weights, same optimizer state, same random streams, same batches (the loader's order is
a function of ``(seed, epoch)``).

Under ``torchrun --nproc_per_node N`` the same call trains with DistributedDataParallel:
``batch_size`` is the global batch (``batch_size / N`` per process), every process sees its
own shard of the data, metrics are summed over all processes (every test image counts
exactly once), and only rank 0 writes files.

Example:
    >>> from convnn.data import synthetic_dataset
    >>> ds = synthetic_dataset(n_train=256, n_test=64, num_classes=4, image_size=16)
    >>> def factory():
    ...     return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
    ...                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    >>> cfg = TrainConfig(lr=3e-3, epochs=2, batch_size=64)
    >>> summary = fit(factory, ds, cfg, "runs/demo", progress=False)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ._checks import (
    check_bool,
    check_choice,
    check_device,
    check_int,
    check_known,
    check_path,
    resolve_device,
)
from ._io import git_commit
from .checkpoint import (
    build_checkpoint,
    model_weights,
    restore_rng,
    restore_training_state,
    rng_state,
)
from .data import ImageDataset
from .ops import EVAL_SAMPLINGS
from .run_folder import (
    RESUMABLE_CHANGES,
    RUN_FILES,
    RunFolder,
    RunFolderError,
    load_run_checkpoint,
    load_weights,
    local_time,
    run_fingerprint,
    run_lock,
)

__all__ = [
    "AMP_MODES",
    "AUTO_AMP_MEASUREMENTS",
    "OPTIMIZERS",
    "PRECISION_LABELS",
    "RESUMABLE_CHANGES",
    "RUN_FILES",
    "SCHEDULES",
    "VOLATILE_FIELDS",
    "DivergedError",
    "RunFolderError",
    "Terminated",
    "TrainConfig",
    "evaluate",
    "evaluate_run",
    "fit",
    "has_random_candidates",
    "load_run_checkpoint",
    "lr_at",
    "model_family",
    "precision_label",
    "resolve_amp",
    "set_eval_sampling",
    "summarize",
]

#: The optimizers, each built from ``(params, config, fused options)``.
OPTIMIZER_FACTORIES: dict[str, Callable] = {
    "adamw": lambda params, c, fused: torch.optim.AdamW(
        params, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay, **fused),
    "sgd": lambda params, c, fused: torch.optim.SGD(
        params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
    "adam": lambda params, c, fused: torch.optim.Adam(
        params, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay, **fused),
}
OPTIMIZERS = tuple(OPTIMIZER_FACTORIES)
SCHEDULES = ("none", "cosine", "step")
AMP_MODES = ("auto", "bf16", "fp16", "tf32", "off")
#: Fields of a metrics record that differ between two runs of the same computation.
VOLATILE_FIELDS = (
    "epoch_seconds",
    "train_seconds",
    "images_per_second",
    "peak_memory_bytes",
    "time",
)
class DivergedError(RuntimeError):
    """The loss became non-finite; the run stopped and kept its last good checkpoint."""


# --------------------------------------------------------------------------- config


def _check_number(name: str, value, low: float, high: float = math.inf, open_low=False) -> float:
    """Raise unless ``value`` is a real number in ``[low, high]`` (``(low, high]`` if open)."""
    try:
        finite = not isinstance(value, bool) and math.isfinite(value)
    except (TypeError, OverflowError):
        finite = False
    if not finite:
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    bad = value <= low if open_low else value < low
    if bad or value > high:
        interval = f"{'(' if open_low else '['}{low}, {high}]"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return float(value)


@dataclass
class TrainConfig:
    """Everything that defines a training run (the defaults are the paper's protocol).

    Attributes:
        optimizer: ``"adamw"`` (paper), ``"adam"`` or ``"sgd"``.
        lr: peak learning rate (paper: 1e-4).
        weight_decay: applied to *all* parameters, biases and norms included (paper: 0.01).
        betas: Adam(W) betas.
        momentum: SGD momentum.
        schedule: ``"none"`` (paper), ``"cosine"`` (to 0 at the end) or ``"step"`` (multiply
            by ``gamma`` every ``step_size`` epochs). The learning rate changes per epoch; see
            :func:`lr_at`.
        warmup_epochs: linear warm-up epochs before the schedule starts.
        step_size: epochs per step of ``schedule="step"``.
        gamma: factor per step of ``schedule="step"``.
        epochs: number of epochs (paper: 150).
        batch_size: global batch size, split evenly over DDP processes (paper: 256).
        eval_batch_size: per-process evaluation batch (default: the per-process train batch).
        grad_clip: clip the global gradient norm to this value (paper: 1.0); ``None`` or 0
            turns clipping off.
        label_smoothing: of the training loss (paper: 0). Test loss is plain cross-entropy.
        amp: ``"auto"`` (default: chosen by the device and the model family, see
            :func:`resolve_amp`), ``"bf16"``, ``"fp16"`` (with a gradient scaler),
            ``"tf32"`` (float32 with TF32 matmuls and convolutions) or ``"off"`` (float32,
            as the paper ran).
            Mixed precision is used on CUDA only; elsewhere it is switched off. The run's
            ``config.json`` records the precision used as ``amp_active``. Neighbour
            selection ranks in float32 under every setting.
        compile: ``torch.compile`` the model.
        seed: seeds Python, NumPy and torch *before* the model is built, and the loader's
            per-epoch order and augmentation (paper: 42).
        eval_sampling: set on every module that has an ``eval_sampling`` attribute
            (:class:`~convnn.ConvNN2d`, :class:`~convnn.ConvNNAttention`): ``"fixed"``
            (reproducible random candidates at test time) or ``"resample"`` (the paper's code).
        augment: random crop (padding 4) + horizontal flip (paper: off); on a streamed
            ImageNet dataset, a random-resized crop + horizontal flip.
        resize: resize images to ``resize × resize`` on the device (224 for the paper's ViT).
        log_every: update the progress bar's loss/accuracy every this many steps (each update
            waits for the device); 0 updates it only at the end of the epoch.
        deterministic: ``torch.use_deterministic_algorithms(True, warn_only=True)`` and
            deterministic cuDNN for the duration of the run (slower; for tests). Otherwise
            cuDNN autotunes its convolution algorithms (``cudnn.benchmark``), so two CUDA
            runs agree to rounding, not bit for bit.
        checkpoint_every: write the run folder's checkpoint every this many epochs.
        checkpoint_minutes: write it once this many minutes have passed since the last one
            (default 2; 0 writes it after every epoch). Whichever of the two comes first
            saves; the first epoch of every call, the last epoch and an epoch after which
            ``callback`` stops the run are always saved. ``metrics.jsonl`` gets every epoch;
            on resume, its lines past the checkpoint are dropped and those epochs trained
            again, so a crash loses at most the epochs since the last save (about
            ``checkpoint_minutes`` plus one epoch). A
            checkpoint of the paper's VGG-11 with its AdamW state is 1.56 GB: writing it
            after every 2-second H200 epoch took about 4.5 s. Both may change on resume.
    """

    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    schedule: str = "none"
    warmup_epochs: int = 0
    step_size: int = 30
    gamma: float = 0.1
    epochs: int = 150
    batch_size: int = 256
    eval_batch_size: int | None = None
    grad_clip: float | None = 1.0
    label_smoothing: float = 0.0
    amp: str = "auto"
    compile: bool = False
    seed: int = 42
    eval_sampling: str = "fixed"
    augment: bool = False
    resize: int | None = None
    log_every: int = 10
    deterministic: bool = False
    checkpoint_every: int | None = None
    checkpoint_minutes: float | None = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_number("lr", self.lr, 0.0, open_low=True)
        _check_number("weight_decay", self.weight_decay, 0.0)
        if not isinstance(self.betas, tuple) or len(self.betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {self.betas!r}")
        for i, b in enumerate(self.betas):
            _check_number(f"betas[{i}]", b, 0.0, 1.0)
        _check_number("momentum", self.momentum, 0.0, 1.0)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_int("warmup_epochs", self.warmup_epochs, minimum=0)
        check_int("step_size", self.step_size, minimum=1)
        _check_number("gamma", self.gamma, 0.0, 1.0, open_low=True)
        check_int("epochs", self.epochs, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        if self.eval_batch_size is not None:
            check_int("eval_batch_size", self.eval_batch_size, minimum=1)
        if self.grad_clip is not None:
            _check_number("grad_clip", self.grad_clip, 0.0)
        _check_number("label_smoothing", self.label_smoothing, 0.0, 1.0)
        check_choice("amp", self.amp, AMP_MODES)
        check_bool("compile", self.compile)
        check_int("seed", self.seed, minimum=0)
        check_choice("eval_sampling", self.eval_sampling, EVAL_SAMPLINGS)
        check_bool("augment", self.augment)
        if self.resize is not None:
            check_int("resize", self.resize, minimum=1)
        check_int("log_every", self.log_every, minimum=0)
        check_bool("deterministic", self.deterministic)
        if self.checkpoint_every is not None:
            check_int("checkpoint_every", self.checkpoint_every, minimum=1)
        if self.checkpoint_minutes is not None:
            _check_number("checkpoint_minutes", self.checkpoint_minutes, 0.0)

    def to_dict(self) -> dict:
        """A JSON-ready dict of all fields (``betas`` as a list)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> TrainConfig:
        """Build from :meth:`to_dict`'s output; missing keys take their defaults.

        Raises:
            ValueError: for keys that are not fields (a typo must not pass silently), and
                for bad values.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"d must be a mapping, got {type(d).__name__}")
        check_known("TrainConfig keys", d, [f.name for f in dataclasses.fields(cls)])
        return cls(**d)


def lr_at(config: TrainConfig, epoch: int) -> float:
    """The learning rate of 0-based ``epoch``: a pure function, so resuming needs no state.

    Warm-up epochs ``e < w`` use ``lr * (e + 1) / (w + 1)``. After them, with ``t = e - w``
    and ``T = epochs - w``: ``"none"`` keeps ``lr``; ``"cosine"`` uses
    ``lr * (1 + cos(pi * t / T)) / 2``; ``"step"`` uses ``lr * gamma ** (t // step_size)``.
    """
    check_int("epoch", epoch, minimum=0)
    w = config.warmup_epochs
    if epoch < w:
        return config.lr * (epoch + 1) / (w + 1)
    t, total = epoch - w, max(1, config.epochs - w)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
    if config.schedule == "step":
        return config.lr * config.gamma ** (t // config.step_size)
    return config.lr


def set_eval_sampling(model: nn.Module, mode: str) -> int:
    """Set ``eval_sampling = mode`` on every submodule that has that attribute.

    Returns:
        How many modules were set.
    """
    check_choice("eval_sampling", mode, EVAL_SAMPLINGS)
    n = 0
    for m in model.modules():
        if hasattr(m, "eval_sampling"):
            m.eval_sampling = mode
            n += 1
    return n


# --------------------------------------------------------------------------- devices, DDP


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    created: bool = False  # we initialised the process group, so we destroy it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _resolve_device(device) -> torch.device:
    device = resolve_device("device", device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _init_distributed(device) -> tuple[_Dist, torch.device]:
    """Join (or start, from torchrun's environment) a process group; pick this rank's device."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        ctx = _Dist(dist.get_rank(), dist.get_world_size(), created=False)
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
        want_cuda = torch.cuda.is_available() and (
            device is None or torch.device(device).type == "cuda"
        )
        if want_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
        ctx = _Dist(dist.get_rank(), dist.get_world_size(), created=True)
    else:
        return _Dist(), _resolve_device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", ctx.rank))
    return ctx, _resolve_device(resolve_device("device", device, cuda_index=local_rank))


def _all_reduce(t: torch.Tensor, ctx: _Dist) -> torch.Tensor:
    if ctx.enabled:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def _barrier(ctx: _Dist) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def _peak_memory(device: torch.device) -> tuple[int | None, str]:
    """``(bytes, kind)``: CUDA's peak allocated memory of the epoch, or the process's peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    try:
        import resource
    except ImportError:  # Windows
        return None, "unavailable"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return int(rss if sys.platform == "darwin" else rss * 1024), "cpu_max_rss_process"


#: What ``amp="auto"`` picks per model family on a CUDA GPU that computes in bfloat16
#: natively (compute capability 8.0 or newer), from committed measurements only: the
#: family's baseline model trained by our trainer in float32 with TF32 matmuls and
#: convolutions against bf16 autocast, on the same card in one run (images per second,
#: steady-state epochs). A family without an entry keeps the default, bf16 (unmeasured).
AUTO_AMP_MEASUREMENTS = {
    "vgg": {"amp": "tf32", "model": "VGG-11 Conv2d, batch 256", "device": "H200",
            "images_per_second": {"tf32": 36034.0, "bf16": 28751.2},
            "file": "data/results/bench/2026-11-28-h200-abe79e6/loop.json"},
    "vit": {"amp": "bf16", "model": "ViT-Tiny SDPA, batch 256", "device": "H200",
            "images_per_second": {"tf32": 5076.3, "bf16": 6378.5},
            "file": "data/results/bench/2026-11-28-h200-abe79e6/loop.json"},
}
"""``{family: {"amp", "model", "device", "images_per_second", "file"}}``; ResNet is not
measured yet and keeps bf16."""

#: Labels of the precisions a run can train in (``amp_active`` of ``config.json``).
PRECISION_LABELS = {"off": "float32 (no AMP)", "tf32": "float32, TF32 matmuls",
                    "bf16": "bf16 autocast", "fp16": "fp16 autocast"}


def precision_label(amp_active: str) -> str:
    """A label for a run's precision (``config.json``'s ``amp_active``, or a preset's
    ``paper_precision``): ``precision_label("off") == "float32 (no AMP)"``."""
    check_choice("amp_active", amp_active, PRECISION_LABELS)
    return PRECISION_LABELS[amp_active]


def model_family(model: nn.Module | None) -> str | None:
    """The family name (``"vgg"``, ``"resnet"``, ``"vit"``...) of a model of a registered
    :class:`~convnn.models.ModelFamily` (or of a module that contains one), ``None`` for
    anything else."""
    from .models import MODEL_FAMILIES

    if model is None:
        return None
    for module in model.modules():
        for family in MODEL_FAMILIES.values():
            if isinstance(module, family.model_class):
                return family.name
    return None


def resolve_amp(amp: str, device: torch.device | str, model: nn.Module | None = None) -> str:
    """The precision a run on ``device`` uses for the setting ``amp``.

    ``"auto"`` on a GPU that computes in bfloat16 natively (compute capability 8.0 or newer:
    A100, L4, H100...) gives the faster of TF32 and bf16 for ``model``'s family as measured
    (:data:`AUTO_AMP_MEASUREMENTS`: TF32 for VGG, bf16 for ViT), and bf16 for an unmeasured
    family or model; ``"fp16"`` with a gradient scaler on older GPUs (T4, V100: bfloat16 is
    emulated there, or unsupported by cuDNN); ``"off"`` (float32) on a CPU or any other
    device. ``"tf32"`` is float32 with TF32 matmuls and convolutions. An explicit
    ``"bf16"``/``"fp16"``/``"tf32"`` is kept on CUDA and becomes ``"off"`` elsewhere.

    Example:
        >>> resolve_amp("auto", "cpu")
        'off'
    """
    check_choice("amp", amp, AMP_MODES)
    device = torch.device(device)
    if device.type != "cuda" or amp == "off":
        return "off"
    if amp != "auto":
        return amp
    major, _ = torch.cuda.get_device_capability(device)
    if major < 8:
        return "fp16"
    measured = AUTO_AMP_MEASUREMENTS.get(model_family(model))
    return measured["amp"] if measured else "bf16"


def _autocast(device: torch.device, amp: str):
    if amp in ("off", "tf32") or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@contextlib.contextmanager
def _tf32_flags():
    """The TF32 switches come back as they were after a run (``amp="tf32"`` sets them)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def fused_options(params: list[torch.Tensor], device: torch.device) -> dict:
    """``{"fused": True}`` for Adam(W) on CUDA (one kernel for the whole update instead of
    several per parameter list; same update to rounding), else ``{}`` (the default)."""
    if device.type == "cuda" and all(p.is_cuda and p.is_floating_point() for p in params):
        return {"fused": True}
    return {}


def to_fast_layout(net: nn.Module, device: torch.device) -> bool:
    """Channels-last weights for a network with ``nn.Conv2d`` layers on CUDA (cuDNN's fast
    layout; the first convolution's output follows its weights, so the loader is unchanged).
    ConvNN layers take channels-last input as it comes: :class:`~convnn.layers.ConvNN2d`
    reads ``[B, C, H, W]`` in NHWC as ``[B, H·W, C]`` rows and writes its output in
    channels-last, so the Conv2d branch and the 1×1 mix of a branching VGG stay in NHWC.
    Returns whether the model was converted."""
    if device.type != "cuda" or not any(isinstance(m, nn.Conv2d) for m in net.modules()):
        return False
    net.to(memory_format=torch.channels_last)
    return True


def _sum_dtype(device: torch.device) -> torch.dtype:
    return torch.float64 if device.type in ("cpu", "cuda") else torch.float32


@contextlib.contextmanager
def _deterministic(enabled: bool):
    """Deterministic algorithms for the duration of a run; the previous settings come back."""
    if not enabled:  # cuDNN may autotune: same results to rounding, faster convolutions
        old_benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = old_benchmark
        return
    old = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old[0], warn_only=old[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = old[2], old[3]


# --------------------------------------------------------------------------- RNG state


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # CPU and every CUDA device


def _gather_rng(ctx: _Dist, device: torch.device) -> list[dict]:
    """Every rank's RNG state, indexed by rank (a collective call under DDP)."""
    mine = rng_state(device)
    if not ctx.enabled:
        return [mine]
    import torch.distributed as dist

    states: list = [None] * ctx.world_size
    dist.all_gather_object(states, mine)
    return states


# --------------------------------------------------------------------------- metrics


def _batch_sums(logits: torch.Tensor, y: torch.Tensor, loss_sum: torch.Tensor, dtype):
    """``[loss_sum, top1_hits, top5_hits, count]`` of one batch (top-5 means top-min(5, C))."""
    k = min(5, logits.shape[-1])
    hits = logits.topk(k, dim=-1).indices.eq(y[:, None])  # (B, k)
    return torch.stack(
        (
            loss_sum.to(dtype),
            hits[:, 0].sum().to(dtype),
            hits.any(dim=-1).sum().to(dtype),
            loss_sum.new_full((), y.numel(), dtype=dtype),  # a fill, not a host-to-device copy
        )
    )


def _finish(sums: torch.Tensor) -> dict:
    loss, top1, top5, count = sums.tolist()
    if count == 0:
        raise ValueError("the loader yielded no samples")
    return {
        "loss": loss / count,
        "top1": 100.0 * top1 / count,
        "top5": 100.0 * top5 / count,
        "count": int(count),
    }


@torch.no_grad()
def _eval_sums(model: nn.Module, loader, device: torch.device, amp: str,
               predictions: list | None = None) -> torch.Tensor:
    """The summed test metrics of one pass; with a list ``predictions``, each batch's
    ``(predicted class, label)`` is appended to it (on the device)."""
    dtype = _sum_dtype(device)
    sums = torch.zeros(4, dtype=dtype, device=device)
    for x, y in loader:
        with _autocast(device, amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        sums += _batch_sums(logits, y, loss, dtype)
        if predictions is not None:
            predictions.append((logits.argmax(-1), y))
    return sums


def _joined(pairs: list) -> tuple[torch.Tensor, torch.Tensor]:
    """``(predicted, labels)`` on the CPU from :func:`_eval_sums`' list of batch pairs."""
    return (torch.cat([p for p, _ in pairs]).cpu(), torch.cat([y for _, y in pairs]).cpu())


def has_random_candidates(model: nn.Module) -> bool:
    """Whether a module of ``model`` draws random candidates (``sampling == "random"``)."""
    return any(getattr(m, "sampling", None) == "random" and hasattr(m, "eval_sampling")
               for m in model.modules())


def _resampled_test(model: nn.Module, loaders, device, amp: str, ctx, config, epoch: int
                    ) -> dict | None:
    """A second test pass with random candidates redrawn on every call, as the paper's code
    evaluated (method.md §6.6), for a model with random candidates evaluated on a fixed draw;
    ``None`` otherwise. It draws from its own seeded stream (``seed``, epoch, rank), so the
    training's random streams and the fixed-draw numbers are the same as without it."""
    if config.eval_sampling != "fixed" or not has_random_candidates(model):
        return None
    devices = [device.index or 0] if device.type == "cuda" else []
    set_eval_sampling(model, "resample")
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(config.seed * 1_000_003 + 1_009 * (epoch + 1) + ctx.rank)
            sums = sum(_eval_sums(model, ld, device, amp) for ld in loaders)
    finally:
        set_eval_sampling(model, "fixed")
    return _finish(_all_reduce(sums, ctx))


def evaluate(model: nn.Module, loader, device=None, amp: str = "off") -> dict:
    """Test loss and accuracy of ``model`` over one pass of ``loader``, in eval mode.

    Args:
        model: a classifier returning logits ``[B, classes]``; its training mode is restored.
        loader: yields ``(x, y)`` batches on ``device``, e.g. ``dataset.test_loader(...)``.
        device: where the batches live (default: ``loader.device``, else the model's).
        amp: ``"auto"``, ``"bf16"``, ``"fp16"`` or ``"off"`` (see :func:`resolve_amp`).

    Returns:
        ``{"loss": mean cross-entropy, "top1": %, "top5": %, "count": samples}``. With fewer
        than 5 classes, ``top5`` is top-``classes`` accuracy (100%).
    """
    check_choice("amp", amp, AMP_MODES)
    if device is None:
        device = getattr(loader, "device", None) or next(model.parameters()).device
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        return _finish(_eval_sums(model, loader, device, resolve_amp(amp, device, model)))
    finally:
        model.train(was_training)


def summarize(
    records: list[dict], parameters: int | None = None, epochs: int | None = None
) -> dict:
    """The run summary from its metrics records.

    ``best_test_top1`` is the paper's metric (the maximum over epochs, i.e. model selection
    on the test set); ``last5_mean_test_top1``, the mean over the last ``min(5, epochs)``
    epochs, is the honest one.
    """
    if not records:
        raise ValueError("records is empty: no epoch has finished")
    best = max(records, key=lambda r: r["test_top1"])  # the first of equal maxima
    last = records[-min(5, len(records)) :]
    final_keys = ("train_loss", "train_top1", "train_top5", "test_loss", "test_top1", "test_top5")
    return {
        "best_test_top1": best["test_top1"],
        "best_epoch": best["epoch"],
        "last5_mean_test_top1": sum(r["test_top1"] for r in last) / len(last),
        "last5_epochs": [r["epoch"] for r in last],
        "final": {k: records[-1][k] for k in final_keys},
        "total_seconds": sum(r["epoch_seconds"] for r in records),
        "epochs_completed": records[-1]["epoch"],
        "epochs": epochs,
        "finished": epochs is not None and records[-1]["epoch"] >= epochs,
        "parameters": parameters,
    }


# --------------------------------------------------------------------------- progress


def _progress_enabled(progress: bool | None) -> bool:
    if progress is not None:
        return bool(progress)
    if os.environ.get("CI"):
        return False
    return sys.stdout.isatty() or "ipykernel" in sys.modules  # a terminal or a notebook


def _summary_line(r: dict, epochs: int) -> str:
    """Two short lines per epoch (they fit a book page and a narrow terminal)."""
    return (
        f"epoch {r['epoch']}/{epochs}  train loss {r['train_loss']:.4f} top1 "
        f"{r['train_top1']:.2f}%  test loss {r['test_loss']:.4f} top1 {r['test_top1']:.2f}%\n"
        f"    test top5 {r['test_top5']:.2f}%  lr {r['lr']:.2e}  {r['epoch_seconds']:.1f}s  "
        f"{r['images_per_second']:.0f} img/s"
    )


def _duration(seconds: float) -> str:
    """``42s``, ``7.5 min`` or ``2.3 h``."""
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# --------------------------------------------------------------------------- run folders


def _build(model_factory) -> tuple[nn.Module, bool]:
    """``(model, seeded)``: build a :class:`~convnn.models.ModelConfig`, call the factory, or
    take a ready module (not seeded by us)."""
    from .models import ModelConfig, build_model

    if isinstance(model_factory, ModelConfig):
        return build_model(model_factory), True
    if isinstance(model_factory, nn.Module):
        return model_factory, False
    if not callable(model_factory):
        raise ValueError(
            f"model_factory must be a callable returning an nn.Module, or an nn.Module, got "
            f"{type(model_factory).__name__}"
        )
    model = model_factory()
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"model_factory() must return an nn.Module, got {type(model).__name__}"
        )
    return model, True


def evaluate_run(
    run_dir: str | os.PathLike,
    model_factory: Callable[[], nn.Module] | nn.Module,
    dataset,
    device=None,
    batch_size: int | None = None,
) -> dict:
    """Evaluate a run's last checkpoint on ``dataset``'s test split.

    Args:
        run_dir: a folder written by :func:`fit`.
        model_factory: builds the run's architecture (its weights are replaced).
        dataset: the dataset to test on (normally the run's own).
        device: default CUDA when available, else CPU.
        batch_size: evaluation batch (default: the run's evaluation batch).

    Returns:
        :func:`evaluate`'s dict plus ``"epoch"``, the checkpoint's finished epochs.
    """
    run = RunFolder.read(run_dir)
    if run.checkpoint is None:
        raise FileNotFoundError(f"{RunFolder(Path(run_dir)).checkpoint_path} does not exist: "
                                "not a (started) run folder")
    tc = TrainConfig.from_dict(run.config["train"])
    device = _resolve_device(device)
    model, _ = _build(model_factory)
    load_weights(model, model_weights(run.checkpoint), RunFolder(Path(run_dir)).checkpoint_path)
    model.to(device)
    set_eval_sampling(model, tc.eval_sampling)
    _check_dataset(dataset, tc)
    loader = dataset.test_loader(batch_size or tc.eval_batch_size or tc.batch_size, device,
                                 **({} if tc.resize is None else {"resize": tc.resize}))
    result = evaluate(model, loader, device, amp=tc.amp)
    result["epoch"] = run.checkpoint_epoch
    return result


def _model_config_dict(model_factory) -> dict | None:
    """The config recorded in ``config.json`` when the model is given as a ModelConfig."""
    from .models import ModelConfig

    return model_factory.to_dict() if isinstance(model_factory, ModelConfig) else None


def _check_dataset(dataset, config: TrainConfig) -> None:
    from .imagenet import ImageNetDataset

    if isinstance(dataset, ImageDataset):
        return
    if not isinstance(dataset, ImageNetDataset):
        raise ValueError("dataset must be a convnn.data.ImageDataset or a "
                         f"convnn.imagenet.ImageNetDataset, got {type(dataset).__name__}")
    if config.resize is not None:
        raise ValueError(f"resize={config.resize} applies to in-memory datasets only; a streamed "
                         "ImageNet dataset crops to its own image_size (load_imagenet("
                         "image_size=...))")


# --------------------------------------------------------------------------- training


def fit(
    model_factory: Callable[[], nn.Module] | nn.Module,
    dataset,
    config: TrainConfig | None,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device=None,
    progress: bool | None = None,
    extra: dict | None = None,
    callback: Callable[[dict], None] | None = None,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Train a classifier on ``dataset`` and write a run folder (see the module docstring).

    Args:
        model_factory: a :class:`~convnn.models.ModelConfig` (built after seeding and
            recorded in ``config.json``, so that the run can be rebuilt and evaluated), or a
            no-argument callable returning the model. It is called after
            seeding, so ``config.seed`` fixes the initial weights. A ready ``nn.Module`` is
            accepted too, but then the seed did not control its initialisation (a warning
            says so, except when resuming, where the checkpoint's weights replace it).
        dataset: the data: an :class:`~convnn.data.ImageDataset` (both splits are moved to
            the device once) or a streamed :class:`~convnn.imagenet.ImageNetDataset`.
        config: the protocol; ``None`` means ``TrainConfig()``, the paper's.
        out_dir: the run folder; created if needed.
        resume: continue the run in ``out_dir`` from its last checkpoint (``metrics.jsonl``
            is kept and appended to; lines past the checkpoint's epoch, left by a crash
            between the two writes, are dropped). Without a checkpoint, start afresh. The
            config must match the run's, except for :data:`RESUMABLE_CHANGES` (e.g. more
            ``epochs``).
        overwrite: delete an existing run's files in ``out_dir`` and start afresh. Without
            ``resume`` or ``overwrite``, an existing run raises ``FileExistsError``.
        device: default ``cuda`` (this process's GPU under torchrun) when available, else CPU.
        progress: show a tqdm bar per epoch; default: on in a terminal or notebook, off when
            the ``CI`` environment variable is set. Only rank 0 shows it.
        extra: JSON-serialisable description stored in ``config.json`` under ``"extra"``
            (e.g. the model config and a preset name).
        callback: called as ``callback(record)`` on every process after each epoch's
            metrics are written; an exception from it ends the run there, after that epoch's
            checkpoint is saved (the run folder stays resumable).
        log: where the one-line epoch summaries and notes go (rank 0 only); ``None`` is
            silent.

    Returns:
        The summary (also written to ``summary.json``): ``best_test_top1``, ``best_epoch``,
        ``last5_mean_test_top1``, ``final`` metrics, ``total_seconds``, ``epochs_completed``,
        ``parameters``, and ``checkpoint`` (the epoch and SHA-256 of the checkpoint it
        describes). Accuracies are in percent.

    Raises:
        ValueError: a bad argument, or a resumed run whose config differs.
        FileExistsError: ``out_dir`` holds a run and neither ``resume`` nor ``overwrite``.
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    config.validate()
    _check_dataset(dataset, config)
    check_bool("resume", resume)
    check_bool("overwrite", overwrite)
    if resume and overwrite:
        raise ValueError("resume and overwrite cannot both be True")
    if extra is not None:
        try:
            json.dumps(extra, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"extra must be JSON-serialisable: {err}") from None
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable, got {callback!r}")
    check_path("out_dir", out_dir)
    out = Path(out_dir)
    check_device("device", device)

    ctx, device = _init_distributed(device)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_deterministic(config.deterministic))
            stack.enter_context(_tf32_flags())
            held = stack.enter_context(run_lock(out, ctx, log))
            stack.enter_context(_sigterm_stops_at_a_step_boundary(ctx))
            return _fit(model_factory, dataset, config, out, resume, overwrite,
                        device, ctx, _progress_enabled(progress) and ctx.rank == 0, extra or {},
                        callback, (log or (lambda _: None)) if ctx.rank == 0 else (lambda _: None),
                        held)
    finally:
        if ctx.created:
            import torch.distributed as dist

            dist.destroy_process_group()


@dataclass
class _Session:
    """What one call of :func:`fit` trains with, once the run folder has been opened."""

    config: TrainConfig
    device: torch.device
    ctx: _Dist
    amp: str
    net: nn.Module  # the plain module: its state is what the checkpoint saves
    compiled: nn.Module  # ``net``, compiled when asked: evaluated without DDP collectives
    model: nn.Module  # ``compiled``, wrapped in DDP under torchrun: trained
    params: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # enabled for fp16 only
    train_loader: object
    test_loaders: list
    show: bool


def _open_session(model_factory, ds, config, folder: RunFolder, device, ctx, show, extra,
                  log) -> tuple[_Session, dict, dict]:
    """Seed, build and check the model against the folder; then the optimizer, the data and
    ``config.json``. Returns the session, the run's fingerprint and its ``run_info``."""
    ws, main, checkpoint = ctx.world_size, ctx.rank == 0, folder.checkpoint
    # seed, then build (method.md §6.6: the seed must control the initial weights)
    _seed_everything(config.seed)
    net, seeded = _build(model_factory)
    if not seeded and checkpoint is None:
        warnings.warn(
            "fit() got a ready nn.Module, so config.seed did not control its initial "
            "weights; pass a factory (e.g. lambda: build_model(cfg)) for a reproducible run",
            stacklevel=4,
        )
    model_config = _model_config_dict(model_factory)
    fingerprint = run_fingerprint(config, ds, extra, net, model_config)
    folder.check(fingerprint, net, config.epochs)
    _barrier(ctx)  # nobody writes before every rank has looked
    if main:
        folder.prepare(log)

    net.to(device)
    set_eval_sampling(net, config.eval_sampling)
    if ctx.enabled:  # each rank its own dropout / random-candidate stream
        _seed_everything(config.seed + ctx.rank)
    amp = resolve_amp(config.amp, device, net)
    if amp == "off" and config.amp in ("bf16", "fp16", "tf32"):
        log(f"note: amp={config.amp!r} is used on CUDA only; training in float32 on {device}")
    if amp == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    to_fast_layout(net, device)
    params = list(net.parameters())
    optimizer = OPTIMIZER_FACTORIES[config.optimizer](params, config,
                                                      fused_options(params, device))
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    if checkpoint is not None:
        restore_training_state(checkpoint, optimizer, scaler)

    compiled = torch.compile(net) if config.compile else net
    model = compiled
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            compiled, device_ids=[device.index] if device.type == "cuda" else None
        )

    # data on the device: train sharded; test sharded + the remainder on rank 0
    per_rank = config.batch_size // ws
    eval_bs = config.eval_batch_size or per_rank
    common = {} if config.resize is None else {"resize": config.resize}
    train_loader = ds.train_loader(per_rank, device, shuffle=True, augment=config.augment,
                                   seed=config.seed, rank=ctx.rank, world_size=ws, **common)
    covered = ds.num_test // ws * ws
    test_loaders = [ds.test_loader(eval_bs, device, rank=ctx.rank, world_size=ws, **common)]
    if main and covered < ds.num_test:
        test_loaders.append(ds.test_loader(eval_bs, device, start=covered, **common))

    run_info = {
        "device": _device_name(device),
        "world_size": ws,
        "amp_active": amp,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }
    if main:
        folder.write_config(config, ds, extra, net, seeded, run_info, model_config)

    # restore the random streams last: nothing above may consume them after this
    if checkpoint is not None:
        start = folder.start_epoch
        if not restore_rng(checkpoint, ctx.rank, ws, device):
            log(f"note: the checkpoint has the RNG states of another number of processes, "
                f"this run has {ws}; reseeding, so the resumed run is not bit-identical")
            _seed_everything(config.seed + 1_000_003 * start + ctx.rank)
        log(f"resuming {folder.out} after epoch {start}/{config.epochs}")
    session = _Session(config, device, ctx, amp, net, compiled, model, params, optimizer,
                       scaler, train_loader, test_loaders, show)
    return session, fingerprint, run_info


def _train_epoch(s: _Session, epoch: int) -> dict:
    """One pass over the training data; the epoch's loss and accuracy over all ranks."""
    config, device, scaler = s.config, s.device, s.scaler
    s.model.train()
    s.train_loader.set_epoch(epoch)
    sum_dtype = _sum_dtype(device)
    sums = torch.zeros(4, dtype=sum_dtype, device=device)
    bar = tqdm(s.train_loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch",
               disable=not s.show, leave=False, dynamic_ncols=True)
    last_step = len(s.train_loader) - 1
    for step, (x, y) in enumerate(bar):
        with _autocast(device, s.amp):
            logits = s.model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
        s.optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.grad_clip:
            scaler.unscale_(s.optimizer)
            torch.nn.utils.clip_grad_norm_(s.params, config.grad_clip)
        scaler.step(s.optimizer)
        scaler.update()
        with torch.no_grad():
            step_loss = loss.detach()
            if scaler.is_enabled():  # fp16 overflow: the scaler skipped this step
                step_loss = torch.where(step_loss.isfinite(), step_loss, 0.0)
            sums += _batch_sums(logits.detach(), y, step_loss * len(y), sum_dtype)
        if _TERM.is_set():  # SIGTERM: stop at this step boundary
            bar.close()
            raise _StopRequested
        if s.show and (step == last_step or (config.log_every and step % config.log_every == 0)):
            t = sums.tolist()
            bar.set_postfix(loss=f"{t[0] / t[3]:.4f}", top1=f"{100 * t[1] / t[3]:.1f}%")
    bar.close()
    _sync(device)
    return _finish(_all_reduce(sums, s.ctx))


def _test_epoch(s: _Session, epoch: int, keep_predictions: bool = False
                ) -> tuple[dict, dict | None, tuple | None]:
    """The test metrics (the plain module: no DDP collectives, rank 0 has an extra loader),
    those with random candidates redrawn, where that applies, and with ``keep_predictions``
    rank 0's ``(predicted, labels)`` of every test image in the test set's order (each rank
    holds a contiguous slice; rank 0's extra loader holds the remainder)."""
    s.compiled.eval()
    pairs: list[list] = [[] for _ in s.test_loaders]
    with torch.no_grad():
        sums = sum(_eval_sums(s.compiled, ld, s.device, s.amp,
                              pairs[i] if keep_predictions else None)
                   for i, ld in enumerate(s.test_loaders))
    test = _finish(_all_reduce(sums, s.ctx))
    predictions = None
    if keep_predictions:
        slices = [_joined(pairs[0])]
        if s.ctx.enabled:
            import torch.distributed as dist

            slices = [None] * s.ctx.world_size
            dist.all_gather_object(slices, _joined(pairs[0]))
        slices += [_joined(p) for p in pairs[1:]]
        predictions = (torch.cat([p for p, _ in slices]), torch.cat([y for _, y in slices]))
    redrawn = _resampled_test(s.compiled, s.test_loaders, s.device, s.amp, s.ctx, s.config,
                              epoch)
    _sync(s.device)
    return test, redrawn, predictions


def _epoch_record(epoch: int, lr: float, tr: dict, te: dict, redrawn: dict | None,
                  train_seconds: float, epoch_seconds: float, device: torch.device,
                  run_info: dict) -> dict:
    """One line of ``metrics.jsonl``."""
    peak, peak_kind = _peak_memory(device)
    record = {
        "epoch": epoch + 1,
        "train_loss": tr["loss"],
        "train_top1": tr["top1"],
        "train_top5": tr["top5"],
        "test_loss": te["loss"],
        "test_top1": te["top1"],
        "test_top5": te["top5"],
        "lr": lr,
        "train_images": tr["count"],
        "test_images": te["count"],
        "epoch_seconds": epoch_seconds,
        "train_seconds": train_seconds,
        "images_per_second": tr["count"] / train_seconds,
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
        "device": run_info["device"],
        "world_size": run_info["world_size"],
        "git_commit": run_info["git_commit"],
        "time": local_time(),
    }
    if redrawn is not None:  # the paper's way: random candidates redrawn at evaluation
        record.update(test_loss_resampled=redrawn["loss"], test_top1_resampled=redrawn["top1"],
                      test_top5_resampled=redrawn["top5"])
    return record


class Terminated(BaseException):
    """The process received SIGTERM (what Colab sends when it recycles a runtime): training
    stopped at the next step boundary, after saving the checkpoint of every finished epoch.
    The epoch in progress is trained again on resume. The command line exits with 143."""


#: Set by the SIGTERM handler that :func:`fit` installs; checked at every step boundary.
_TERM = threading.Event()


class _StopRequested(BaseException):
    pass


@contextlib.contextmanager
def _sigterm_stops_at_a_step_boundary(ctx):
    """While training, SIGTERM sets :data:`_TERM` instead of killing the process (in the
    main thread of a single process; under torchrun each rank keeps the default, as a stop
    decided by one rank alone would leave the others waiting in a collective)."""
    if ctx.enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    _TERM.clear()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: _TERM.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _TERM.clear()


def _check_finite(tr: dict, te: dict, epoch: int, lr: float, folder: RunFolder) -> None:
    if not (math.isfinite(tr["loss"]) and math.isfinite(te["loss"])):
        kept = (f"{folder.checkpoint_path} still holds epoch {epoch}" if epoch else
                "no epoch had finished, so there is no checkpoint")
        raise DivergedError(
            f"training diverged in epoch {epoch + 1}: train loss {tr['loss']}, test loss "
            f"{te['loss']} (lr {lr:g}); stopped without saving this epoch ({kept}). Lower "
            "lr, keep grad_clip on, or check the data")


def _save_checkpoint(s: _Session, folder: RunFolder, records: list[dict],
                     fingerprint: dict) -> None:
    """The checkpoint after the last of ``records`` (collective: every rank takes part; rank 0
    writes it)."""
    rng = _gather_rng(s.ctx, s.device)
    if s.ctx.rank == 0:
        epoch = records[-1]["epoch"]  # 1-based: the next epoch's 0-based index
        folder.save_checkpoint(build_checkpoint(
            records=records, model=s.net, optimizer=s.optimizer, scaler=s.scaler, rng=rng,
            config=s.config.to_dict(), next_lr=lr_at(s.config, epoch),
            fingerprint=fingerprint))


def _log_expected_time(remaining: int, epoch_seconds: float, log) -> None:
    if remaining > 0:
        log(f"    expected time of the remaining {remaining} epoch{'s' * (remaining > 1)}: about "
            f"{_duration(remaining * epoch_seconds)}\n    (at this epoch's pace; an upper "
            "estimate, as the first epoch includes warm-up)")


def _checkpoint_due(config: TrainConfig, epoch: int, start_epoch: int, saved_epoch: int,
                    last_save: float, ctx: _Dist, device: torch.device) -> bool:
    """Whether 0-based ``epoch`` ends with a checkpoint (the same answer on every rank): the
    first epoch of a call and the last of the run always do."""
    due = (epoch == start_epoch or epoch + 1 == config.epochs
           or (config.checkpoint_every is not None
               and epoch + 1 - saved_epoch >= config.checkpoint_every)
           or (config.checkpoint_minutes is not None
               and time.perf_counter() - last_save >= 60 * config.checkpoint_minutes))
    if ctx.enabled:  # rank 0's clock may differ from the others'
        flag = torch.tensor([float(due)], device=device)
        due = bool(_all_reduce(flag, ctx).item() > 0)
    return due


def _fit(model_factory, ds, config, out, resume, overwrite, device, ctx, show, extra, callback,
         log, held=None) -> dict:
    t_call = time.perf_counter()
    if config.batch_size % ctx.world_size:
        raise ValueError(
            f"batch_size={config.batch_size} must be divisible by the number of processes "
            f"(world size {ctx.world_size})"
        )
    folder = RunFolder.open(out, resume, overwrite)  # nothing changes until every check passed
    folder.held = held  # every write checks that the lock is still this process's
    s, fingerprint, run_info = _open_session(model_factory, ds, config, folder, device, ctx,
                                             show, extra, log)
    main, start_epoch = ctx.rank == 0, folder.start_epoch
    records = folder.records[:start_epoch]
    parameters = sum(p.numel() for p in s.net.parameters())
    saved_epoch, last_save = start_epoch, time.perf_counter()

    for epoch in range(start_epoch, config.epochs):
        lr = lr_at(config, epoch)
        for group in s.optimizer.param_groups:
            group["lr"] = lr
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        try:
            if _TERM.is_set():
                raise _StopRequested
            tr = _train_epoch(s, epoch)
        except _StopRequested:
            if saved_epoch < len(records):  # finished epochs the cadence had not saved yet
                _save_checkpoint(s, folder, records, fingerprint)
                if main:
                    folder.save_summary(summarize(records, parameters, config.epochs))
            raise Terminated(
                f"stopped by SIGTERM during epoch {epoch + 1}; {out} holds the checkpoint of "
                f"epoch {len(records)} (the epoch in progress is trained again): continue "
                "with resume=True (--resume)") from None
        train_seconds = time.perf_counter() - t0
        final = epoch + 1 == config.epochs
        te, redrawn, predictions = _test_epoch(s, epoch, keep_predictions=final)
        epoch_seconds = time.perf_counter() - t0
        _check_finite(tr, te, epoch, lr, folder)

        record = _epoch_record(epoch, lr, tr, te, redrawn, train_seconds, epoch_seconds,
                               device, run_info)
        records.append(record)
        if main:
            folder.save_epoch(records)
            if predictions is not None:  # before the final checkpoint (see save_predictions)
                folder.save_predictions(epoch + 1, *predictions)
        saved = _checkpoint_due(config, epoch, start_epoch, saved_epoch, last_save, ctx, device)
        if saved:
            _save_checkpoint(s, folder, records, fingerprint)
            saved_epoch, last_save = epoch + 1, time.perf_counter()
        if main:  # after the checkpoint: the summary records the one on disk
            folder.save_summary(summarize(records, parameters, config.epochs))
        log(_summary_line(record, config.epochs))
        if epoch == start_epoch:
            _log_expected_time(config.epochs - epoch - 1, epoch_seconds, log)
        if callback is not None:
            try:
                callback(record)
            except Exception:
                if not saved:  # the callback ends the run here: keep this epoch
                    _save_checkpoint(s, folder, records, fingerprint)
                    if main:
                        folder.save_summary(summarize(records, parameters, config.epochs))
                raise

    summary = summarize(records, parameters, config.epochs)
    if main:
        summary = folder.save_summary(summary)
        log(
            f"done: best test top1 {summary['best_test_top1']:.2f}% (epoch "
            f"{summary['best_epoch']}), mean of last {len(summary['last5_epochs'])} epochs "
            f"{summary['last5_mean_test_top1']:.2f}%\n"
            f"    {_duration(time.perf_counter() - t_call)} this call -> {out}"
        )
    if ctx.enabled:  # every rank returns what rank 0 wrote (with the checkpoint's record)
        import torch.distributed as dist

        box = [summary]
        dist.broadcast_object_list(box, src=0)
        summary = box[0]
    return summary

