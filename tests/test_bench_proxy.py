"""The speed proxy, the trainer-vs-plain-loop rows and the one-card suite, on the CPU.
Timing numbers are not asserted here (they belong to `python -m convnn bench`); the proxy's
estimates are deterministic, so their order is."""

from __future__ import annotations

import json
import math

import pytest
import torch

from convnn.__main__ import main
from convnn.bench import format_loop_rows, loop_benchmarks, peak_memory, proxy
from convnn.layers import ConvNN2d
from convnn.models import ModelConfig


@pytest.fixture(scope="module")
def vit_rows():
    return {r["case"]: r for r in proxy.proxy_benchmarks(families=("vit",))}


def test_proxy_orders_convnn_kvt_sdpa_as_measured(vit_rows):
    sdpa = vit_rows["attention (SDPA)"]
    kvt = vit_rows["KVT, k=9"]
    convnn = vit_rows["ConvNN attention, all, k=9"]
    for key in ("est_throughput_vs_baseline",
                "est_throughput_vs_baseline_committed_calibration"):
        assert sdpa[key] == 1.0
        assert convnn[key] < kvt[key] < sdpa[key]
    assert convnn["kernels"] > kvt["kernels"] > sdpa["kernels"] > 100
    assert convnn["gbytes"] > sdpa["gbytes"]
    # the committed H200 files order them the same way
    measured = proxy.measured_ratios()
    assert measured[("ViT-Tiny", "ConvNN attention, all, k=9")] < \
        measured[("ViT-Tiny", "KVT, k=9")] < 1.0


def test_proxy_tracks_the_committed_measurements(vit_rows):
    measured = proxy.measured_ratios()
    for case, row in vit_rows.items():
        est = row["est_throughput_vs_baseline_committed_calibration"]
        assert est == pytest.approx(measured[("ViT-Tiny", case)], abs=0.15), case


def test_trace_counts_flops_of_a_known_model():
    # VGG-11 at batch 1: the forward FLOPs of the convolutions are fixed by the shapes
    one = proxy.trace_step(ModelConfig(name="vgg11"), 1, 32, amp="off")
    two = proxy.trace_step(ModelConfig(name="vgg11"), 2, 32, amp="off")
    assert two.flops == pytest.approx(2 * one.flops, rel=0.01)  # linear in the batch
    assert one.parameters > 100_000_000 and abs(one.kernels - two.kernels) <= 5
    est = proxy.estimate_seconds(two)
    assert est["seconds"] == pytest.approx(sum(est["by_class"].values()))


def test_proxy_rejects_bad_arguments():
    with pytest.raises(ValueError, match="gpu"):
        proxy.proxy_benchmarks(gpu="tpu")
    with pytest.raises(ValueError, match="families"):
        proxy.proxy_benchmarks(families=("mlp",))


def test_cli_proxy_writes_json(tmp_path, capsys, monkeypatch):
    row = {"model": "VGG-11", "case": "Conv2d", "kernels": 1, "gflop": 1.0, "gbytes": 1.0,
           "est_throughput_vs_baseline": 1.0,
           "est_throughput_vs_baseline_committed_calibration": 1.0}
    monkeypatch.setattr(proxy, "proxy_benchmarks", lambda gpu: [dict(row, gpu=gpu)])
    estimate = {"target": "t", "case": "c", "gpu": "h100", "est_seconds": 1.0,
                "est_ratio_vs_baseline": 0.5}
    monkeypatch.setattr(proxy, "kernel_estimates", lambda gpu: [estimate])
    assert main(["bench", "--proxy", "--gpu", "h100", "--json", str(tmp_path / "p.json")]) == 0
    assert json.loads((tmp_path / "p.json").read_text())["proxy"][0]["case"] == "Conv2d"
    assert "h100" in capsys.readouterr().out


def test_loop_rows_and_bad_model():
    rows = loop_benchmarks("cpu", "small", epochs=2, rounds=1, n_train=64, batch_size=32)
    assert [r["runner"] for r in rows] == ["plain", "trainer"]
    assert rows[0]["throughput_vs_plain_fp32"] == 1.0
    assert rows[1]["throughput_vs_plain_fp32"] > 0 and rows[1]["call_seconds_per_epoch"] > 0
    assert len(format_loop_rows(rows).splitlines()) == 4
    with pytest.raises(ValueError, match="model"):
        loop_benchmarks("cpu", "mlp")


def test_cpu_peak_memory_is_silent_and_sees_the_reference_cost(capfd):
    torch.manual_seed(0)
    x = torch.randn(2, 16, 16, 16, requires_grad=True)
    peaks = {}
    for backend in ("torch", "reference"):
        layer = ConvNN2d(16, 16, k=9, backend=backend)
        peaks[backend] = peak_memory(lambda layer=layer: layer(x).sum().backward(),
                                  torch.device("cpu"))
    out, err = capfd.readouterr()
    assert err == "" and out == ""
    assert 0 < peaks["torch"] < peaks["reference"]


def test_suite_dry_run_on_cpu(tmp_path, capfd):
    from convnn.bench.suite import run_suite

    suite = run_suite(tmp_path / "s", tiny=True, device="cpu")
    names = {p.name for p in (tmp_path / "s").iterdir()}
    assert {"loop.json", "layers.json", "proxy.json", "profile.txt", "suite.json"} <= names
    assert set(suite["stages"]) == {"loop", "layers", "proxy", "profile"}
    assert "3 training steps" in (tmp_path / "s" / "profile.txt").read_text()
    assert capfd.readouterr().err == ""
    with pytest.raises(ValueError, match="budget_s"):
        run_suite(tmp_path / "t", budget_s=0)


def test_a_failing_suite_stage_is_recorded_and_the_others_run(tmp_path, monkeypatch, capfd):
    from convnn.bench import suite as suite_mod

    def broken(*args, **kwargs):
        raise RuntimeError("kernel failed to compile")

    monkeypatch.setattr(suite_mod, "layer_benchmarks", broken)
    suite = suite_mod.run_suite(tmp_path / "s", tiny=True, device="cpu")
    assert suite["stages"]["layers"]["error"] == "RuntimeError: kernel failed to compile"
    assert "seconds" in suite["stages"]["proxy"] and "seconds" in suite["stages"]["loop"]
    assert not (tmp_path / "s" / "layers.json").exists()
    assert "layers: FAILED" in capfd.readouterr().out


def test_kernel_estimates_order_the_fused_paths_sensibly():
    rows = proxy.kernel_estimates(targets=("attention", "vgg"), head_shapes=((1, 192),))
    ratio = {(r["target"].split()[0], r["case"]): r["est_ratio_vs_baseline"] for r in rows}
    for cand in ("all", "random r=32"):  # the fused core beats today's path
        fused = ratio[("attention", f"ConvNN {cand}, fused kernel")]
        assert fused > ratio[("attention", f"ConvNN {cand}, PyTorch path")] > 0
    today = ratio[("VGG-11", "PyTorch path, NCHW (today)")]
    nhwc = ratio[("VGG-11", "PyTorch path, channels-last")]
    fused = ratio[("VGG-11", "fused 2-D selection + gather-GEMM, channels-last")]
    assert 0 < today < nhwc < fused
    vgg = [r for r in rows if "est_epoch_seconds" in r]
    assert all(r["est_epoch_seconds"] > r["baseline_epoch_seconds"] * 0.99 for r in vgg)
    # the threshold-skipped merge takes fewer passes than a merge of every tile, and more
    # the more tiles there are
    assert 8 < proxy.merge_passes(256, 8) < proxy.merge_passes(1156, 8) < 8 * math.ceil(1156 / 64)
    with pytest.raises(ValueError, match="targets"):
        proxy.kernel_estimates(targets=("mlp",))
