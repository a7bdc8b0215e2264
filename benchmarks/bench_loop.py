"""The Lightning loop vs a hand-written PyTorch loop, side by side in one process (target: <= 1.15x).

All arms train the same ``ScaledMLP`` with plain SGD on the same in-memory tensors, in the same batches
(``lightning_mem.data.training_loader``, what ``ImageClassificationData`` serves: a seeded permutation per
epoch, batches by index gather), for the same number of steps; all keep the epoch's loss and accuracy on
the device, and their final epoch losses must agree. The Lightning arms are a real ``Trainer`` +
``MemorizationModule`` with what the CLI adds to every run: CSV logging, the ``DivergenceGuard`` and
``RunStatus`` callbacks, and the trainer settings a long run uses (no progress bar,
``log_every_n_steps`` of one epoch); no validation and no checkpoints in any arm. Arms:

- hand: the loop a researcher writes by hand;
- Lightning: ``MemorizationModule()`` (one SGD step per Lightning step);
- fused: ``MemorizationModule(steps_per_call=k)`` (``--steps-per-call``, default 16): up to k SGD steps per
  Lightning step through ``lightning_mem.training.fused`` (eager on a CPU; groups also end at the guard's
  reads,
  every 20 steps). Its final loss must equal the Lightning arm's exactly.

The arms alternate, ``--repeats`` times each, after one warm-up run each; the table shows the median
training-loop time (first batch to the end of training, setup excluded) as wall and CPU time, and
the full ``fit`` wall time. On a shared machine the CPU time (``time.process_time``, all threads) is the
steadier figure.

    python benchmarks/bench_loop.py               # the paper's MLP 3072->1024->10 (batch 256), a small MLP
    python benchmarks/bench_loop.py --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor

from lightning_mem.data.loader import TensorBatchLoader, training_loader
from lightning_mem.nets import ScaledMLP
from lightning_mem.training.guard import DivergenceGuard, RunStatus
from lightning_mem.training.losses import cross_entropy
from lightning_mem.training.module import MemorizationModule


@dataclass(frozen=True)
class Case:
    name: str
    input_shape: tuple[int, int, int]
    width: int
    batch_size: int
    steps_per_epoch: int
    epochs: int

    @property
    def n(self) -> int:
        return self.batch_size * self.steps_per_epoch


class TensorData(L.LightningDataModule):
    """``ImageClassificationData``'s serving path on given tensors: ``(x, y, noisy)`` batches."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, seed: int = 0) -> None:
        super().__init__()
        self.x, self.y, self.noisy = x, y, torch.zeros(len(y), dtype=torch.bool)
        self.batch_size, self.seed, self.label_noise = batch_size, seed, 0.0

    def train_dataloader(self) -> TensorBatchLoader:
        return training_loader((self.x, self.y, self.noisy), self.batch_size, self.seed, self.trainer)


Timing = tuple[float, float, float, float]  # loop wall s, loop CPU s, total wall s, final epoch loss


class LoopTimer(L.Callback):
    """Wall and CPU time from the first training batch to the end of training."""

    def __init__(self) -> None:
        self.start = self.end = self.cpu_start = self.cpu_end = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if not self.start:
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_train_end(self, *args: object) -> None:
        self.end, self.cpu_end = time.perf_counter(), time.process_time()


def make_net(case: Case) -> ScaledMLP:
    torch.manual_seed(0)
    return ScaledMLP(case.input_shape, 10, width=case.width, activation="sin")


def hand_loop(case: Case, x: Tensor, y: Tensor) -> Timing:
    """The loop a researcher writes by hand."""
    start = time.perf_counter()
    net = make_net(case)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loop_start, cpu_start = time.perf_counter(), time.process_time()
    epoch_loss = 0.0
    for epoch in range(case.epochs):
        # The permutation TensorBatchLoader uses for (seed 0, epoch): the very same batches.
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0 * 1_000_003 + epoch))
        loss_sum = torch.zeros(())  # epoch sums stay on the device: no host sync per step
        correct = torch.zeros(())
        for idx in perm.split(case.batch_size):
            xb, yb = x[idx], y[idx]
            logits = net(xb)
            per_example = cross_entropy(logits, yb)
            loss = per_example.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += per_example.detach().sum()
            correct += (logits.detach().argmax(1) == yb).sum()
        epoch_loss = loss_sum.item() / len(y)  # one sync per epoch, as the module's epoch-end log
        _ = correct.item() / len(y)
    end, cpu_end = time.perf_counter(), time.process_time()
    return end - loop_start, cpu_end - cpu_start, end - start, epoch_loss


def lightning_loop(case: Case, x: Tensor, y: Tensor, root: str, steps_per_call: int = 1) -> Timing:
    """``Trainer.fit`` with what the CLI gives every run (checkpoints and validation aside)."""
    start = time.perf_counter()
    module = MemorizationModule(make_net(case), loss="cross_entropy", lr=0.01, steps_per_call=steps_per_call)
    timer = LoopTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=case.epochs,
        logger=CSVLogger(root, name="bench"),
        callbacks=[timer, DivergenceGuard(), RunStatus(root)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=case.steps_per_epoch,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=TensorData(x, y, case.batch_size))
    end = time.perf_counter()
    return (timer.end - timer.start, timer.cpu_end - timer.cpu_start, end - start,
            float(trainer.callback_metrics["train/loss"]))


def run_case(case: Case, repeats: int, steps_per_call: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(case.n, *case.input_shape, generator=g)
    y = torch.randint(0, 10, (case.n,), generator=g)
    results: dict[str, list[Timing]] = {"hand": [], "lightning": [], "fused": []}
    with tempfile.TemporaryDirectory() as root:
        runs: dict[str, Callable[[], Timing]] = {
            "hand": lambda: hand_loop(case, x, y),
            "lightning": lambda: lightning_loop(case, x, y, root),
            "fused": lambda: lightning_loop(case, x, y, root, steps_per_call),
        }
        for fn in runs.values():  # warm-up: allocator, kernels, imports
            fn()
        for _ in range(repeats):
            for name, fn in runs.items():
                results[name].append(fn())
    out = {}
    for name, rows in results.items():
        out[f"{name}_loop"] = statistics.median(r[0] for r in rows)
        out[f"{name}_cpu"] = statistics.median(r[1] for r in rows)
        out[f"{name}_total"] = statistics.median(r[2] for r in rows)
        out[f"{name}_loss"] = rows[-1][3]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each loop (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--quick", action="store_true", help="a few steps only (a smoke test of this script)")
    parser.add_argument("--steps-per-call", type=int, default=16, help="k of the fused arm (default 16)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # no banners between the rows
    warnings.filterwarnings("ignore")
    paper, small = ((2, 1), (5, 1)) if args.quick else ((20, 2), (200, 5))  # (steps per epoch, epochs)
    cases = [
        Case("paper MLP 3072->1024->10, batch 256", (3, 32, 32), 1024, 256, *paper),
        Case("small MLP 64->32->10, batch 64", (1, 8, 8), 32, 64, *small),
    ]
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}, lightning {L.__version__}; CPU; torch threads "
          f"{torch.get_num_threads()}, {os.cpu_count()} CPUs, load average {load}; "
          f"median of {args.repeats} alternating runs")
    k = args.steps_per_call
    print("| case | steps | hand loop s (wall / CPU) | Lightning loop s (wall / CPU) | ratio wall "
          "| ratio CPU | Lightning overhead ms/step (CPU) | ratio whole fit (wall) "
          f"| fused k={k} loop s (wall / CPU) | fused ratio wall | fused ratio CPU "
          "| fused overhead ms/step (CPU) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    ok = True
    for case in cases:
        r = run_case(case, args.repeats, k)
        steps = case.steps_per_epoch * case.epochs
        if not math.isclose(r["hand_loss"], r["lightning_loss"], rel_tol=1e-4):
            raise SystemExit(f"{case.name}: the loops disagree: final loss {r['hand_loss']} vs "
                             f"{r['lightning_loss']}")
        if r["fused_loss"] != r["lightning_loss"]:
            raise SystemExit(f"{case.name}: the fused step disagrees with the ordinary one: final loss "
                             f"{r['fused_loss']} vs {r['lightning_loss']}")
        cells = []
        for arm in ("lightning", "fused"):
            wall, cpu = r[f"{arm}_loop"] / r["hand_loop"], r[f"{arm}_cpu"] / r["hand_cpu"]
            over = (r[f"{arm}_cpu"] - r["hand_cpu"]) / steps * 1e3
            cells.append((f"{r[f'{arm}_loop']:.3f} / {r[f'{arm}_cpu']:.3f}", f"{wall:.3f}x", f"{cpu:.3f}x",
                          f"{over:.3f}"))
            if arm == "lightning":
                ok = ok and (case is not cases[0] or min(wall, cpu) <= 1.15)
        (lt, lw, lc, lo), (ft, fw, fc, fo) = cells
        hand = f"{r['hand_loop']:.3f} / {r['hand_cpu']:.3f}"
        print(f"| {case.name} | {steps} | {hand} | {lt} | {lw} | {lc} | {lo} "
              f"| {r['lightning_total'] / r['hand_total']:.3f}x | {ft} | {fw} | {fc} | {fo} |")
    print(f"target (paper MLP): Lightning loop <= 1.15x the hand-written loop: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
