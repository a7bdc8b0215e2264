"""GPU slots, the children's environment and ``lightning-mem sweep agents`` with a fake ``wandb``
executable (a real subprocess that records its argv and GPU pin; no GPU needed: ids are strings)."""

from __future__ import annotations

import itertools
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

from lightning_mem.sweeps.launch import gpu_slots

SWEEP_MAIN = [sys.executable, "-c",
              "import sys; from lightning_mem.sweeps.command import main; main(sys.argv[1:])"]


@pytest.mark.parametrize(("gpus", "per_run", "visible", "slots"), [
    (None, 1, None, []),
    ("0,1,2", 1, None, ["0", "1", "2"]),
    (" 3, 5 ", 1, None, ["3", "5"]),
    ("0,1", 1, "4,5", ["4", "5"]),  # indices into the parent's own CUDA_VISIBLE_DEVICES
    ("1", 1, "4,5", ["5"]),
    ("0,1,2,3", 2, None, ["0,1", "2,3"]),  # one DDP run per pair
    ("3,2,1,0", 2, "7,6,5,4", ["4,5", "6,7"]),
    ("0,1", 2, "GPU-aa,GPU-bb", ["GPU-aa,GPU-bb"]),  # UUIDs pass through
])
def test_gpu_slots(gpus: str | None, per_run: int, visible: str | None, slots: list[str]) -> None:
    assert gpu_slots(gpus, per_run, visible) == slots


@pytest.mark.parametrize(("gpus", "per_run", "visible", "message"), [
    ("0,2", 1, "4,5", "--gpus 0,2: index 2 is out of range: this process sees CUDA_VISIBLE_DEVICES=4,5 "
                      "(indices 0-1)"),
    ("0", 1, "", "index 0 is out of range: this process sees CUDA_VISIBLE_DEVICES= (no GPU)"),
    ("0,1,2", 2, None, "3 GPUs do not split into slots of --gpus-per-run 2"),
    ("0,0", 1, None, "give distinct GPU indices"),
    ("a,1", 1, None, "give distinct GPU indices"),
    (None, 2, None, "--gpus-per-run needs --gpus"),
])
def test_gpu_slots_refuse_with_the_reason(gpus: str | None, per_run: int, visible: str | None,
                                          message: str) -> None:
    with pytest.raises(ValueError) as err:
        gpu_slots(gpus, per_run, visible)
    assert message in str(err.value)


# ---------------------------------------------------------------- agents, with a fake `wandb`


def _fake_wandb(bin_dir: Path, log_dir: Path) -> None:
    """A `wandb` executable that records its argv, GPU pin and start time, traps SIGINT, and exits
    with 1 on GPU "1" (a failing agent), else 0."""
    bin_dir.mkdir()
    script = bin_dir / "wandb"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""
        import json, os, signal, sys, time
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
        got = []
        signal.signal(signal.SIGINT, lambda s, f: got.append(s))
        record = {{"argv": sys.argv[1:], "gpu": gpu, "t": time.time(), "path": os.environ["PATH"]}}
        json.dump(record, open(os.path.join({str(log_dir)!r}, f"agent{{gpu}}.json"), "w"))
        end = time.time() + float(os.environ.get("FAKE_AGENT_SECONDS", "0"))
        while time.time() < end and not got:
            time.sleep(0.05)
        record["signals"] = got
        json.dump(record, open(os.path.join({str(log_dir)!r}, f"agent{{gpu}}.json"), "w"))
        sys.exit(1 if gpu == "1" else 0)
    """))
    script.chmod(0o755)


def _agents(
    tmp_path: Path, *args: str, seconds: float = 0.0, **env: str
) -> tuple[subprocess.Popen[str], Path]:
    logs = tmp_path / "logs"
    logs.mkdir()
    _fake_wandb(tmp_path / "bin", logs)
    environ = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    environ |= {"PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
                "FAKE_AGENT_SECONDS": str(seconds), **env}
    proc = subprocess.Popen([*SWEEP_MAIN, "agents", *args], env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return proc, logs


def test_agents_one_per_gpu_staggered_and_report_exit_codes(tmp_path: Path) -> None:
    proc, logs = _agents(tmp_path, "me/proj/abc123", "--gpus", "0,1,2", "--count", "4", "--stagger", "0.5")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1  # the agent on GPU 1 failed
    assert out.splitlines() == ["agent GPU 0: exit 0", "agent GPU 1: exit 1", "agent GPU 2: exit 0"]
    records = [json.loads((logs / f"agent{g}.json").read_text()) for g in "012"]
    assert [r["argv"] for r in records] == [["agent", "--count", "4", "me/proj/abc123"]] * 3
    assert [r["gpu"] for r in records] == ["0", "1", "2"]
    assert all(b["t"] - a["t"] >= 0.45 for a, b in itertools.pairwise(records))
    # The runs the agents start find this Python's lightning-mem first on PATH.
    assert all(r["path"].split(os.pathsep)[0] == str(Path(sys.executable).parent) for r in records)


def test_agents_translate_through_the_visible_devices_and_group_them(tmp_path: Path) -> None:
    proc, logs = _agents(tmp_path, "abc", "--gpus", "0,1,2,3", "--gpus-per-run", "2", "--stagger", "0",
                         CUDA_VISIBLE_DEVICES="6,7,4,5")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.splitlines() == ["agent GPU 6,7: exit 0", "agent GPU 4,5: exit 0"]
    assert sorted(p.name for p in logs.iterdir()) == ["agent4,5.json", "agent6,7.json"]


def test_agents_refuse_an_index_out_of_range(tmp_path: Path) -> None:
    proc, logs = _agents(tmp_path, "abc", "--gpus", "0,2", CUDA_VISIBLE_DEVICES="4,5")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and out == "" and not list(logs.iterdir())
    assert "index 2 is out of range: this process sees CUDA_VISIBLE_DEVICES=4,5" in err
    assert "Traceback" not in err


def _wait_for(predicate: Any, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("condition not met")
        time.sleep(0.1)


def test_agents_forward_sigint(tmp_path: Path) -> None:
    proc, logs = _agents(tmp_path, "abc123", "--gpus", "0,2", "--stagger", "0", seconds=60)
    try:
        _wait_for(lambda: len(list(logs.glob("agent*.json"))) == 2)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and out.splitlines() == ["agent GPU 0: exit 0", "agent GPU 2: exit 0"]
    for g in "02":
        assert json.loads((logs / f"agent{g}.json").read_text())["signals"] == [signal.SIGINT]
