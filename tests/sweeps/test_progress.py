"""The live summary of ``sweep local`` (``lightning_mem/sweeps/progress.py``).

Tier 1: the line and the time left against hand-computed values. Slow tier: a real runner process on four
real child processes, one of which fails at run time and one diverges: the summary lines on its stderr;
a real ``--pack`` sweep of real fits (one ensemble process, a diverging member counted while the pack
trains on).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from lightning_mem import rundir
from lightning_mem.sweeps.progress import SweepProgress, duration
from tests.sweeps.test_command import REPO, SWEEP_MAIN, _write_sweep

# ---------------------------------------------------------------- tier 1


def test_durations_read_as_a_clock() -> None:
    assert [duration(s) for s in (0, 44.6, 60, 185, 3600, 7830)] == ["0s", "45s", "1m00s", "3m05s", "1h00m",
                                                                        "2h10m"]


def _run(tmp_path: Path, rid: str, in_manifest: str, **record: object) -> dict[str, object]:
    """A manifest entry; with ``record``, its run folder's status.json and hp.json (max_epochs 10)."""
    run_dir = tmp_path / rid
    run_dir.mkdir()
    if record:
        rundir.write_status(run_dir, **record)  # type: ignore[arg-type]
        rundir.write_hp(run_dir, {"max_epochs": 10})
    return {"status": in_manifest, "run_dir": str(run_dir)}


def test_counts_read_a_packs_members_and_time_left_adds_up(tmp_path: Path) -> None:
    """A pack of three (one member diverged while it trains on, one at epoch 5 of 10, one at epoch 2),
    one run finished in 10 s, one failed, two pending in two processes, two slots."""
    runs = {
        "a": _run(tmp_path, "a", rundir.FINISHED),
        "b": _run(tmp_path, "b", rundir.FAILED),
        "m0": _run(tmp_path, "m0", rundir.RUNNING, status=rundir.DIVERGED, epoch=1),
        "m1": _run(tmp_path, "m1", rundir.RUNNING, status=rundir.RUNNING, epoch=5),
        "m2": _run(tmp_path, "m2", rundir.RUNNING, status=rundir.RUNNING, epoch=2),
        "p": _run(tmp_path, "p", rundir.PENDING), "q": _run(tmp_path, "q", rundir.KILLED),
    }
    progress = SweepProgress("s", slots=2, every=0)
    progress.ended(10.0)
    progress._read_members(runs, [["m0", "m1", "m2"]])
    counts = progress.counts(runs, list(runs))
    assert counts == Counter({"finished": 1, "failed": 1, "diverged": 1, "running": 2, "pending": 2})
    # The pack: 12 s elapsed at (5/10 + 2/10) / 2 = 0.35 of its epochs -> 12 / 0.35 = 34.29 s in all, 22.29 s
    # left; the processes to start take the mean of 10 and 34.29 s each: (22.29 + 2 * 22.14) / 2 slots.
    now = progress.t0 + 100
    running = [(["m0", "m1", "m2"], now - 12.0)]
    total = 12 / 0.35
    mean = (10 + total) / 2
    assert progress.left(running, 2, now) == pytest.approx((total - 12 + 2 * mean) / 2)
    line = progress.line(counts, running, 2, now)
    assert line == (f"sweep s: 1 of 7 finished, 1 diverged, 1 failed, 2 running (epoch 2/10), 2 pending; "
                    f"1m40s elapsed, ~{duration((total - 12 + 2 * mean) / 2)} left")
    # Nothing ended and no epoch reported: unknown; one process left, running: no less than its own share.
    assert SweepProgress("s", 2).left([(["x"], now - 1)], 1, now) is None
    assert progress.left([(["m1"], now - 5.0)], 0, now) == pytest.approx(5.0)  # 5 s at half its epochs
    assert progress.left([(["m0"], now - 7.0)], 0, now) == 0.0  # its runs all ended: the process winds down


# ---------------------------------------------------------------- tier 2: a real runner and children

# A child: reports epoch 1 of 2 (status.json and hp.json, as the CLI's fit does), waits, then ends as its
# `case` says: finished, failed (exit 1) or diverged (exit 3, status.json says so).
CHILD = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from lightning_mem import rundir
    args = json.load(open(sys.argv[1]))
    run_dir = Path(sys.argv[1]).parent
    rundir.write_hp(run_dir, {"max_epochs": 2})
    rundir.write_status(run_dir, "running", epoch=1, global_step=5)
    time.sleep(args["sleep"])
    (run_dir / "metrics.csv").write_text("epoch,step,train/acc,val/acc\\n1,9,0.5,0.25\\n")
    case = args["case"]
    if case == "fail":
        sys.exit(1)
    rundir.write_status(run_dir, "diverged" if case == "diverge" else "finished", reason="loss is nan")
    sys.exit(3 if case == "diverge" else 0)
""")


def _lines(stderr: str, name: str) -> list[str]:
    """The summary lines (the progress logger's) of sweep ``name``, without their time stamp."""
    tag = "lightning_mem.sweeps.progress: "
    return [line.split(tag, 1)[1] for line in stderr.splitlines() if f"{tag}sweep {name}" in line]


@pytest.mark.slow  # four child processes, two at a time, 1 s each: ~3 s idle, ~8 s on busy shared cores
def test_a_four_run_sweep_with_a_failing_run_prints_its_summary(tmp_path: Path) -> None:
    path = _write_sweep(tmp_path / "prog.yaml", {
        "case": {"values": ["ok", "fail", "diverge", "ok2"]}, "sleep": {"value": 1.0},
    }, ["${interpreter}", "-c", CHILD, "${args_json_file}"])
    argv = [*SWEEP_MAIN, "local", str(path), "--root", str(tmp_path / "runs"), "--max-parallel", "2",
            "--progress-every", "0.3", "--wandb-mode", "disabled"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = _lines(proc.stderr, "prog")
    counts = re.compile(r"sweep prog: (\d) of 4 finished, (\d) diverged, (\d) failed, (\d) running(.*?), "
                        r"(\d) pending; \S+ elapsed, (time left unknown|~\S+ left)$")
    seen = [m.groups() for m in map(counts.match, lines[:-1]) if m]
    assert len(seen) == len(lines) - 1, lines  # every line but the last one is a live summary
    assert seen[0][:4] == ("0", "0", "0", "2") and seen[0][5] == "2"  # two started, two wait for a slot
    assert seen[0][4] == " (epoch 1/2, epoch 1/2)" or seen[0][4] == "", seen[0]
    assert any(s[4] == " (epoch 1/2, epoch 1/2)" for s in seen)  # the runs' own progress, once reported
    assert any(s[2] == "1" for s in seen) and any(s[1] == "1" for s in seen)  # the failure, the divergence
    assert all(int(s[0]) + int(s[1]) + int(s[2]) + int(s[3]) + int(s[5]) == 4 for s in seen)
    assert seen[0][6] == "time left unknown" and re.fullmatch(r"~\d+s left", seen[-1][6]), seen
    # Nothing changes for 1 s while two children wait: the same counts again, every 0.3 s.
    repeats = Counter(s[:4] + s[5:6] for s in seen)
    assert max(repeats.values()) >= 2, lines
    assert re.fullmatch(r"sweep prog ended: 2 of 4 finished, 1 diverged, 1 failed; took \d+s", lines[-1])
    runs = json.loads((tmp_path / "runs" / "prog" / "manifest.json").read_text())["runs"]
    assert sorted(r["status"] for r in runs.values()) == ["diverged", "failed", "finished", "finished"]


# ---------------------------------------------------------------- slow: a real pack of real fits


@pytest.mark.slow  # one ensemble of four members on the digits, and the check of four command lines: ~20 s
def test_a_pack_counts_its_members_and_the_check_says_what_it_does(tmp_path: Path) -> None:
    path = _write_sweep(tmp_path / "packed.yaml", {
        "model.net.init_std": {"values": [0.01, 10.0]}, "model.lr": {"values": [0.05, 2.0]},
        "model.loss": {"value": "squared"}, "model.net.activation": {"value": "relu"},
        "data.dataset": {"value": "digits"}, "model.net.width": {"value": 16},
        # 100 short epochs (~6 s): long enough that the 1 s summaries see the pack mid-way.
        "trainer.max_epochs": {"value": 100}, "trainer.enable_progress_bar": {"value": False},
    }, ["${env}", "lightning-mem", "fit", "--config", str(REPO / "configs/quickstart.yaml"),
        "--config", "${args_json_file}"])
    argv = [sys.executable, "-m", "lightning_mem", "sweep", "local", str(path), "--root",
            str(tmp_path / "runs"), "--pack", "--progress-every", "1", "--wandb-mode", "disabled"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    lines = _lines(proc.stderr, "packed")
    assert "checking the command lines of 4 runs" in proc.stderr and "checked 4 of 4 runs in" in proc.stderr
    runs = json.loads((tmp_path / "runs" / "packed" / "manifest.json").read_text())["runs"]
    statuses = Counter(r["status"] for r in runs.values())
    assert statuses["diverged"] >= 1 and statuses["finished"] + statuses["diverged"] == 4, (statuses, lines)
    assert lines[0].startswith("sweep packed: 0 of 4 finished, 0 diverged, 0 failed, 4 running"), lines
    # A member that diverged is counted while its pack still trains the others.
    assert any(re.match(r"sweep packed: 0 of 4 finished, [1-3] diverged, 0 failed, [1-3] running", x)
               for x in lines), lines
    assert any(re.search(r" running \(epoch [1-9]\d?/100\)", x) for x in lines), lines  # the members' epochs
    assert lines[-1].startswith(f"sweep packed ended: {statuses['finished']} of 4 finished, "
                                f"{statuses['diverged']} diverged, 0 failed; took"), lines
    assert proc.returncode == 0, proc.stderr[-3000:]
