"""Datasets and on-device batching: CIFAR-10/100 and a synthetic set for tests.

:data:`DATASETS` (from :mod:`convnn.dataset_base`) is complete once this module is imported:
it registers CIFAR-10, CIFAR-100 and ImageNet (:data:`convnn.imagenet.IMAGENET`).

Images are kept whole in memory as ``uint8`` tensors ``[N, H, W, 3]`` and batched on the
training device by :class:`DeviceLoader`: the dataset is moved to the device once, and each
batch is gathered, augmented (random crop with zero padding + horizontal flip), normalised and
optionally resized there with vectorised tensor ops. No per-image Python work happens per epoch.

Where CIFAR comes from (first hit wins):

1. the ``data_dir`` argument of :func:`load_dataset`;
2. the ``CONVNN_DATA_DIR`` environment variable;
3. the project's data cache (``data/cache/`` in a checkout, else ``~/.cache/convnn``; override
   with ``CONVNN_CACHE_DIR``), into which torchvision downloads CIFAR when ``download=True``.

A location may hold torchvision's own layout (``cifar-10-batches-py/``, ``cifar-100-python/``),
an image-folder tree (``train/<class>/*``, ``test/<class>/*``; the class index is the class's
alphabetical position, which is CIFAR-10's label order), or a tarball of such a tree, possibly
under one top folder. It may also be the path of such a tree or tarball itself. Image folders
and tarballs are decoded once into a ``.npz`` of uint8 arrays under ``<cache>/decoded/``, keyed
by the source's path, size and modification time.

Example:
    >>> ds = load_dataset("synthetic")
    >>> loader = ds.train_loader(batch_size=64, device="cpu", augment=True)
    >>> x, y = next(iter(loader))
    >>> x.shape, y.shape
    (torch.Size([64, 3, 32, 32]), torch.Size([64]))
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ._checks import check_bool, check_choice, check_int, check_rank
from .dataset_base import (
    DATASETS,
    IMAGE_SUFFIXES,
    DatasetInfo,
    DatasetNotFoundError,
    EpochLoader,
    Splits,
    dataset_info,
    default_cache_dir,
    epoch_seed,
    register_dataset,
    unregister_dataset,
)
from .imagenet import IMAGENET

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "FINGERPRINT_SAMPLE",
    "DatasetInfo",
    "DatasetNotFoundError",
    "DeviceLoader",
    "EpochLoader",
    "ImageDataset",
    "augment_batch",
    "content_digest",
    "dataset_fingerprint",
    "dataset_info",
    "default_cache_dir",
    "load_dataset",
    "make_loader",
    "register_dataset",
    "subset_per_class",
    "synthetic_dataset",
    "unregister_dataset",
]









CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

_TORCHVISION_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_TORCHVISION_ARCHIVE = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.xz", ".tar.bz2")
_CACHE_VERSION = 1






@dataclass(repr=False)
class ImageDataset(Splits):
    """A whole image-classification dataset held in memory.

    Attributes:
        name: ``"cifar10"``, ``"cifar100"`` or ``"synthetic"``.
        train_images: uint8 tensor ``[N, H, W, 3]``.
        train_labels: int64 tensor ``[N]``.
        test_images: uint8 tensor ``[M, H, W, 3]``.
        test_labels: int64 tensor ``[M]``.
        classes: class names; label ``i`` is ``classes[i]``.
        mean: per-channel mean in [0, 1] units, used for normalisation.
        std: per-channel std in [0, 1] units.
        source: where the data came from, e.g. ``"cifar10 (JPEG copy at /path/x.tar.gz)"``.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the stored images."""
        return tuple(self.train_images.shape[1:3])

    @property
    def synthetic(self) -> bool:
        """True for :func:`synthetic_dataset`'s data (as ``ImageNetDataset.synthetic``)."""
        return self.name == "synthetic"

    def train_loader(self, batch_size: int, device=None, **kwargs) -> DeviceLoader:
        """A shuffling :class:`DeviceLoader` over the training split (see :func:`make_loader`)."""
        kwargs.setdefault("shuffle", True)
        return make_loader(
            self.train_images, self.train_labels, batch_size, device, self.mean, self.std, **kwargs
        )

    def test_loader(self, batch_size: int, device=None, *, start: int = 0,
                    **kwargs) -> DeviceLoader:
        """A non-shuffling, non-augmenting :class:`DeviceLoader` over the test split (its
        samples ``[start:]``)."""
        check_int("start", start, minimum=0, maximum=max(self.num_test - 1, 0))
        kwargs.setdefault("shuffle", False)
        return make_loader(self.test_images[start:], self.test_labels[start:], batch_size,
                           device, self.mean, self.std, **kwargs)

    def __repr__(self) -> str:
        h, w = self.image_size
        return (
            f"ImageDataset(name={self.name!r}, train={len(self.train_labels)}, "
            f"test={len(self.test_labels)}, classes={self.num_classes}, image={h}x{w}, "
            f"source={self.source!r})"
        )


# --------------------------------------------------------------------------- locations




def _cifar_hint(path: Path) -> str | None:
    """Which CIFAR a file or folder name says it is, if any."""
    low = path.name.lower()
    if re.search(r"cifar[-_]?100", low):
        return "cifar100"
    if re.search(r"cifar[-_]?10(?!\d)", low):
        return "cifar10"
    return None


def _is_tree(path: Path) -> bool:
    return (path / "train").is_dir() and (path / "test").is_dir()


def _is_tarball(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(_TAR_SUFFIXES)


def _find_sources(name: str, location: Path, notes: list[str]) -> list[tuple[str, Path]]:
    """Candidate sources of ``name`` at ``location``: ``(kind, path)`` with kind one of
    ``"torchvision"``, ``"tree"``, ``"tarball"``, best first. Appends what it saw to ``notes``."""
    if not location.exists():
        notes.append(f"{location}: does not exist")
        return []
    if location.is_file():
        if _is_tarball(location):
            return [("tarball", location)]
        notes.append(f"{location}: a file, but not a tarball ({', '.join(_TAR_SUFFIXES)})")
        return []
    found: list[tuple[str, Path]] = []
    if (location / _TORCHVISION_FOLDER[name]).is_dir():
        found.append(("torchvision", location))
    if _is_tree(location):
        found.append(("tree", location))
    children = sorted(p for p in location.iterdir() if not p.name.startswith("."))
    for child in children:
        hint = _cifar_hint(child)
        if hint not in (None, name) or child.name in _TORCHVISION_ARCHIVE.values():
            continue
        if child.is_dir() and _is_tree(child):
            found.append(("tree", child))
        elif _is_tarball(child):
            found.append(("tarball", child))
    if not found:
        seen = ", ".join(p.name for p in children[:8]) + (", ..." if len(children) > 8 else "")
        notes.append(
            f"{location}: no {_TORCHVISION_FOLDER[name]}/, no train/ + test/ image folders and "
            f"no tarball of them (contents: {seen or 'empty'})"
        )
    return found


# --------------------------------------------------------------------------- decoding


def _decode_image_bytes(data: bytes) -> np.ndarray:
    """Decode one encoded image into an ``[H, W, 3]`` uint8 array.

    Uses torchvision's libjpeg/libpng decoder (about 2x faster than PIL on 32x32 JPEGs, with
    identical pixels) while torchvision has it, else PIL, which also covers other formats.
    """
    decode = _torchvision_decoder()
    if decode is not None:
        try:
            return decode(data)
        except RuntimeError:  # a format torchvision cannot read: PIL below
            pass
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


@functools.lru_cache(maxsize=1)
def _torchvision_decoder():
    """torchvision's image decoder, or None (it is deprecated since 0.29 and may disappear)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_image
    except ImportError:
        return None

    def decode(data: bytes) -> np.ndarray:
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return decode_image(buf, mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()  # (H, W, 3)

    return decode


def _progress(total: int, desc: str, progress: bool | None):
    from tqdm.auto import tqdm

    if progress is None:
        progress = sys.stderr.isatty() and not os.environ.get("CI")
    return tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)


def _split_class_file(parts: Sequence[str]) -> tuple[str, str, str, str] | None:
    """``(prefix, split, class, file)`` from a member path ``[prefix/]split/class/file``."""
    if len(parts) < 3 or parts[-3] not in ("train", "test"):
        return None
    if any(p.startswith(".") for p in parts[-2:]) or not parts[-1].lower().endswith(
        IMAGE_SUFFIXES
    ):
        return None
    return "/".join(parts[:-3]), parts[-3], parts[-2], parts[-1]


def _read_tree(path: Path) -> list[tuple[str, str, str, bytes]]:
    items = []
    for split in ("train", "test"):
        for f in sorted((path / split).glob("*/*")):
            key = _split_class_file(f.relative_to(path).parts)
            if key is not None and f.is_file():
                items.append((split, key[2], f.name, f.read_bytes()))
    return items


def _read_tarball(path: Path, name: str) -> list[tuple[str, str, str, bytes]]:
    groups: dict[str, list[tuple[str, str, str, bytes]]] = {}
    with tarfile.open(path, "r|*") as tf:  # streaming: one pass over the compressed file
        for member in tf:
            if not member.isfile():
                continue
            key = _split_class_file(member.name.split("/"))
            if key is None:
                continue
            prefix, split, cls, fname = key
            groups.setdefault(prefix, []).append((split, cls, fname, tf.extractfile(member).read()))
    if len(groups) > 1:  # several trees in one tarball: take the one with the right class count
        want = DATASETS[name].num_classes if name in DATASETS else None
        match = [g for g in groups.values() if len({c for _, c, _, _ in g}) == want]
        if len(match) != 1:
            raise DatasetNotFoundError(
                f"{path} holds several image-folder trees ({sorted(groups)}); expected one with "
                f"{want} classes"
            )
        return match[0]
    return next(iter(groups.values()), [])


def _decode_items(
    items: list[tuple[str, str, str, bytes]], source: Path, name: str, progress: bool | None
) -> dict[str, np.ndarray]:
    """Turn ``(split, class, file, bytes)`` items into uint8 arrays and int64 labels."""
    splits = {s: sorted((c, f, b) for s2, c, f, b in items if s2 == s) for s in ("train", "test")}
    for split, rows in splits.items():
        if not rows:
            raise DatasetNotFoundError(f"{source}: no images under {split}/<class>/")
    classes = sorted({c for c, _, _ in splits["train"]})
    test_classes = sorted({c for c, _, _ in splits["test"]})
    if test_classes != classes:
        raise DatasetNotFoundError(
            f"{source}: train/ has classes {classes} but test/ has {test_classes}"
        )
    want = DATASETS[name].num_classes if name in DATASETS else None
    if want is not None and len(classes) != want:
        raise DatasetNotFoundError(
            f"{source}: found {len(classes)} classes {classes[:5]}..., but {name} has {want}"
        )
    index = {c: i for i, c in enumerate(classes)}
    suffixes = sorted({Path(f).suffix.lower().lstrip(".") for _, _, f, _ in items})
    out: dict[str, np.ndarray] = {"classes": np.array(classes), "formats": np.array(suffixes)}
    bar = _progress(len(items), f"decoding {source.name}", progress)
    with bar, warnings.catch_warnings():
        # torchvision warns once per decoded image that its decoders are deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        for split, rows in splits.items():
            first = _decode_image_bytes(rows[0][2])
            images = np.empty((len(rows), *first.shape), dtype=np.uint8)
            for i, (cls, fname, data) in enumerate(rows):
                img = first if i == 0 else _decode_image_bytes(data)
                if img.shape != first.shape:
                    raise DatasetNotFoundError(
                        f"{source}: {split}/{cls}/{fname} is {img.shape[1]}x{img.shape[0]}, but "
                        f"the first image is {first.shape[1]}x{first.shape[0]}; all images must "
                        "have one size"
                    )
                images[i] = img
                bar.update(1)
            out[f"{split}_images"] = images
            out[f"{split}_labels"] = np.array([index[c] for c, _, _ in rows], dtype=np.int64)
    return out


def _cache_key(kind: str, path: Path) -> str:
    """A key that changes when the source changes: path, sizes and modification times."""
    path = path.resolve()
    if kind == "tree":
        stats = [
            (str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns)
            for split in ("train", "test")
            for f in sorted((path / split).rglob("*"))
            if f.is_file()
        ]
    else:
        st = path.stat()
        stats = [(st.st_size, st.st_mtime_ns)]
    blob = repr((_CACHE_VERSION, kind, str(path), stats)).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _load_decoded(
    name: str, kind: str, path: Path, cache_dir: Path, progress: bool | None
) -> dict[str, np.ndarray]:
    """Decode an image-folder tree or tarball, through the uint8 ``.npz`` cache."""
    cache_file = cache_dir / "decoded" / f"{name}-{kind}-{path.name}-{_cache_key(kind, path)}.npz"
    if cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            return _checked_cache(arrays)
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
            print(f"convnn.data: note: the decoded cache {cache_file} is damaged "
                  f"({type(err).__name__}: {err}); decoding {path} again", file=sys.stderr)
            with contextlib.suppress(OSError):
                cache_file.unlink()
    items = _read_tree(path) if kind == "tree" else _read_tarball(path, name)
    arrays = _decode_items(items, path, name, progress)
    digests = {k: _array_digest(arrays[k]) for k in _CONTENT_ARRAYS}  # as decoded
    arrays[_CACHE_DIGESTS] = np.array(json.dumps(digests))
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(cache_file.name + f".tmp{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, cache_file)
    except OSError as err:  # a read-only cache only costs a re-decode next time
        print(
            f"convnn.data: could not write the decoded cache {cache_file}: {err}", file=sys.stderr
        )
    del arrays[_CACHE_DIGESTS]
    arrays["_digests"] = digests
    return arrays


#: The arrays whose every byte the content digest covers.
_CONTENT_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")
#: The key of the decoded cache that records each array's digest, taken as it was decoded.
_CACHE_DIGESTS = "content_sha256"


def _array_digest(array) -> str:
    """SHA-256 of an array's shape, dtype and every byte (one pass over memory)."""
    array = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    h.update(memoryview(array).cast("B"))
    return h.hexdigest()


def _checked_cache(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays of a decoded cache, after checking that every key is there and every array
    still has the digest it had when decoded; a KeyError or ValueError (then the cache is
    rebuilt) otherwise."""
    missing = [k for k in (*_CONTENT_ARRAYS, "classes", _CACHE_DIGESTS) if k not in arrays]
    if missing:
        raise KeyError(f"it lacks {', '.join(missing)}")
    recorded = json.loads(str(arrays.pop(_CACHE_DIGESTS)))
    for key in _CONTENT_ARRAYS:
        if not isinstance(recorded, dict) or recorded.get(key) != _array_digest(arrays[key]):
            raise ValueError(f"{key} does not match the digest recorded when it was decoded "
                             "(the file was altered)")
    arrays["_digests"] = recorded
    return arrays


def _load_torchvision(name: str, root: Path, download: bool) -> dict[str, np.ndarray]:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    train = cls(root=str(root), train=True, download=download)
    test = cls(root=str(root), train=False, download=download)
    return {
        "train_images": train.data,
        "train_labels": np.asarray(train.targets, dtype=np.int64),
        "test_images": test.data,
        "test_labels": np.asarray(test.targets, dtype=np.int64),
        "classes": np.array(train.classes),
    }


def _describe(name: str, kind: str, path: Path, arrays: dict[str, np.ndarray]) -> str:
    if kind == "torchvision":
        return f"{name} (torchvision files at {path / _TORCHVISION_FOLDER[name]})"
    if kind == "download":
        return f"{name} (torchvision download into {path / _TORCHVISION_FOLDER[name]})"
    formats = [str(f) for f in arrays.get("formats", [])]
    if {"jpg", "jpeg"} & set(formats):  # lossy: pixels differ slightly from the original
        return f"{name} (JPEG copy at {path})"
    return f"{name} ({'/'.join(f.upper() for f in formats)} images at {path})"


# --------------------------------------------------------------------------- public loaders


def subset_per_class(
    images: torch.Tensor, labels: torch.Tensor, per_class: int, arg_name: str = "per_class"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the first ``per_class`` images of every class, in their original order.

    Args:
        images: ``[N, H, W, 3]`` uint8.
        labels: ``[N]`` int64.
        per_class: how many images to keep per class (>= 1).
        arg_name: the argument name used in error messages.

    Returns:
        ``(images, labels)`` restricted to the kept rows.

    Raises:
        ValueError: if ``per_class`` is not a positive int or a class has fewer images.
    """
    check_int(arg_name, per_class, minimum=1)
    keep = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < per_class:
            raise ValueError(
                f"{arg_name} must be <= {len(idx)} (the number of images of class {c}), "
                f"got {per_class}"
            )
        keep.append(idx[:per_class])
    rows = torch.sort(torch.cat(keep)).values
    return images[rows], labels[rows]


def synthetic_dataset(
    n_train: int = 1000,
    n_test: int = 200,
    num_classes: int = 10,
    image_size: int = 32,
    seed: int = 0,
) -> ImageDataset:
    """A small, clearly learnable dataset for tests and smoke runs (never a stand-in for CIFAR).

    Class ``c`` has its own colour and its own smooth random pattern; every image is that
    prototype, shifted by up to 2 pixels, with a random brightness change and pixel noise. A
    tiny convnet separates the classes within a few dozen steps. Labels cycle through the
    classes, so every class has ``n // num_classes`` or one more images.

    Args:
        n_train: number of training images.
        n_test: number of test images.
        num_classes: number of classes (>= 2).
        image_size: height and width (>= 4).
        seed: seed of the generator; the same arguments give the same tensors.

    Returns:
        An :class:`ImageDataset` with ``name="synthetic"``, mean/std computed from its training
        images.
    """
    check_int("n_train", n_train, minimum=1)
    check_int("n_test", n_test, minimum=1)
    check_int("num_classes", num_classes, minimum=2)
    check_int("image_size", image_size, minimum=4)
    check_int("seed", seed, minimum=0)
    g = torch.Generator().manual_seed(seed)
    colours = 0.2 + 0.6 * torch.rand(num_classes, 3, 1, 1, generator=g)
    coarse = torch.rand(num_classes, 3, 4, 4, generator=g)
    patterns = F.interpolate(
        coarse, size=(image_size, image_size), mode="bilinear", align_corners=False
    )  # (C, 3, S, S)
    prototypes = 0.5 * colours + 0.5 * patterns

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=g)]
        shifts = torch.randint(-2, 3, (n, 2), generator=g)  # circular shift (dy, dx)
        ar = torch.arange(image_size)
        rows = (ar - shifts[:, 0:1]) % image_size  # (n, S)
        cols = (ar - shifts[:, 1:2]) % image_size  # (n, S)
        x = prototypes[labels[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (n, S, S, 3)
        x = x * (0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=g))
        x = x + 0.08 * torch.randn(x.shape, generator=g)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels  # (n, S, S, 3)

    train_x, train_y = make(n_train)
    test_x, test_y = make(n_test)
    pixels = train_x.double().div(255).reshape(-1, 3)
    return ImageDataset(
        name="synthetic",
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        classes=tuple(f"class{i}" for i in range(num_classes)),
        mean=tuple(round(v, 4) for v in pixels.mean(0).tolist()),
        std=tuple(round(v, 4) for v in pixels.std(0).tolist()),
        source=f"synthetic (seed={seed}, {num_classes} classes, {image_size}x{image_size})",
    )


def _not_found_message(name: str, notes: list[str], download_error: str | None) -> str:
    pretty = DATASETS[name].title
    looked = "\n".join(f"  - {n}" for n in notes) or "  - (nowhere)"
    if download_error is None:
        why = "download=False, so nothing was downloaded."
    else:
        why = f"Downloading it with torchvision failed: {download_error}"
    return (
        f"{pretty} ({name!r}) was not found.\nLooked in:\n{looked}\n{why}\n"
        "To provide it, either:\n"
        "  - set CONVNN_DATA_DIR (or pass data_dir=) to a folder holding torchvision's layout "
        f"({_TORCHVISION_FOLDER[name]}/), an image-folder tree (train/<class>/*.png and "
        "test/<class>/*.png; class index = alphabetical position) or a tarball of such a tree; "
        "it may also point at the tree or tarball itself;\n"
        f"  - or run load_dataset({name!r}, download=True) once on a machine with internet "
        "and copy the cache folder over."
    )


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> ImageDataset:
    """Load CIFAR-10, CIFAR-100 or the synthetic set as uint8 tensors.

    The location is ``data_dir``, else ``$CONVNN_DATA_DIR``; the data cache is searched after
    it (see the module docstring for the accepted layouts). If nothing is found and
    ``download`` is true, torchvision downloads the dataset into ``data_dir`` when given, else
    into the cache (``$CONVNN_DATA_DIR`` is only read from, never written to).

    Args:
        name: ``"cifar10"``, ``"cifar100"`` or ``"synthetic"`` (which uses
            :func:`synthetic_dataset`'s defaults and ignores the location arguments).
        data_dir: a folder holding the dataset, or the path of a tree or tarball.
        download: allow a torchvision download when no local copy is found.
        train_per_class: keep only the first n training images of each class.
        test_per_class: keep only the first n test images of each class.
        cache_dir: the data cache; default :func:`default_cache_dir`.
        progress: show a progress bar while decoding; default: only on a terminal and when
            the ``CI`` environment variable is unset.

    Returns:
        An :class:`ImageDataset`; ``source`` says where the images came from.

    Raises:
        ValueError: an unknown ``name`` or a bad subset size.
        DatasetNotFoundError: no local copy and no (successful) download.
    """
    check_choice("name", name, _IN_MEMORY)
    check_bool("download", download)
    for arg, value in (("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        if value is not None:
            check_int(arg, value, minimum=1)
    if name == "synthetic":
        ds = synthetic_dataset()
    else:
        ds = _load_cifar(name, data_dir, download, cache_dir, progress)
    notes = []
    if train_per_class is not None:
        ds.train_images, ds.train_labels = subset_per_class(
            ds.train_images, ds.train_labels, train_per_class, "train_per_class"
        )
        notes.append(f"first {train_per_class} train")
    if test_per_class is not None:
        ds.test_images, ds.test_labels = subset_per_class(
            ds.test_images, ds.test_labels, test_per_class, "test_per_class"
        )
        notes.append(f"first {test_per_class} test")
    if notes:
        ds.source += "; " + " and ".join(notes) + " images per class"
    return ds


def _load_cifar(
    name: str,
    data_dir: str | os.PathLike | None,
    download: bool,
    cache_dir: str | os.PathLike | None,
    progress: bool | None,
) -> ImageDataset:
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if data_dir is not None:
        locations = [("data_dir", Path(data_dir).expanduser())]
    elif os.environ.get("CONVNN_DATA_DIR"):
        locations = [("CONVNN_DATA_DIR", Path(os.environ["CONVNN_DATA_DIR"]).expanduser())]
    else:
        locations = []
    if all(loc.resolve() != cache.resolve() for _, loc in locations):
        locations.append(("cache", cache))

    notes: list[str] = []
    for origin, location in locations:
        location_notes: list[str] = []
        for kind, path in _find_sources(name, location, location_notes):
            try:
                if kind == "torchvision":
                    arrays = _load_torchvision(name, path, download=False)
                else:
                    arrays = _load_decoded(name, kind, path, cache, progress)
            except (DatasetNotFoundError, RuntimeError, OSError, tarfile.TarError) as err:
                location_notes.append(f"{path} ({kind}): unusable: {err}")
                continue
            return _make_cifar(name, arrays, _describe(name, kind, path, arrays))
        notes += [f"[{origin}] {n}" for n in location_notes]

    download_error = None
    if download:
        root = Path(data_dir).expanduser() if data_dir is not None else cache
        try:
            root.mkdir(parents=True, exist_ok=True)
            arrays = _load_torchvision(name, root, download=True)
        except Exception as err:  # noqa: BLE001 - any failure means "not available"
            download_error = f"{type(err).__name__}: {err}"
        else:
            return _make_cifar(name, arrays, _describe(name, "download", root, arrays))
    err = DatasetNotFoundError(_not_found_message(name, notes, download_error))
    err.download_error = download_error
    raise err


def _make_cifar(name: str, arrays: dict[str, np.ndarray], source: str) -> ImageDataset:
    mean, std = DATASETS[name].mean, DATASETS[name].std
    ds = ImageDataset(
        name=name,
        train_images=torch.from_numpy(np.ascontiguousarray(arrays["train_images"])),
        train_labels=torch.from_numpy(np.asarray(arrays["train_labels"], dtype=np.int64)),
        test_images=torch.from_numpy(np.ascontiguousarray(arrays["test_images"])),
        test_labels=torch.from_numpy(np.asarray(arrays["test_labels"], dtype=np.int64)),
        classes=tuple(str(c) for c in arrays["classes"]),
        mean=mean,
        std=std,
        source=source,
    )
    for key, digest in (arrays.get("_digests") or {}).items():  # checked on loading the cache
        _remember_digest(getattr(ds, key), digest)
    return ds


# --------------------------------------------------------------------------- batching




def augment_batch(
    images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int = 4
) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, for a whole batch at once.

    Equivalent to torchvision's ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()``
    applied image by image, with the random draws given explicitly.

    Args:
        images: ``[B, H, W, C]`` (any dtype; padding is zeros, i.e. black for uint8).
        offsets: ``[B, 2]`` integer crop offsets ``(dy, dx)`` in ``[0, 2 * padding]``.
        flips: ``[B]`` bool, flip the crop left-right.
        padding: zero padding on each side.

    Returns:
        ``[B, H, W, C]``, same dtype and device.
    """
    check_rank("images", images, 4, "[B, H, W, C]")
    b, h, w, c = images.shape
    padded = images.new_zeros((b, h + 2 * padding, w + 2 * padding, c))
    padded[:, padding : padding + h, padding : padding + w] = images
    ar_h = torch.arange(h, device=images.device)
    ar_w = torch.arange(w, device=images.device)
    rows = offsets[:, 0:1] + ar_h  # (B, H)
    cols = offsets[:, 1:2] + torch.where(flips[:, None], w - 1 - ar_w, ar_w)  # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None]  # (B, 1, 1)
    return padded[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)






class DeviceLoader(EpochLoader):
    """Batches a uint8 image tensor on the training device.

    The images are moved to ``device`` once. Order, epochs and DistributedDataParallel
    sharding are those of :class:`EpochLoader`; the augmentation parameters are drawn from
    ``(seed, epoch)`` too. Up to ``world_size - 1`` samples are left out each epoch (a
    different few each epoch when shuffling). Evaluate on one rank if every test image must
    count.

    Each batch is ``(x, y)``: ``x`` float32 ``[B, 3, H', W']`` normalised with ``mean``/``std``
    (``H' = W' = resize`` when given, else the stored size) and ``y`` int64 ``[B]``.

    Args:
        images: ``[N, H, W, 3]`` uint8.
        labels: ``[N]`` integer labels.
        batch_size: samples per batch (per rank).
        device: where batches are made; default the images' device.
        mean: per-channel mean in [0, 1] units; ``None`` gives plain ``[0, 1]`` scaling.
        std: per-channel std in [0, 1] units; required together with ``mean``.
        shuffle: draw a new order every epoch.
        augment: random crop (zero padding 4) + horizontal flip.
        resize: output height and width (bilinear, no antialiasing), e.g. 224 for the ViT.
        seed: base seed of the per-epoch generator.
        drop_last: drop the last incomplete batch.
        rank: this process's rank, in ``[0, world_size)``.
        world_size: number of processes sharing the data.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        device: str | torch.device | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        shuffle: bool = True,
        augment: bool = False,
        resize: int | None = None,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        check_rank("images", images, 4, "[N, H, W, 3]")
        if images.dtype != torch.uint8 or images.shape[-1] != 3:
            raise ValueError(
                f"images must be uint8 [N, H, W, 3], got {images.dtype} {tuple(images.shape)}"
            )
        check_rank("labels", labels, 1, "[N]")
        if len(labels) != len(images):
            raise ValueError(
                f"labels must have one entry per image ({len(images)}), got {len(labels)}"
            )
        if resize is not None:
            check_int("resize", resize, minimum=1)
        device = torch.device(device) if device is not None else images.device
        self._setup(len(images), batch_size, device, mean, std, shuffle, seed, drop_last, rank,
                    world_size)
        self.images = images.to(self.device)  # (N, H, W, 3) uint8, moved once
        self.labels = labels.to(self.device, torch.long)
        self.augment = bool(augment)
        self.resize = resize

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._take_epoch()
        order = self.epoch_indices(epoch)
        if self.augment:
            # drawn after the permutation from their own stream, independent of rank and device
            g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch) ^ 0x5DEECE66D)
            n = len(self.images)
            offsets = torch.randint(0, 9, (n, 2), generator=g).to(self.device)
            flips = (torch.rand(n, generator=g) < 0.5).to(self.device)
        order = order.to(self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = self.images[idx]  # (B, H, W, 3) uint8
            if self.augment:
                x = augment_batch(x, offsets[idx], flips[idx], padding=4)
            x = self._normalise(x)  # (B, 3, H, W)
            if self.resize is not None and tuple(x.shape[-2:]) != (self.resize, self.resize):
                x = F.interpolate(
                    x,
                    size=(self.resize, self.resize),
                    mode="bilinear",
                    align_corners=False,
                    antialias=False,
                )
            yield x, self.labels[idx]

    def __repr__(self) -> str:
        return (
            f"DeviceLoader(samples={self.samples_per_rank}, batch_size={self.batch_size}, "
            f"batches={len(self)}, device={self.device}, shuffle={self.shuffle}, "
            f"augment={self.augment}, resize={self.resize}, seed={self.seed}, "
            f"drop_last={self.drop_last}, rank={self.rank}, world_size={self.world_size})"
        )


def make_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                device: str | torch.device | None = None, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, **kwargs) -> DeviceLoader:
    """Build a :class:`DeviceLoader` (same arguments; the rest by keyword).

    Example:
        >>> ds = load_dataset("cifar10")  # doctest: +SKIP
        >>> train = make_loader(ds.train_images, ds.train_labels, 128, "cuda", ds.mean, ds.std,
        ...                     augment=True, seed=42)  # doctest: +SKIP
        >>> for epoch in range(start_epoch, epochs):  # doctest: +SKIP
        ...     train.set_epoch(epoch)
        ...     for x, y in train: ...
    """
    return DeviceLoader(images, labels, batch_size, device, mean, std, **kwargs)


# --------------------------------------------------------------------------- the datasets
_IN_MEMORY = ("cifar10", "cifar100", "synthetic")  # what load_dataset loads


def _cifar_loader(name: str) -> Callable[..., ImageDataset]:
    def load(*, data_dir=None, download=True, train_per_class=None, test_per_class=None,
             image_size=None) -> ImageDataset:
        return load_dataset(name, data_dir=data_dir, download=download,
                            train_per_class=train_per_class, test_per_class=test_per_class)
    return load


def _synthetic_stand_in(num_classes: int) -> Callable[[int | None], ImageDataset]:
    def stand_in(image_size=None) -> ImageDataset:
        return synthetic_dataset(n_train=500, n_test=200, num_classes=num_classes,
                                 image_size=32)
    return stand_in


register_dataset(DatasetInfo(
    "cifar10", "CIFAR-10", "c10", 10, _cifar_loader("cifar10"),
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    smoke_train_per_class=50, smoke_test_per_class=20,
    stand_in=_synthetic_stand_in(10), test_images=10_000, protocol="paper"))
register_dataset(DatasetInfo(
    "cifar100", "CIFAR-100", "c100", 100, _cifar_loader("cifar100"),
    mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
    smoke_train_per_class=5, smoke_test_per_class=2,
    stand_in=_synthetic_stand_in(100), test_images=10_000, protocol="paper"))
register_dataset(IMAGENET)  # defined in convnn.imagenet, with its loader


#: Images per split hashed by :func:`dataset_fingerprint` (evenly spaced, always the same).
FINGERPRINT_SAMPLE = 64


def _remember_digest(tensor: torch.Tensor, digest: str) -> None:
    tensor._convnn_digest = (tensor._version, digest)


def _tensor_digest(tensor: torch.Tensor) -> str:
    """:func:`_array_digest` of a tensor's values, remembered while the tensor is not
    changed in place (its version counter), so a run hashes its data once."""
    known = getattr(tensor, "_convnn_digest", None)
    if known is not None and known[0] == tensor._version:
        return known[1]
    digest = _array_digest(tensor.detach().cpu().numpy())
    _remember_digest(tensor, digest)
    return digest


def content_digest(ds) -> str | None:
    """A SHA-256 of **every** image and label of both splits of an in-memory dataset (one
    pass over the bytes, remembered per tensor; the decoded cache records the same digests
    when it decodes, and checks them when it is loaded). ``None`` for a streamed dataset,
    whose files are read per epoch: :func:`dataset_fingerprint` samples those."""
    if getattr(ds, "train_images", None) is None:
        return None
    h = hashlib.sha256(b"convnn-dataset-content-1")
    for key in _CONTENT_ARRAYS:
        h.update(f"{key}:{_tensor_digest(getattr(ds, key))};".encode())
    return h.hexdigest()


def dataset_fingerprint(ds) -> str:
    """What a dataset *is*, as a SHA-256: its split sizes, its label arrays and a fixed
    sample of :data:`FINGERPRINT_SAMPLE` images per split (their pixels, or the bytes of their
    files for a streamed ImageNet tree). It ignores where the data lives and how it was
    described, so a moved folder, a cache instead of a download, or a copy of the archive give
    the same fingerprint, and other data another."""
    h = hashlib.sha256(b"convnn-dataset-fingerprint-1")
    for split in ("train", "test"):
        labels = getattr(ds, f"{split}_labels").detach().cpu().to(torch.int64).contiguous()
        n = len(labels)
        h.update(f"{split}:{n};".encode())
        h.update(labels.numpy().tobytes())
        picks = sorted({i * n // FINGERPRINT_SAMPLE for i in range(FINGERPRINT_SAMPLE)}) if n else []
        images = getattr(ds, f"{split}_images", None)
        if images is not None:
            sample = images[torch.tensor(picks, dtype=torch.long)] if picks else images[:0]
            h.update(str(tuple(images.shape[1:])).encode())
            h.update(sample.detach().cpu().contiguous().numpy().tobytes())
        else:  # streamed: the files' relative names and the bytes of the sampled ones
            files = [f.decode("utf-8", "surrogateescape") if isinstance(f, bytes) else str(f)
                     for f in getattr(ds, f"{split}_files")]
            folder = Path(ds.root) / ("train" if split == "train" else "val")
            h.update("\n".join(files).encode("utf-8", "surrogateescape"))
            for i in picks:
                h.update((folder / files[i]).read_bytes())
    return h.hexdigest()
