"""Our trainer against a plain training loop of the paper's protocol, in one run.

The plain loop is what a careful user writes in 40 lines: the whole normalised training set
as one float32 tensor on the device, a fresh permutation per epoch, AdamW (lr 1e-4, weight
decay 0.01), gradient clipping at 1.0, two ``.item()`` calls per step (running loss and
correct count) and an evaluation pass. It runs in float32 (TF32 on CUDA) and, on CUDA only,
in bf16 autocast. Our trainer (:func:`convnn.train.fit`) trains the same model on the same
data into a temporary run folder.

Both are timed epoch by epoch, alternating (plain, trainer, plain, trainer, ...), so that a
change in the machine's load hits both alike. Reported per variant: steady-state training
images per second (the median over epochs after the first, which includes warm-up) and the
full epoch time, evaluation included, both as ratios against the plain fp32 loop.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_int, resolve_device
from ..data import ImageDataset, synthetic_dataset
from ..models import ModelConfig, build_model, default_image_size
from .timing import FastBackends, sync


def plain_loop(model: nn.Module, ds: ImageDataset, device: torch.device, batch_size: int,
               epochs: int, amp: str = "off", seed: int = 42) -> list[dict]:
    """Train ``model`` with the minimal loop; per epoch ``{"train_seconds", "epoch_seconds",
    "train_images", "train_loss", "test_top1"}``."""
    if amp not in ("off", "bf16"):
        raise ValueError(f"amp must be 'off' or 'bf16', got {amp!r}")
    mean = torch.tensor(ds.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(ds.std, device=device).view(1, 3, 1, 1)

    def prepare(images: torch.Tensor) -> torch.Tensor:  # uint8 NHWC -> normalised NCHW
        x = images.to(device).permute(0, 3, 1, 2).float().div_(255)
        return ((x - mean) / std).contiguous()

    xtr, ytr = prepare(ds.train_images), ds.train_labels.to(device, torch.long)
    xte, yte = prepare(ds.test_images), ds.test_labels.to(device, torch.long)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    use_bf16 = amp == "bf16" and device.type == "cuda"
    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for _ in range(epochs):
        sync(device)
        t0 = time.perf_counter()
        model.train()
        total_loss, correct_train, seen = 0.0, 0, 0
        order = torch.randperm(len(xtr), device=device, generator=g)
        for i in range(0, len(xtr), batch_size):
            idx = order[i:i + batch_size]
            x, y = xtr[idx], ytr[idx]
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total_loss += loss.item() * len(y)
            correct_train += int((logits.argmax(1) == y).sum().item())
            seen += len(y)
        sync(device)
        t1 = time.perf_counter()
        model.eval()
        correct = 0
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            for i in range(0, len(xte), batch_size):
                correct += int((model(xte[i:i + batch_size]).argmax(1)
                                == yte[i:i + batch_size]).sum().item())
        sync(device)
        t2 = time.perf_counter()
        out.append({"train_seconds": t1 - t0, "epoch_seconds": t2 - t0, "train_images": seen,
                    "train_loss": total_loss / seen, "test_top1": 100.0 * correct / len(xte)})
    return out


def trainer_epochs(factory: Callable[[], nn.Module], ds: ImageDataset, device: torch.device,
                   batch_size: int, epochs: int, amp: str = "off") -> list[dict]:
    """Train with :func:`convnn.train.fit` into a temporary folder; its metrics records,
    each with ``call_seconds`` (the call's wall time divided by the epochs: checkpoints and
    set-up included)."""
    from ..run_folder import RunFolder
    from ..train import TrainConfig, fit

    config = TrainConfig(epochs=epochs, batch_size=batch_size, amp=amp, log_every=0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        fit(factory, ds, config, tmp, device=device, progress=False, log=None)
        wall = time.perf_counter() - t0
        records = RunFolder.read(tmp, checkpoint="none").records
    for r in records:
        r["call_seconds"] = wall / epochs
    return records


def loop_benchmarks(device: torch.device | str | None = None, model: str = "small",
                    epochs: int | None = None, rounds: int | None = None,
                    n_train: int | None = None, batch_size: int | None = None) -> list[dict]:
    """Plain loop vs our trainer on one model, as ratios against the plain fp32/TF32 loop.

    Args:
        device: default CUDA when available.
        model: ``"small"`` (VGG-11 at 1/8 width with the lean head, seconds on a CPU),
            ``"vgg11"`` (the paper's VGG-11 Conv2d) or ``"vit_tiny"`` (SDPA, 224 input).
        epochs: epochs per run (the first is warm-up and not counted as steady state).
        rounds: alternating runs of each variant; medians over all steady-state epochs.
        n_train: synthetic training images (the test split is a quarter of it).
        batch_size: default 64 on a CPU, 256 on CUDA.
    """
    device = resolve_device("device", device)
    on_cpu = device.type == "cpu"
    configs = {
        "small": ModelConfig(name="vgg11", width_multiplier=0.125, head="lean", dropout=0.0),
        "vgg11": ModelConfig(name="vgg11"),
        "vit_tiny": ModelConfig(name="vit_tiny", mixer="attention"),
    }
    if model not in configs:
        raise ValueError(f"model must be one of {list(configs)}, got {model!r}")
    epochs = check_int("epochs", epochs or 4, minimum=2)
    rounds = check_int("rounds", rounds or 2, minimum=1)
    batch_size = check_int("batch_size", batch_size or (64 if on_cpu else 256), minimum=1)
    n_train = check_int("n_train", n_train or (8 * batch_size if on_cpu else 40 * batch_size),
                        minimum=batch_size)
    ds = synthetic_dataset(n_train=n_train, n_test=max(1, n_train // 4), num_classes=10,
                           image_size=32)
    cfg = configs[model]
    size = default_image_size(cfg.name)
    if size != 32:  # the paper's ViT reads 224x224: resize once, outside the timing
        ds = _resized(ds, size)

    def factory() -> nn.Module:
        return build_model(cfg)

    variants = [("plain loop, fp32" + ("/TF32" if not on_cpu else ""), "plain", "off"),
                ("convnn trainer, fp32" + ("/TF32" if not on_cpu else ""), "trainer", "off")]
    if not on_cpu:
        variants += [("plain loop, bf16 autocast", "plain", "bf16"),
                     ("convnn trainer, bf16 autocast", "trainer", "bf16")]
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
    threads = torch.get_num_threads()
    if on_cpu:  # one thread: other processes' load then distorts the ratio far less
        torch.set_num_threads(1)
    try:
        _alternate(variants, rounds, runs, factory, ds, device, batch_size, epochs)
    finally:
        torch.set_num_threads(threads)

    # every run's first epoch is warm-up
    steady = {name: [r for i, r in enumerate(recs) if i % epochs] for name, recs in runs.items()}
    base = steady[variants[0][0]]
    base_ips = statistics.median(r["train_images"] / r["train_seconds"] for r in base)
    base_epoch = statistics.median(r["epoch_seconds"] for r in base)
    rows = []
    for name, kind, amp in variants:
        recs = steady[name]
        ips = statistics.median(r["train_images"] / r["train_seconds"] for r in recs)
        epoch_s = statistics.median(r["epoch_seconds"] for r in recs)
        rows.append({
            "model": model, "case": name, "runner": kind, "amp": amp, "batch": batch_size,
            "train_images": n_train, "epochs": epochs, "rounds": rounds,
            "images_per_second": ips, "epoch_seconds": epoch_s,
            "throughput_vs_plain_fp32": ips / base_ips,
            "epoch_time_vs_plain_fp32": epoch_s / base_epoch,
            "call_seconds_per_epoch": (statistics.median(r["call_seconds"] for r in recs)
                                       if kind == "trainer" else None),
        })
    return rows


def _alternate(variants, rounds, runs, factory, ds, device, batch_size, epochs) -> None:
    with FastBackends(device):
        for _ in range(rounds):
            for name, kind, amp in variants:
                if kind == "plain":
                    torch.manual_seed(42)
                    runs[name] += plain_loop(factory(), ds, device, batch_size, epochs, amp)
                else:
                    runs[name] += trainer_epochs(factory, ds, device, batch_size, epochs, amp)


def _resized(ds: ImageDataset, size: int) -> ImageDataset:
    import dataclasses

    def up(images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    return dataclasses.replace(ds, train_images=up(ds.train_images),
                               test_images=up(ds.test_images))


def format_loop_rows(rows: list[dict]) -> str:
    """A plain-text table: throughput and epoch time against the plain fp32 loop."""
    header = (f"{'model':<9} {'case':<32} {'batch':>5} {'img/s vs plain':>14} "
              f"{'epoch time vs plain':>19}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['model']:<9} {r['case']:<32} {r['batch']:>5} "
                     f"{r['throughput_vs_plain_fp32']:>13.2f}x "
                     f"{r['epoch_time_vs_plain_fp32']:>18.2f}x")
    return "\n".join(lines)
