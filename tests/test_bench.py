"""The training benchmark produces well-formed ratios (its numbers are not asserted: timing
belongs to `python -m convnn bench`, not to tests)."""

import pytest

from convnn.bench import format_train_rows, training_benchmarks


def test_resnet_training_benchmark_rows():
    rows = training_benchmarks("cpu", families=("resnet",), repeats=1)
    cases = [r["case"] for r in rows]
    assert cases[0] == "Conv2d" and "branching λ=0.5, all, k=9 [reference]" in cases
    assert "branching λ=0.5, random r=32, k=9" in cases
    base = rows[0]
    assert base["throughput_vs_baseline"] == 1.0 and base["throughput_vs_reference"] is None
    for r in rows:
        assert r["model"] == "ResNet-50" and r["images_per_second"] > 0
        assert r["parameters"] > 20_000_000
        if r["case"].startswith("branching") and not r["case"].endswith("[reference]"):
            assert r["throughput_vs_reference"] > 0
    text = format_train_rows(rows)
    assert len(text.splitlines()) == len(rows) + 2 and "ResNet-50" in text


def test_unknown_benchmark_family_is_an_error():
    with pytest.raises(ValueError, match="unknown families"):
        training_benchmarks("cpu", families=("resnet", "mlp"))
