"""Tests of convnn.data: synthetic data, local CIFAR layouts, the decoded cache, the clear
offline error and the on-device loader. Nothing here touches the network."""

from __future__ import annotations

import dataclasses
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from convnn import data
from convnn.data import (
    DatasetNotFoundError,
    augment_batch,
    load_dataset,
    make_loader,
    subset_per_class,
    synthetic_dataset,
)

# --------------------------------------------------------------------------- fixtures

CLASSES = ("cat", "airplane")  # written unsorted on purpose: labels follow alphabetical order
PER_CLASS = {"train": 3, "test": 2}


def _pixel(cls: str, split: str, i: int) -> tuple[int, int, int]:
    """A flat colour that identifies the image (PNG is lossless, so it survives exactly)."""
    return (CLASSES.index(cls) * 100 + 20, {"train": 10, "test": 200}[split], i * 30)


def _write_tree(root: Path) -> Path:
    from PIL import Image

    for split, n in PER_CLASS.items():
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (32, 32), _pixel(cls, split, i)).save(
                    root / split / cls / f"{i:04d}.png"
                )
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return _write_tree(tmp_path / "tiny_tree")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _tiny(tree_or_tar: Path, cache: Path, **kw) -> data.ImageDataset:
    """Load the 2-class tiny tree (or its tarball) as 'cifar10', never downloading."""
    return load_dataset("cifar10", data_dir=tree_or_tar, download=False, cache_dir=cache, **kw)


@pytest.fixture
def two_class_cifar10(monkeypatch):
    """The tiny fixtures have 2 classes; let 'cifar10' accept them (the real check is tested
    in test_wrong_class_count_is_rejected)."""
    monkeypatch.setitem(data.DATASETS, "cifar10",
                        dataclasses.replace(data.DATASETS["cifar10"], num_classes=len(CLASSES)))


# --------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_labels_and_determinism():
    ds = synthetic_dataset(n_train=50, n_test=20, num_classes=5, image_size=16, seed=3)
    assert ds.name == "synthetic"
    assert ds.train_images.shape == (50, 16, 16, 3) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (20, 16, 16, 3)
    assert ds.train_labels.dtype == torch.int64
    assert torch.bincount(ds.train_labels).tolist() == [10] * 5
    assert ds.num_classes == 5 and ds.classes[0] == "class0"
    again = synthetic_dataset(n_train=50, n_test=20, num_classes=5, image_size=16, seed=3)
    assert torch.equal(ds.train_images, again.train_images)
    assert torch.equal(ds.test_labels, again.test_labels)
    other = synthetic_dataset(n_train=50, n_test=20, num_classes=5, image_size=16, seed=4)
    assert not torch.equal(ds.train_images, other.train_images)
    assert all(0 < s < 1 for s in ds.std) and all(0 < m < 1 for m in ds.mean)
    assert "synthetic" in repr(ds) and "tensor" not in repr(ds)


def test_synthetic_is_learnable_by_nearest_class_mean():
    ds = synthetic_dataset(n_train=400, n_test=100, num_classes=10, seed=0)
    x = ds.train_images.float().reshape(len(ds.train_images), -1)
    means = torch.stack([x[ds.train_labels == c].mean(0) for c in range(10)])
    xt = ds.test_images.float().reshape(len(ds.test_images), -1)
    pred = torch.cdist(xt, means).argmin(1)
    assert (pred == ds.test_labels).float().mean() > 0.9


def test_load_synthetic_by_name_and_subset():
    ds = load_dataset("synthetic", train_per_class=4, test_per_class=2)
    assert ds.name == "synthetic"
    assert torch.bincount(ds.train_labels).tolist() == [4] * 10
    assert torch.bincount(ds.test_labels).tolist() == [2] * 10
    assert "first 4 train and first 2 test images per class" in ds.source


# --------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"name": "mnist"},
            r"name must be one of \['cifar10', 'cifar100', 'synthetic'\], got 'mnist'",
        ),
        ({"name": "synthetic", "train_per_class": 0}, "train_per_class must be >= 1, got 0"),
        ({"name": "synthetic", "test_per_class": 2.5}, "test_per_class must be an integer"),
        ({"name": "cifar10", "download": "yes"}, "download must be True or False, got 'yes'"),
    ],
)
def test_load_dataset_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(**kwargs)


def test_subset_larger_than_class_is_rejected():
    ds = synthetic_dataset(n_train=20, n_test=10, num_classes=2)
    with pytest.raises(ValueError, match="train_per_class must be <= 10"):
        subset_per_class(ds.train_images, ds.train_labels, 11, "train_per_class")


def test_subset_per_class_keeps_the_first_n_in_order():
    labels = torch.tensor([1, 0, 1, 1, 0, 0, 1])
    images = torch.arange(7, dtype=torch.uint8).view(7, 1, 1, 1).expand(7, 2, 2, 3)
    x, y = subset_per_class(images, labels, 2)
    assert y.tolist() == [1, 0, 1, 0]
    assert x[:, 0, 0, 0].tolist() == [0, 1, 2, 4]


# --------------------------------------------------------------------------- local copies


def _check_tiny(ds: data.ImageDataset) -> None:
    assert ds.classes == ("airplane", "cat")  # alphabetical
    assert ds.train_images.shape == (6, 32, 32, 3) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (4, 32, 32, 3)
    assert ds.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.test_labels.tolist() == [0, 0, 1, 1]
    for split, n in PER_CLASS.items():
        images = getattr(ds, f"{split}_images")
        for j, cls in enumerate(sorted(CLASSES)):
            for i in range(n):
                pixel = images[j * n + i, 5, 7].tolist()
                assert pixel == list(_pixel(cls, split, i)), (split, cls, i)
    assert ds.mean == data.DATASETS["cifar10"].mean


@pytest.mark.usefixtures("two_class_cifar10")
def test_image_folder_tree(tree, cache):
    ds = _tiny(tree, cache)
    _check_tiny(ds)
    assert ds.source == f"cifar10 (PNG images at {tree})"


@pytest.mark.parametrize("top_folder", ["", "cifar10-png/"])
@pytest.mark.usefixtures("two_class_cifar10")
def test_tarball_of_tree(tmp_path, tree, cache, top_folder):
    tarball = tmp_path / "cifar10-tiny.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:
        for f in sorted(tree.rglob("*.png")):
            tf.add(f, arcname=top_folder + str(f.relative_to(tree)))
    _check_tiny(_tiny(tarball, cache))  # the tarball's own path
    ds = _tiny(tmp_path, cache)  # a folder holding it (and the tree, whose name has no hint)
    _check_tiny(ds)


@pytest.mark.usefixtures("two_class_cifar10")
def test_data_dir_holding_a_tree_and_env_var(tmp_path, tree, cache, monkeypatch):
    monkeypatch.setenv("CONVNN_DATA_DIR", str(tmp_path))
    ds = load_dataset("cifar10", download=False, cache_dir=cache)
    _check_tiny(ds)
    assert str(tree) in ds.source
    # the data_dir argument wins over the environment variable
    monkeypatch.setenv("CONVNN_DATA_DIR", str(tmp_path / "nowhere"))
    _check_tiny(load_dataset("cifar10", data_dir=tree, download=False, cache_dir=cache))


@pytest.mark.usefixtures("two_class_cifar10")
def test_decoded_cache_is_hit_on_second_load(tree, cache, monkeypatch):
    first = _tiny(tree, cache)
    files = list((cache / "decoded").glob("*.npz"))
    assert len(files) == 1

    def fail(_):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data, "_decode_image_bytes", fail)
    second = _tiny(tree, cache)
    assert torch.equal(first.train_images, second.train_images)
    assert torch.equal(first.test_labels, second.test_labels)
    assert second.source == first.source


@pytest.mark.usefixtures("two_class_cifar10")
def test_cache_key_changes_with_the_source(tree, cache):
    _tiny(tree, cache)
    from PIL import Image

    Image.new("RGB", (32, 32), (1, 2, 3)).save(tree / "train" / "cat" / "0003.png")
    ds = _tiny(tree, cache)
    assert len(ds.train_labels) == 7
    assert len(list((cache / "decoded").glob("*.npz"))) == 2


def test_wrong_class_count_is_rejected(tree, cache):
    assert data.DATASETS["cifar10"].num_classes == 10
    with pytest.raises(DatasetNotFoundError, match="found 2 classes .* but cifar10 has 10"):
        _tiny(tree, cache)


@pytest.mark.usefixtures("two_class_cifar10")
def test_mixed_image_sizes_are_rejected(tree, cache):
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tree / "test" / "cat" / "0009.png")
    with pytest.raises(DatasetNotFoundError, match="all images must have one size"):
        _tiny(tree, cache)


def test_offline_error_is_clear(tmp_path, cache, monkeypatch):
    monkeypatch.delenv("CONVNN_DATA_DIR", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar100", data_dir=empty, download=False, cache_dir=cache)
    msg = str(info.value)
    assert "CIFAR-100" in msg and "CONVNN_DATA_DIR" in msg and "data_dir" in msg
    assert str(empty) in msg and str(cache) in msg  # where it looked
    assert "cifar-100-python/" in msg and "train/<class>" in msg and "tarball" in msg
    assert "download=False" in msg


def test_failed_download_is_reported(tmp_path, cache, monkeypatch):
    """download=True on a machine without internet: the torchvision error is wrapped."""
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    monkeypatch.delenv("CONVNN_DATA_DIR", raising=False)
    with pytest.raises(DatasetNotFoundError, match="name resolution") as info:
        load_dataset("cifar10", download=True, cache_dir=cache)
    assert "CONVNN_DATA_DIR" in str(info.value)


def test_torchvision_layout(tmp_path, cache):
    """A fake torchvision CIFAR-10 folder (md5 checks patched out): read without decoding."""
    import pickle

    import torchvision.datasets

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = {}
    for fname, _ in (
        torchvision.datasets.CIFAR10.train_list + torchvision.datasets.CIFAR10.test_list
    ):
        rows[fname] = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        with open(folder / fname, "wb") as f:
            pickle.dump({"data": rows[fname], "labels": [0, 1, 0, 1]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "cat"]}, f)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
        mp.setattr(torchvision.datasets.CIFAR10, "_load_meta", _fake_meta)
        ds = load_dataset("cifar10", data_dir=tmp_path, download=False, cache_dir=cache)
    assert ds.train_images.shape == (20, 32, 32, 3) and ds.test_images.shape == (4, 32, 32, 3)
    expected = rows["test_batch"].reshape(4, 3, 32, 32).transpose(0, 2, 3, 1)
    assert np.array_equal(ds.test_images.numpy(), expected)
    assert ds.classes == ("airplane", "cat")
    assert ds.source == f"cifar10 (torchvision files at {tmp_path / 'cifar-10-batches-py'})"
    assert not (cache / "decoded").exists()  # already uint8 arrays: nothing to decode


def _fake_meta(self):
    import pickle

    with open(os.path.join(self.root, self.base_folder, "batches.meta"), "rb") as f:
        self.classes = pickle.load(f)["label_names"]
    self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


# --------------------------------------------------------------------------- the loader


@pytest.fixture
def small():
    return synthetic_dataset(n_train=103, n_test=20, num_classes=4, image_size=8, seed=1)


def test_loader_batches_and_normalisation(small):
    loader = make_loader(
        small.train_images, small.train_labels, 16, "cpu", small.mean, small.std, shuffle=False
    )
    assert len(loader) == 7  # ceil(103 / 16)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [16] * 6 + [7]
    x, y = batches[0]
    assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32 and x.is_contiguous()
    assert y.dtype == torch.int64 and torch.equal(y, small.train_labels[:16])
    mean = torch.tensor(small.mean).view(1, 3, 1, 1)
    std = torch.tensor(small.std).view(1, 3, 1, 1)
    ref = (small.train_images[:16].permute(0, 3, 1, 2).float() / 255 - mean) / std
    torch.testing.assert_close(x, ref)
    allx = torch.cat([b[0] for b in batches])
    assert abs(allx.mean().item()) < 0.05  # mean/std computed from these very images
    assert abs(allx.std().item() - 1) < 0.05


def test_loader_without_mean_std_scales_to_unit_range(small):
    x, _ = next(iter(make_loader(small.train_images, small.train_labels, 8, shuffle=False)))
    torch.testing.assert_close(x, small.train_images[:8].permute(0, 3, 1, 2).float() / 255)


def test_drop_last(small):
    loader = make_loader(small.train_images, small.train_labels, 16, drop_last=True)
    assert len(loader) == 6
    assert [len(y) for _, y in loader] == [16] * 6


def test_shuffle_is_reproducible_per_epoch(small):
    def labels(loader, epoch):
        loader.set_epoch(epoch)
        return torch.cat([y for _, y in loader])

    a = make_loader(small.train_images, small.train_labels, 10, seed=7)
    b = make_loader(small.train_images, small.train_labels, 10, seed=7)
    e0, e1 = labels(a, 0), labels(a, 1)
    assert torch.equal(labels(b, 1), e1)  # resume at epoch 1 sees the same order
    assert torch.equal(labels(b, 0), e0)
    assert not torch.equal(a.epoch_indices(0), a.epoch_indices(1))
    assert sorted(a.epoch_indices(0).tolist()) == list(range(103))  # a permutation
    c = make_loader(small.train_images, small.train_labels, 10, seed=8)
    assert not torch.equal(c.epoch_indices(0), a.epoch_indices(0))
    # without set_epoch, successive iterations advance the epoch
    d = make_loader(small.train_images, small.train_labels, 10, seed=7)
    assert torch.equal(torch.cat([y for _, y in d]), e0)
    assert torch.equal(torch.cat([y for _, y in d]), e1)


def test_sharding_is_disjoint_and_equal(small):
    world = 4
    shards = [
        make_loader(small.train_images, small.train_labels, 5, seed=3, rank=r, world_size=world)
        for r in range(world)
    ]
    for epoch in (0, 1):
        idx = [s.epoch_indices(epoch) for s in shards]
        assert all(len(i) == 103 // world for i in idx)
        flat = torch.cat(idx)
        assert len(set(flat.tolist())) == len(flat)  # disjoint
    assert len({len(s) for s in shards}) == 1
    # the ranks' batches are the rows their indices name
    shards[2].set_epoch(1)
    _, y = next(iter(shards[2]))
    assert torch.equal(y, small.train_labels[shards[2].epoch_indices(1)[:5]])


def test_augment_batch_matches_pad_crop_flip():
    images = torch.randint(0, 256, (5, 6, 7, 3), dtype=torch.uint8)
    offsets = torch.tensor([[0, 0], [8, 8], [4, 4], [1, 7], [3, 2]])
    flips = torch.tensor([False, False, False, True, True])
    out = augment_batch(images, offsets, flips, padding=4)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images.permute(0, 3, 1, 2), (4, 4, 4, 4))  # zeros
    for b in range(5):
        dy, dx = offsets[b].tolist()
        ref = padded[b, :, dy : dy + 6, dx : dx + 7]
        if flips[b]:
            ref = ref.flip(-1)
        assert torch.equal(out[b], ref.permute(1, 2, 0)), b
    assert torch.equal(out[2], images[2])  # centred crop, no flip: unchanged


def test_loader_augmentation(small):
    plain = make_loader(small.train_images, small.train_labels, 103, shuffle=False)
    aug = make_loader(
        small.train_images, small.train_labels, 103, shuffle=False, augment=True, seed=5
    )
    (x0, y0), (x1, y1) = next(iter(plain)), next(iter(aug))
    assert x1.shape == x0.shape and torch.equal(y0, y1)
    assert not torch.equal(x0, x1)
    assert (x1 == 0).any()  # zero padding shows (unnormalised loader: black = 0)
    aug.set_epoch(0)
    assert torch.equal(next(iter(aug))[0], x1)  # reproducible per epoch
    assert not torch.equal(next(iter(aug))[0], x1)  # epoch 1 differs


def test_loader_resize_to_224():
    ds = synthetic_dataset(n_train=4, n_test=2, num_classes=2)
    loader = ds.train_loader(batch_size=2, device="cpu", resize=224, shuffle=False)
    x, y = next(iter(loader))
    assert x.shape == (2, 3, 224, 224) and y.shape == (2,)
    small_x, _ = next(iter(ds.train_loader(batch_size=2, device="cpu", shuffle=False)))
    ref = torch.nn.functional.interpolate(
        small_x, size=224, mode="bilinear", align_corners=False, antialias=False
    )
    torch.testing.assert_close(x, ref)


def test_test_loader_defaults(small):
    loader = small.test_loader(batch_size=8)
    assert not loader.shuffle and not loader.augment
    assert torch.equal(torch.cat([y for _, y in loader]), small.test_labels)
    assert "batches=3" in repr(loader)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"batch_size": 4, "rank": 2, "world_size": 2}, "rank must be <= 1, got 2"),
        ({"batch_size": 4, "world_size": 0}, "world_size must be >= 1, got 0"),
        ({"batch_size": 4, "resize": -1}, "resize must be >= 1, got -1"),
        ({"batch_size": 4, "mean": (0.5, 0.5, 0.5)}, "mean and std must be given together"),
        ({"batch_size": 4, "mean": (0.5,), "std": (0.2,)}, r"mean must have 3 values"),
        ({"batch_size": 200, "drop_last": True}, "batch_size=200 with drop_last=True"),
    ],
)
def test_loader_rejects_bad_arguments(small, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_loader(small.train_images, small.train_labels, **kwargs)


def test_loader_rejects_bad_images(small):
    with pytest.raises(ValueError, match=r"images must be uint8 \[N, H, W, 3\]"):
        make_loader(small.train_images.float(), small.train_labels, 4)
    with pytest.raises(ValueError, match=r"images must have shape \[N, H, W, 3\]"):
        make_loader(small.train_images[0], small.train_labels, 4)
    with pytest.raises(ValueError, match="labels must have one entry per image"):
        make_loader(small.train_images, small.train_labels[:5], 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loader_on_cuda_matches_cpu(small):
    kw = {"batch_size": 16, "mean": small.mean, "std": small.std, "augment": True, "seed": 2}
    cpu = make_loader(small.train_images, small.train_labels, device="cpu", **kw)
    gpu = make_loader(small.train_images, small.train_labels, device="cuda", **kw)
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.is_cuda
        torch.testing.assert_close(xg.cpu(), xc)
        assert torch.equal(yg.cpu(), yc)


# --------------------------------------------------------------------------- the real copy


@pytest.mark.dataset
def test_real_cifar10_copy():
    """Loads the shared offline CIFAR-10 (about 5 s to decode once, then cached)."""
    data_dir = os.environ.get("CONVNN_DATA_DIR")
    if not data_dir:
        pytest.skip("CONVNN_DATA_DIR is unset and ../shared/datasets was not found")
    ds = load_dataset("cifar10", download=False)
    assert ds.train_images.shape == (50000, 32, 32, 3) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (10000, 32, 32, 3)
    assert ds.classes == data.CIFAR10_CLASSES
    assert torch.bincount(ds.train_labels).tolist() == [5000] * 10
    assert torch.bincount(ds.test_labels).tolist() == [1000] * 10
    mean = ds.train_images.double().div(255).mean(dim=(0, 1, 2))
    torch.testing.assert_close(
        mean, torch.tensor(data.DATASETS["cifar10"].mean).double(), atol=0.01, rtol=0
    )
    print(ds)


@pytest.mark.usefixtures("two_class_cifar10")
def test_pil_fallback_decodes_the_same(tree, tmp_path, monkeypatch):
    """torchvision's decoders are deprecated; without them PIL gives the same pixels."""
    fast = _tiny(tree, tmp_path / "cache_a")
    monkeypatch.setattr(data, "_torchvision_decoder", lambda: None)
    slow = _tiny(tree, tmp_path / "cache_b")
    assert torch.equal(fast.train_images, slow.train_images)
    assert torch.equal(fast.test_images, slow.test_images)
