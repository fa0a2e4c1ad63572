"""``import-runs`` files returned logs into the results folder and nowhere else: every repro
of a write outside it, a traceback, a half-filed import or a broken README row is a case
here. Run folders are written by hand (no training), so the file is fast."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import tarfile
from pathlib import Path

import pytest

from convnn import campaign as C
from convnn import results as R
from convnn.__main__ import main

ROOT = Path(C.__file__).resolve().parents[1]


def record(epoch: int, **fields) -> dict:
    base = {"epoch": epoch, "test_top1": 10.0 + epoch, "test_top5": 50.0, "epoch_seconds": 1.5,
            "device": "NVIDIA H200", "git_commit": "abc1234",
            "time": f"2026-11-2{epoch}T03:00:00+00:00"}
    return {**base, **fields}


def write_run(folder: Path, name: str = "vgg11-c10-conv2d", records=None, config=None,
              metrics_text: str | None = None) -> Path:
    run = folder / name
    run.mkdir(parents=True, exist_ok=True)
    cfg = {"train": {"epochs": 2, "amp": "bf16"}, "run": {"torch": "2.11.0", "amp_active": "bf16",
                                                         "device": "cuda"},
           "extra": {"preset": name, "smoke": False,
                     "dataset": {"name": "cifar10", "source": "cifar10 (torchvision files at /x)"}}}
    (run / "config.json").write_text(json.dumps(cfg if config is None else config))
    if metrics_text is None:
        recs = [record(1), record(2)] if records is None else records
        metrics_text = "".join(json.dumps(r) + "\n" for r in recs)
    (run / "metrics.jsonl").write_text(metrics_text)
    (run / "summary.json").write_text(json.dumps({"epochs_completed": 2}))
    return run


def write_state(folder: Path, command: str = "python -m convnn campaign --minutes 5") -> None:
    state = {"format": 1, "smoke": False, "runs": {}, "groups": {},
             "commands": [{"command": command, "minutes": 5}]}
    (folder / C.STATE_FILE).write_text(json.dumps(state))


def make_pack(path: Path, members: list[tuple[str, bytes]], kind=tarfile.REGTYPE) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def pack_of(source: Path, path: Path) -> Path:
    members = [(p.relative_to(source).as_posix(), p.read_bytes())
               for p in sorted(source.rglob("*")) if p.is_file()]
    return make_pack(path, members)


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (hidden ones included) and its bytes."""
    if not path.exists():
        return {}
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() or p.is_symlink()}


def refused(capsys, args: list[str], fragment: str) -> str:
    """Run the CLI; it must exit 2 with one ``error:`` line holding ``fragment``."""
    capsys.readouterr()
    assert main(["import-runs", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert fragment in err, err
    return err


@pytest.fixture
def dest(tmp_path) -> Path:
    d = tmp_path / "results"
    d.mkdir()
    (d / "README.md").write_text("# Committed run logs\n\n| folder / file | device | commit | "
                                 "command | date |\n|---|---|---|---|---|\n")
    return d


# --------------------------------------------------------------------------- filing
def test_a_campaign_folder_is_filed_with_its_provenance(tmp_path, dest, capsys):
    source = tmp_path / "campaign"
    write_run(source / "runs")
    write_run(source / "runs", "vgg11-c10-branching-r0.5")
    write_state(source, f"{ROOT}/convnn/__main__.py campaign --minutes 5 --out OUT")
    C.pack_logs(source)  # the campaign folder holds its runs and the same logs packed
    assert main(["import-runs", str(source), "--dest", str(dest), "--name", "test"]) == 0
    out = capsys.readouterr().out
    folder = dest / "2026-11-22-h200-test"
    assert f"filed into {folder}" in out and str(dest / "README.md") in out
    assert sorted(p.name for p in folder.iterdir()) == [
        C.STATE_FILE, "vgg11-c10-branching-r0.5", "vgg11-c10-conv2d"]
    readme = (dest / "README.md").read_text()
    state = (folder / C.STATE_FILE).read_text()
    assert str(ROOT) not in readme and str(ROOT) not in state  # 23.14
    assert "`python -m convnn campaign --minutes 5 --out OUT`" in readme
    assert not [p for p in dest.iterdir() if p.name.startswith(".import-")]
    runs = R.find_runs(dest)
    assert len(runs) == 2 and all("abc1234" in r.provenance for r in runs)


def test_command_line_is_recorded_relative_to_the_repository():
    argv = [str(ROOT / "convnn" / "__main__.py"), "campaign", "--out", str(ROOT / "runs" / "c"),
            "--minutes", "5"]
    assert C.command_line(argv) == "python -m convnn campaign --out runs/c --minutes 5"
    assert C.command_line(["-c", "/elsewhere/x"]) == "-c /elsewhere/x"


def test_newlines_and_pipes_in_the_command_stay_in_one_table_cell(tmp_path, dest):
    source = tmp_path / "src"
    write_run(source)
    write_state(source, "python -m convnn campaign --minutes 5 | tee log\nrm -rf `x` ; echo |")
    C.import_runs(source, dest=dest, name="pipes")
    lines = (dest / "README.md").read_text().splitlines()
    header = lines[2]
    row = next(ln for ln in lines if ln.startswith("| `2026-11-22-h200-pipes/`"))
    assert row.replace("\\|", "").count("|") == header.count("|")  # as many cells as the header
    assert "rm -rf" in row and "tee log" in row
    run = R.find_runs(dest)[0]
    assert run.provenance and "abc1234" in run.provenance


def test_a_run_filed_already_or_twice_with_other_logs_is_refused(tmp_path, dest, capsys):
    source = tmp_path / "src"
    write_run(source)
    write_state(source)
    C.import_runs(source, dest=dest, name="first")
    before = tree(dest)
    refused(capsys, [str(source), "--dest", str(dest), "--name", "second"], "already filed in")
    assert tree(dest) == before
    # the same run in two packs with different logs: the first no longer wins silently
    a, b = tmp_path / "a", tmp_path / "b"
    write_run(a / "runs", records=[record(1, test_top1=20.0)])
    write_run(b / "runs", records=[record(1, test_top1=30.0)])
    packs = tmp_path / "packs"
    packs.mkdir()
    pack_of(a, packs / "campaign-logs-1.tar.gz")
    pack_of(b, packs / "campaign-logs-2.tar.gz")
    refused(capsys, [str(packs), "--dest", str(dest), "--commit", "abc1234", "--command", "x"],
            "with different logs")
    assert tree(dest) == before


# --------------------------------------------------------------------------- confinement
@pytest.mark.parametrize("time", ["/tmp/convnn-import-probe/2026-11-22", "../../../P",
                                  "2026-11-22/../../x", "2026-13-40T00:00"])
def test_the_logs_time_never_becomes_a_path_outside(tmp_path, dest, capsys, time):
    source = tmp_path / "src"
    write_run(source, records=[record(1, time=time)])
    write_state(source)
    before = tree(tmp_path)
    refused(capsys, [str(source), "--dest", str(dest)], "time must start with a date")
    assert tree(tmp_path) == before
    assert not Path("/tmp/convnn-import-probe").exists()


@pytest.mark.parametrize("name", ["../../..", "a/b", "..", ".hidden", "", "x" * 101, "a\nb"])
def test_a_name_that_is_not_a_plain_folder_name_is_refused(tmp_path, dest, capsys, name):
    source = tmp_path / "src"
    write_run(source)
    write_state(source)
    before = tree(tmp_path)
    refused(capsys, [str(source), "--dest", str(dest), "--name", name], "name (--name) must be")
    assert tree(tmp_path) == before


def test_a_run_folder_name_from_a_pack_is_checked(tmp_path, dest, capsys):
    config = (write_run(tmp_path / "x") / "config.json").read_bytes()
    metrics = json.dumps(record(1)).encode() + b"\n"
    pack = make_pack(tmp_path / "p.tar.gz", [("runs/bad name!/config.json", config),
                                              ("runs/bad name!/metrics.jsonl", metrics)])
    refused(capsys, [str(pack), "--dest", str(dest), "--command", "x"], "run folder name")


def test_symlinks_in_a_source_folder_are_not_followed(tmp_path, dest, capsys):
    secret = tmp_path / "secret.json"
    secret.write_text('{"token": "do not commit"}')
    source = tmp_path / "src"
    run = write_run(source)
    write_state(source)
    (run / "summary.json").unlink()
    (run / "summary.json").symlink_to(secret)
    before = tree(dest)
    refused(capsys, [str(source), "--dest", str(dest)], "is a symbolic link")
    assert tree(dest) == before
    # a linked folder is not entered: its runs are not imported
    (run / "summary.json").unlink()
    elsewhere = tmp_path / "elsewhere"
    write_run(elsewhere, "vgg11-c10-branching-r0.5")
    (source / "linked").symlink_to(elsewhere)
    folder = C.import_runs(source, dest=dest, name="nolinks")
    assert sorted(p.name for p in folder.iterdir()) == [C.STATE_FILE, "vgg11-c10-conv2d"]


def test_the_default_destination_is_the_checkout_results_folder(tmp_path, monkeypatch):
    from convnn import package_data

    fake = tmp_path / "checkout"
    (fake / "data" / "results").mkdir(parents=True)
    (fake / "pyproject.toml").write_text("")
    monkeypatch.setattr(package_data, "results_root", lambda: fake / "data" / "results")
    source = tmp_path / "src"
    write_run(source)
    write_state(source)
    folder = C.import_runs(source, name="here")
    assert folder.parent == (fake / "data" / "results").resolve()


# --------------------------------------------------------------------------- bad input
def test_etc_passwd_and_other_non_packs_are_one_line_errors(tmp_path, dest, capsys):
    before = tree(dest)
    for path in ("/etc/passwd", str(tmp_path / "missing")):
        if Path(path).exists() or path.endswith("missing"):
            refused(capsys, [path, "--dest", str(tmp_path / "d")],
                    "does not exist" if path.endswith("missing") else "log pack")
    text = tmp_path / "notes.txt"
    text.write_text("not a tar file\n")
    refused(capsys, [str(text), "--dest", str(dest)], "not a readable .tar.gz log pack")
    gz = tmp_path / "plain.gz"
    gz.write_bytes(gzip.compress(b"gzip, but no tar inside" * 40))
    refused(capsys, [str(gz), "--dest", str(dest)], "log pack")
    source = tmp_path / "src"
    write_run(source)
    good = pack_of(source, tmp_path / "good.tar.gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    refused(capsys, [str(cut), "--dest", str(dest)], "log pack")
    assert tree(dest) == before
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(("member", "kind", "fragment"), [
    ("../escape.json", tarfile.REGTYPE, "unsafe member"),
    ("/abs/escape.json", tarfile.REGTYPE, "unsafe member"),
    ("runs/r/link", tarfile.SYMTYPE, "not a regular file"),
    ("runs/r/fifo", tarfile.FIFOTYPE, "not a regular file"),
])
def test_blocked_pack_members_are_one_line_errors(tmp_path, dest, capsys, member, kind, fragment):
    source = tmp_path / "src"
    write_run(source / "runs")
    members = [(p.relative_to(source).as_posix(), p.read_bytes())
               for p in sorted(source.rglob("*")) if p.is_file()]
    pack = make_pack(tmp_path / "p.tar.gz", members)
    with tarfile.open(pack, "w:gz") as tar:  # rewrite with the blocked member added
        for name, data in [*members, (member, b"{}")]:
            info = tarfile.TarInfo(name)
            info.size = len(data) if name != member or kind == tarfile.REGTYPE else 0
            if name == member:
                info.type = kind
                info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    before = tree(tmp_path)
    refused(capsys, [str(pack), "--dest", str(dest), "--command", "x"], fragment)
    assert tree(tmp_path) == before


def test_duplicate_members_are_refused(tmp_path, dest, capsys):
    source = tmp_path / "src"
    run = write_run(source / "runs")
    members = [(p.relative_to(source).as_posix(), p.read_bytes())
               for p in sorted(source.rglob("*")) if p.is_file()]
    other = json.dumps(record(1, test_top1=99.0)).encode() + b"\n"
    pack = make_pack(tmp_path / "p.tar.gz", [*members, ("runs/vgg11-c10-conv2d/metrics.jsonl",
                                                        other)])
    assert run.is_dir()
    refused(capsys, [str(pack), "--dest", str(dest), "--command", "x"], "twice")
    assert tree(dest)["README.md"] and len(tree(dest)) == 1


def test_oversized_members_and_packs_are_refused(tmp_path, dest, capsys, monkeypatch):
    source = tmp_path / "src"
    write_run(source / "runs")
    members = [(p.relative_to(source).as_posix(), p.read_bytes())
               for p in sorted(source.rglob("*")) if p.is_file()]
    big = make_pack(tmp_path / "big.tar.gz", [*members, ("runs/x/metrics.jsonl",
                                                         b"\n" * (C.IMPORT_FILE_BYTES + 1))])
    refused(capsys, [str(big), "--dest", str(dest), "--command", "x"],
            "more than a log file may be")
    monkeypatch.setattr(C, "IMPORT_PACK_BYTES", 100)
    refused(capsys, [str(big), "--dest", str(dest), "--command", "x"],
            "more than a log pack may be")
    monkeypatch.setattr(C, "IMPORT_PACK_BYTES", 4 * C.LOG_PACK_BYTES)
    monkeypatch.setattr(C, "IMPORT_TOTAL_BYTES", 200)
    refused(capsys, [str(source), "--dest", str(dest), "--command", "x"], "import them in parts")
    assert len(tree(dest)) == 1


@pytest.mark.parametrize(("records", "config", "fragment"), [
    ([{**record(1), "epoch": "one"}], None, "epoch must be int"),
    ([record(1, test_top1="12")], None, "test_top1 must be int/float"),
    ([record(1, test_top1=float("nan"))], None, "not valid strict JSON"),
    ([record(1, test_top1=float("inf"))], None, "not valid strict JSON"),
    ([record(1, test_top1=250.0)], None, "must be a percentage"),
    ([record(1, device=5)], None, "device must be str"),
    ([record(1, time=20261122)], None, "time must be str"),
    ([record(2), record(1)], None, "does not follow"),
    ([[1, 2]], None, "must be dict"),
    (None, [1, 2], "config.json must be dict"),
    (None, {"extra": "x"}, "extra must be dict"),
    (None, {"extra": {"preset": 3}}, "extra.preset must be str"),
    (None, {"train": {"epochs": "two"}}, "train.epochs must be int"),
])
def test_wrong_types_and_nan_metrics_leave_nothing_behind(tmp_path, dest, capsys, records,
                                                         config, fragment):
    source = tmp_path / "src"
    write_run(source / "runs", "vgg11-c10-branching-r0.5")  # a good run beside the bad one
    write_run(source / "runs", records=records, config=config)  # json writes NaN, Infinity
    write_state(source)
    before = tree(tmp_path)
    refused(capsys, [str(source), "--dest", str(dest)], fragment)
    assert tree(tmp_path) == before  # not half-filed: no folder, no README row, no temp


def test_a_damaged_campaign_state_is_a_one_line_error(tmp_path, dest, capsys):
    source = tmp_path / "src"
    write_run(source)
    (source / C.STATE_FILE).write_text(json.dumps({"commands": "python -m convnn campaign"}))
    refused(capsys, [str(source), "--dest", str(dest)], "commands must be list")
    (source / C.STATE_FILE).write_text(json.dumps(
        {"commands": [{"command": "c"}], "groups": {"g": {"presets": ["vgg11-c10-conv2d"],
                                                          "epochs": "3", "reduced": False}}}))
    refused(capsys, [str(source), "--dest", str(dest)], "epochs must be int")
    assert len(tree(dest)) == 1


def test_a_readme_that_is_a_link_is_not_written_through(tmp_path, dest, capsys):
    outside = tmp_path / "outside.md"
    outside.write_text("keep\n")
    (dest / "README.md").unlink()
    (dest / "README.md").symlink_to(outside)
    source = tmp_path / "src"
    write_run(source)
    write_state(source)
    refused(capsys, [str(source), "--dest", str(dest)], "symbolic link")
    assert outside.read_text() == "keep\n"
    assert os.listdir(dest) == ["README.md"]


def test_no_raw_html_or_markdown_from_a_log_reaches_the_readme(tmp_path, dest):
    """The issue's repro: ``<img onerror>`` and ``<script>`` in a log's device, torch and amp
    fields went into data/results/README.md as raw HTML."""
    source = tmp_path / "src"
    evil = '<img src=x onerror="alert(1)"><script>alert(2)</script>[x](http://e) **b**'
    run = write_run(source, records=[record(1, device=evil), record(2, device=evil)])
    config = json.loads((run / "config.json").read_text())
    config["run"].update(torch=evil, amp_active=evil)
    (run / "config.json").write_text(json.dumps(config))
    write_state(source, f"python -m convnn campaign {evil}")
    C.import_runs(source, dest=dest, name="html")
    readme = (dest / "README.md").read_text()
    outside_code = re.sub(r"(`+).*?\1", "", readme)  # code spans show HTML as text
    assert "<" not in outside_code and ">" not in outside_code
    assert not re.search(r"(?<!\\)\]\(", outside_code)  # no link
    assert "**" not in outside_code.replace("\\*", "")  # no emphasis
    assert "&lt;script&gt;" in readme and f"`python -m convnn campaign {evil}`" in readme


def test_the_same_run_with_other_whitespace_is_filed_once(tmp_path, dest, capsys):
    """The issue's repro: one extra trailing space filed the same run twice."""
    write_run(tmp_path / "a")
    write_state(tmp_path / "a")
    C.import_runs(tmp_path / "a", dest=dest, name="first")
    text = "".join(json.dumps(r, indent=None, separators=(", ", ":")) + "  \n"
                   for r in [record(1), record(2)])
    write_run(tmp_path / "b", metrics_text=text)
    write_state(tmp_path / "b")
    refused(capsys, [str(tmp_path / "b"), "--dest", str(dest), "--name", "second"],
            "already filed in")
