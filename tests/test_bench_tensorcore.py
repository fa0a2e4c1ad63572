"""The tensor-core benchmark script (``python -m convnn bench --tensorcore DIR``) runs end to
end on a CPU in its tiny interpreter mode, and a failing stage still leaves the others. Its
numbers are not asserted (timing belongs to the benchmark, not to tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
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
         "--device", "cpu"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600,
        check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    session = json.loads((out / "session.json").read_text())
    assert set(session["stages"]) == set(tensorcore.STAGES)
    assert all(s["exit_code"] == 0 for s in session["stages"].values()), session["stages"]
    prov = session["provenance"]
    assert prov["tiny"] and prov["device"] == "cpu" and prov["commit"] and prov["date"]
    assert prov["command"].startswith("python -m convnn bench --tensorcore")
    attention = json.loads((out / "attention.json").read_text())
    assert attention["provenance"]["stage"] == "attention"
    cases = {r["case"] for r in attention["results"]}
    assert {"SDPA", "ConvNN all, triton", "ConvNN random r=8, triton"} <= cases
    assert all("decision" in r and "error" not in r for r in attention["results"])
    sdpa = next(r for r in attention["results"] if r["case"] == "SDPA")
    assert sdpa["sdpa_kernels"]  # which SDPA kernel ran is recorded
    training = json.loads((out / "training.json").read_text())["results"]
    assert {r["model"] for r in training} == {"ViT-Tiny", "VGG-11"}
    assert all(r["throughput_vs_baseline"] > 0 and r["precision"] == "off" for r in training)
    sweep = json.loads((out / "sweep.json").read_text())["results"]
    assert [r["tokens"] for r in sweep["rows"]] == [9, 17] and sweep["statement"]
    assert "3 training steps" in (out / "profile.txt").read_text()
    assert json.loads((out / "checks.json").read_text())["results"]["command"].endswith(
        "tests/test_gpu.py")  # the compiled-kernel tests only
    assert json.loads((out / "estimates.json").read_text())["results"]["rows"]
    targets = json.loads((out / "targets.json").read_text())["rows"]
    assert targets[0]["measured"] > 0 and targets[0]["estimate"] > 0
    assert "| target | goal | measured |" in (out / "targets.md").read_text()


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_stage_that_hangs_is_killed_at_its_cap_and_one_that_crashes_stops_nothing(tmp_path):
    hang = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
            "print(p.pid, flush=True); time.sleep(600)")
    stages = [("hang", _python(hang), 3.0, False),
              ("crash", _python("raise SystemExit(3)"), 60.0, False),
              ("ok", _python("print('fine')"), 60.0, False),
              ("behind", _python("print('alongside')"), 60.0, True)]
    records = tensorcore.run_stages(stages, tmp_path, log=lambda text: None)
    assert records["hang"]["timed_out"] and "killed at its cap" in records["hang"]["error"]
    assert records["hang"]["seconds"] < 30
    child = int((tmp_path / "hang.log").read_text().split()[0])
    for _ in range(100):  # the stage's own subprocess went with it (gone, or a zombie)
        if not _running(child):
            break
        time.sleep(0.1)
    assert not _running(child)
    assert records["crash"]["exit_code"] == 3 and records["crash"]["error"] == "exit code 3"
    assert records["ok"] == {**records["ok"], "exit_code": 0, "timed_out": False}
    assert (tmp_path / "ok.log").read_text() == "fine\n"
    assert records["behind"]["exit_code"] == 0
    spent = tensorcore.run_stages([("late", _python("pass"), 60.0, False)], tmp_path,
                                  budget_s=1.0, log=lambda text: None)
    assert "skipped" in spent["late"]  # under 5 s of the budget left


def test_the_targets_table_puts_measured_next_to_the_estimate(tmp_path):
    def write(name, results):
        (tmp_path / f"{name}.json").write_text(json.dumps({"results": results}))

    write("attention", [
        {"heads": 1, "head_dim": 192, "case": "SDPA", "candidates": None, "backend": None,
         "sdpa_kernels": ["flash"]},
        {"heads": 1, "head_dim": 192, "case": "ConvNN all, triton", "candidates": "all",
         "backend": "triton", "throughput_vs_sdpa_bf16": 0.6}])
    write("training", [{"model": "VGG-11", "case": "branching λ=0.5, fused",
                        "candidates": "all", "backend": "triton", "precision": "tf32",
                        "epoch_seconds_from_steps": 2.5}])
    write("estimates", {"rows": [
        {"target": "attention layer 1x192, B=256, T=197, k=9, fwd+bwd, bf16 vs bf16 SDPA",
         "case": "ConvNN all, redesigned core", "est_ratio_vs_baseline": 0.5},
        {"target": "VGG-11 branching λ=0.5 epoch vs Conv2d VGG-11 (channels-last)",
         "case": "fused 2-D selection + gather-GEMM, channels-last",
         "est_ratio_vs_baseline": 0.9, "est_epoch_seconds": 2.0}]})
    rows = {r["target"]: r for r in tensorcore.target_rows(tmp_path)}
    layer = rows["attention layer 1x192 all, fwd+bwd vs bf16 SDPA"]
    assert layer["measured"] == 0.6 and layer["estimate"] == 0.5 and layer["met"] is False
    assert layer["gap_measured_over_estimate"] == pytest.approx(1.2)
    assert layer["sdpa_kernels"] == ["flash"]
    vgg = rows["VGG-11 branching λ=0.5 epoch (training steps), seconds"]
    assert vgg["met"] is True and vgg["gap_measured_over_estimate"] == pytest.approx(1.25)
    vit = rows["ViT-Tiny training step, ConvNN all, vs SDPA ViT-Tiny"]
    assert vit["measured"] is None and vit["met"] is None  # no training row: nothing claimed
    text = tensorcore.format_targets(list(rows.values()))
    assert "| attention layer 1x192 all, fwd+bwd vs bf16 SDPA | >= 1.5x | 0.6 | 0.5 | 1.2 | no |" \
        in text


def test_bad_arguments_name_themselves(tmp_path):
    with pytest.raises(ValueError, match="stages"):
        tensorcore.run_tensorcore(tmp_path / "t", stages=("nope",))
    with pytest.raises(ValueError, match="budget_s"):
        tensorcore.run_tensorcore(tmp_path / "t", budget_s=0)
