"""K runs packed into one ensemble vs the same K single runs one after another, in one process.

Modes (``--modes``, comma-separated; ratios side by side in one run):

- ``grid``: a σ × seed grid (``--grid 5x4``: σ ∈ {0.001, 0.01, 0.1, 1, 10} × 4 seeds) on ``digits``
  (``--digits-width``, ``--digits-epochs``) and on ``mnist5k`` at the quickstart width 1024
  (``--mnist-epochs``), each way the real path: single runs are ``MemorizationModule`` +
  ``ImageClassificationData`` on a ``Trainer`` with a ``CSVLogger``, ``AlignmentMonitor`` (every 4
  steps), ``DivergenceGuard`` and epoch checkpoints (as the CLI); the ensemble is ``fit_ensemble`` with a
  ``CSVLogger`` per member, ``EnsembleAlignmentMonitor`` (every 4 steps), an ensemble checkpoint and a
  single-run-format checkpoint per member. Wall and CPU time of the whole thing (build, data, fit).
- ``align``: per-member alignment cost: ensemble training steps with ``EnsembleAlignmentMonitor`` every
  step vs none (no validation), alternating ``--rounds`` times, median of per-round ratios; beside it the
  single run's ratio (``AlignmentMonitor`` every step vs none) on the same data and width.
- ``device``: members of the paper's MLP (3072 → 1024 → 10, sin, batch 256) on CIFAR-shaped random data
  held on the device (``--n`` images, FP32, TF32 off), K in ``--k``: ms per member-step of the ensemble
  through ``fit_ensemble`` (alignment once per epoch) and of a raw stacked loop (no Lightning), and of
  one single run through Lightning; projected time of the Section 3 grid (45 runs, ``--epochs``).
- ``layout``: raw steps of K = ``--layout-k`` members each way the ensemble could batch them (the measurement
  behind the choice in :mod:`lightning_mem.ensemble.stacked`): autograd through ``x @ W.mT``,
  ``vmap(grad)`` over
  ``stack_module_state``, the stacked linear used, and K separate nets one after another.
- ``sweep`` (``--sweep``): the real ``lightning-mem sweep local FILE --max-parallel N`` with and without
  ``--pack``, one after the other (alternating over ``--rounds``), for each of ``--sweep-files`` (default
  ``sweeps/repro/sin_sigma.yaml``, 15 runs, and ``sweeps/ensemble_digits.yaml``, 20 runs): wall time of
  the whole command, CPU time of all its processes, the load average around each arm, and the largest
  difference in any run's final val/acc between the two arms (they train the same runs).

    python benchmarks/bench_ensemble.py --sweep --max-parallel 2          # packed vs unpacked sweeps
    python benchmarks/bench_ensemble.py                                   # grid + align on this CPU
    python benchmarks/bench_ensemble.py --modes device --device cuda      # K = 1, 5, 15, 45 on a GPU
    python benchmarks/bench_ensemble.py --modes device --device cpu --k 1,5 --n 1024 --steps 3  # dry run
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor

from lightning_mem.alignment.monitor import AlignmentMonitor
from lightning_mem.data.datamodule import ImageClassificationData
from lightning_mem.data.loader import TensorBatchLoader
from lightning_mem.data.transforms import per_image_standardize
from lightning_mem.ensemble.data import MemberBatchLoader
from lightning_mem.ensemble.module import EnsembleModule
from lightning_mem.ensemble.monitor import EnsembleAlignmentMonitor
from lightning_mem.ensemble.stacked import MemberSpec, StackedMLP
from lightning_mem.ensemble.train import build_ensemble, fit_ensemble
from lightning_mem.nets import ScaledMLP
from lightning_mem.training.guard import DivergenceGuard
from lightning_mem.training.module import MemorizationModule

SIGMAS = (0.001, 0.01, 0.1, 1.0, 10.0)


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def grid(spec: str, lr: float) -> list[MemberSpec]:
    n_sigma, n_seed = (int(v) for v in spec.split("x"))
    sigmas = (
        SIGMAS[:n_sigma]
        if n_sigma <= len(SIGMAS)
        else [10 ** (-3 + 4 * i / (n_sigma - 1)) for i in range(n_sigma)]
    )
    return [MemberSpec(seed, sigma, lr=lr) for sigma in sigmas for seed in range(n_seed)]


def _trainer(epochs: int, **kwargs: Any) -> dict[str, Any]:
    return {
        "max_epochs": epochs,
        "accelerator": "cpu",
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        **kwargs,
    }


# ---------------------------------------------------------------------------------------------- grid


def singles(members: list[MemberSpec], data: dict[str, Any], width: int, epochs: int, root: Path) -> float:
    """The K single runs one after another (the CLI's path in-process); returns the mean final val/acc."""
    accs = []
    for k, m in enumerate(members):
        L.seed_everything(m.seed, verbose=False)
        dm = ImageClassificationData(**data, seed=m.seed)
        module = MemorizationModule(
            ScaledMLP(dm.input_shape, dm.num_classes, width, "sin", m.init_std), lr=m.lr
        )
        ckpt = ModelCheckpoint(
            dirpath=root / f"single{k}" / "checkpoints",
            filename="epoch{epoch}",
            auto_insert_metric_name=False,
            save_last=True,
            every_n_epochs=1,
        )
        trainer = L.Trainer(
            logger=CSVLogger(root, name="single", version=str(k)),
            log_every_n_steps=50,
            callbacks=[AlignmentMonitor(every_n_steps=4), DivergenceGuard(), ckpt],
            **_trainer(epochs),
        )
        trainer.fit(module, datamodule=dm)
        accs.append(float(trainer.callback_metrics["val/acc"]))
    return statistics.mean(accs)


def packed(members: list[MemberSpec], data: dict[str, Any], width: int, epochs: int, root: Path) -> float:
    module, dm = build_ensemble(members, width=width, **data)
    loggers = [[CSVLogger(root, name="packed", version=str(k))] for k in range(len(members))]
    results = fit_ensemble(
        module,
        dm,
        member_loggers=loggers,
        monitor=EnsembleAlignmentMonitor(every_n_steps=4),
        checkpoint_dir=root / "packed_ckpt",
        member_checkpoint_dirs=[root / f"packed{k}" / "checkpoints" for k in range(len(members))],
        **_trainer(epochs),
    )
    return statistics.mean(r.metrics["val/acc"] for r in results)


def run_grid(args: argparse.Namespace) -> None:
    members = grid(args.grid, args.lr)
    print(
        f"\n## grid: {len(members)} members ({args.grid} σ × seed, lr {args.lr}), one process, "
        "wall / CPU time\n"
    )
    print(
        "| data | width | epochs | K single runs | packed | ratio (wall) | ratio (CPU) "
        "| mean val/acc single / packed |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    cases = [("digits", args.digits_width, args.digits_epochs), ("mnist5k", 1024, args.mnist_epochs)]
    for dataset, width, epochs in cases:
        if epochs <= 0:
            continue
        data = {"dataset": dataset, "batch_size": 256}
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            t0 = _now()
            acc_single = singles(members, data, width, epochs, root)
            t1 = _now()
            acc_packed = packed(members, data, width, epochs, root)
            t2 = _now()
        single_wall, single_cpu = t1[0] - t0[0], t1[1] - t0[1]
        packed_wall, packed_cpu = t2[0] - t1[0], t2[1] - t1[1]
        print(
            f"| {dataset} | {width} | {epochs} | {single_wall:.1f} s / {single_cpu:.1f} s "
            f"| {packed_wall:.1f} s / "
            f"{packed_cpu:.1f} s | {single_wall / packed_wall:.2f}x | {single_cpu / packed_cpu:.2f}x | "
            f"{acc_single:.4f} / {acc_packed:.4f} |",
            flush=True,
        )


# ---------------------------------------------------------------------------------------------- align


class StepClock(L.Callback):
    """Wall and CPU time from the first batch of step ``warmup`` to the end of training, device synced."""

    def __init__(self, warmup: int, sync: Callable[[], None] = lambda: None) -> None:
        self.warmup, self.sync = warmup, sync
        self.start = self.end = (0.0, 0.0)
        self.steps = 0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            self.sync()
            self.start = _now()

    def on_train_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.sync()
        self.end = _now()
        self.steps = trainer.global_step - self.warmup

    def per_step(self) -> tuple[float, float]:
        return (self.end[0] - self.start[0]) / self.steps, (self.end[1] - self.start[1]) / self.steps


def _align_arm(
    members: list[MemberSpec],
    data: dict[str, Any],
    width: int,
    every: int | None,
    steps: int,
    warmup: int,
    root: Path,
    packed_arm: bool,
) -> tuple[float, float]:
    clock = StepClock(warmup)
    kw = _trainer(10**6, max_steps=warmup + steps, limit_val_batches=0)
    if packed_arm:
        module, dm = build_ensemble(members, width=width, **data)
        monitor = EnsembleAlignmentMonitor(every_n_steps=every, val_max_examples=0) if every else None
        loggers = [[CSVLogger(root, name="align", version=f"{every}-{k}")] for k in range(len(members))]
        fit_ensemble(module, dm, member_loggers=loggers, monitor=monitor, callbacks=[clock], **kw)
    else:
        m = members[0]
        L.seed_everything(m.seed, verbose=False)
        dm1 = ImageClassificationData(**data, seed=m.seed)
        single = MemorizationModule(
            ScaledMLP(dm1.input_shape, dm1.num_classes, width, "sin", m.init_std), lr=m.lr
        )
        callbacks: list[L.Callback] = [clock]
        if every:
            callbacks.insert(0, AlignmentMonitor(every_n_steps=every, val_max_examples=0))
        L.Trainer(
            logger=CSVLogger(root, name="align1", version=str(every)),
            callbacks=callbacks,
            enable_checkpointing=False,
            log_every_n_steps=50,
            **kw,
        ).fit(single, datamodule=dm1)
    return clock.per_step()


def run_align(args: argparse.Namespace) -> None:
    members = grid(args.grid, args.lr)
    K = len(members)
    print(
        f"\n## alignment every step vs none: {K} members ({args.grid}), {args.align_steps} timed steps after "
        f"{args.warmup}, {args.rounds} alternating rounds (median of per-round ratios; CPU time)\n"
    )
    print(
        "| data | width | arm | ms/step none | ms/step every step | per member-step none "
        "| ratio (target ≤ 1.3) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    for dataset, width in (("digits", args.digits_width), ("mnist5k", 1024)):
        data = {"dataset": dataset, "batch_size": 256}
        for packed_arm in (True, False):
            times: dict[int | None, list[float]] = {None: [], 1: []}
            with tempfile.TemporaryDirectory() as tmp:
                for r in range(args.rounds):
                    for every in (None, 1) if r % 2 == 0 else (1, None):
                        steps = args.align_steps if packed_arm else args.align_steps * 2
                        times[every].append(
                            _align_arm(
                                members, data, width, every, steps, args.warmup, Path(tmp), packed_arm
                            )[1]
                        )
            ratio = statistics.median(a / b for a, b in zip(times[1], times[None], strict=True))
            none, every_step = statistics.median(times[None]), statistics.median(times[1])
            per = none / (K if packed_arm else 1)
            arm = f"packed K={K}" if packed_arm else "single run"
            print(
                f"| {dataset} | {width} | {arm} | {1e3 * none:.2f} | {1e3 * every_step:.2f} "
                f"| {1e3 * per:.3f} | "
                f"{ratio:.3f} |",
                flush=True,
            )


# ---------------------------------------------------------------------------------------------- device


class RandomEnsembleData(L.LightningDataModule):
    """CIFAR-shaped random images held on the device once; K members with their own order and labels."""

    def __init__(
        self, members: list[MemberSpec], x: Tensor, y: Tensor, x_val: Tensor, y_val: Tensor, batch_size: int
    ) -> None:
        super().__init__()
        K, n = len(members), len(y)
        self.members, self.x, self.x_val, self.y_val, self.batch_size = members, x, x_val, y_val, batch_size
        self.rows = torch.arange(n, device=x.device).expand(K, n).contiguous()
        self.labels = torch.stack([y.roll(k) for k in range(K)])  # each member its own random labels
        self.noisy = torch.zeros(K, n, dtype=torch.bool, device=x.device)
        self.label_noise = 0.0

    def train_dataloader(self) -> MemberBatchLoader:
        return MemberBatchLoader(
            self.x,
            self.rows,
            self.labels,
            self.noisy,
            self.batch_size,
            [m.seed for m in self.members],
            epoch_fn=lambda: self.trainer.current_epoch if self.trainer else None,
        )

    def val_dataloader(self) -> TensorBatchLoader:
        return TensorBatchLoader((self.x_val, self.y_val), 1024)


def _raw_stacked(
    net: StackedMLP,
    loader: MemberBatchLoader,
    steps: int,
    warmup: int,
    lr: float,
    sync: Callable[[], None],
    clock: Callable[[], float],
) -> float:
    """ms per step of the stacked net in a hand-written loop (forward, backward, SGD; no Lightning)."""
    params = list(net.parameters())
    step, start = 0, 0.0
    while True:
        for x, y, _ in loader:
            if step == warmup:
                sync()
                start = clock()
            logits = net(x)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)
            grads = torch.autograd.grad(loss.sum(), params)
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    p.add_(g, alpha=-lr)
            step += 1
            if step == warmup + steps:
                sync()
                return (clock() - start) / steps * 1e3


def run_device(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_ensemble --modes device: CUDA is not available here; try --device cpu for a dry run")
        return
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")  # FP32: sin of pre-activations with std ~100 at σ = 10
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    # The device's wall time on a GPU (synchronized); CPU time on a CPU, steadier on a shared machine.
    timing, now = (0, time.perf_counter) if device.type == "cuda" else (1, time.process_time)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    g = torch.Generator().manual_seed(0)
    x = per_image_standardize(
        torch.randint(0, 256, (args.n + args.n_val, 3, 32, 32), dtype=torch.uint8, generator=g)
    ).to(device)
    y = torch.randint(0, 10, (args.n + args.n_val,), generator=g).to(device)
    x_train, y_train, x_val, y_val = x[: args.n], y[: args.n], x[args.n :], y[args.n :]
    noisy = torch.zeros(len(y_train), dtype=torch.bool, device=device)
    per_epoch = math.ceil(args.n / 256)
    loop = {
        "accelerator": accelerator,
        "devices": 1,
        "max_steps": args.warmup + args.steps,
        "limit_val_batches": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }

    class Single(L.LightningDataModule):  # ImageClassificationData's loader on the same device tensors
        def train_dataloader(self) -> TensorBatchLoader:
            return TensorBatchLoader(
                (x_train, y_train, noisy),
                256,
                shuffle=True,
                seed=0,
                epoch_fn=lambda: self.trainer.current_epoch if self.trainer else None,
            )

    def single_ms(every: int) -> float:
        """ms per step of one single run through Lightning (MemorizationModule), alignment every ``every``."""
        clock = StepClock(args.warmup, sync)
        L.seed_everything(0, verbose=False)
        module = MemorizationModule(ScaledMLP((3, 32, 32), 10, 1024, "sin", 0.1), lr=0.01)
        monitor = AlignmentMonitor(every_n_steps=every, val_max_examples=0)
        L.Trainer(
            logger=CSVLogger(tmp, name="single", version=str(every)),
            callbacks=[clock, monitor],
            enable_checkpointing=False,
            **loop,
        ).fit(module, datamodule=Single())
        return clock.per_step()[timing] * 1e3

    def ensemble_ms(members: list[MemberSpec], net: StackedMLP, every: int) -> float:
        clock = StepClock(args.warmup, sync)
        data = RandomEnsembleData(members, x_train, y_train, x_val, y_val, 256)
        loggers = [
            [CSVLogger(tmp, name="device", version=f"{len(members)}-{every}-{k}")]
            for k in range(len(members))
        ]
        monitor = EnsembleAlignmentMonitor(every_n_steps=every, val_max_examples=0)
        fit_ensemble(
            EnsembleModule(copy.deepcopy(net), members),
            data,  # type: ignore[arg-type]
            member_loggers=loggers,
            callbacks=[clock],
            monitor=monitor,
            **loop,
        )
        return clock.per_step()[timing] * 1e3

    name = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores): a dry run"
    )
    print(
        f"\n## device: paper MLP 3072 → 1024 → 10 sin, batch 256, {args.n} CIFAR-shaped random images on "
        f"{device} ({name}), FP32 (TF32 off); {'wall' if timing == 0 else 'CPU'} time of {args.steps} steps "
        f"after {args.warmup}; alignment once "
        f"per epoch ({per_epoch} steps) unless said\n"
    )
    print(
        "| K | ensemble ms/step | ms per member-step | raw stacked ms per member-step | ensemble / raw "
        "| throughput vs single runs | alignment every step: × | Section 3 grid (45 runs) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        one, one_every = single_ms(per_epoch), single_ms(1)
        hours = 45 * args.epochs * per_epoch * one / 3.6e6
        print(
            f"| single run | {one:.2f} | {one:.3f} | | | 1.0x | {one_every / one:.2f} | {hours:.1f} h |",
            flush=True,
        )
        for K in args.k:
            members = [MemberSpec(k % 3, SIGMAS[k % len(SIGMAS)], lr=0.01) for k in range(K)]
            net = StackedMLP.from_members(members, (3, 32, 32), 10, 1024, "sin")
            loader = RandomEnsembleData(members, x_train, y_train, x_val, y_val, 256).train_dataloader()
            raw = (
                _raw_stacked(copy.deepcopy(net).to(device), loader, args.steps, args.warmup, 0.01, sync, now)
                / K
            )
            ms, ms_every = ensemble_ms(members, net, per_epoch), ensemble_ms(members, net, 1)
            grid_min = 45 * args.epochs * per_epoch * ms / K / 6e4
            print(
                f"| {K} | {ms:.2f} | {ms / K:.3f} | {raw:.3f} | {ms / K / raw:.2f} | {one / (ms / K):.1f}x "
                f"| {ms_every / ms:.2f} | {grid_min:.0f} min ({args.epochs} epochs) |",
                flush=True,
            )


# ---------------------------------------------------------------------------------------------- layout


def _layout_row(d: int, K: int, rounds: int) -> list[str]:
    """CPU ms per member-step of each layout for input dimension d."""
    from torch.func import functional_call, grad, stack_module_state, vmap

    B, lr = 256, 0.01
    nets = [ScaledMLP((1, d, 1), 10, 1024, "sin", 0.1) for _ in range(K)]
    x, y = torch.randn(K, B, d), torch.randint(0, 10, (K, B))
    stacked = StackedMLP((d,), 10, 1024, "sin", [0.1] * K)
    with torch.no_grad():  # the same weights as the other layouts (sin of garbage is slow)
        stacked.hidden.weight.copy_(torch.stack([n.hidden.weight for n in nets]))
        stacked.out.weight.copy_(torch.stack([n.out.weight for n in nets]))
    w1 = torch.stack([n.hidden.weight.detach() for n in nets]).requires_grad_()
    w2 = torch.stack([n.out.weight.detach() for n in nets]).requires_grad_()
    params, _ = stack_module_state(nets)  # type: ignore[arg-type]
    base = copy.deepcopy(nets[0]).to("meta")
    vgrad = vmap(grad(lambda p, xb, yb: F.cross_entropy(functional_call(base, p, (xb,)), yb)))
    opts = [torch.optim.SGD(n.parameters(), lr=lr) for n in nets]

    def update(ps: list[Tensor], gs: Any) -> None:
        with torch.no_grad():
            for p, g_ in zip(ps, gs, strict=True):
                p.add_(g_, alpha=-lr)

    def mean_loss(z: Tensor) -> Tensor:
        return F.cross_entropy(z.flatten(0, 1), y.flatten(), reduction="none").view(K, B).mean(1).sum()

    def autograd_mt() -> None:
        z = torch.matmul(torch.sin(torch.matmul(x, w1.mT)), w2.mT)
        update([w1, w2], torch.autograd.grad(mean_loss(z), [w1, w2]))

    def vmapped() -> None:
        gs = vgrad(params, x, y)
        update(list(params.values()), [gs[k] for k in params])

    def stacked_step() -> None:
        ps = list(stacked.parameters())
        update(ps, torch.autograd.grad(mean_loss(stacked(x)), ps))

    def separate() -> None:
        for k in range(K):
            opts[k].zero_grad()
            F.cross_entropy(nets[k](x[k]), y[k]).backward()
            opts[k].step()

    cells = []
    for fn in (autograd_mt, vmapped, stacked_step, separate):
        per_round = []
        for _ in range(rounds):
            fn()
            start = time.process_time()
            for _ in range(5):
                fn()
            per_round.append((time.process_time() - start) / 5 / K * 1e3)
        cells.append(f"{statistics.median(per_round):.2f}")
    return cells


def run_layout(args: argparse.Namespace) -> None:
    """Raw training steps of K members each way they could be batched (CPU time per member-step)."""
    K = args.layout_k
    print(
        f"\n## layout: K = {K} sin MLPs d → 1024 → 10, batch 256, raw steps (no Lightning), "
        f"median of {args.rounds} rounds of 5 steps, CPU ms per member-step\n"
    )
    print(
        "| d | autograd through x @ W.mT | vmap(grad) over stack_module_state | stacked linear (used) | "
        "K separate nets |"
    )
    print("|---:|---:|---:|---:|---:|")
    for d in (64, 784):
        print(f"| {d} | {' | '.join(_layout_row(d, K, args.rounds))} |", flush=True)


# ---------------------------------------------------------------------------------------------- sweep

REPO = Path(__file__).resolve().parents[1]


def _sweep_arm(path: str, packed: bool, args: argparse.Namespace) -> dict[str, Any]:
    """One ``lightning-mem sweep local`` of ``path`` into a temporary root: wall and CPU time, results."""
    with tempfile.TemporaryDirectory() as root:
        cmd = [sys.executable, "-m", "lightning_mem", "sweep", "local", path, "--root", root,
               "--max-parallel", str(args.max_parallel), "--wandb-mode", args.wandb_mode,
               *(["--pack"] if packed else [])]
        load0, before = os.getloadavg()[0], resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - start
        after, load1 = resource.getrusage(resource.RUSAGE_CHILDREN), os.getloadavg()[0]
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        (manifest,) = Path(root).glob("*/manifest.json")
        runs = json.loads(manifest.read_text())["runs"]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    processes = len({r.get("pack") or rid for rid, r in runs.items()})
    return {"wall": wall, "cpu": cpu, "load": (load0, load1), "processes": processes,
            "val": {rid: r["metrics"].get("val/acc") for rid, r in runs.items()},
            "statuses": sorted({r["status"] for r in runs.values()})}


def run_sweep(args: argparse.Namespace) -> None:
    print(f"\n## sweep: `lightning-mem sweep local FILE --max-parallel {args.max_parallel} --wandb-mode "
          f"{args.wandb_mode}` without and with `--pack`, {args.rounds} alternating round(s); wall time of "
          "the command, CPU time of all its processes (median over rounds)\n")
    print("| sweep | runs | processes unpacked / packed | unpacked wall | packed wall | ratio (wall) "
          "| ratio (CPU) | load average during unpacked / packed | max |Δ val/acc| |")
    print("|---|---:|---|---:|---:|---:|---:|---|---:|")
    for path in args.sweep_files.split(","):
        arms: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
        for r in range(args.rounds):
            for packed in (False, True) if r % 2 == 0 else (True, False):
                arms[packed].append(_sweep_arm(path, packed, args))
        plain, packed_ = arms[False], arms[True]
        wall = [statistics.median(a["wall"] for a in arms[p]) for p in (False, True)]
        cpu = [statistics.median(a["cpu"] for a in arms[p]) for p in (False, True)]
        diff = max(abs(a - b) for x, y in zip(plain, packed_, strict=True) for rid in x["val"]
                   for a, b in [(x["val"][rid], y["val"][rid])])
        loads = " / ".join("–".join(f"{v:.1f}" for v in (min(a["load"][0] for a in arms[p]),
                                                          max(a["load"][1] for a in arms[p])))
                           for p in (False, True))
        assert all(a["statuses"] == ["finished"] for a in plain + packed_), "every run must finish"
        print(f"| `{path}` | {len(plain[0]['val'])} | {plain[0]['processes']} / {packed_[0]['processes']} "
              f"| {wall[0]:.1f} s | {wall[1]:.1f} s | {wall[0] / wall[1]:.2f}x | {cpu[0] / cpu[1]:.2f}x "
              f"| {loads} | {diff:.1e} |", flush=True)


MODES = {"grid": run_grid, "align": run_align, "device": run_device, "layout": run_layout, "sweep": run_sweep}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="grid,align", help=f"comma-separated: {', '.join(MODES)}")
    parser.add_argument("--grid", default="5x4", help="σ values x seeds (default 5x4: 20 members)")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--digits-width", type=int, default=256)
    parser.add_argument("--digits-epochs", type=int, default=5)
    parser.add_argument("--mnist-epochs", type=int, default=2, help="0 skips mnist5k in the grid mode")
    parser.add_argument("--align-steps", type=int, default=12, help="timed ensemble steps per arm")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; 1 in the sweep mode)")
    parser.add_argument("--device", default="cpu", help="device of the device mode (cuda or cpu)")
    parser.add_argument("--k", default="1,5,15,45", help="members per ensemble in the device mode")
    parser.add_argument("--n", type=int, default=50_000, help="training images in the device mode")
    parser.add_argument("--n-val", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=200, help="timed steps in the device mode")
    parser.add_argument("--epochs", type=int, default=2000, help="run length projected in the device mode")
    parser.add_argument("--layout-k", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--sweep", action="store_true", help="the sweep mode alone (--modes sweep)")
    parser.add_argument("--sweep-files", default="sweeps/repro/sin_sigma.yaml,sweeps/ensemble_digits.yaml",
                        help="comma-separated sweep files of the sweep mode (relative to the repository)")
    parser.add_argument("--max-parallel", type=int, default=2, help="--max-parallel of both arms")
    parser.add_argument("--wandb-mode", default="disabled", choices=["disabled", "offline"],
                        help="--wandb-mode of both arms (disabled: the training path alone)")
    args = parser.parse_args()
    if args.sweep:
        args.modes = "sweep"
    if args.rounds is None:
        args.rounds = 1 if args.modes == "sweep" else 3
    args.k = [int(v) for v in args.k.split(",")]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"--modes: unknown {unknown}; allowed: {', '.join(MODES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"bench_ensemble: torch {torch.__version__}, lightning {L.__version__}, "
        f"{torch.get_num_threads()} torch "
        f"threads, {os.cpu_count()} cores, load average {load:.1f}; command: {' '.join(sys.argv)}"
    )
    start = time.perf_counter()
    for mode in modes:
        MODES[mode](args)
    print(f"\nbench_ensemble took {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
