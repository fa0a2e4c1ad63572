"""Tests of convnn.imagenet on tiny synthetic trees: batches, determinism, sharding, the crop
draw, location resolution, the archive branch (mocked), the file-index cache and subsets.
Nothing here needs ImageNet, a GPU or the network."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from convnn import imagenet
from convnn.data import DatasetNotFoundError
from convnn.imagenet import (
    ARCHIVES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageNetLoader,
    load_imagenet,
    random_resized_crop_params,
    write_synthetic_imagenet,
)

S = 32  # crop side used throughout: small and fast


CALLER_DATA_DIR = os.environ.get("CONVNN_DATA_DIR")  # before the fixture below removes it


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No location from the caller's environment; the data cache lives in tmp_path."""
    monkeypatch.delenv("CONVNN_IMAGENET_DIR", raising=False)
    monkeypatch.delenv("CONVNN_DATA_DIR", raising=False)
    monkeypatch.setenv("CONVNN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_synthetic_imagenet(tmp_path_factory.mktemp("syn") / "imagenet")


@pytest.fixture
def ds(tree):
    return load_imagenet(tree, image_size=S)


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b)
    )


# --------------------------------------------------------------------------- dataset


def test_synthetic_tree_layout_and_labels(tree, ds):
    assert (tree / "SYNTHETIC.txt").is_file()
    assert ds.name == "imagenet" and ds.synthetic
    assert ds.source.startswith("SYNTHETIC") and "not ImageNet" in ds.source
    assert ds.classes == tuple(f"n{c:08d}" for c in range(4))
    assert (ds.num_classes, ds.num_train, ds.num_test) == (4, 32, 16)
    assert ds.image_size == (S, S)
    assert ds.mean == IMAGENET_MEAN and ds.std == IMAGENET_STD
    assert ds.train_labels.dtype == torch.int64
    assert torch.bincount(ds.train_labels).tolist() == [8] * 4
    assert torch.bincount(ds.test_labels).tolist() == [4] * 4
    files = [f.decode() for f in ds.train_files]
    assert files == sorted(files) and files[0].startswith("n00000000/")
    sizes = set()
    from PIL import Image

    for f in (tree / "train" / "n00000000").iterdir():
        with Image.open(f) as im:
            sizes.add(im.size)
    assert any(w != h for w, h in sizes) and len(sizes) > 2
    r = repr(ds)
    assert "ImageNetDataset(" in r and "synthetic=True" in r and "train=32" in r


def test_real_tree_is_not_labelled_synthetic(tmp_path):
    root = write_synthetic_imagenet(tmp_path / "r", num_classes=2, train_per_class=2,
                                    test_per_class=1, image_size=16)  # fmt: skip
    (root / "SYNTHETIC.txt").unlink()
    ds = load_imagenet(root, image_size=S)
    assert not ds.synthetic and ds.source.startswith("imagenet (image tree train/ + val/ at")
    with pytest.raises(ValueError, match="not synthetic"):  # never writes into a real tree
        write_synthetic_imagenet(root)


def test_synthetic_classes_are_learnable(ds):
    """Nearest class mean on the center crops separates the classes."""
    x, y = next(iter(ds.train_loader(32, augment=False, shuffle=False, num_workers=0)))
    xt, yt = next(iter(ds.test_loader(16, num_workers=0)))
    means = torch.stack([x[y == c].mean(0) for c in range(4)]).flatten(1)
    pred = torch.cdist(xt.flatten(1), means).argmin(1)
    assert (pred == yt).float().mean() >= 0.9


# --------------------------------------------------------------------------- batches


def test_test_batch_matches_torchvision_center_crop(tree, ds):
    from PIL import Image
    from torchvision import transforms as T

    loader = ds.test_loader(5, "cpu", num_workers=0)
    assert len(loader) == 4  # 16 samples: 5 + 5 + 5 + 1
    x, y = next(iter(loader))
    assert x.shape == (5, 3, S, S) and x.dtype == torch.float32
    assert y.shape == (5,) and y.dtype == torch.int64 and y.tolist() == [0, 0, 0, 0, 1]
    reference = T.Compose([
        T.Resize(round(S / 0.875)), T.CenterCrop(S), T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])  # fmt: skip
    for k in (0, 1, 2):  # square and non-square originals
        with Image.open(tree / "val" / ds.test_files[k].decode()) as im:
            expected = reference(im.convert("RGB"))
        torch.testing.assert_close(x[k], expected, atol=1e-5, rtol=0)


def test_train_batches_shapes_and_last_batch(ds):
    loader = ds.train_loader(10, "cpu", seed=3, num_workers=0)
    batches = _batches(loader)
    assert [len(y) for _, y in batches] == [10, 10, 10, 2] and len(loader) == 4
    assert all(x.shape[1:] == (3, S, S) and x.dtype == torch.float32 for x, _ in batches)
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == sorted(ds.train_labels.tolist())
    # normalised: roughly in [-2.2, 2.7], never the raw [0, 255] range
    x = torch.cat([x for x, _ in batches])
    assert x.min() >= -2.2 and x.max() <= 2.7
    assert len(ds.train_loader(10, drop_last=True, num_workers=0)) == 3
    r = repr(loader)
    assert "ImageNetLoader(split='train'" in r and "augment=True" in r and "batches=4" in r


def test_other_image_formats_and_modes(tmp_path):
    """Case-insensitive suffixes; grayscale, CMYK and palette files come out RGB."""
    from PIL import Image

    root = write_synthetic_imagenet(tmp_path / "m", num_classes=2, train_per_class=2,
                                    test_per_class=1, image_size=16)  # fmt: skip
    folder = root / "train" / "n00000001"
    Image.new("L", (40, 30), 90).save(folder / "gray.jpg")
    Image.new("CMYK", (30, 40), (10, 20, 30, 0)).save(folder / "cmyk.JPEG")
    Image.new("P", (20, 20), 3).save(folder / "palette.PNG")
    (folder / "notes.txt").write_text("not an image")
    ds = load_imagenet(root, image_size=S)
    assert ds.num_train == 7
    for augment in (False, True):
        loader = ds.train_loader(7, shuffle=False, augment=augment, num_workers=0)
        x, y = next(iter(loader))
        assert x.shape == (7, 3, S, S) and y.tolist() == [0, 0, 1, 1, 1, 1, 1]


# --------------------------------------------------------------------------- determinism


def test_same_seed_and_epoch_give_identical_batches_for_any_workers(ds):
    kw = {"device": "cpu", "seed": 7, "augment": True}
    a = ds.train_loader(6, num_workers=0, **kw)
    b = ds.train_loader(6, num_workers=2, **kw)
    a.set_epoch(3)
    b.set_epoch(3)
    first = _batches(a)
    assert _same(first, _batches(b))
    # without set_epoch, successive iterations are epochs 4, 5, ...; a resume reproduces them
    after = _batches(a)
    c = ds.train_loader(6, num_workers=0, **kw)
    c.set_epoch(4)
    assert _same(after, _batches(c))
    assert not torch.equal(first[0][1], after[0][1])  # another epoch, another order
    assert not torch.equal(a.epoch_indices(0), a.epoch_indices(1))
    # same order with augmentation off, but different pixels: the crops are random
    d = ds.train_loader(6, num_workers=0, device="cpu", seed=7, augment=False)
    d.set_epoch(3)
    plain = _batches(d)
    assert torch.equal(plain[0][1], first[0][1]) and not torch.equal(plain[0][0], first[0][0])


def test_fresh_loader_starts_at_epoch_zero(ds):
    a = ds.train_loader(8, seed=1, num_workers=0)
    b = ds.train_loader(8, seed=1, num_workers=0)
    b.set_epoch(0)
    assert _same(_batches(a), _batches(b))
    other_seed = ds.train_loader(8, seed=2, num_workers=0)
    assert not torch.equal(other_seed.epoch_indices(0), a.epoch_indices(0))


# --------------------------------------------------------------------------- sharding


def test_two_ranks_are_disjoint_and_cover_the_samples(ds):
    for shuffle in (True, False):
        ranks = [
            ds.train_loader(4, shuffle=shuffle, seed=5, rank=r, world_size=2, num_workers=0)
            for r in (0, 1)
        ]
        parts = [set(loader.epoch_indices(2).tolist()) for loader in ranks]
        assert len(parts[0]) == len(parts[1]) == 16
        assert parts[0].isdisjoint(parts[1]) and parts[0] | parts[1] == set(range(32))
    # the labels a rank gets are those of its indices, in order
    loader = ds.test_loader(3, rank=1, world_size=2, num_workers=0)
    labels = torch.cat([y for _, y in loader])
    assert torch.equal(labels, ds.test_labels[loader.epoch_indices(0)])
    assert torch.equal(loader.epoch_indices(0), torch.arange(8, 16))


def test_start_gives_the_remainder(ds):
    world_size = 3
    covered = ds.num_test // world_size * world_size  # 15 of 16
    shards = [ds.test_loader(4, rank=r, world_size=world_size, num_workers=0)
              for r in range(world_size)]  # fmt: skip
    rest = ds.test_loader(4, start=covered, num_workers=0)
    seen = torch.cat([s.epoch_indices(0) for s in shards] + [rest.epoch_indices(0)])
    assert sorted(seen.tolist()) == list(range(ds.num_test))
    x, y = next(iter(rest))
    assert x.shape == (1, 3, S, S) and y.tolist() == [3] and len(rest) == 1
    assert "start=15" in repr(rest)
    # start combines with sharding: ranks split the samples [start:]
    halves = [ds.test_loader(4, start=6, rank=r, world_size=2, shuffle=True, seed=1,
                             num_workers=0).epoch_indices(0) for r in (0, 1)]  # fmt: skip
    assert sorted(torch.cat(halves).tolist()) == list(range(6, 16))
    with pytest.raises(ValueError, match="start must be <= 31, got 32"):
        ds.train_loader(4, start=32)


# --------------------------------------------------------------------------- crop parameters


def test_random_resized_crop_params_stay_inside_and_respect_scale():
    g = torch.Generator().manual_seed(0)
    for _ in range(2000):
        height = int(torch.randint(20, 400, (1,), generator=g))
        width = int(torch.randint(20, 400, (1,), generator=g))
        i, j, h, w = random_resized_crop_params(height, width, g)
        assert 0 <= i and 0 <= j and 0 < h and 0 < w
        assert i + h <= height and j + w <= width
        fraction = h * w / (height * width)
        ratio = w / h
        if 0.75 <= width / height <= 4 / 3 or fraction < 1:  # not the clamped fallback
            # rounding h and w to integers moves the area and ratio by a few percent at most
            assert 0.08 * 0.8 <= fraction <= 1.0
            assert 0.75 * 0.85 <= ratio <= 4 / 3 * 1.15


def test_random_resized_crop_params_match_torchvision():
    from torchvision.transforms import RandomResizedCrop

    image = torch.zeros(3, 60, 90)
    for seed in range(50):
        torch.manual_seed(seed)
        expected = RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
        got = random_resized_crop_params(60, 90, torch.Generator().manual_seed(seed))
        assert got == tuple(expected)
    # extreme aspect ratios use the central fallback
    torch.manual_seed(0)
    expected = RandomResizedCrop.get_params(torch.zeros(3, 5, 400), [0.9, 1.0], [3 / 4, 4 / 3])
    got = random_resized_crop_params(5, 400, torch.Generator().manual_seed(0), scale=(0.9, 1.0))
    assert got == tuple(expected) == (0, (400 - 7) // 2, 5, 7)  # ratio clamped to 4/3


def test_train_crops_of_a_large_jpeg_are_close_to_exact_decoding(tmp_path):
    """draft() decodes large JPEGs at a reduced scale; the crop barely changes."""
    from PIL import Image

    yy, xx = np.mgrid[0:600, 0:800]
    pixels = np.stack([128 + 90 * np.sin(xx / 50), 128 + 90 * np.cos(yy / 40), (xx // 4) % 256], -1)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(tmp_path / "big.jpg", quality=95)
    for seed in range(3):
        with Image.open(tmp_path / "big.jpg") as im:
            fast = imagenet._random_resized_crop(im, 48, torch.Generator().manual_seed(seed))
        with Image.open(tmp_path / "big.jpg") as im:
            im.load()  # a loaded image ignores draft(): full-resolution decode
            exact = imagenet._random_resized_crop(im, 48, torch.Generator().manual_seed(seed))
        assert fast.shape == exact.shape == (48, 48, 3) and fast.dtype == np.uint8
        assert np.abs(fast.astype(int) - exact).mean() < 6


# --------------------------------------------------------------------------- locations


def test_not_found_lists_every_place_and_what_to_do(tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    monkeypatch.setenv("CONVNN_IMAGENET_DIR", str(env_dir))
    monkeypatch.setenv("CONVNN_DATA_DIR", str(data_dir))
    with pytest.raises(DatasetNotFoundError) as err:
        load_imagenet(tmp_path / "arg")
    msg = str(err.value)
    for place in (
        tmp_path / "arg",
        env_dir,
        data_dir / "imagenet",
        tmp_path / "cache" / "imagenet",
    ):
        assert str(place) in msg
    assert "https://image-net.org" in msg and "cannot be downloaded automatically" in msg
    for name in ARCHIVES:
        assert name in msg
    assert "train/<wnid>/*.JPEG" in msg and "val/<wnid>/*.JPEG" in msg
    assert "CONVNN_IMAGENET_DIR" in msg and "data_dir" in msg


def test_incomplete_roots_are_explained(tmp_path):
    root = tmp_path / "half"
    (root / "train").mkdir(parents=True)
    (root / ARCHIVES[0]).write_bytes(b"")
    with pytest.raises(DatasetNotFoundError, match="incomplete") as err:
        load_imagenet(root)
    assert "val/" in str(err.value) and ARCHIVES[2] in str(err.value)


def _tiny(root: Path, num_classes: int) -> Path:
    return write_synthetic_imagenet(root, num_classes=num_classes, train_per_class=1,
                                    test_per_class=1, image_size=8)  # fmt: skip


def test_location_resolution_order(tmp_path, monkeypatch):
    """data_dir, then CONVNN_IMAGENET_DIR, then $CONVNN_DATA_DIR/imagenet, then the cache;
    the class count tells which tree was loaded."""
    _tiny(tmp_path / "cache" / "imagenet", 1)
    assert load_imagenet().num_classes == 1
    _tiny(tmp_path / "data" / "imagenet", 2)
    monkeypatch.setenv("CONVNN_DATA_DIR", str(tmp_path / "data"))
    assert load_imagenet().num_classes == 2
    _tiny(tmp_path / "env", 3)
    monkeypatch.setenv("CONVNN_IMAGENET_DIR", str(tmp_path / "env"))
    assert load_imagenet().num_classes == 3
    _tiny(tmp_path / "arg" / "imagenet", 4)  # data_dir may hold imagenet/ ...
    assert load_imagenet(tmp_path / "arg").num_classes == 4
    assert load_imagenet(tmp_path / "arg" / "imagenet").num_classes == 4  # ... or be the root
    # a data_dir without ImageNet falls through to the next places
    assert load_imagenet(tmp_path / "nowhere").num_classes == 3
    # an explicit cache_dir replaces the default cache
    monkeypatch.delenv("CONVNN_IMAGENET_DIR")
    monkeypatch.delenv("CONVNN_DATA_DIR")
    _tiny(tmp_path / "other-cache" / "imagenet", 5)
    assert load_imagenet(cache_dir=tmp_path / "other-cache").num_classes == 5


def test_official_archives_are_extracted_with_torchvision(tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    root = tmp_path / "archives"
    root.mkdir()
    for name in ARCHIVES:
        (root / name).write_bytes(b"")
    calls = []

    class FakeImageNet:
        def __init__(self, root, split):
            calls.append((root, split))
            if not (Path(root) / "train").exists():
                _tiny(Path(root), 2)

    monkeypatch.setattr(torchvision.datasets, "ImageNet", FakeImageNet)
    ds = load_imagenet(root)
    assert calls == [(str(root.resolve()), "train"), (str(root.resolve()), "val")]
    assert ds.num_classes == 2 and ds.num_train == 2
    assert "takes hours" in capsys.readouterr().err
    load_imagenet(root)  # the tree is there now: no second extraction
    assert len(calls) == 2


# --------------------------------------------------------------------------- index cache


def test_index_cache_is_read_and_invalidated(tmp_path, monkeypatch):
    root = _tiny(tmp_path / "inet", 2)
    cache = tmp_path / "idx"
    first = load_imagenet(root, cache_dir=cache)
    index_files = list((cache / "imagenet-index").glob("*.json.gz"))
    assert len(index_files) == 1 and root.name in index_files[0].name
    scan = imagenet._scan_class

    def fail(folder):
        raise AssertionError(f"rescanned {folder} despite the cache")

    monkeypatch.setattr(imagenet, "_scan_class", fail)
    second = load_imagenet(root, cache_dir=cache)
    assert (second.train_files == first.train_files).all()
    assert torch.equal(second.test_labels, first.test_labels)

    # a new file changes its class folder's mtime: the index is rebuilt
    folder = root / "train" / "n00000000"
    (folder / "extra.JPEG").write_bytes((folder / os.listdir(folder)[0]).read_bytes())
    os.utime(folder, ns=(1, 1))
    with pytest.raises(AssertionError, match="rescanned"):
        load_imagenet(root, cache_dir=cache)
    monkeypatch.setattr(imagenet, "_scan_class", scan)
    assert load_imagenet(root, cache_dir=cache).num_train == 3

    # so does a new class folder
    for split in ("train", "val"):
        (root / split / "n00000009").mkdir()
        (root / split / "n00000009" / "x.JPEG").write_bytes((folder / "extra.JPEG").read_bytes())
    monkeypatch.setattr(imagenet, "_scan_class", fail)
    with pytest.raises(AssertionError, match="rescanned"):
        load_imagenet(root, cache_dir=cache)
    monkeypatch.setattr(imagenet, "_scan_class", scan)
    again = load_imagenet(root, cache_dir=cache)
    assert again.num_classes == 3 and again.classes[-1] == "n00000009"
    assert len(list((cache / "imagenet-index").glob("*"))) == 1  # one file per root, replaced


def test_damaged_index_is_rebuilt(tmp_path):
    root = _tiny(tmp_path / "inet", 2)
    load_imagenet(root, cache_dir=tmp_path / "idx")
    (index_file,) = (tmp_path / "idx" / "imagenet-index").glob("*.json.gz")
    index_file.write_bytes(b"garbage")
    assert load_imagenet(root, cache_dir=tmp_path / "idx").num_train == 2


# --------------------------------------------------------------------------- subsets, errors


def test_subsets_keep_the_first_files_of_each_class(tree):
    ds = load_imagenet(tree, train_per_class=3, test_per_class=2, image_size=S)
    assert torch.bincount(ds.train_labels).tolist() == [3] * 4
    assert torch.bincount(ds.test_labels).tolist() == [2] * 4
    names = [f.decode() for f in ds.train_files[:3]]
    assert names == [f"n00000000/n00000000_train_{i:04d}.JPEG" for i in range(3)]
    assert ds.source.endswith("; first 3 train and first 2 val images per class")
    assert ds.source.startswith("SYNTHETIC")
    with pytest.raises(ValueError, match=r"train_per_class must be <= 8 .*n00000000\), got 9"):
        load_imagenet(tree, train_per_class=9)


def test_class_mismatch_names_the_difference(tmp_path):
    root = _tiny(tmp_path / "inet", 2)
    (root / "val" / "n00000001").rename(root / "val" / "n99999999")
    with pytest.raises(ValueError, match=r"only in train/: \['n00000001'\], only in val/: "
                                         r"\['n99999999'\]"):  # fmt: skip
        load_imagenet(root)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 0}, "image_size must be >= 1, got 0"),
        ({"train_per_class": 0}, "train_per_class must be >= 1, got 0"),
        ({"test_per_class": 1.5}, "test_per_class must be an integer"),
    ],
)
def test_load_imagenet_rejects_bad_arguments(tree, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_imagenet(tree, **kwargs)


@pytest.mark.parametrize(
    "split, kwargs, match",
    [
        ("val", {}, r"split must be one of \['train', 'test'\], got 'val'"),
        ("train", {"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ("train", {"rank": 2, "world_size": 2}, "rank must be <= 1, got 2"),
        ("train", {"world_size": 0}, "world_size must be >= 1, got 0"),
        ("test", {"start": 16}, "start must be <= 15, got 16"),
        ("test", {"start": -1}, "start must be >= 0, got -1"),
        ("train", {"num_workers": -1}, "num_workers must be >= 0, got -1"),
        ("train", {"image_size": 0}, "image_size must be >= 1, got 0"),
        ("train", {"seed": -1}, "seed must be >= 0, got -1"),
        ("train", {"batch_size": 40, "drop_last": True}, "leaves no batch"),
    ],
)
def test_loader_rejects_bad_arguments(ds, split, kwargs, match):
    kwargs = {"batch_size": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        ImageNetLoader(ds, split, **kwargs)


def test_set_epoch_and_default_workers(ds):
    loader = ds.train_loader(4)
    assert loader.num_workers == min(8, os.cpu_count() or 1)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        loader.set_epoch(-1)
    assert math.isclose(loader._scale[0, 0, 0, 0].item(), 1 / (255 * IMAGENET_STD[0]), rel_tol=1e-6)


def test_default_num_workers_reads_the_environment(monkeypatch):
    from convnn.imagenet import default_num_workers

    monkeypatch.setenv("CONVNN_WORKERS", "3")
    assert default_num_workers() == 3
    monkeypatch.setenv("CONVNN_WORKERS", "many")
    with pytest.raises(ValueError, match="CONVNN_WORKERS must be an integer"):
        default_num_workers()
    monkeypatch.delenv("CONVNN_WORKERS")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "10000")  # more processes than CPUs: still one
    assert default_num_workers() == 1


def test_dataset_num_workers_is_the_loaders_default(tmp_path):
    root = write_synthetic_imagenet(tmp_path / "tree", num_classes=2, train_per_class=2,
                                    test_per_class=1)
    ds = load_imagenet(root, image_size=16, cache_dir=tmp_path / "cache")
    ds.num_workers = 0
    assert ds.train_loader(2).num_workers == 0 and ds.test_loader(2).num_workers == 0
    assert ds.train_loader(2, num_workers=1).num_workers == 1


def test_streamed_real_images_learn(tmp_path):
    """Real photographs through the streaming path: 3,000 CIFAR-10 JPEGs laid out as an
    ImageNet tree (train/, val/), two epochs of a small CNN, clearly above chance (10 %)."""
    import re
    import tarfile

    from torch import nn

    from convnn.train import TrainConfig, fit

    tarball = Path(CALLER_DATA_DIR or "/nonexistent") / "cifar10-jpeg.tar.gz"
    if not tarball.is_file():
        pytest.skip(f"no CIFAR-10 JPEG copy at {tarball}: set CONVNN_DATA_DIR")
    root = tmp_path / "tree"
    with tarfile.open(tarball) as tar:
        for member in tar:
            m = re.match(r"(?:.*/)?(train|test)/([^/]+)/(\d+)\.jpg$", member.name)
            if m is None or int(m.group(3)) >= (300 if m.group(1) == "train" else 50):
                continue
            out = root / ("train" if m.group(1) == "train" else "val") / m.group(2) / \
                f"{m.group(3)}.jpg"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(member).read())
    ds = load_imagenet(root, image_size=32, cache_dir=tmp_path / "cache")
    assert (ds.num_train, ds.num_test, ds.num_classes) == (3000, 500, 10)
    ds.num_workers = 0

    def net():
        def block(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
        return nn.Sequential(*block(3, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2),
                             *block(64, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(64, 10))

    config = TrainConfig(lr=3e-3, epochs=2, batch_size=64, seed=0, log_every=0)
    summary = fit(net, ds, config, tmp_path / "run", progress=False, log=None, device="cpu")
    assert summary["final"]["test_top1"] >= 25.0, summary
