"""What every dataset module shares: the dataset table and its entries, the data cache, the
per-epoch order.

:data:`DATASETS` holds one :class:`DatasetInfo` per dataset a preset may train on.
:mod:`convnn.data` (CIFAR-10/100, in memory) and :mod:`convnn.imagenet` (ImageNet, streamed)
build on this module; :mod:`convnn.data` registers the built-in entries, its own and
ImageNet's, so that ``import convnn.data`` gives the whole table. A dataset of your own is a
:class:`DatasetInfo` passed to :func:`register_dataset` (see ``CONTRIBUTING.md``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._checks import check_int

#: A dataset's training protocol (:attr:`DatasetInfo.protocol`): ``"paper"``, the paper's CIFAR
#: protocol (:data:`convnn.experiments.CIFAR_PROTOCOL` with each preset's lr, epochs and
#: seed); ``"family"``, each model family's own recipe
#: (:attr:`convnn.models.ModelFamily.protocol`), for data the paper states no protocol for.
PROTOCOLS = ("paper", "family")


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset: everything the package knows about it, in one entry of :data:`DATASETS`.

    Attributes:
        name: the key (``"cifar10"``), as in presets and run folders.
        title: the human name (``"CIFAR-10"``), in descriptions, tables and plots.
        short: the part of a preset's name (``"c10"``: ``vgg11-c10-conv2d``).
        num_classes: classes of the full dataset (a model's output size).
        loader: ``loader(*, data_dir, download, train_per_class, test_per_class, image_size)``
            returns the dataset (``image_size``: the crop size of a streamed dataset; in-memory
            loaders ignore it); raises :class:`DatasetNotFoundError` when it is not there.
        mean, std: per-channel statistics of the training images, in [0, 1] units (``None``
            where the loader computes or fixes them itself).
        smoke_train_per_class, smoke_test_per_class: the subset a smoke run trains and tests
            on (see :mod:`convnn.runner`).
        smoke_lr: the learning rate of a smoke run; ``None``: the preset's (scaled to the
            smoke batch where ``smoke_scale_lr``).
        smoke_scale_lr: scale the preset's learning rate to the smoke batch by the linear
            scaling rule (ImageNet: its recipes are for batch 256).
        stand_in: ``stand_in(image_size)`` returns clearly labelled synthetic data of the same
            kind, for a smoke run where the dataset is absent.
        streamed: the images are decoded from disk by worker processes while training
            (ImageNet), rather than held in memory.
        downloadable: the loader can download the dataset (then a smoke run falls back to
            the stand-in only when the download failed, not when it was not allowed).
        data_hint: how a user provides the data, for messages (``"set CONVNN_DATA_DIR ..."``).
        test_images: the size of the full test split (CIFAR: 10,000), which sets the sampling
            error of one run's test accuracy (:func:`convnn.stats.sampling_interval`).
        protocol: how presets train on it, one of :data:`PROTOCOLS` (required by
            :func:`register_dataset`): ``"paper"`` (CIFAR) or ``"family"`` (ImageNet).
    """

    name: str
    title: str
    short: str
    num_classes: int
    loader: Callable[..., Any]
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    smoke_train_per_class: int = 50
    smoke_test_per_class: int = 20
    smoke_lr: float | None = None
    smoke_scale_lr: bool = False
    stand_in: Callable[[int | None], Any] | None = None
    streamed: bool = False
    downloadable: bool = True
    data_hint: str = ("set CONVNN_DATA_DIR (or pass --data-dir / data_dir=) to a folder holding "
                      "the dataset, or run where the download works")
    test_images: int | None = None
    protocol: str | None = None


DATASETS: dict[str, DatasetInfo] = {}
"""Every dataset a preset may train on, by name (see :func:`register_dataset`)."""


def register_dataset(info: DatasetInfo, *, replace: bool = False) -> DatasetInfo:
    """Add a dataset to :data:`DATASETS` (the one place a new dataset is added): presets,
    the runner, smoke runs and the results tables then know it."""
    if not isinstance(info, DatasetInfo):
        raise TypeError(f"info must be a DatasetInfo, got {type(info).__name__}")
    if info.protocol not in PROTOCOLS:
        raise ValueError(
            f"dataset {info.name!r}: protocol={info.protocol!r}; give DatasetInfo(..., "
            "protocol='paper') to train its presets under the paper's CIFAR protocol, or "
            "protocol='family' to train them under each model family's own recipe "
            "(ModelFamily.protocol)")
    if info.name in DATASETS and not replace:
        raise ValueError(f"dataset {info.name!r} is already registered (pass replace=True)")
    DATASETS[info.name] = info
    return info


def unregister_dataset(name: str) -> None:
    """Remove a dataset registered with :func:`register_dataset` (presets made for it stay
    until they are unregistered too: :func:`convnn.experiments.unregister_preset`)."""
    dataset_info(name)  # a ValueError naming the known datasets
    del DATASETS[name]


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; a ValueError naming the known datasets otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}")
    return DATASETS[name]


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")


_REPO_ROOT = Path(__file__).resolve().parents[1]


class DatasetNotFoundError(RuntimeError):
    """The requested dataset is in none of the places searched and could not be downloaded.

    Attributes:
        download_error: why the download failed (``"URLError: ..."``), or ``None`` when no
            download was tried.
    """

    download_error: str | None = None


class Splits:
    """Sizes shared by :class:`ImageDataset` and :class:`convnn.imagenet.ImageNetDataset`
    (both have ``classes``, ``train_labels`` and ``test_labels``)."""

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def num_train(self) -> int:
        """Training images."""
        return len(self.train_labels)

    @property
    def num_test(self) -> int:
        """Test images."""
        return len(self.test_labels)


def default_cache_dir() -> Path:
    """The data cache: ``$CONVNN_CACHE_DIR``, else ``<repo>/data/cache`` when running from a
    checkout, else ``$XDG_CACHE_HOME/convnn`` (``~/.cache/convnn``)."""
    env = os.environ.get("CONVNN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    if (_REPO_ROOT / "pyproject.toml").is_file() and (_REPO_ROOT / "data").is_dir():
        return _REPO_ROOT / "data" / "cache"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "convnn"


def epoch_seed(seed: int, epoch: int) -> int:
    """One 63-bit generator seed from ``(seed, epoch)``, well mixed."""
    words = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, epoch])
    state = words.generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def _check_statistic(name: str, value) -> tuple[float, float, float]:
    """``mean`` or ``std`` of a loader: 3 finite numbers (R, G, B), ``std`` positive."""
    try:
        values = tuple(float(v) for v in value if not isinstance(v, (bool, str, bytes)))
        ok = len(values) == len(value) == 3
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must have 3 values (R, G, B), finite numbers, got {value!r}")
    if name == "std" and min(values) <= 0:
        raise ValueError(f"std must be positive, got {value!r}")
    return values


class EpochLoader:
    """What :class:`DeviceLoader` and :class:`convnn.imagenet.ImageNetLoader` share: the
    per-epoch order, the DistributedDataParallel slice and normalisation on the device.

    Every epoch's permutation comes from a CPU ``torch.Generator`` seeded by
    ``(seed, epoch)``, so a resumed run sees exactly the batches it would have seen, on any
    device. Call :meth:`set_epoch` before iterating to choose the epoch; without it,
    successive iterations use epochs 0, 1, 2, ... With ``world_size > 1`` every rank draws the
    same permutation and takes its own contiguous slice of ``N // world_size`` samples. A
    loader over samples ``[start:]`` of its source (``start > 0``) permutes those only.
    """

    def _setup(self, num_samples: int, batch_size: int, device: torch.device,
               mean: Sequence[float] | None, std: Sequence[float] | None, shuffle: bool,
               seed: int, drop_last: bool, rank: int, world_size: int, start: int = 0) -> None:
        check_int("batch_size", batch_size, minimum=1)
        check_int("world_size", world_size, minimum=1)
        check_int("rank", rank, minimum=0, maximum=world_size - 1)
        check_int("seed", seed, minimum=0)
        if (mean is None) != (std is None):
            raise ValueError(f"mean and std must be given together, got mean={mean}, std={std}")
        if mean is not None:
            mean, std = _check_statistic("mean", mean), _check_statistic("std", std)
        self.device = device
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.drop_last = bool(drop_last)
        self.rank = rank
        self.world_size = world_size
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        # x_normalised = x_uint8 * scale + shift, per channel
        m = torch.tensor(mean if mean is not None else (0.0, 0.0, 0.0), dtype=torch.float32)
        s = torch.tensor(std if std is not None else (1.0, 1.0, 1.0), dtype=torch.float32)
        self._scale = (1.0 / (255.0 * s)).view(1, 3, 1, 1).to(device)
        self._shift = (-m / s).view(1, 3, 1, 1).to(device)
        self.start = start
        self.num_samples = num_samples  # samples [start : start + num_samples] are in play
        self.samples_per_rank = num_samples // world_size
        self._next_epoch = 0
        if len(self) == 0:
            raise ValueError(
                f"batch_size={batch_size} with drop_last={self.drop_last} leaves no batch: each "
                f"rank has {self.samples_per_rank} samples ({num_samples} over "
                f"world_size={world_size})"
            )

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order (and augmentation) the next iteration uses."""
        self._next_epoch = check_int("epoch", epoch, minimum=0)

    def _take_epoch(self) -> int:
        epoch = self._next_epoch
        self._next_epoch += 1
        return epoch

    def __len__(self) -> int:
        """Batches per epoch (on this rank)."""
        if self.drop_last:
            return self.samples_per_rank // self.batch_size
        return math.ceil(self.samples_per_rank / self.batch_size)

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """The sample indices this rank visits in ``epoch``, in order (on the CPU)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            order = self.start + torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.start, self.start + self.num_samples)
        first = self.rank * self.samples_per_rank
        return order[first : first + self.samples_per_rank]

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, H, W, 3]`` on the device -> normalised float32 ``[B, 3, H, W]``."""
        x = x.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
        return x.mul_(self._scale).add_(self._shift)



__all__ = [
    "DATASETS",
    "IMAGE_SUFFIXES",
    "PROTOCOLS",
    "DatasetInfo",
    "DatasetNotFoundError",
    "EpochLoader",
    "Splits",
    "dataset_info",
    "default_cache_dir",
    "epoch_seed",
    "register_dataset",
    "unregister_dataset",
]
