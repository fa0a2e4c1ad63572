"""The trainer's speed changes keep the paper protocol's semantics: a few steps give the same
losses with and without each change, to rounding. CPU only (the CUDA-only switches are
exercised through the same code on CPU tensors)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convnn import ConvNN2d
from convnn import train as train_mod
from convnn.data import synthetic_dataset
from convnn.models import ModelConfig, build_model
from convnn.train import TrainConfig, fit


def small_vgg() -> nn.Module:
    return build_model(ModelConfig(name="vgg11", width_multiplier=0.125, head="lean",
                                   dropout=0.0))


def losses(model: nn.Module, steps: int = 4, fused: bool = False,
           channels_last: bool = False) -> list[float]:
    """Paper-protocol steps (AdamW, clip 1.0) on fixed random batches."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01,
                            **({"fused": True} if fused else {}))
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        x = torch.randn(8, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        out.append(loss.item())
    return out


def fresh() -> nn.Module:
    torch.manual_seed(3)
    return small_vgg()


def test_fused_adamw_gives_the_same_losses():
    ref = losses(fresh())
    assert ref[0] != pytest.approx(ref[-1], abs=1e-3)  # the steps did change the model
    assert losses(fresh(), fused=True) == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_channels_last_gives_the_same_losses():
    ref = losses(fresh())
    assert losses(fresh(), channels_last=True) == pytest.approx(ref, rel=1e-4, abs=1e-5)


def test_fast_layout_for_conv_networks_on_cuda():
    cuda = torch.device("cuda")  # the check looks at the device type only
    net = fresh()
    assert not train_mod.to_fast_layout(net, torch.device("cpu"))
    assert train_mod.to_fast_layout(net, cuda)
    w = next(m for m in net.modules() if isinstance(m, nn.Conv2d)).weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    with_convnn = nn.Sequential(ConvNN2d(3, 4, k=3), nn.Conv2d(4, 4, 3))
    assert train_mod.to_fast_layout(with_convnn, cuda)  # ConvNN2d reads NHWC as it comes
    assert not train_mod.to_fast_layout(nn.Linear(3, 3), cuda)
    assert train_mod.fused_options(list(net.parameters()), torch.device("cpu")) == {}


def test_batch_sums_count_without_a_host_copy():
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    sums = train_mod._batch_sums(logits, y, torch.tensor(2.5), torch.float64)
    top = logits.topk(5, dim=-1).indices
    assert sums.tolist() == [2.5, float((top[:, 0] == y).sum()),
                             float((top == y[:, None]).any(-1).sum()), 6.0]


def test_cudnn_autotuning_during_a_run_only(tmp_path):
    ds = synthetic_dataset(n_train=64, n_test=16, num_classes=4, image_size=8)
    seen = []
    before = torch.backends.cudnn.benchmark

    def factory():
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 4))

    for det in (False, True):
        cfg = TrainConfig(epochs=1, batch_size=32, log_every=0, deterministic=det)
        fit(factory, ds, cfg, tmp_path / str(det), device="cpu", progress=False, log=None,
            callback=lambda r: seen.append(torch.backends.cudnn.benchmark))
    assert seen == [True, False] and torch.backends.cudnn.benchmark == before
