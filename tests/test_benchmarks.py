"""The benchmark scripts run: ``benchmarks/bench_gpu.py`` (a CPU dry run of each of its tables) and
``benchmarks/bench_loop.py --quick``, in this process. Timings are measured, never asserted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _run_bench(name: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """``benchmarks/bench_<name>.py argv`` in this process (no CUDA needed, no second interpreter)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"bench_{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses (and the CLI's class paths) find it
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [f"bench_{name}.py", *argv])
    return module.main()


def _table(out: str, title: str) -> list[list[str]]:
    """The rows (cells) of the markdown table under the heading that starts with ``title``."""
    section = out.split(title, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.split("|")[1:-1]] for line in lines[1:]]  # after the header


DRY = ["--device", "cpu", "--steps", "2", "--warmup", "1", "--n", "64", "--n-val", "32", "--batch-size", "16",
       "--timed-epochs", "1", "--ensemble-k", "1,2", "--ensemble-steps", "1"]


def test_bench_gpu_exits_cleanly_without_cuda(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _run_bench("gpu", [], monkeypatch) == 0
    assert "CUDA is not available on this machine; nothing was measured" in capsys.readouterr().out


def test_bench_gpu_step_table_cpu_dry_run(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_bench("gpu", [*DRY, "--nets", "MLP", "--tables", "steps"], monkeypatch) == 0
    out = capsys.readouterr().out
    rows = _table(out, "## 1. Training steps")
    assert [tuple(r[1:3]) for r in rows] == [
        ("hand-written PyTorch", "none"), ("fused step without Lightning (k=20)", "none"),
        ("Lightning, steps_per_call 1", "none"), ("Lightning, steps_per_call 1", "every step"),
        ("Lightning, steps_per_call 20, graph", "none"),
        ("Lightning, steps_per_call 20, graph", "every step")]
    assert all(r[0] == "MLP" and float(r[3]) > 0 for r in rows)
    assert rows[3][6].endswith("(≤ 1.3)")
    assert "a dry run of the script, not a GPU figure" in out and "4 steps/epoch" in out
    assert "FP32 (TF32 off: the CLI precision policy)" in out


@pytest.mark.slow
def test_bench_gpu_every_table_cpu_dry_run(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*DRY, "--tables", "run,ensemble", "--backends", "graph,eager"]
    assert _run_bench("gpu", argv, monkeypatch) == 0
    out = capsys.readouterr().out
    runs = _table(out, "## 2. A real run")
    assert [tuple(r[:3]) for r in runs] == [
        (net, k, arm) for net in ("MLP", "ConvNet")
        for k, arm in (("1", "ordinary step"), ("20", "graph"), ("20", "eager"))]
    assert all(float(r[3]) > 0 and r[6] == ("≤ 3 min" if r[0] == "MLP" else "≤ 8 min") for r in runs)
    ensembles = _table(out, "## device:")
    assert [r[0] for r in ensembles] == ["single run", "1", "2"]


def test_bench_loop_quick(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _run_bench("loop", ["--quick", "--repeats", "1", "--steps-per-call", "4"], monkeypatch)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| paper MLP", "| small MLP"))]
    # Two rows, each with the fused arm; the script exits if the fused loss differs from Lightning's at all.
    assert len(rows) == 2 and all(len(r.split("|")) == 14 for r in rows) and "fused k=4 loop s" in out
    assert "target (paper MLP)" in out
