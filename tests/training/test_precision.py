"""Tests of lightning_mem.training.precision and of the policy as the CLI applies it: full FP32 by default
(flags read
back during a real fit), TF32 or 16-bit only when asked, refused for sin/sigmoid/tanh nets at σ ≥ 1 unless
accepted, then a warning naming the error. The error figures come from benchmarks/bench_precision.py,
whose TF32 rounding is checked here against exact values."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import pytest
import torch

from lightning_mem.training import precision
from tests.helpers.exitcodes import run_cli

REPO = Path(__file__).resolve().parents[2]
TINY = ["fit", "--config", str(REPO / "configs" / "quickstart.yaml"), "--data.dataset", "digits",
        "--model.net.width", "8", "--data.batch_size", "256", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false"]


READ_TF32 = "--trainer.callbacks+=tests.training.test_precision.ReadTF32"


class ReadTF32(L.Callback):
    """Records the TF32 flags as the fit sees them (:data:`READ_TF32`)."""

    seen: ClassVar[list[dict[str, Any]]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # torch.get_float32_matmul_precision() raises when the legacy and new APIs were mixed (torch 2.14);
        # Lightning and grams.py call it, so it must stay readable.
        ReadTF32.seen.append({**precision.tf32_state(), "get": torch.get_float32_matmul_precision()})


@pytest.fixture
def reader() -> Any:
    """ReadTF32 with an empty record; the process's TF32 flags are put back after the test."""
    sys.modules.setdefault("test_precision", sys.modules[__name__])  # the CLI imports it by this name
    ReadTF32.seen = []
    before = precision._snapshot()
    yield ReadTF32
    precision._restore(before)


def test_fit_runs_in_full_fp32_and_restores_the_flags(reader: Any, tmp_path: Path) -> None:
    precision.set_tf32(True)  # as a user's notebook might have left it
    assert precision.tf32_enabled()
    assert run_cli(*TINY, "--run.root", str(tmp_path), READ_TF32) == 0
    assert precision.tf32_enabled()  # restored after the run
    (seen,) = reader.seen
    new = precision._new_api()
    expected = {"matmul": "ieee", "conv": "ieee"} if new else {"matmul": False, "conv": False}
    assert seen == {**expected, "get": "highest"}


def test_tf32_when_asked_for_a_small_sigma(reader: Any, tmp_path: Path) -> None:
    precision.set_tf32(False)
    assert run_cli(*TINY, "--run.root", str(tmp_path), "--model.net.init_std", "0.01",
                   "--precision.tf32", "true", READ_TF32) == 0
    (seen,) = reader.seen
    expected = {"matmul": "tf32", "conv": "tf32"} if precision._new_api() else {"matmul": True, "conv": True}
    assert seen == {**expected, "get": "high"}
    assert not precision.tf32_enabled()


@pytest.mark.parametrize(("args", "parts"), [
    (["--model.net.init_std", "10", "--precision.tf32", "true"],
     ["TF32 (--precision.tf32 true) with a sin net at init_std=10", "0.62 at σ = 10",
      "--precision.accept_large_sigma_error true"]),
    (["--model.net.init_std", "1", "--trainer.precision", "bf16-mixed"],
     ["--trainer.precision bf16-mixed with a sin net at init_std=1", "7-bit mantissa", "0.73 at σ = 1"]),
    (["--model.net.init_std", "2", "--model.net.activation", "tanh", "--trainer.precision", "16-mixed"],
     ["16-mixed with a tanh net at init_std=2", "fp16"]),
    (["--model.net.init_std", "1", "--model.net.activation", "sigmoid", "--precision.tf32", "true"],
     ["sigmoid net at init_std=1", "0.014 at σ = 1"]),
], ids=["sin-tf32", "sin-bf16", "tanh-fp16", "sigmoid-tf32"])
def test_reduced_precision_is_refused_for_bounded_nets_at_large_sigma(
    args: list[str], parts: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(*TINY, "--run.root", str(tmp_path), *args) == 2
    err = capsys.readouterr().err
    for part in parts:
        assert part in err, err[-1500:]
    assert not list(tmp_path.iterdir())  # refused before any run folder


def test_accepted_risk_runs_with_a_loud_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="lightning_mem")
    assert run_cli(*TINY, "--run.root", str(tmp_path), "--model.net.init_std", "10",
                   "--precision.tf32", "true", "--precision.accept_large_sigma_error", "true") == 0
    assert "PRECISION WARNING: TF32 (--precision.tf32 true) with a sin net at init_std=10" in caplog.text


@pytest.mark.parametrize(("reduced", "activation", "init_std", "risky"), [
    ("TF32 (--precision.tf32 true)", "sin", 1.0, True),
    ("TF32 (--precision.tf32 true)", "sin", 0.99, False),
    ("TF32 (--precision.tf32 true)", "relu", 10.0, False),  # 1-homogeneous: σ only scales the logits
    ("TF32 (--precision.tf32 true)", "sin", None, False),  # Glorot init
    ("--trainer.precision bf16-true", "tanh", 3.0, True),
    (None, "sin", 10.0, False),  # full FP32
])
def test_precision_risk(reduced: str | None, activation: str, init_std: float | None, risky: bool) -> None:
    assert (precision.precision_risk(reduced, activation, init_std) is not None) is risky


@pytest.mark.parametrize(("value", "reduced"), [
    ("32-true", None), ("32", None), ("64-true", None), (None, None),
    ("bf16-mixed", "--trainer.precision bf16-mixed"), ("16-mixed", "--trainer.precision 16-mixed"),
])
def test_reduced_precision(value: str | None, reduced: str | None) -> None:
    assert precision.reduced_precision(False, value) == reduced
    assert precision.reduced_precision(True, "32-true") == "TF32 (--precision.tf32 true)"


def test_bench_precision_rounds_like_tf32() -> None:
    path = REPO / "benchmarks" / "bench_precision.py"
    spec = importlib.util.spec_from_file_location("bench_precision", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ulp = 2.0**-10  # TF32: 10 explicit mantissa bits
    x = torch.tensor([1.0, 1 + ulp / 2, 1 + 1.5 * ulp, 1 + ulp / 2 + 2**-20, -3.0 - ulp / 4, 1e-30])
    want = torch.tensor([1.0, 1.0, 1 + 2 * ulp, 1 + ulp, -3.0, 1e-30])  # ties to even; the sign kept
    got = bench.round_to_tf32(x)
    torch.testing.assert_close(got[:5], want[:5], rtol=0, atol=0)
    assert abs(float(got[5]) - 1e-30) < 1e-33
    x, w = torch.randn(4, 3072, dtype=torch.float64), torch.randn(8, 3072, dtype=torch.float64)
    z = bench.preactivations(x, w)
    assert set(z) == {"exact", "FP32", "TF32", "bf16-mixed", "16-mixed"}
    err = {k: float((z[k] - z["exact"]).abs().max()) for k in z}
    assert err["exact"] == 0 < err["FP32"] < err["TF32"] < err["bf16-mixed"]
