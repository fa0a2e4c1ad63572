"""The tensor-core benchmark script (``python -m convnn bench --tensorcore DIR``) runs end to
end on a CPU in its tiny interpreter mode, and a failing stage still leaves the others. Its
numbers are not asserted (timing belongs to the benchmark, not to tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convnn.bench import tensorcore

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_tensorcore_session_runs_every_stage_on_cpu(tmp_path):
    pytest.importorskip("triton", reason="Triton is not installed (CPU-only torch build)")
    out = tmp_path / "tc"
    env = {**os.environ, "TRITON_INTERPRET": "1", "CONVNN_BACKEND": "torch"}
    proc = subprocess.run(
        [sys.executable, "-m", "convnn", "bench", "--tensorcore", str(out), "--quick",
         "--device", "cpu"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
        check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    session = json.loads((out / "session.json").read_text())
    assert set(session["stages"]) == set(tensorcore.STAGES)
    assert all("seconds" in s for s in session["stages"].values()), session["stages"]
    prov = session["provenance"]
    assert prov["tiny"] and prov["device"] == "cpu" and prov["commit"] and prov["date"]
    assert prov["command"].startswith("python -m convnn bench --tensorcore")
    attention = json.loads((out / "attention.json").read_text())
    cases = {r["case"] for r in attention["results"]}
    assert {"SDPA", "ConvNN all, triton", "ConvNN random r=32, triton"} <= cases
    assert all("decision" in r and "error" not in r for r in attention["results"])
    training = json.loads((out / "training.json").read_text())["results"]
    assert {r["model"] for r in training} == {"ViT-Tiny", "VGG-11"}
    assert all(r["throughput_vs_baseline_same_precision"] > 0 for r in training)
    sweep = json.loads((out / "sweep.json").read_text())["results"]
    assert [r["tokens"] for r in sweep["rows"]] == [9, 17] and sweep["statement"]
    assert "3 training steps" in (out / "profile.txt").read_text()
    assert json.loads((out / "checks.json").read_text())["results"]["passed"]


def test_a_failing_stage_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel failed to compile")

    monkeypatch.setattr(tensorcore, "attention_rows", broken)
    monkeypatch.setattr(tensorcore, "sweep_rows", lambda device, tiny: {"rows": []})
    session = tensorcore.run_tensorcore(tmp_path / "s", tiny=True, device="cpu",
                                        stages=("attention", "sweep"), command="test")
    assert session["stages"]["attention"]["error"] == "RuntimeError: kernel failed to compile"
    assert "seconds" in session["stages"]["sweep"]
    assert (tmp_path / "s" / "sweep.json").exists()
    assert not (tmp_path / "s" / "attention.json").exists()
    with pytest.raises(ValueError, match="stages"):
        tensorcore.run_tensorcore(tmp_path / "t", stages=("nope",))
    with pytest.raises(ValueError, match="budget_s"):
        tensorcore.run_tensorcore(tmp_path / "t", budget_s=0)
