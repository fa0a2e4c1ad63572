"""ImageNet-1K (ILSVRC-2012), streamed from JPEG files: it is far too big to hold in memory
like CIFAR (see :mod:`convnn.data`).

Images are decoded with PIL in ``torch.utils.data.DataLoader`` worker processes, cropped to
``S x S`` uint8 there, stacked into uint8 batches, moved to the training device (pinned memory
and non-blocking copies on CUDA) and converted to float and normalised on the device. The
loaders mirror :class:`convnn.data.DeviceLoader`: same keyword names, same per-epoch
permutation from ``(seed, epoch)``, same DistributedDataParallel sharding, plus ``start=`` for
the remainder that rank 0 evaluates alone. Each sample's augmentation comes from its own
generator seeded by ``(seed, epoch, sample index)``, so the batches do not depend on the
number of workers and a resumed run sees exactly the batches it would have seen.

Where ImageNet comes from (first hit wins):

1. the ``data_dir`` argument of :func:`load_imagenet` (the root itself, or a folder holding
   ``imagenet/``);
2. the ``CONVNN_IMAGENET_DIR`` environment variable (same);
3. ``$CONVNN_DATA_DIR/imagenet``;
4. ``<data cache>/imagenet`` (``cache_dir``, else :func:`convnn.data.default_cache_dir`).

A root holds ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (the tree that
``torchvision.datasets.ImageNet`` leaves), or the three official archives
``ILSVRC2012_img_train.tar``, ``ILSVRC2012_img_val.tar`` and ``ILSVRC2012_devkit_t12.tar.gz``,
which are then extracted into that tree once (hours). ImageNet cannot be downloaded
automatically: its licence requires registering at https://image-net.org.

The sorted file lists are cached in ``<data cache>/imagenet-index/`` (scanning 1.28M files is
slow), keyed by the root's absolute path and the modification times of its class folders.

Example:
    >>> root = write_synthetic_imagenet("/tmp/tiny-imagenet")  # doctest: +SKIP
    >>> ds = load_imagenet(root, image_size=32)  # doctest: +SKIP
    >>> train = ds.train_loader(16, "cpu", augment=True, seed=42)  # doctest: +SKIP
    >>> x, y = next(iter(train))  # doctest: +SKIP
    >>> x.shape, y.shape  # doctest: +SKIP
    (torch.Size([16, 3, 32, 32]), torch.Size([16]))
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._checks import check_choice, check_int
from ._io import atomic_target
from .dataset_base import (
    IMAGE_SUFFIXES,
    DatasetInfo,
    DatasetNotFoundError,
    EpochLoader,
    Splits,
    default_cache_dir,
    epoch_seed,
)

__all__ = [
    "ARCHIVES",
    "ENV_VAR",
    "IMAGENET",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPLITS",
    "ImageNetDataset",
    "ImageNetLoader",
    "default_num_workers",
    "load_imagenet",
    "random_resized_crop_params",
    "write_synthetic_imagenet",
]

#: Per-channel mean and std of ImageNet's training images, in [0, 1] units.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The official ILSVRC-2012 files that torchvision.datasets.ImageNet extracts.
ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz")
ENV_VAR = "CONVNN_IMAGENET_DIR"
#: Split names and the folder each one reads.
SPLITS = ("train", "test")
_FOLDER = {"train": "train", "test": "val"}
SYNTHETIC_MARKER = "SYNTHETIC.txt"
_CENTER_FRACTION = 0.875  # eval: resize the shorter side to S / 0.875 (256 for 224), crop S
_INDEX_VERSION = 1
_AUG_SALT = 0x5DEECE66D


# --------------------------------------------------------------------------- dataset


@dataclass(repr=False)
class ImageNetDataset(Splits):
    """The file lists of an ImageNet tree; images are decoded only while loading batches.

    Attributes:
        root: the tree's root (holding ``train/`` and ``val/``).
        classes: the class folder names (WordNet ids), sorted; label ``i`` is ``classes[i]``.
        train_files: ``[N]`` paths relative to ``root/train`` (``"<wnid>/<file>"``, UTF-8
            bytes), sorted by class then file name.
        train_labels: int64 tensor ``[N]``.
        test_files: ``[M]`` paths relative to ``root/val``.
        test_labels: int64 tensor ``[M]``.
        crop_size: side ``S`` of the square crops the loaders return.
        source: where the data came from; starts with ``"SYNTHETIC"`` for a synthetic tree.
        synthetic: the root holds the marker that :func:`write_synthetic_imagenet` writes.
        num_workers: decoding processes of the loaders made from this dataset (``None``: see
            :class:`ImageNetLoader`); a loader's own ``num_workers`` argument wins.
        name: always ``"imagenet"``.
        mean: per-channel mean in [0, 1] units, used for normalisation.
        std: per-channel std in [0, 1] units.
    """

    root: Path
    classes: tuple[str, ...]
    train_files: np.ndarray
    train_labels: torch.Tensor
    test_files: np.ndarray
    test_labels: torch.Tensor
    crop_size: int
    source: str
    synthetic: bool = False
    num_workers: int | None = None
    name: str = "imagenet"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the batches' images, ``(S, S)``."""
        return (self.crop_size, self.crop_size)

    def train_loader(self, batch_size: int, device=None, **kwargs) -> ImageNetLoader:
        """An :class:`ImageNetLoader` over the training split (keyword arguments as the
        loader's; ``shuffle`` and ``augment`` default to True)."""
        kwargs.setdefault("shuffle", True)
        kwargs.setdefault("augment", True)
        return self._loader("train", batch_size, device, kwargs)

    def test_loader(self, batch_size: int, device=None, **kwargs) -> ImageNetLoader:
        """A non-shuffling, never augmenting :class:`ImageNetLoader` over the validation
        images (``val/``), its samples ``[start:]``."""
        if kwargs.get("augment"):
            raise ValueError("test_loader never augments; use train_loader for augment=True")
        kwargs.setdefault("shuffle", False)
        return self._loader("test", batch_size, device, dict(kwargs, augment=False))

    def _loader(self, split: str, batch_size: int, device, kwargs: dict) -> ImageNetLoader:
        kwargs.setdefault("num_workers", self.num_workers)
        return ImageNetLoader(self, split, batch_size, device, **kwargs)

    def __repr__(self) -> str:
        s = self.crop_size
        return (
            f"ImageNetDataset(name={self.name!r}, train={self.num_train}, test={self.num_test}, "
            f"classes={self.num_classes}, image={s}x{s}, synthetic={self.synthetic}, "
            f"source={self.source!r})"
        )


# --------------------------------------------------------------------------- transforms


def random_resized_crop_params(
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """The crop box of torchvision's ``RandomResizedCrop``, drawn from ``generator``.

    Same algorithm and draws as ``torchvision.transforms.RandomResizedCrop.get_params``: up to
    10 tries of a random area fraction in ``scale`` and a log-uniform aspect ratio in ``ratio``;
    if none fits, a central crop with the aspect ratio clamped to ``ratio``.

    Args:
        height: image height (>= 1).
        width: image width (>= 1).
        generator: a CPU ``torch.Generator``.
        scale: range of the crop's area as a fraction of the image's.
        ratio: range of the crop's aspect ratio (width / height).

    Returns:
        ``(top, left, crop_height, crop_width)``, inside the image.
    """
    check_int("height", height, minimum=1)
    check_int("width", width, minimum=1)
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect_ratio = torch.exp(
            torch.empty(1).uniform_(log_ratio[0].item(), log_ratio[1].item(), generator=generator)
        ).item()
        w = round(math.sqrt(target_area * aspect_ratio))
        h = round(math.sqrt(target_area / aspect_ratio))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            j = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return i, j, h, w
    # fallback: central crop
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = round(w / min(ratio))
    elif in_ratio > max(ratio):
        h = height
        w = round(h * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _resize_center_crop(img, size: int):
    """torchvision's ``Resize(round(size / 0.875))`` + ``CenterCrop(size)`` on a PIL image."""
    from PIL import Image

    short_target = round(size / _CENTER_FRACTION)
    w, h = img.size
    if w <= h:
        new_w, new_h = short_target, int(short_target * h / w)
    else:
        new_w, new_h = int(short_target * w / h), short_target
    img.draft("RGB", (new_w, new_h))  # JPEG: decode at 1/2, 1/4 or 1/8 scale when large
    img = img.convert("RGB").resize((new_w, new_h), Image.BILINEAR)
    top = round((new_h - size) / 2.0)
    left = round((new_w - size) / 2.0)
    return img.crop((left, top, left + size, top + size))


def _random_resized_crop(img, size: int, generator: torch.Generator):
    """RandomResizedCrop(size) + horizontal flip (p = 0.5) on a PIL image, as a uint8 array."""
    from PIL import Image

    w, h = img.size
    top, left, ch, cw = random_resized_crop_params(h, w, generator)
    flip = bool(torch.rand(1, generator=generator).item() < 0.5)
    m = min(ch, cw)  # decode so that the crop keeps >= size pixels on both sides
    img.draft("RGB", (math.ceil(w * size / m), math.ceil(h * size / m)))
    img = img.convert("RGB")
    sx, sy = img.size[0] / w, img.size[1] / h
    box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
    out = np.array(img.resize((size, size), Image.BILINEAR, box=box))  # (S, S, 3)
    return np.ascontiguousarray(out[:, ::-1]) if flip else out


class _FolderImages(torch.utils.data.Dataset):
    """Decodes ``folder/files[i]``: item ``(i, aug_seed)`` gives ``(uint8 [S, S, 3], label)``;
    ``aug_seed`` None means resize + center crop, else a random resized crop + flip drawn from
    a generator seeded by ``(aug_seed, i)``."""

    def __init__(self, folder: Path, files: np.ndarray, labels: np.ndarray, size: int) -> None:
        self.folder = str(folder)
        self.files = files  # bytes array: no per-item Python objects shared with workers
        self.labels = labels
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int | None]) -> tuple[np.ndarray, int]:
        from PIL import Image

        index, aug_seed = item
        path = os.path.join(self.folder, self.files[index].decode())
        try:
            with Image.open(path) as img:
                if aug_seed is None:
                    out = np.array(_resize_center_crop(img, self.size))
                else:
                    g = torch.Generator().manual_seed(epoch_seed(aug_seed, index))
                    out = _random_resized_crop(img, self.size, g)
        except OSError as err:
            raise OSError(f"could not decode {path}: {err}") from err
        return out, int(self.labels[index])


def default_num_workers() -> int:
    """``$CONVNN_WORKERS``, else ``min(8, cpus // $LOCAL_WORLD_SIZE)`` (at least 1)."""
    env = os.environ.get("CONVNN_WORKERS")
    if env is not None:
        try:
            return check_int("CONVNN_WORKERS", int(env), minimum=0)
        except ValueError:
            raise ValueError(f"CONVNN_WORKERS must be an integer >= 0, got {env!r}") from None
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, (os.cpu_count() or 1) // local))


def _collate(batch: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.stack([x for x, _ in batch]))  # (B, S, S, 3) uint8
    return images, torch.tensor([y for _, y in batch], dtype=torch.int64)


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # the workers decode; intra-op threads would only compete


# --------------------------------------------------------------------------- loader


class ImageNetLoader(EpochLoader):
    """Streams one split of an :class:`ImageNetDataset` as normalised batches on ``device``.

    Order, epochs and DistributedDataParallel sharding are those of
    :class:`convnn.data.EpochLoader` (as for :class:`convnn.data.DeviceLoader`). Each sample's
    augmentation is drawn from a generator seeded by ``(seed, epoch, sample index)``, so
    batches are identical for any ``num_workers``, rank layout and after a resume. ``start``
    restricts the loader to the split's samples ``[start:]`` (e.g. the remainder that rank 0
    evaluates alone).

    Each batch is ``(x, y)``: ``x`` float32 ``[B, 3, S, S]`` normalised with the dataset's
    mean/std, ``y`` int64 ``[B]``, both on ``device``.

    Args:
        dataset: the :class:`ImageNetDataset`.
        split: ``"train"`` or ``"test"`` (the ``val/`` folder).
        batch_size: samples per batch (per rank).
        device: where batches go; default the CPU.
        shuffle: draw a new order every epoch.
        augment: RandomResizedCrop(S, scale=(0.08, 1)) + horizontal flip; else resize the
            shorter side to ``round(S / 0.875)`` and center crop ``S``.
        seed: base seed of the order and the augmentation.
        drop_last: drop the last incomplete batch.
        rank: this process's rank, in ``[0, world_size)``.
        world_size: number of processes sharing the data.
        start: use only the split's samples ``[start:]``.
        num_workers: decoding processes; default ``$CONVNN_WORKERS``, else
            ``min(8, os.cpu_count() // LOCAL_WORLD_SIZE)`` (the CPUs shared by the processes
            ``torchrun`` started on this machine), at least 1; 0 decodes in
            this process.
        image_size: crop side ``S``; default the dataset's ``crop_size``.
    """

    def __init__(
        self,
        dataset: ImageNetDataset,
        split: str,
        batch_size: int,
        device: str | torch.device | None = None,
        shuffle: bool = True,
        augment: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        num_workers: int | None = None,
        image_size: int | None = None,
    ) -> None:
        if not isinstance(dataset, ImageNetDataset):
            raise ValueError(f"dataset must be an ImageNetDataset, got {type(dataset).__name__}")
        check_choice("split", split, SPLITS)
        if num_workers is None:
            num_workers = default_num_workers()
        check_int("num_workers", num_workers, minimum=0)
        image_size = dataset.crop_size if image_size is None else image_size
        check_int("image_size", image_size, minimum=1)
        files = dataset.train_files if split == "train" else dataset.test_files
        labels = dataset.train_labels if split == "train" else dataset.test_labels
        n = len(files)
        check_int("start", start, minimum=0, maximum=n - 1)
        device = torch.device(device) if device is not None else torch.device("cpu")
        self._setup(n - start, batch_size, device, dataset.mean, dataset.std, shuffle, seed,
                    drop_last, rank, world_size, start)
        self.split = split
        self.augment = bool(augment)
        self.num_workers = num_workers
        self.image_size = image_size
        self._source = _FolderImages(
            dataset.root / _FOLDER[split], files, labels.numpy(), image_size
        )
        self._pin = self.device.type == "cuda"

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._take_epoch()
        order = self.epoch_indices(epoch).tolist()
        aug_seed = epoch_seed(self.seed, epoch) ^ _AUG_SALT if self.augment else None
        bs = self.batch_size
        batches = [[(i, aug_seed) for i in order[b * bs : (b + 1) * bs]] for b in range(len(self))]
        loader = torch.utils.data.DataLoader(
            self._source,
            batch_sampler=batches,
            num_workers=self.num_workers,
            collate_fn=_collate,
            pin_memory=self._pin,
            worker_init_fn=_worker_init if self.num_workers > 0 else None,
            persistent_workers=False,
        )
        for x, y in loader:
            x = x.to(self.device, non_blocking=self._pin)  # (B, S, S, 3) uint8
            yield self._normalise(x), y.to(self.device, non_blocking=self._pin)

    def __repr__(self) -> str:
        return (
            f"ImageNetLoader(split={self.split!r}, samples={self.samples_per_rank}, "
            f"batch_size={self.batch_size}, batches={len(self)}, device={self.device}, "
            f"image_size={self.image_size}, shuffle={self.shuffle}, augment={self.augment}, "
            f"seed={self.seed}, drop_last={self.drop_last}, rank={self.rank}, "
            f"world_size={self.world_size}, start={self.start}, num_workers={self.num_workers})"
        )


# --------------------------------------------------------------------------- locations


def _candidates(data_dir: str | os.PathLike | None, cache: Path) -> list[tuple[str, Path, bool]]:
    """``(origin, folder, may_be_root)`` in search order; ``may_be_root`` folders are tried
    themselves before their ``imagenet/`` child."""
    out = []
    if data_dir is not None:
        out.append(("data_dir", Path(data_dir).expanduser(), True))
    if os.environ.get(ENV_VAR):
        out.append((ENV_VAR, Path(os.environ[ENV_VAR]).expanduser(), True))
    if os.environ.get("CONVNN_DATA_DIR"):
        out.append(("CONVNN_DATA_DIR", Path(os.environ["CONVNN_DATA_DIR"]).expanduser(), False))
    out.append(("cache", cache, False))
    return out


def _has_tree(path: Path) -> bool:
    return (path / "train").is_dir() and (path / "val").is_dir()


def _has_archives(path: Path) -> bool:
    return all((path / name).is_file() for name in ARCHIVES)


def _inspect(path: Path, notes: list[str], origin: str) -> str | None:
    """``"tree"`` or ``"archives"`` if ``path`` is an ImageNet root, else None (with a note)."""
    if _has_tree(path):
        return "tree"
    if _has_archives(path):
        return "archives"
    if not path.exists():
        notes.append(f"[{origin}] {path}: does not exist")
    elif not path.is_dir():
        notes.append(f"[{origin}] {path}: not a folder")
    else:
        present = [a for a in ARCHIVES if (path / a).is_file()]
        has = [s + "/" for s in ("train", "val") if (path / s).is_dir()]
        if has or present:
            missing = [s + "/" for s in ("train", "val") if s + "/" not in has]
            missing_archives = [a for a in ARCHIVES if a not in present]
            notes.append(
                f"[{origin}] {path}: incomplete: has {', '.join(has + present)} but lacks "
                f"{' + '.join(missing)} (tree) or {', '.join(missing_archives)} (archives)"
            )
        else:
            names = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
            seen = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            notes.append(
                f"[{origin}] {path}: no train/ + val/ folders and no ILSVRC2012 archives "
                f"(contents: {seen or 'empty'})"
            )
    return None


def _locate(data_dir: str | os.PathLike | None, cache: Path) -> tuple[str, Path, str]:
    """The first ImageNet root found: ``(kind, root, origin)``; raises DatasetNotFoundError."""
    notes: list[str] = []
    seen: set[Path] = set()
    for origin, folder, may_be_root in _candidates(data_dir, cache):
        paths = [folder / "imagenet"]
        if may_be_root:  # the root itself, else a folder holding imagenet/
            paths = [folder] + (paths if folder.is_dir() else [])
        for path in paths:
            key = path.resolve()
            if key in seen:
                continue
            seen.add(key)
            kind = _inspect(path, notes, origin)
            if kind is not None:
                return kind, path, origin
    raise DatasetNotFoundError(_not_found_message(notes))


def _not_found_message(notes: list[str]) -> str:
    looked = "\n".join(f"  - {n}" for n in notes) or "  - (nowhere)"
    unset = [v for v in (ENV_VAR, "CONVNN_DATA_DIR") if not os.environ.get(v)]
    unset_note = f" ({' and '.join(unset)} {'is' if len(unset) == 1 else 'are'} unset)"
    return (
        f"ImageNet-1K (ILSVRC-2012) was not found.\nLooked in{unset_note if unset else ''}:\n"
        f"{looked}\n"
        "ImageNet cannot be downloaded automatically: its licence requires registering at "
        "https://image-net.org, then downloading the ILSVRC-2012 files yourself.\n"
        "To provide it, choose a folder <root> and either:\n"
        "  - put the extracted tree there: <root>/train/<wnid>/*.JPEG and "
        "<root>/val/<wnid>/*.JPEG (1000 class folders named by WordNet id, e.g. n01440764, "
        "with the validation images sorted into the same class folders; the layout "
        "torchvision.datasets.ImageNet leaves);\n"
        f"  - or put the three official archives there: {', '.join(ARCHIVES)}; the first load "
        "extracts them into that tree (hours, once; about 150 GB).\n"
        "Then pass load_imagenet(data_dir=<root>) (`--data-dir <root>` on the command line) "
        f"or set {ENV_VAR}=<root> (or put it at $CONVNN_DATA_DIR/imagenet or "
        "<data cache>/imagenet)."
    )


def _extract_archives(root: Path) -> None:
    """Let torchvision extract the official archives into ``root/train`` and ``root/val``."""
    import torchvision.datasets

    print(
        f"convnn.imagenet: extracting the ILSVRC-2012 archives in {root} with "
        "torchvision.datasets.ImageNet; this takes hours, once",
        file=sys.stderr,
        flush=True,
    )
    for split in ("train", "val"):
        torchvision.datasets.ImageNet(str(root), split=split)
    if not _has_tree(root):
        raise DatasetNotFoundError(
            f"{root}: torchvision.datasets.ImageNet did not leave train/ and val/ folders"
        )


# --------------------------------------------------------------------------- file index


def _class_folders(split_dir: Path) -> dict[str, int]:
    """Class folder name -> modification time (ns), for the non-hidden folders."""
    with os.scandir(split_dir) as it:
        return {
            e.name: e.stat().st_mtime_ns for e in it if not e.name.startswith(".") and e.is_dir()
        }


def _scan_class(folder: str) -> list[str]:
    """The sorted image file names in one class folder."""
    with os.scandir(folder) as it:
        names = [
            e.name
            for e in it
            if not e.name.startswith(".")
            and e.name.lower().endswith(IMAGE_SUFFIXES)
            and e.is_file()
        ]
    return sorted(names)


def _index_key(root: Path, folders: dict[str, dict[str, int]]) -> str:
    stats = sorted((split, sorted(mtimes.items())) for split, mtimes in folders.items())
    blob = repr((_INDEX_VERSION, str(root), stats))
    return hashlib.sha256(blob.encode()).hexdigest()


def _load_index(root: Path, cache: Path) -> tuple[list[str], dict[str, list[list[str]]]]:
    """``(classes, {split: per-class sorted file names})``, through the index cache."""
    folders = {s: _class_folders(root / _FOLDER[s]) for s in SPLITS}
    classes = sorted(folders["train"])
    test_classes = sorted(folders["test"])
    if classes != test_classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_val = sorted(set(test_classes) - set(classes))
        raise ValueError(
            f"{root}: train/ and val/ must have the same class folders; only in train/: "
            f"{only_train[:10]}{' ...' if len(only_train) > 10 else ''}, only in val/: "
            f"{only_val[:10]}{' ...' if len(only_val) > 10 else ''}"
        )
    if not classes:
        raise DatasetNotFoundError(f"{root}: no class folders under train/")
    key = _index_key(root, folders)
    name = f"{root.name or 'root'}-{hashlib.sha256(str(root).encode()).hexdigest()[:16]}.json.gz"
    index_file = cache / "imagenet-index" / name
    try:
        with gzip.open(index_file, "rt", encoding="utf-8") as f:
            cached = json.load(f)
        if cached.get("key") == key and cached.get("classes") == classes:
            return classes, {s: cached[s] for s in SPLITS}
    except (OSError, ValueError, KeyError, EOFError):
        pass  # missing, stale or damaged: rebuild
    print(f"convnn.imagenet: indexing the image files of {root} (cached for next time)",
          file=sys.stderr, flush=True)  # fmt: skip
    files = {s: [_scan_class(os.path.join(root, _FOLDER[s], c)) for c in classes] for s in SPLITS}
    record = {"version": _INDEX_VERSION, "root": str(root), "key": key, "classes": classes, **files}
    try:
        with atomic_target(index_file) as tmp, open(tmp, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
                gz.write(json.dumps(record, separators=(",", ":")).encode())
            raw.flush()
            os.fsync(raw.fileno())
    except OSError as err:  # a read-only cache only costs a rescan next time
        print(f"convnn.imagenet: could not write the index cache {index_file}: {err}",
              file=sys.stderr)  # fmt: skip
    return classes, files


def _select(
    per_class: list[list[str]], classes: list[str], n: int | None, arg: str, folder: str
) -> tuple[np.ndarray, torch.Tensor]:
    """Relative paths (bytes array) and labels, keeping the first ``n`` files of each class."""
    paths, labels = [], []
    for label, (cls, names) in enumerate(zip(classes, per_class)):
        if n is not None:
            if len(names) < n:
                raise ValueError(
                    f"{arg} must be <= {len(names)} (the number of images in {folder}/{cls}), "
                    f"got {n}"
                )
            names = names[:n]
        paths += [f"{cls}/{f}".encode() for f in names]
        labels += [label] * len(names)
    if not paths:
        raise DatasetNotFoundError(f"no images under {folder}/<class>/")
    return np.array(paths, dtype=bytes), torch.tensor(labels, dtype=torch.int64)


# --------------------------------------------------------------------------- public loaders


def load_imagenet(
    data_dir: str | os.PathLike | None = None,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    image_size: int = 224,
    cache_dir: str | os.PathLike | None = None,
) -> ImageNetDataset:
    """Find ImageNet-1K and index its files (see the module docstring for where it looks).

    Args:
        data_dir: the root (holding ``train/`` + ``val/`` or the official archives), or a
            folder holding ``imagenet/``; default ``$CONVNN_IMAGENET_DIR`` and the others.
        train_per_class: keep only the first n training files (sorted) of each class.
        test_per_class: keep only the first n validation files (sorted) of each class.
        image_size: side ``S`` of the square crops (224 for the usual recipe).
        cache_dir: the data cache (searched for ``imagenet/``; the file index goes in its
            ``imagenet-index/``); default :func:`convnn.data.default_cache_dir`.

    Returns:
        An :class:`ImageNetDataset`; its ``source`` says where the files are and starts with
        ``"SYNTHETIC"`` for a tree written by :func:`write_synthetic_imagenet`.

    Raises:
        ValueError: a bad argument, a subset larger than a class, or train/ and val/ with
            different class folders.
        DatasetNotFoundError: no ImageNet in any of the places searched (the message lists
            them and says what to put where).
    """
    for arg, value in (("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        if value is not None:
            check_int(arg, value, minimum=1)
    check_int("image_size", image_size, minimum=1)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    kind, root, origin = _locate(data_dir, cache)
    root = root.resolve()
    if kind == "archives":
        _extract_archives(root)
    classes, files = _load_index(root, cache)
    train_files, train_labels = _select(
        files["train"], classes, train_per_class, "train_per_class", "train"
    )
    test_files, test_labels = _select(
        files["test"], classes, test_per_class, "test_per_class", "val"
    )
    synthetic = (root / SYNTHETIC_MARKER).is_file()
    if synthetic:
        source = f"SYNTHETIC stand-in for ImageNet, not ImageNet ({len(classes)} classes at {root})"
    else:
        source = f"imagenet (image tree train/ + val/ at {root}, via {origin})"
    notes = []
    if train_per_class is not None:
        notes.append(f"first {train_per_class} train")
    if test_per_class is not None:
        notes.append(f"first {test_per_class} val")
    if notes:
        source += "; " + " and ".join(notes) + " images per class"
    return ImageNetDataset(
        root=root,
        classes=tuple(classes),
        train_files=train_files,
        train_labels=train_labels,
        test_files=test_files,
        test_labels=test_labels,
        crop_size=image_size,
        source=source,
        synthetic=synthetic,
    )


def write_synthetic_imagenet(
    root: str | os.PathLike,
    num_classes: int = 4,
    train_per_class: int = 8,
    test_per_class: int = 4,
    image_size: int = 48,
    seed: int = 0,
) -> Path:
    """Write a tiny ImageNet-style tree of JPEGs, for tests and offline smoke runs.

    Class ``c`` (folder ``n{c:08d}``) has its own colour and stripe pattern (orientation and
    period); every image adds a random phase, brightness change and pixel noise, so a small
    model can learn the classes. Sizes vary around ``image_size`` (some images are not square)
    so that resizing is exercised. A ``SYNTHETIC.txt`` marker at the root makes
    :func:`load_imagenet` label the data as synthetic.

    Args:
        root: the folder to write ``train/``, ``val/`` and the marker into.
        num_classes: number of classes (>= 1).
        train_per_class: training images per class (>= 1).
        test_per_class: validation images per class (>= 1).
        image_size: the typical image side (>= 8).
        seed: seed of the generator; the same arguments give the same files.

    Returns:
        ``root`` as a Path.

    Raises:
        ValueError: a bad argument, or ``root`` already holds a tree without the marker (a
            real ImageNet copy is never written into).
    """
    from PIL import Image

    check_int("num_classes", num_classes, minimum=1)
    check_int("train_per_class", train_per_class, minimum=1)
    check_int("test_per_class", test_per_class, minimum=1)
    check_int("image_size", image_size, minimum=8)
    check_int("seed", seed, minimum=0)
    root = Path(root).expanduser()
    if (_has_tree(root) or (root / "train").exists()) and not (root / SYNTHETIC_MARKER).is_file():
        raise ValueError(f"root {root} already holds a train/ folder that is not synthetic")
    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 215, size=(num_classes, 3))
    angles = rng.uniform(0, np.pi, size=num_classes)
    periods = rng.uniform(4, 12, size=num_classes)
    root.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train_per_class), ("val", test_per_class)):
        for c in range(num_classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                w = image_size + (i % 3) * image_size // 4  # 1, 1.25 or 1.5 x image_size
                h = image_size - (i % 2) * image_size // 8
                yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
                phase = rng.uniform(0, 2 * np.pi)
                t = xx * np.cos(angles[c]) + yy * np.sin(angles[c])
                stripes = np.sin(2 * np.pi * t / periods[c] + phase)  # (h, w)
                img = colours[c] * rng.uniform(0.85, 1.15) + 35 * stripes[..., None]
                img = img + rng.normal(0, 10, size=(h, w, 3))
                pixels = np.clip(img, 0, 255).round().astype(np.uint8)
                name = f"n{c:08d}_{split}_{i:04d}.JPEG"
                Image.fromarray(pixels).save(folder / name, quality=90)
    (root / SYNTHETIC_MARKER).write_text(
        "SYNTHETIC: this tree was written by convnn.imagenet.write_synthetic_imagenet("
        f"num_classes={num_classes}, train_per_class={train_per_class}, "
        f"test_per_class={test_per_class}, image_size={image_size}, seed={seed}).\n"
        "It only has ImageNet's layout; it is NOT ImageNet, and no result on it is an "
        "ImageNet result.\n",
        encoding="utf-8",
    )
    return root


# --------------------------------------------------------------------------- the dataset entry
#: The synthetic stand-in a smoke run of an ImageNet preset uses when ImageNet is absent.
SMOKE_SYNTHETIC_IMAGENET = {"num_classes": 10, "train_per_class": 50, "test_per_class": 20,
                            "image_size": 72}


def _load(*, data_dir=None, download=True, train_per_class=None, test_per_class=None,
          image_size=None) -> ImageNetDataset:
    # ImageNet is never downloaded: download is accepted, as by every loader, and unused
    return load_imagenet(data_dir, train_per_class=train_per_class,
                         test_per_class=test_per_class, image_size=image_size or 224)


def _stand_in(image_size=None) -> ImageNetDataset:
    root = default_cache_dir() / "synthetic-imagenet"
    if not (root / SYNTHETIC_MARKER).is_file():
        write_synthetic_imagenet(root, **SMOKE_SYNTHETIC_IMAGENET)
    return load_imagenet(root, image_size=image_size or 224)


IMAGENET = DatasetInfo(
    "imagenet", "ImageNet-1K", "in1k", 1000, _load, smoke_train_per_class=2,
    smoke_test_per_class=1, smoke_scale_lr=True, stand_in=_stand_in, streamed=True,
    downloadable=False, data_hint="set CONVNN_IMAGENET_DIR or pass --data-dir / data_dir=",
    test_images=50_000, protocol="family")
"""ImageNet's entry of :data:`convnn.data.DATASETS` (registered by :mod:`convnn.data`). The
paper states no training protocol for it: presets train under each model family's own recipe
(``protocol="family"``)."""
