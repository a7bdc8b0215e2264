"""The fused training step (``MemorizationModule(steps_per_call > 1)``, :mod:`lightning_mem.training.fused`).

Against the ordinary training step (``steps_per_call=1``) on real Trainers: bitwise-equal weights and
``metrics.csv`` over hundreds of steps (CPU; the eager fused path and the CUDA graph's bookkeeping emulated
on the CPU), the steps at which callbacks fire, the guard's first non-finite step, exact resume after a
kill. The block planner is checked against its definition. The capture itself needs CUDA: its test is the
only one skipped without a GPU.
"""

from __future__ import annotations

import csv
import itertools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_mem.alignment.monitor import AlignmentMonitor
from lightning_mem.data.datamodule import ImageClassificationData
from lightning_mem.data.loader import IndexBlock
from lightning_mem.errors import EXIT_DIVERGED
from lightning_mem.nets import ConvNet, ScaledMLP
from lightning_mem.training.fused import FusedSGD, check_data_device, plan_epoch
from lightning_mem.training.guard import DivergedError, DivergenceGuard
from lightning_mem.training.module import MemorizationModule
from tests.alignment.test_monitor import count_host_syncs
from tests.helpers.exitcodes import run_cli

TESTS = Path(__file__).resolve().parents[1]
QUICKSTART = TESTS.parent / "configs" / "quickstart.yaml"
EXE = Path(sys.executable).with_name("lightning-mem")
STEPS_PER_EPOCH = 23  # digits: 1,437 training images in batches of 64 (22 full, one of 29)


class StepLog(L.Callback):
    """Records what callbacks see: (hook, global_step, batch kind, SGD steps in the batch)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, str, int]] = []

    @staticmethod
    def _kind(batch: Any) -> tuple[str, int]:
        if isinstance(batch, IndexBlock):
            return "block", len(batch.idx)
        return "batch", 1

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.events.append(("start", trainer.global_step, *self._kind(batch)))

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        self.events.append(("optimizer", trainer.global_step, "", 0))

    def on_after_backward(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.events.append(("backward", trainer.global_step, "", 0))

    def on_validation_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.events.append(("validation", trainer.global_step, "", 0))


class GuardReads(DivergenceGuard):
    """A DivergenceGuard that records the global step of every read of its loss buffer."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reads: list[int] = []

    def _check_losses(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._steps:
            self.reads.append(trainer.global_step)
        super()._check_losses(trainer, pl_module)


def fit(root: Path, steps_per_call: int = 1, backend: str = "auto", *, epochs: int = 10,
        label_noise: float = 0.3, callbacks: tuple[L.Callback, ...] = (), net: str = "mlp",
        loss: str = "cross_entropy", dataset: str = "digits",
        **trainer_kwargs: Any) -> tuple[L.Trainer, MemorizationModule, str]:
    """A real fit of the ordinary (``steps_per_call=1``) or fused step; returns its metrics.csv text."""
    L.seed_everything(0, verbose=False)
    subset = 512 if dataset == "mnist5k" else None
    on_gpu = trainer_kwargs.get("accelerator") == "gpu"
    data = ImageClassificationData(dataset, batch_size=64, label_noise=label_noise,  # type: ignore[arg-type]
                                   train_subset=subset, preload_to_device=on_gpu)
    model: torch.nn.Module = (ScaledMLP(data.input_shape, data.num_classes, width=32, init_std=0.5)
                              if net == "mlp" else ConvNet(data.input_shape, data.num_classes))
    module = MemorizationModule(model, loss=loss, lr=0.1, steps_per_call=steps_per_call,  # type: ignore[arg-type]
                                fused_backend=backend)  # type: ignore[arg-type]
    name = f"k{steps_per_call}-{backend}-{len(list(root.glob('*')))}"
    trainer = L.Trainer(max_epochs=epochs, logger=CSVLogger(root, name=name, version=""),
                        callbacks=list(callbacks), enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, num_sanity_val_steps=0, **trainer_kwargs)
    trainer.fit(module, datamodule=data)
    return trainer, module, (root / name / "metrics.csv").read_text()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- the block planner


def _check_plan(plan: list[tuple[int, bool]], start: int, sizes: list[int], k: int, measure: list[int],
                bounds: list[int], max_steps: int) -> None:
    """``plan`` against the definition of :func:`plan_epoch`, step by step."""
    assert sum(n for n, _ in plan) == len(sizes) and all(n >= 1 for n, _ in plan)
    first = 0
    for n, eager in plan:
        steps = range(start + first, start + first + n)
        is_measure = [any(s % m == 0 for m in measure) for s in steps]
        assert eager == is_measure[0] and (not eager or n == 1)  # a measuring step, alone and eager
        assert not any(is_measure[1:]) and n <= k
        assert len({sizes[i] for i in range(first, first + n)}) == 1
        assert not any(s % b == 0 for s in steps[1:] for b in bounds)  # boundaries only at a group's start
        assert max_steps < 0 or not (steps[0] < max_steps <= steps[-1])
        end = first + n
        if not eager and end < len(sizes) and n < k:  # a shorter group than k must have had a reason
            nxt = start + end
            assert (any(nxt % m == 0 for m in measure) or any(nxt % b == 0 for b in bounds)
                    or sizes[end] != sizes[first] or nxt == max_steps)
        first = end


def test_plan_epoch_examples() -> None:
    sizes = [64] * 22 + [29]
    assert plan_epoch(0, sizes, 8) == [(8, False), (8, False), (6, False), (1, False)]
    # Steps 23..45 with AlignmentMonitor(every_n_steps=7) (28, 35, 42 alone) and DivergenceGuard reads at
    # multiples of 20 (a group starts at 40); step 45 is the short batch.
    assert plan_epoch(23, sizes, 8, [7], [20]) == [(5, False), (1, True), (6, False), (1, True), (4, False),
                                                   (2, False), (1, True), (2, False), (1, False)]
    assert plan_epoch(0, sizes, 8, max_steps=10) == [
        (8, False), (2, False), (8, False), (4, False), (1, False)]


def test_plan_epoch_follows_its_definition() -> None:
    cases = itertools.product([0, 1, 23, 195, 196], [[64] * 22 + [29], [256] * 196, [5]], [1, 3, 8, 64],
                              [[], [7], [196], [1]], [[], [20], [20, 50]], [-1, 30])
    for start, sizes, k, measure, bounds, max_steps in cases:
        plan = plan_epoch(start, sizes, k, measure, bounds, max_steps)
        _check_plan(plan, start, sizes, k, measure, bounds, max_steps)


# ---------------------------------------------------------------- the same run as the ordinary step


@pytest.fixture(scope="module")
def ordinary(tmp_path_factory: pytest.TempPathFactory) -> tuple[MemorizationModule, str, StepLog, GuardReads]:
    """The ordinary step: 10 epochs of digits (230 steps), label noise, alignment every 7 steps, guard."""
    log, guard = StepLog(), GuardReads()
    _, module, csv_text = fit(tmp_path_factory.mktemp("ordinary"), 1,
                              callbacks=(AlignmentMonitor(every_n_steps=7), guard, log))
    return module, csv_text, log, guard


@pytest.mark.parametrize("backend", ["eager", "graph"])
def test_fused_run_equals_the_ordinary_run_bitwise(ordinary: Any, backend: str, tmp_path: Path) -> None:
    """230 SGD steps: the same weights and the same metrics.csv (every row, alignment and clean/noisy
    accuracies included) to the last bit, with the eager fused step and with the graph's replays."""
    want_module, want_csv, want_log, want_guard = ordinary
    log, guard = StepLog(), GuardReads()
    monitor = AlignmentMonitor(every_n_steps=7)
    trainer, module, got_csv = fit(tmp_path, 8, backend, callbacks=(monitor, guard, log))
    assert trainer.global_step == 10 * STEPS_PER_EPOCH
    assert same_weights(module.net, want_module.net)
    assert got_csv == want_csv
    assert "train/acc_noisy" in got_csv.splitlines()[0] and "align/rep/act" in got_csv.splitlines()[0]
    # The measuring steps ran alone through the ordinary hooks (on_after_backward fires for them only).
    assert [s for hook, s, *_ in want_log.events if hook == "backward"] == list(range(230))
    assert [s for hook, s, *_ in log.events if hook == "backward"] == list(range(0, 230, 7))
    starts = [(s, kind, n) for hook, s, kind, n in log.events if hook == "start"]
    assert all(kind == "batch" for s, kind, n in starts if s % 7 == 0)
    assert max(n for _, _, n in starts) == 6 and len(starts) < 230 / 2  # the 6 steps between measurements
    # One optimizer step per SGD step, and the guard read its buffer at the same steps.
    assert [s for hook, s, *_ in log.events if hook == "optimizer"] == list(range(230))
    assert guard.reads == want_guard.reads and 20 in guard.reads
    validations = [s for hook, s, *_ in log.events if hook == "validation"]
    assert validations == [s for hook, s, *_ in want_log.events if hook == "validation"]


@pytest.mark.parametrize("loss", ["hinge", "squared"])
def test_other_losses_equal_the_ordinary_run(loss: str, tmp_path: Path) -> None:
    _, want, want_csv = fit(tmp_path, 1, loss=loss, epochs=3, label_noise=0.0)
    _, got, got_csv = fit(tmp_path, 16, loss=loss, epochs=3, label_noise=0.0)
    assert same_weights(got.net, want.net) and got_csv == want_csv


def test_convnet_equals_the_ordinary_run(tmp_path: Path) -> None:
    """The ConvNet (biases, convolutions, pooling) on 512 MNIST digits, 2 epochs, graph bookkeeping."""
    _, want, want_csv = fit(tmp_path, 1, net="convnet", dataset="mnist5k", epochs=2, label_noise=0.0)
    _, got, got_csv = fit(tmp_path, 4, "graph", net="convnet", dataset="mnist5k", epochs=2, label_noise=0.0)
    assert same_weights(got.net, want.net) and got_csv == want_csv


def test_max_steps_ends_inside_an_epoch(tmp_path: Path) -> None:
    want_trainer, want, want_csv = fit(tmp_path, 1, max_steps=30, epochs=-1)
    trainer, got, got_csv = fit(tmp_path, 8, max_steps=30, epochs=-1)
    assert trainer.global_step == want_trainer.global_step == 30
    assert same_weights(got.net, want.net) and got_csv == want_csv


# ---------------------------------------------------------------- the graph's bookkeeping (CPU)


class Captures(L.Callback):
    """Keeps the module's FusedSGD and checks, after every block, that no static buffer moved."""

    def __init__(self) -> None:
        self.fused: FusedSGD | None = None
        self.pointers: dict[str, int] = {}
        self.slots: list[tuple[int, int]] = []  # (steps in the block, slot after it)
        self.syncs: dict[str, Counter[str]] = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        fused = pl_module._fused
        if self.fused is None:
            self.fused = fused
            count_host_syncs(fused, ["run"], self.syncs)  # wraps the next blocks' run()
        assert fused is self.fused
        tensors = {"sums": fused.sums, **{f"param{j}": p for j, p in enumerate(fused.params)}}
        for key, statics in fused._statics.items():
            tensors |= {f"{key}.{name}": getattr(statics, name) for name in ("idx", "slot", "losses")}
        for name, t in tensors.items():
            assert self.pointers.setdefault(name, t.data_ptr()) == t.data_ptr(), f"{name} moved"
        if isinstance(batch, IndexBlock):
            statics = fused._statics[(id(batch.source), batch.idx.shape[1])]
            self.slots.append((len(batch.idx), int(statics.slot)))
            assert torch.equal(statics.idx[: len(batch.idx)], batch.idx)  # the block's rows were copied in
            assert torch.equal(outputs["step_losses"], statics.losses[: len(batch.idx)])


def test_graph_bookkeeping_on_the_cpu(tmp_path: Path) -> None:
    """One capture per batch size (64 and the short 29), replayed for every later block; the buffers a
    graph binds never move; the slot advances once per replay; no host read inside a block."""
    captures = Captures()
    _, module, _ = fit(tmp_path, 8, "graph", epochs=4, callbacks=(captures,))
    fused = captures.fused
    assert fused is not None and fused.captures == 2
    assert sorted(size for _, size in fused._statics) == [29, 64]
    assert captures.slots and all(n == slot for n, slot in captures.slots)
    replays = sum(s.graph.replays for s in fused._statics.values())
    assert replays == 4 * STEPS_PER_EPOCH  # every step replayed (no AlignmentMonitor: no eager step)
    assert sum(captures.syncs["run"].values()) == 0, captures.syncs  # no host read in a block
    assert module._fused is None  # released at the end of the fit


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA graph capture needs a CUDA device")
def test_cuda_graph_capture_equals_the_ordinary_step(tmp_path: Path) -> None:
    """On a GPU (data on the device, FP32, TF32 off): 115 steps replayed from the captured graphs equal the
    ordinary step's to rtol 1e-5 (the same kernels: expected bitwise; the tolerance allows a cuBLAS choice
    that differs under capture)."""
    from lightning_mem.training.precision import tf32_policy

    with tf32_policy(False):
        kwargs: dict[str, Any] = {"accelerator": "gpu", "devices": 1, "epochs": 5}
        _, want, _ = fit(tmp_path, 1, **kwargs)
        _, got, _ = fit(tmp_path, 8, "graph", **kwargs)
    assert got._fused is None
    for a, b in zip(want.net.state_dict().values(), got.net.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the guard


def _diverging(root: Path, steps_per_call: int, guard: GuardReads) -> tuple[DivergedError, str]:
    """ReLU, σ = 10, squared loss, lr 0.03: the loss overflows to inf at step 25 (test_reliability.py)."""
    L.seed_everything(0, verbose=False)
    data = ImageClassificationData("digits", batch_size=64)
    module = MemorizationModule(ScaledMLP(data.input_shape, data.num_classes, 128, "relu", 10.0),
                                loss="squared", lr=0.03, steps_per_call=steps_per_call)
    name = f"k{steps_per_call}"
    trainer = L.Trainer(max_epochs=4, logger=CSVLogger(root, name=name, version=""), callbacks=[guard],
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    with pytest.raises(DivergedError) as err:
        trainer.fit(module, datamodule=data)
    return err.value, (root / name / "metrics.csv").read_text()


def test_guard_names_the_first_non_finite_step_inside_a_block(tmp_path: Path) -> None:
    want_guard, guard = GuardReads(), GuardReads()
    want, want_csv = _diverging(tmp_path, 1, want_guard)
    got, got_csv = _diverging(tmp_path, 16, guard)
    assert (got.step, got.epoch, got.reason) == (want.step, want.epoch, want.reason) == (
        25, 1, "the training loss is inf")
    assert guard.reads == want_guard.reads  # stopped at the same read (global step 40)
    assert str(got) == str(want) and got_csv == want_csv


# ---------------------------------------------------------------- refused combinations


@pytest.mark.parametrize(
    ("trainer_kwargs", "message"),
    [
        ({"accumulate_grad_batches": 2}, "accumulate_grad_batches=2 (one batch per SGD step)"),
        ({"gradient_clip_val": 1.0}, "gradient_clip_val=1.0 (plain SGD only)"),
        ({"precision": "bf16-mixed"}, "precision=bf16-mixed (the fused step is FP32 only)"),
        ({"val_check_interval": 0.5}, "val_check_interval=0.5 (validation at epoch ends only)"),
        ({"limit_train_batches": 5}, "limit_train_batches=5 (whole epochs only)"),
    ],
)
def test_unsupported_trainer_settings_are_refused(trainer_kwargs: dict[str, Any], message: str,
                                                  tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^steps_per_call=8 cannot run with ") as err:
        fit(tmp_path, 8, epochs=1, **trainer_kwargs)
    assert message in str(err.value)
    assert str(err.value).endswith("change those settings or use steps_per_call 1")


def test_ddp_is_refused() -> None:
    module = MemorizationModule(ScaledMLP((1, 8, 8), width=8), steps_per_call=4)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    with pytest.raises(ValueError, match=r"2 devices \(DDP; steps_per_call runs on one device\)"):
        module.check_trainer(trainer)


def test_a_loader_without_blocks_is_refused(tmp_path: Path) -> None:
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    module = MemorizationModule(ScaledMLP((1, 8, 8), width=8), steps_per_call=4)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match=r"steps_per_call=4 needs the train loader of "
                                         r"ImageClassificationData .*got DataLoader"):
        trainer.fit(module, train_dataloaders=loader)


def test_data_on_another_device_is_refused() -> None:
    """On a GPU the data must be there (the meta device stands in for it on a CPU)."""
    with pytest.raises(ValueError, match=r"training data are on cpu and the network on meta: keep the data "
                                         r"there \(--data.preload_to_device true\)"):
        check_data_device([torch.zeros(2)], torch.device("meta"))
    check_data_device([torch.zeros(2)], torch.device("cpu"))


# ---------------------------------------------------------------- resume


def test_resume_from_an_epoch_checkpoint_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    def run(root: Path, epochs: int, ckpt: Path | None = None) -> tuple[MemorizationModule, str]:
        L.seed_everything(0, verbose=False)
        data = ImageClassificationData("digits", batch_size=64, label_noise=0.3)
        module = MemorizationModule(ScaledMLP(data.input_shape, data.num_classes, 32, init_std=0.5), lr=0.1,
                                    steps_per_call=8)
        saver = ModelCheckpoint(dirpath=root / "checkpoints", save_last=True)
        trainer = L.Trainer(max_epochs=epochs, logger=CSVLogger(root, name="", version=""),
                            callbacks=[AlignmentMonitor(every_n_steps=5), DivergenceGuard(), saver],
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(module, datamodule=data, ckpt_path=ckpt)
        return module, (root / "metrics.csv").read_text()

    want, want_csv = run(tmp_path / "whole", 4)
    run(tmp_path / "parts", 2)
    rows_2 = (tmp_path / "parts" / "metrics.csv").read_text()
    got, got_csv = run(tmp_path / "parts", 4, tmp_path / "parts" / "checkpoints" / "last.ckpt")
    assert same_weights(got.net, want.net)
    assert rows_2 + got_csv.split("\n", 1)[1] == want_csv  # the resumed rows continue the first two epochs'


class Throttle(L.Callback):
    """Sleeps after every Lightning step, so the subprocess can be killed in its second epoch."""

    def on_train_batch_end(self, *args: Any) -> None:
        time.sleep(0.2)


FUSED = ["fit", "--config", str(QUICKSTART), "--data.dataset", "digits", "--model.net.width", "16",
         "--data.batch_size", "64", "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
         "--trainer.max_epochs", "4", "--model.steps_per_call", "8"]


@pytest.mark.slow
def test_killed_fused_run_resumes_exactly_and_equals_the_ordinary_run(tmp_path: Path) -> None:
    """Through the CLI (AlignmentMonitor every 4 steps, guard, epoch checkpoints): SIGKILL in epoch 1, resume
    with ``--ckpt_path last``: weights and metrics.csv equal the uninterrupted fused run's, which equal the
    ordinary run's (``--model.steps_per_call 1``)."""
    assert run_cli(*FUSED, "--run.root", str(tmp_path), "--run.id", "ref") == 0
    assert run_cli(*FUSED[:-1], "1", "--run.root", str(tmp_path), "--run.id", "ordinary") == 0
    path = [str(TESTS / "helpers"), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    cmd = [str(EXE), *FUSED, "--run.root", str(tmp_path), "--run.id", "killed",
           "--trainer.callbacks+=tests.training.test_fused.Throttle"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    killed = tmp_path / "quickstart" / "killed"
    deadline = time.monotonic() + 240
    last = killed / "checkpoints" / "last.ckpt"
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # into epoch 1
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    ckpt = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] < 4 * STEPS_PER_EPOCH
    assert run_cli(*FUSED, "--run.root", str(tmp_path), "--ckpt_path", "last", "--run.id", "killed") == 0

    runs = {name: tmp_path / "quickstart" / name for name in ("ref", "ordinary", "killed")}
    states = {name: torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
              for name, d in runs.items()}
    assert {s["global_step"] for s in states.values()} == {4 * STEPS_PER_EPOCH}
    for name in ("ordinary", "killed"):
        want, got = states["ref"]["state_dict"], states[name]["state_dict"]
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
        assert (runs[name] / "metrics.csv").read_text() == (runs["ref"] / "metrics.csv").read_text()
    with (runs["ref"] / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert any(r["align/grad/hidden.weight"] for r in rows) and rows[-2]["val/acc"] and rows[-1]["train/acc"]


def test_cli_refuses_unsupported_trainer_settings_before_the_run(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(*FUSED, "--trainer.accumulate_grad_batches", "2", "--run.root", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "steps_per_call=8 cannot run with accumulate_grad_batches=2 (one batch per SGD step)" in err
    assert "Traceback" not in err and not (tmp_path / "quickstart").exists()


def test_cli_refuses_a_fused_run_with_momentum(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(*FUSED, "--model.momentum", "0.9", "--run.root", str(tmp_path)) == 2
    assert "steps_per_call=8 runs plain SGD only, not momentum=0.9" in capsys.readouterr().err
    assert not (tmp_path / "quickstart").exists()


@pytest.mark.slow
def test_compile_backend_is_close_to_the_ordinary_run(tmp_path: Path) -> None:
    """``torch.compile(mode="reduce-overhead")`` of the same step: inductor fuses kernels, so close only."""
    _, want, _ = fit(tmp_path, 1, epochs=2)
    _, got, _ = fit(tmp_path, 8, "compile", epochs=2)
    for a, b in zip(want.net.state_dict().values(), got.net.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_diverged_fused_run_through_the_cli_exits_3(tmp_path: Path) -> None:
    diverges = ["--model.net.width", "128", "--model.net.activation", "relu", "--model.net.init_std", "10",
                "--model.loss", "squared", "--model.lr", "0.03"]
    assert run_cli(*FUSED, *diverges, "--run.root", str(tmp_path), "--run.id", "div") == EXIT_DIVERGED
