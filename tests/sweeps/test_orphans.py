"""A ``sweep local`` runner killed with SIGKILL leaves its children training (own sessions); a rerun at once
must find each live child's run folder lock, record the run ``running`` while it waits (never ``failed``,
never started a second time), and record it as the child ends: finished, failed or diverged as its
``status.json`` says, or started again when the child too was killed (issue 21).

The children are small scripts that hold their run folder's lock as a fit does
(:class:`lightning_mem.rundir.FolderLock`) and end when the test writes ``go`` into their folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

SWEEP_MAIN = [sys.executable, "-c",
              "import sys; from lightning_mem.sweeps.command import main; main(sys.argv[1:])"]
CHILD = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from lightning_mem.rundir import FolderLock, write_status
    run_dir = Path(os.path.dirname(sys.argv[1]))
    with FolderLock(run_dir, f"run folder {run_dir}"):
        write_status(run_dir, "running", pid=os.getpid())
        go = run_dir / "go"
        while not go.exists():
            time.sleep(0.05)
        end = go.read_text()
        if end == "kill":
            os.kill(os.getpid(), 9)
        open(run_dir / "metrics.csv", "w").write("epoch,step,train/acc,val/acc\\n0,1,0.5,\\n0,1,,0.25\\n")
        write_status(run_dir, {"ok": "finished", "fail": "failed", "diverge": "diverged"}[end])
    sys.exit({"ok": 0, "fail": 1, "diverge": 3}[end])
""")


def _sweep(tmp_path: Path) -> Path:
    path = tmp_path / "orph.yaml"
    path.write_text(yaml.safe_dump({"name": "orph", "method": "grid", "parameters": {"i": {"values": [0, 1]}},
                                    "command": ["${interpreter}", "-c", CHILD, "${args_json_file}"]}))
    return path


def _runs(root: Path) -> dict[str, dict[str, Any]]:
    path = root / "orph" / "manifest.json"
    return dict(json.loads(path.read_text())["runs"]) if path.exists() else {}


def _wait(predicate: Any, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not met"
        time.sleep(0.05)


def _runner(path: Path, root: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([*SWEEP_MAIN, "local", str(path), "--root", str(root), "--max-parallel", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("end", ["ok", "fail", "diverge", "kill"])
def test_a_rerun_waits_for_the_children_of_a_killed_runner(end: str, tmp_path: Path) -> None:
    path, root = _sweep(tmp_path), tmp_path / "out"
    first = _runner(path, root)
    pids: list[int] = []
    rerun: subprocess.Popen[str] | None = None
    try:
        _wait(lambda: sum(r["status"] == "running" and (Path(r["run_dir"]) / "status.json").exists()
                          for r in _runs(root).values()) == 2)
        pids = [r["pid"] for r in _runs(root).values()]
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        for pid in pids:
            os.kill(pid, 0)  # the children live on
        rerun = _runner(path, root)
        _wait(lambda: all("still run by pid" in str(r.get("reason")) for r in _runs(root).values()))
        seen = [r["status"] for r in _runs(root).values()]
        time.sleep(0.5)  # a while of waiting: nothing is marked failed or started again
        seen += [r["status"] for r in _runs(root).values()]
        assert seen == ["running"] * 4
        assert all(r["attempts"] == 1 for r in _runs(root).values())
        for r in _runs(root).values():
            holder = f"pid {r['pid']} on "
            assert holder in r["reason"]
            (Path(r["run_dir"]) / "go").write_text(end)
        if end == "kill":  # started again in fresh folders: let the new children finish
            _wait(lambda: all(r["attempts"] == 2 and r["status"] == "running"
                              and (Path(r["run_dir"]) / "status.json").exists()
                              for r in _runs(root).values()))
            for r in _runs(root).values():
                (Path(r["run_dir"]) / "go").write_text("ok")
        _, err = rerun.communicate(timeout=60)
    finally:
        for proc in (first, rerun):
            if proc is not None and proc.poll() is None:
                proc.kill()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    runs = _runs(root)
    expected = {"ok": "finished", "fail": "failed", "diverge": "diverged", "kill": "finished"}[end]
    assert [r["status"] for r in runs.values()] == [expected] * 2, err[-2000:]
    assert [r["attempts"] for r in runs.values()] == [2 if end == "kill" else 1] * 2
    assert rerun.returncode == (1 if end == "fail" else 0), err[-2000:]
    assert "(started by an earlier runner): waiting for it" in err
    if end == "kill":
        assert "its process ended without recording an end; starting it again" in err
    assert "Traceback" not in err
