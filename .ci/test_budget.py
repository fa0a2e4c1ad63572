"""CI's tests stage within its time budget: runs the test command, then fails when the stage took
longer than the budget on a quiet machine, naming the slowest tests and files.

    python .ci/test_budget.py --junit REPORT.xml -- python -m pytest --junitxml=REPORT.xml

The budget is 900 s (CI's machine: 2 cores); ``CONVNN_CI_TEST_BUDGET_S`` overrides it (``0``: report
only, for a machine that is known to be busy or slow). No single test has a time limit: the check is
on the stage's total, so a slow test never fails, only a suite that grew past the budget does.

On a shared machine the wall time is corrected for the CPU time other processes took from the same
cores in the meantime (``/proc/stat`` minus this run's own processes): ``wall - others / cores``,
never below ``own CPU time / cores``. On a quiet machine the correction is about zero; on a busy
one it is an estimate that errs towards passing, so a second job beside CI never makes it fail.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

DEFAULT_BUDGET_S = 900.0
BUDGET_ENV = "CONVNN_CI_TEST_BUDGET_S"


def budget_seconds() -> float:
    raw = os.environ.get(BUDGET_ENV, "").strip()
    if not raw:
        return DEFAULT_BUDGET_S
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"[ci] {BUDGET_ENV} must be a number of seconds (0: report only), "
                         f"got {raw!r}") from None
    if value < 0:
        raise SystemExit(f"[ci] {BUDGET_ENV} must be >= 0 (0: report only), got {raw!r}")
    return value


def our_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def busy_cpu_seconds(cpus: set[int]) -> float | None:
    """CPU seconds the given cores have spent busy since boot (None: /proc/stat unreadable)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        # user nice system idle iowait irq softirq steal (guest time is inside user and nice)
        values = [int(v) for v in fields[:8]]
        busy += sum(values) - values[3] - values[4]
    return busy / tick


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_times(junit: Path) -> list[tuple[str, str, float]]:
    """(file, test id, seconds) of every test case in a pytest JUnit XML report (the ``file``
    attribute of ``-o junit_family=xunit1``, else the dotted ``classname``)."""
    cases = []
    for case in ET.parse(junit).iter("testcase"):
        path = case.get("file") or case.get("classname", "")
        if not case.get("file"):
            stem, _, ext = path.rpartition(".")
            path = stem.replace(".", "/") + ".ipynb" if ext == "ipynb" else path.replace(".", "/")
        cases.append((path, f"{path}::{case.get('name', '')}", float(case.get("time") or 0.0)))
    return cases


def slowest_report(cases: list[tuple[str, str, float]], tests: int = 15, files: int = 10) -> str:
    per_file: dict[str, float] = defaultdict(float)
    for path, _, seconds in cases:
        per_file[path] += seconds
    lines = [f"[ci] the {min(tests, len(cases))} slowest tests (setup + call + teardown):"]
    for _, test, seconds in sorted(cases, key=lambda c: -c[2])[:tests]:
        lines.append(f"[ci] {seconds:9.1f} s  {test}")
    lines.append(f"[ci] the {min(files, len(per_file))} slowest files:")
    for path, seconds in sorted(per_file.items(), key=lambda kv: -kv[1])[:files]:
        lines.append(f"[ci] {seconds:9.1f} s  {path}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--junit", type=Path, required=True,
                        help="the JUnit XML report the test command writes")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the test command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the test command after --")
    budget = budget_seconds()

    cpus = our_cpus()
    busy_before = busy_cpu_seconds(cpus)
    own_before = own_cpu_seconds()
    start = time.monotonic()
    rc = subprocess.call(command)
    wall = time.monotonic() - start
    own = own_cpu_seconds() - own_before
    busy_after = busy_cpu_seconds(cpus)

    cores = len(cpus)
    if busy_before is None or busy_after is None:
        others = 0.0
        print("[ci] /proc/stat is unreadable: the budget applies to the wall time as it is")
    else:
        others = max(0.0, busy_after - busy_before - own)
    quiet = max(wall - others / cores, min(wall, own / cores))
    print(f"[ci] tests: {wall:.0f} s wall on {cores} core(s); this run used {own:.0f} CPU-s, "
          f"other processes {others:.0f} CPU-s ({100 * others / (cores * wall):.0f}% of the "
          f"cores); on a quiet machine about {quiet:.0f} s; budget "
          f"{f'{budget:.0f} s' if budget else 'not enforced'} ({BUDGET_ENV})")

    cases = test_times(args.junit) if args.junit.is_file() else []
    if rc != 0:
        return rc
    if not cases:
        print(f"[ci] FAIL: no test report at {args.junit}")
        return 1
    if budget and quiet > budget:
        print(slowest_report(cases))
        print(f"[ci] FAIL: the tests stage took {wall:.0f} s (about {quiet:.0f} s on a quiet "
              f"machine), over its budget of {budget:.0f} s. Shorten the slowest tests above (or mark an on-demand "
              f"check @pytest.mark.slow); {BUDGET_ENV}=0 only reports, for a busy machine.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
