"""The committed runs as the chapters show them: the newest run per preset, and the run-time
table built from it."""

from convnn import results


def _gpu_runs():
    return [r for r in results.find_runs() if r.preset and not r.smoke and r.records
            and r.records[0].get("device") in results.GPU_SPECS]


def test_latest_runs_keep_the_newest_run_of_each_preset():
    runs = _gpu_runs()
    latest = results.latest_runs(runs)
    assert len({r.preset for r in latest}) == len(latest) == len({r.preset for r in runs})
    for run in latest:
        for other in runs:
            if other.preset == run.preset:
                assert other.records[-1]["time"] <= run.records[-1]["time"]


def test_run_time_table_has_one_row_per_preset_and_marks_one_epoch_runs():
    runs = _gpu_runs()
    table = results.run_time_table(runs).splitlines()[2:]
    assert len(table) == len({r.preset for r in runs})
    for run in results.latest_runs(runs):
        row = next(line for line in table if f"`{run.preset}`" in line)
        assert ("its only epoch" in row) == (len(run.records) < 2)


def test_bench_suites_load_every_stage(tmp_path):
    import json

    suite = tmp_path / "2026-01-01-gpu-abc"
    suite.mkdir()
    (suite / "suite.json").write_text(json.dumps({"environment": {"device_name": "x"},
                                                  "stages": {}}))
    (suite / "loop.json").write_text(json.dumps([{"model": "vgg11"}]))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "suite.json").write_text("{")
    import pytest

    with pytest.warns(UserWarning, match="unreadable benchmark suite"):
        loaded = results.load_bench_suites(tmp_path)
    assert [p.name for p, _ in loaded] == [suite.name]
    assert loaded[0][1]["loop"] == [{"model": "vgg11"}] and "layers" not in loaded[0][1]
    assert results.load_bench_suites(tmp_path / "none") == []
