"""The campaign: its queue, the time fitting (with a fake clock and a fake trainer),
continuation across commands and the importer (with tiny real smoke runs on the CPU)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from convnn import campaign as C
from convnn import results as R
from convnn.__main__ import main
from convnn.checkpoint import CHECKPOINT_FORMAT, log_summary
from convnn.experiments import get_preset
from convnn.run_folder import RunFolder, config_fingerprint

PAIR = C.QueueItem("pair", ("vgg11-c10-conv2d", "vgg11-c10-branching-r0.5"), "test pair")
SOLO = C.QueueItem("solo", ("vit-tiny-c10-attention",), "test single run")


# --------------------------------------------------------------------------- the queue
def test_queue_starts_with_the_headline_pairs_then_the_lean_vit_then_cifar10_rows():
    groups = [item.presets for item in C.QUEUE]
    assert groups[0] == ("vgg11-c10-conv2d", "vgg11-c10-branching-r0.5")
    assert groups[1] == ("vit-tiny-c10-attention", "vit-tiny-c10-convnn-random-r32-k9")
    assert groups[2] == ("vit-tiny-cifar-c10-attention",
                         "vit-tiny-cifar-c10-convnn-random-r32-k9")
    assert "not in the paper" in C.QUEUE[2].why
    names = [p for item in C.QUEUE for p in item.presets]
    assert len(names) == len(set(names))
    rest = names[6:]
    assert all(get_preset(n).dataset == "cifar10" and get_preset(n).paper_rows()
               for n in rest)
    # every CIFAR-10 preset of the paper is queued
    cifar10 = {get_preset(n).name for n in names if get_preset(n).paper_rows()}
    from convnn.experiments import PRESETS
    assert cifar10 == {n for n, p in PRESETS.items() if p.dataset == "cifar10"
                       and p.paper_rows()}


def test_bad_queue_and_arguments_raise_naming_them(tmp_path):
    with pytest.raises(ValueError, match="minutes"):
        C.run_campaign(0, tmp_path)
    with pytest.raises(ValueError, match="min_epochs"):
        C.run_campaign(1, tmp_path, min_epochs=0)
    with pytest.raises(ValueError, match="safety"):
        C.run_campaign(1, tmp_path, safety=0.5)
    with pytest.raises(ValueError, match="unknown preset"):
        C.run_campaign(1, tmp_path, queue=[C.QueueItem("x", ("vgg11-c10-nope",), "")])
    with pytest.raises(ValueError, match="twice"):
        C.run_campaign(1, tmp_path, queue=[PAIR, PAIR])


# --------------------------------------------------------------------------- fake clock
def fake_checkpoint(run_dir: Path, epoch: int, epochs: int) -> None:
    """A minimal checkpoint at ``epoch``, and the summary recording it, written as the real
    trainer writes them (the campaign counts the epochs of the verified checkpoint)."""
    config = {"train": {"epochs": epochs}}
    (run_dir / "config.json").write_text(json.dumps(config))
    records = RunFolder.read(run_dir, checkpoint="none").records[:epoch]
    folder = RunFolder(run_dir)
    folder.save_checkpoint({"format": CHECKPOINT_FORMAT, "epoch": epoch, "model": {},
                            "optimizer": {}, "rng": [], "config": {},
                            "fingerprint": config_fingerprint(config),
                            "log": log_summary(records)})
    folder.save_summary({"epochs_completed": epoch})


class FakeWorld:
    """A fake clock and a fake trainer that advances it: ``setup`` seconds per call and
    ``speed[preset]`` seconds per epoch (the first epoch ``warmup`` times slower). It writes
    run folders like the real trainer (a metrics line, then the checkpoint, then the callback)
    and can be "killed" after a number of epochs, as a command hitting its wall-clock limit."""

    def __init__(self, speed: dict[str, float], setup: float = 20.0, warmup: float = 1.2):
        self.now = 1000.0
        self.speed, self.setup, self.warmup = speed, setup, warmup
        self.calls: list[tuple[str, int, int]] = []
        self.kill_after: int | None = None

    def clock(self) -> float:
        return self.now

    def trainer(self, preset, run_dir: Path, epochs, callback, log):
        run_dir.mkdir(parents=True, exist_ok=True)
        done = C._epochs_done(run_dir)
        self.calls.append((preset, done, epochs))
        self.now += self.setup
        for epoch in range(done + 1, epochs + 1):
            if self.kill_after is not None and self.kill_after <= 0:
                raise KeyboardInterrupt("killed by the command's time limit")
            seconds = self.speed[preset] * (self.warmup if epoch == 1 else 1.0)
            self.now += seconds
            record = {"epoch": epoch, "epoch_seconds": seconds, "test_top1": 10.0,
                      "device": "FakeGPU", "time": "2026-12-01T10:00:00+00:00"}
            with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            fake_checkpoint(run_dir, epoch, epochs)
            if self.kill_after is not None:
                self.kill_after -= 1
            callback(record)

    def run(self, minutes, out, **kwargs):
        kwargs.setdefault("queue", [PAIR, SOLO])
        return C.run_campaign(minutes, out, trainer=self.trainer, clock=self.clock,
                              log=lambda _: None, **kwargs)


def test_full_epochs_when_they_fit(tmp_path):
    world = FakeWorld({"vgg11-c10-conv2d": 8.0, "vgg11-c10-branching-r0.5": 12.0,
                       "vit-tiny-c10-attention": 10.0})
    result = world.run(60 * 24, tmp_path, full_epochs=150)
    assert result["stopped"] == "queue done"
    assert result["runs"] == {"vgg11-c10-conv2d": 150, "vgg11-c10-branching-r0.5": 150,
                              "vit-tiny-c10-attention": 150}
    plan = result["groups"]["pair"]
    assert plan["epochs"] == 150 and not plan["reduced"] and "full" in plan["why"]
    # the first epoch of each run is measured before the group is planned, then continued
    assert world.calls[:4] == [("vgg11-c10-conv2d", 0, 1), ("vgg11-c10-branching-r0.5", 0, 1),
                               ("vgg11-c10-conv2d", 1, 150),
                               ("vgg11-c10-branching-r0.5", 1, 150)]
    state = json.loads((tmp_path / "campaign.json").read_text())
    m = state["runs"]["vgg11-c10-conv2d"]
    assert m["first_epoch_seconds"] == pytest.approx(9.6)
    assert m["setup_seconds"] == pytest.approx(20.0)
    assert m["epoch_seconds"] == pytest.approx(8.0)


def test_reduced_epochs_fit_the_time_left_and_the_pair_gets_the_same_count(tmp_path):
    world = FakeWorld({"vgg11-c10-conv2d": 8.0, "vgg11-c10-branching-r0.5": 12.0,
                       "vit-tiny-c10-attention": 10.0})
    start = world.now
    result = world.run(10, tmp_path, full_epochs=150, safety=1.0, reserve_seconds=0)
    plan = result["groups"]["pair"]
    # measuring: 2 × 20 s setup + 9.6 + 14.4 s first epochs = 64 s; left 536 s, minus 2 × 20
    # s setup for the continuation = 496 s. Paced at the first epochs (an upper estimate:
    # they include warm-up), 9.6 + 14.4 = 24 s per pair-epoch: 1 + 496 // 24 = 21 epochs
    assert plan["reduced"] and plan["epochs"] == 21
    assert "reduced: 21 of 150" in plan["why"]
    assert plan["seconds_per_epoch"] == {"vgg11-c10-conv2d": 9.6,
                                         "vgg11-c10-branching-r0.5": 14.4}
    assert result["runs"]["vgg11-c10-conv2d"] == result["runs"]["vgg11-c10-branching-r0.5"] \
        == 21
    assert world.now - start <= 600  # the budget held
    # the 96 s left after the pair measure the next run's first epoch (32 s); 4 more epochs
    # would fit, fewer than min_epochs (5): it waits for the next command
    assert result["runs"]["vit-tiny-c10-attention"] == 1
    assert "solo" not in result["groups"]
    assert result["stopped"] == "out of time: solo waits for the next command"


def test_the_deadline_stops_a_run_after_an_epoch_and_the_next_command_continues(tmp_path):
    speed = {"vgg11-c10-conv2d": 8.0, "vgg11-c10-branching-r0.5": 12.0,
             "vit-tiny-c10-attention": 10.0}
    world = FakeWorld(speed)
    world.run(10, tmp_path, full_epochs=150, safety=1.0, reserve_seconds=0)
    planned = json.loads((tmp_path / "campaign.json").read_text())["groups"]["pair"]["epochs"]
    # the GPU turns out slower than measured (e.g. thermals): the deadline stops a run
    shutil_world = FakeWorld({k: v * 1.5 for k, v in speed.items()})
    shutil_world.now = world.now
    (tmp_path / "runs" / "vgg11-c10-branching-r0.5" / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": e, "epoch_seconds": 12.0, "test_top1": 1.0,
                            "device": "FakeGPU"}) + "\n" for e in range(1, 11)))
    fake_checkpoint(tmp_path / "runs" / "vgg11-c10-branching-r0.5", 10, 150)
    result = shutil_world.run(3, tmp_path, full_epochs=150, safety=1.0, reserve_seconds=0)
    assert result["stopped"] == "out of time: vgg11-c10-branching-r0.5 stopped after an epoch"
    done = result["runs"]["vgg11-c10-branching-r0.5"]
    assert 10 < done < planned
    assert shutil_world.now - world.now <= 180
    # the plan is kept: a third command continues to the same count
    result = FakeWorld(speed).run(60, tmp_path, full_epochs=150)
    assert result["runs"]["vgg11-c10-branching-r0.5"] == planned
    assert result["groups"]["pair"]["epochs"] == planned
    state = json.loads((tmp_path / "campaign.json").read_text())
    assert [c["stopped"].split(":")[0] for c in state["commands"]] == [
        "out of time", "out of time", "queue done"]


def test_a_killed_command_loses_at_most_the_epoch_in_flight(tmp_path):
    world = FakeWorld({"vgg11-c10-conv2d": 8.0, "vgg11-c10-branching-r0.5": 12.0,
                       "vit-tiny-c10-attention": 10.0})
    world.kill_after = 7  # 2 measured epochs, then 5 more, then the command is killed
    with pytest.raises(KeyboardInterrupt):
        world.run(60, tmp_path, full_epochs=40)
    assert C._epochs_done(tmp_path / "runs" / "vgg11-c10-conv2d") == 6
    state = json.loads((tmp_path / "campaign.json").read_text())
    assert state["commands"][-1]["stopped"] == "interrupted"
    assert list(tmp_path.glob("campaign-logs-*.tar.gz"))  # packed on the way out
    world.kill_after = None
    result = world.run(60, tmp_path, full_epochs=40)
    assert result["runs"] == {"vgg11-c10-conv2d": 40, "vgg11-c10-branching-r0.5": 40,
                              "vit-tiny-c10-attention": 40}
    assert ("vgg11-c10-conv2d", 6, 40) in world.calls


def test_a_group_that_fits_too_few_epochs_waits_for_the_next_command(tmp_path):
    world = FakeWorld({"vgg11-c10-conv2d": 8.0, "vgg11-c10-branching-r0.5": 12.0,
                       "vit-tiny-c10-attention": 60.0}, setup=5.0)
    # the pair takes most of the time; the single run is measured but 4 epochs do not fit
    result = world.run(5, tmp_path, queue=[PAIR, SOLO], full_epochs=10, min_epochs=4,
                       reserve_seconds=0)
    assert result["groups"]["pair"]["epochs"] == 10
    assert "solo" not in result["groups"]
    assert result["stopped"] == "out of time: solo waits for the next command"
    assert result["runs"]["vit-tiny-c10-attention"] == 1
    result = world.run(30, tmp_path, queue=[PAIR, SOLO], full_epochs=10, min_epochs=4)
    assert result["groups"]["solo"]["epochs"] == 10 and result["stopped"] == "queue done"


def test_a_failing_run_does_not_stop_the_queue(tmp_path):
    world = FakeWorld({"vgg11-c10-conv2d": 8.0, "vgg11-c10-branching-r0.5": 12.0,
                       "vit-tiny-c10-attention": 10.0})
    trainer = world.trainer

    def flaky(preset, *args):
        if preset == "vgg11-c10-branching-r0.5":
            raise RuntimeError("CUDA out of memory")
        return trainer(preset, *args)

    result = C.run_campaign(60, tmp_path, queue=[PAIR, SOLO], trainer=flaky,
                            clock=world.clock, log=lambda _: None, full_epochs=5)
    assert result["runs"]["vgg11-c10-conv2d"] == 5
    assert result["runs"]["vit-tiny-c10-attention"] == 5
    state = json.loads((tmp_path / "campaign.json").read_text())
    assert "out of memory" in state["runs"]["vgg11-c10-branching-r0.5"]["failed"]["last_error"]


def test_a_failed_run_is_retried_with_its_count_then_skipped_until_retry_failed(tmp_path):
    world = FakeWorld({"vgg11-c10-conv2d": 8.0, "vgg11-c10-branching-r0.5": 12.0})
    broken = {"on": True}

    def flaky(preset, *args):
        if preset == "vgg11-c10-branching-r0.5" and broken["on"]:
            raise RuntimeError(f"folder locked (try {len(world.calls)})")
        return world.trainer(preset, *args)

    def command(**kw):
        lines = []
        result = C.run_campaign(60, tmp_path, queue=[PAIR], trainer=flaky, clock=world.clock,
                                log=lines.append, full_epochs=3, **kw)
        return result, "\n".join(lines)

    result, _ = command()
    assert result["failed"]["vgg11-c10-branching-r0.5"]["count"] == 1
    assert result["stopped"] == "queue done except the failed run(s) vgg11-c10-branching-r0.5"
    result, text = command()  # the next command tries it again, saying why
    assert "vgg11-c10-branching-r0.5: retrying, it failed 1 time(s) (last: RuntimeError: " \
           "folder locked" in text
    assert result["failed"]["vgg11-c10-branching-r0.5"]["count"] == 2
    result, _ = command()
    assert result["failed"]["vgg11-c10-branching-r0.5"]["count"] == C.MAX_ATTEMPTS == 3
    result, text = command()  # given up on: nothing is trained, and it says so
    assert "SKIPPED, it failed 3 times" in text and "--retry-failed" in text
    assert not result["did_work"] and not result["complete"]
    broken["on"] = False  # the cause is gone
    result, text = command(retry_failed=True)
    assert "failure count cleared" in text
    assert result["failed"] == {} and result["complete"] and result["did_work"]
    assert result["runs"] == {"vgg11-c10-conv2d": 3, "vgg11-c10-branching-r0.5": 3}
    assert result["stopped"] == "queue done"


def test_epochs_are_counted_by_the_verified_checkpoint_not_the_log(tmp_path):
    """A kill during the last checkpoint write: the log has 3 epochs, the checkpoint 2 and a
    half-written temporary lies beside it. The campaign counts 2, so it continues the run."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "epoch_seconds": 1.0, "test_top1": 10.0}) + "\n"
        for e in (1, 2)))
    fake_checkpoint(run_dir, 2, 3)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 3, "epoch_seconds": 1.0, "test_top1": 10.0}) + "\n")
    (run_dir / ".checkpoint.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
    assert C._epochs_done(run_dir) == 2
    assert [r["epoch"] for r in C._records(run_dir)] == [1, 2]
    (run_dir / "checkpoint.pt").write_bytes(b"damaged")
    assert C._epochs_done(run_dir) == 0  # not trusted: resuming names the problem


def test_cli_campaign_that_trains_nothing_exits_non_zero(tmp_path, capsys, monkeypatch):
    state = {"format": 1, "smoke": True, "created": "x", "groups": {}, "commands": [],
             "runs": {p: {"failed": {"count": C.MAX_ATTEMPTS, "last_error": "E: boom"}}
                      for p in C.QUEUE[0].presets}}
    (tmp_path / "campaign.json").write_text(json.dumps(state))
    args = ["campaign", "--minutes", "1", "--out", str(tmp_path), "--smoke", "--only",
            C.QUEUE[0].group]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "FAILED 3 time(s), last: E: boom" in captured.out
    assert "trained nothing" in captured.err and "--retry-failed" in captured.err


def test_another_campaign_in_the_same_folder_is_refused(tmp_path):
    world = FakeWorld({"vgg11-c10-conv2d": 1.0, "vgg11-c10-branching-r0.5": 1.0,
                       "vit-tiny-c10-attention": 1.0})
    world.run(60, tmp_path, full_epochs=2)
    with pytest.raises(C.CampaignError, match="smoke"):
        world.run(60, tmp_path, full_epochs=2, smoke=True)
    other = C.QueueItem("pair", ("vgg11-c10-conv2d",), "")
    with pytest.raises(C.CampaignError, match="group pair"):
        world.run(60, tmp_path, queue=[other], full_epochs=2)


def test_logs_are_packed_in_files_under_the_limit(tmp_path):
    runs = tmp_path / "runs"
    for i in range(4):
        (runs / f"r{i}").mkdir(parents=True)
        (runs / f"r{i}" / "metrics.jsonl").write_bytes(bytes(range(256)) * 400)  # 100 KiB
        (runs / f"r{i}" / "config.json").write_text("{}")
        (runs / f"r{i}" / "checkpoint.pt").write_bytes(b"x" * 300_000)
    (tmp_path / "campaign.json").write_text("{}")
    packs = C.pack_logs(tmp_path, tmp_path / "logs", limit=250_000)
    assert len(packs) >= 2 and all(p.stat().st_size <= 250_000 for p in packs)
    names = []
    for pack in packs:
        with tarfile.open(pack) as tar:
            names += tar.getnames()
    assert sorted(names) == sorted(["campaign.json"] + [f"runs/r{i}/{f}" for i in range(4)
                                                         for f in ("config.json",
                                                                   "metrics.jsonl")])
    assert C.pack_logs(tmp_path, tmp_path / "logs")[0].name == "campaign-logs-1.tar.gz"
    assert len(list((tmp_path / "logs").glob("*.tar.gz"))) == 1  # old packs replaced
    with pytest.raises(ValueError, match="more than one pack"):
        C.pack_logs(tmp_path, tmp_path / "logs", limit=80_000)


# --------------------------------------------------------------------------- real runs
SMOKE_PAIR = C.QueueItem("smoke-pair", ("vgg11-c10-conv2d", "vgg11-c10-conv2d-ks1-e100-seed0"),
                         "two cheap VGG presets")


def _epochs_on_disk(out: Path) -> int:
    return sum(C._epochs_done(d) for d in (out / "runs").glob("*") if d.is_dir())


def test_real_smoke_runs_continue_across_two_commands_and_import(tmp_path):
    out = tmp_path / "campaign"
    # a clock that runs out once 3 epochs are on disk: the first command measures both runs,
    # plans 3 epochs, trains one more epoch of the first run and is stopped by the deadline
    first = C.run_campaign(60, out, queue=[SMOKE_PAIR], smoke=True, device="cpu",
                           clock=lambda: 0.0 if _epochs_on_disk(out) < 3 else 1e9,
                           log=lambda _: None, command="python -m convnn campaign (test)")
    assert first["stopped"].startswith("out of time")
    assert first["groups"]["smoke-pair"]["epochs"] == C.SMOKE_FULL_EPOCHS == 3
    assert first["runs"] == {"vgg11-c10-conv2d": 2, "vgg11-c10-conv2d-ks1-e100-seed0": 1}
    second = C.run_campaign(60, out, queue=[SMOKE_PAIR], smoke=True, device="cpu",
                            log=lambda _: None, command="python -m convnn campaign (test 2)")
    assert second["stopped"] == "queue done"
    assert second["runs"] == {"vgg11-c10-conv2d": 3, "vgg11-c10-conv2d-ks1-e100-seed0": 3}
    for name in SMOKE_PAIR.presets:
        run = R.load_run(out / "runs" / name)
        assert run.series("epoch") == [1, 2, 3]
        assert [r["from_epoch"] for r in run.config["resumed"]] == \
            ([1, 2] if name == "vgg11-c10-conv2d" else [1])
        assert run.smoke
    packs = second["packs"]
    assert packs and all(Path(p).stat().st_size <= C.LOG_PACK_BYTES for p in packs)

    # the importer files the packs with their provenance
    dest = tmp_path / "results"
    with pytest.raises(ValueError, match="smoke runs"):
        C.import_runs(Path(packs[0]).parent, dest=dest, commit="abc1234")
    folder = C.import_runs(Path(packs[0]).parent, dest=dest, commit="abc1234",
                           allow_smoke=True, name="smoke")
    assert folder.parent == dest and folder.name.endswith("-cpu-smoke")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*SMOKE_PAIR.presets, "campaign.json"])
    assert not list(folder.rglob("checkpoint.pt"))
    readme = (dest / "README.md").read_text()
    assert f"`{folder.name}/`" in readme and "`abc1234`" in readme
    assert "python -m convnn campaign (test) ; then python -m convnn campaign (test 2)" in readme
    assert "3 of 100 epochs" in readme  # the kernel-size preset's protocol is 100 epochs
    assert "SMOKE RUN" in readme
    imported = R.find_runs(dest)
    assert len(imported) == 2 and all(r.provenance and "abc1234" in r.provenance
                                      for r in imported)
    with pytest.raises(ValueError, match="already exists"):
        C.import_runs(Path(packs[0]).parent, dest=dest, commit="abc1234", allow_smoke=True,
                      name="smoke")


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["campaign", "--minutes", "5"]) == 2
    assert "needs --minutes and --out" in capsys.readouterr().err
    assert main(["campaign", "--minutes", "5", "--out", str(tmp_path), "--only", "x"]) == 2
    assert "unknown group" in capsys.readouterr().err
    assert main(["import-runs", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    assert main(["campaign", "--list"]) == 0
    assert "vgg11-c10-conv2d-vs-branching" in capsys.readouterr().out


# --------------------------------------------------------------------------- foreign files
def test_a_campaign_log_link_is_refused_and_its_target_never_packed(tmp_path):
    """The issue's repro: a ``campaign.log`` link was appended to and packed."""
    victim = tmp_path / "victim"
    victim.write_text("secret\n")
    out = tmp_path / "camp"
    out.mkdir()
    (out / "campaign.log").symlink_to(victim)
    world = FakeWorld({"vit-tiny-c10-attention": 10.0})
    with pytest.raises(ValueError, match=r"campaign.log is a symbolic link"):
        world.run(60, out, queue=[SOLO], full_epochs=2)
    assert victim.read_text() == "secret\n" and not world.calls
    with pytest.raises(ValueError, match="symbolic link"):
        C.pack_logs(out)
    assert not list(out.glob("campaign-logs-*.tar.gz"))


def test_a_second_campaign_on_one_folder_is_refused_in_one_line(tmp_path):
    from convnn._io import folder_lock

    world = FakeWorld({"vit-tiny-c10-attention": 10.0})
    with folder_lock(tmp_path, C.LOCK_FILE), \
            pytest.raises(C.CampaignError, match="another campaign command is running") as err:
        world.run(60, tmp_path, queue=[SOLO], full_epochs=2)
    assert "\n" not in str(err.value) and not world.calls
    assert not (tmp_path / "campaign.json").exists()
    assert world.run(60, tmp_path, queue=[SOLO], full_epochs=2)["stopped"] == "queue done"


def test_a_run_busy_in_another_process_is_not_a_failure(tmp_path):
    from convnn.run_folder import RunFolderBusyError

    world = FakeWorld({"vit-tiny-c10-attention": 10.0})
    real = world.trainer

    def busy(preset, run_dir, epochs, callback, log):
        raise RunFolderBusyError(f"{run_dir} is in use by another process (PID 1 on h)")

    world.trainer = busy
    for _ in range(C.MAX_ATTEMPTS + 1):  # more collisions than failures allowed
        result = world.run(60, tmp_path, queue=[SOLO], full_epochs=2)
        assert result["failed"] == {} and "busy elsewhere" in result["stopped"]
    world.trainer = real
    assert world.run(60, tmp_path, queue=[SOLO], full_epochs=2)["runs"] == {
        "vit-tiny-c10-attention": 2}
