"""The paper's MLP and ConvNet on one GPU: the training step, a real run's epochs, ensembles of the MLP.

Everything runs in full FP32 (the CLI's precision policy, ``lightning_mem.training.precision.tf32_policy``:
TF32 off
for matmuls and cuDNN convolutions) unless ``--tf32``. Data: ``--n`` random CIFAR-shaped images (3, 32, 32),
per-image standardized, 10 random classes, held on the device (CIFAR-10: 50,000 and 10,000 held out;
batch 256, 196 steps per epoch). Sized to finish in about 5 minutes on an H100/H200.

1. Training steps (ms per SGD step, after ``--warmup`` steps, default one epoch so that every graph is
   captured first; ``--steps`` timed, the device synchronized at both ends; no validation, no checkpoints;
   the CLI's ``DivergenceGuard`` and ``RunStatus`` and a CSV logger):
   - a hand-written PyTorch loop, and the fused step without Lightning (``FusedSGD`` over index blocks of
     ``--steps-per-call``; one CUDA graph replay per step: the floor of a Lightning run);
   - Lightning with ``MemorizationModule()``, without and with ``AlignmentMonitor`` every step (× plain:
     the targets of issue 12 are ≤ 1.3 for the MLP and ≤ 1.6 for the ConvNet);
   - Lightning with ``MemorizationModule(steps_per_call=k, fused_backend=b)`` for each ``--backends`` b
     (``graph``: a CUDA graph per batch size; ``compile``: ``torch.compile(mode="reduce-overhead")`` of the
     same step — the measurement that decides between them), without and (graph) with alignment every step.
2. A real run (``lightning-mem fit --config configs/paper/base.yaml [--config configs/paper/convnet.yaml]``,
   in this process, on the same random images written in CIFAR-10's on-disk format; torchvision's md5
   check is off for them): alignment once per epoch, validation with held-out alignment, a checkpoint at
   every epoch end and ``last.ckpt``, the CSV logger, ``DivergenceGuard``, ``RunStatus``; seconds per epoch
   over ``--timed-epochs`` epochs after ``--warmup-epochs``, and the projected ``--epochs``-epoch run
   (targets: MLP ≤ 3 min, ConvNet ≤ 8 min), with ``--model.steps_per_call`` 1 and k.
3. ``benchmarks/bench_ensemble.py --modes device``: K = ``--ensemble-k`` members of the paper's MLP through
   ``fit_ensemble`` vs the raw stacked loop, and the projected 45-run Section 3 grid (``--ensemble-k ''``
   skips it).

    python benchmarks/bench_gpu.py                                     # needs CUDA; prints the GPU name
    python benchmarks/bench_gpu.py --device cpu --n 256 --n-val 64 --batch-size 16 --steps 3 \\
        --ensemble-k 1,2 --ensemble-steps 2                            # a dry run of this script on a CPU
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import pickle
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torchvision.datasets
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn

from lightning_mem.alignment.monitor import AlignmentMonitor
from lightning_mem.cli.commands import main as cli_main
from lightning_mem.data.loader import IndexBlock, TensorBatchLoader, training_loader
from lightning_mem.data.transforms import per_image_standardize
from lightning_mem.nets import ConvNet, ScaledMLP
from lightning_mem.training.fused import FusedSGD
from lightning_mem.training.guard import DivergenceGuard, RunStatus
from lightning_mem.training.losses import cross_entropy
from lightning_mem.training.module import MemorizationModule
from lightning_mem.training.precision import tf32_policy

REPO = Path(__file__).resolve().parents[1]
NETS: dict[str, Callable[[], nn.Module]] = {
    "MLP": lambda: ScaledMLP((3, 32, 32), 10, width=1024, activation="sin"),
    "ConvNet": lambda: ConvNet((3, 32, 32), 10),
}
CONFIGS = {"MLP": ["configs/paper/base.yaml"],
           "ConvNet": ["configs/paper/base.yaml", "configs/paper/convnet.yaml"]}
TARGET_ALIGN = {"MLP": 1.3, "ConvNet": 1.6}  # alignment every step, × a plain Lightning step (issue 12)
TARGET_RUN_MIN = {"MLP": 3.0, "ConvNet": 8.0}  # a 2000-epoch CIFAR-10 run, alignment once per epoch


class DeviceData(L.LightningDataModule):
    """Train ``(x, y, noisy)`` batches (``training_loader``, as ImageClassificationData), held-out ``(x, y)``.
    """

    num_classes = 10

    def __init__(self, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], batch_size: int) -> None:
        super().__init__()
        self.train, self.val, self.batch_size, self.label_noise = train, val, batch_size, 0.0
        self.noisy = torch.zeros(len(train[1]), dtype=torch.bool, device=train[1].device)

    def train_dataloader(self) -> TensorBatchLoader:
        return training_loader((*self.train, self.noisy), self.batch_size, 0, self.trainer)

    def val_dataloader(self) -> TensorBatchLoader:
        return TensorBatchLoader(self.val, max(self.batch_size, 1024))


class StepClock(L.Callback):
    """Seconds and SGD steps from the first Lightning step at or after ``warmup`` to the end of training."""

    def __init__(self, warmup: int, sync: Callable[[], None]) -> None:
        self.warmup, self.sync = warmup, sync
        self.start = self.end = 0.0
        self.first = self.last = -1

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if self.first < 0 and trainer.global_step >= self.warmup:
            self.sync()
            self.start, self.first = time.perf_counter(), trainer.global_step

    def on_train_end(self, trainer: L.Trainer, *args: object) -> None:
        self.sync()
        self.end, self.last = time.perf_counter(), trainer.global_step

    def ms_per_step(self) -> float:
        return (self.end - self.start) / (self.last - self.first) * 1e3


class EpochClock(L.Callback):
    """Added to the CLI run (``--trainer.callbacks+=bench_gpu.EpochClock``): wall time from the start of
    epoch ``WARMUP_EPOCHS`` to the end of training (every later epoch's steps, validation and checkpoints),
    the device synchronized; the result lands in ``EpochClock.result`` (seconds, epochs)."""

    WARMUP_EPOCHS = 1
    result: tuple[float, int] = (0.0, 0)

    def __init__(self) -> None:
        self.start, self.first = 0.0, -1

    @staticmethod
    def _sync(pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.WARMUP_EPOCHS:
            self._sync(pl_module)
            self.start, self.first = time.perf_counter(), trainer.current_epoch

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync(pl_module)
        EpochClock.result = (time.perf_counter() - self.start, trainer.current_epoch - self.first)


# ---------------------------------------------------------------------------------------------- steps


def _trainer(args: argparse.Namespace, root: str, callbacks: list[L.Callback], **kwargs: Any) -> L.Trainer:
    """What the CLI gives every run (guard, status, CSV, no progress bar); no checkpoints, no validation."""
    callbacks = [*callbacks, DivergenceGuard(), RunStatus(root)]
    return L.Trainer(accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
                     logger=CSVLogger(root, name="b"), callbacks=callbacks,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     log_every_n_steps=args.steps_per_epoch, num_sanity_val_steps=0, limit_val_batches=0,
                     **kwargs)


def lightning_ms(net: str, align_every: int | None, data: DeviceData, args: argparse.Namespace,
                 sync: Callable[[], None], root: str, steps_per_call: int = 1,
                 backend: str = "auto") -> float:
    torch.manual_seed(0)
    module = MemorizationModule(NETS[net](), lr=0.01, steps_per_call=steps_per_call,
                                fused_backend=backend)  # type: ignore[arg-type]
    clock = StepClock(args.warmup, sync)
    callbacks: list[L.Callback] = [clock]
    if align_every is not None:
        callbacks.append(AlignmentMonitor(every_n_steps=align_every, val_max_examples=0))
    _trainer(args, root, callbacks, max_steps=args.warmup + args.steps).fit(module, datamodule=data)
    return clock.ms_per_step()


def hand_ms(net: str, data: DeviceData, args: argparse.Namespace, sync: Callable[[], None]) -> float:
    torch.manual_seed(0)
    model = NETS[net]().to(args.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = data.train
    loss_sum = torch.zeros((), device=args.device)
    step, start = 0, 0.0
    for epoch in range(10**6):
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch)).to(args.device)
        for idx in perm.split(args.batch_size):
            if step == args.warmup:
                sync()
                start = time.perf_counter()
            per_example = cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            per_example.mean().backward()
            opt.step()
            loss_sum += per_example.detach().sum()
            step += 1
            if step == args.warmup + args.steps:
                sync()
                return (time.perf_counter() - start) / args.steps * 1e3
    raise AssertionError("unreachable")


def fused_floor_ms(net: str, data: DeviceData, args: argparse.Namespace, sync: Callable[[], None]) -> float:
    """``FusedSGD`` without Lightning: blocks of ``--steps-per-call`` full batches, one replay per step."""
    torch.manual_seed(0)
    model = NETS[net]().to(args.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    backend = "graph" if "graph" in args.backends else args.backends[0]
    fused = FusedSGD(model, cross_entropy, opt, args.steps_per_call, False, backend)  # type: ignore[arg-type]
    loader = TensorBatchLoader((*data.train, data.noisy), args.batch_size, shuffle=True)
    k, full = args.steps_per_call, len(data.train[1]) // args.batch_size
    step, start = 0, 0.0
    for epoch in range(10**6):
        idx = loader.indices(epoch).to(args.device)[: full * args.batch_size].view(full, args.batch_size)
        for block in idx.split(k):
            if step >= args.warmup and not start:
                sync()
                start, first = time.perf_counter(), step
            fused.run(IndexBlock(block, loader))
            step += len(block)
            if start and step >= args.warmup + args.steps:
                sync()
                return (time.perf_counter() - start) / (step - first) * 1e3
    raise AssertionError("unreachable")


def step_table(nets: list[str], data: DeviceData, args: argparse.Namespace, sync: Callable[[], None],
               root: str) -> None:
    k = args.steps_per_call
    print(f"\n## 1. Training steps: ms per SGD step ({args.steps} timed after {args.warmup}; no validation, "
          "no checkpoints)\n")
    print("| net | loop | alignment | ms/step | steps/s | × hand-written | × plain Lightning step (target) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for net in nets:
        hand = hand_ms(net, data, args, sync)
        plain = lightning_ms(net, None, data, args, sync, root)
        rows: list[tuple[str, str, float, str]] = [
            ("hand-written PyTorch", "none", hand, ""),
            (f"fused step without Lightning (k={k})", "none", fused_floor_ms(net, data, args, sync), ""),
            ("Lightning, steps_per_call 1", "none", plain, "1.00"),
        ]
        every = lightning_ms(net, 1, data, args, sync, root)
        rows.append(("Lightning, steps_per_call 1", "every step", every,
                     f"{every / plain:.2f} (≤ {TARGET_ALIGN[net]})"))
        for backend in args.backends:
            ms = lightning_ms(net, None, data, args, sync, root, k, backend)
            rows.append((f"Lightning, steps_per_call {k}, {backend}", "none", ms, f"{ms / plain:.2f}"))
            if backend == "graph":
                ms_every = lightning_ms(net, 1, data, args, sync, root, k, backend)
                rows.append((f"Lightning, steps_per_call {k}, {backend}", "every step", ms_every,
                             f"{ms_every / plain:.2f} ({ms_every / ms:.1f} × its plain step)"))
        for loop, align, ms, ratio in rows:
            print(f"| {net} | {loop} | {align} | {ms:.3f} | {1e3 / ms:,.0f} | {ms / hand:.2f} | {ratio} |",
                  flush=True)


# ---------------------------------------------------------------------------------------------- real runs


def write_cifar10(folder: Path, x: Tensor, y: Tensor, n_train: int) -> None:
    """``x`` uint8 (N, 3, 32, 32) and ``y`` as CIFAR-10's python pickles: 5 train batches and a test batch."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, labels = x.reshape(len(x), 3072).numpy(), y.tolist()
    splits = np.array_split(np.arange(n_train), 5)
    for i, part in enumerate(splits, start=1):
        entry = {"data": rows[part], "labels": [labels[j] for j in part]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(entry))
    (folder / "test_batch").write_bytes(pickle.dumps({"data": rows[n_train:], "labels": labels[n_train:]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))


def cli_seconds_per_epoch(net: str, steps_per_call: int, backend: str, args: argparse.Namespace,
                          root: Path) -> float:
    """One ``lightning-mem fit`` of the paper config in this process; seconds per timed epoch."""
    argv = ["fit"]
    for config in CONFIGS[net]:
        argv += ["--config", str(REPO / config)]
    argv += ["--data.data_dir", str(root / "data"), "--data.batch_size", str(args.batch_size),
             "--trainer.max_epochs", str(EpochClock.WARMUP_EPOCHS + args.timed_epochs),
             "--run.root", str(root / "runs"), "--run.name", net, "--run.id", f"k{steps_per_call}-{backend}",
             "--model.steps_per_call", str(steps_per_call), "--model.fused_backend", backend,
             "--trainer.callbacks+=bench_gpu.EpochClock", "--precision.tf32", str(args.tf32).lower(),
             "--trainer.accelerator", "gpu" if args.device == "cuda" else "cpu"]
    clock = importlib.import_module("bench_gpu").EpochClock  # the class the CLI instantiates
    clock.result = (0.0, 0)
    try:
        cli_main(argv)
    except SystemExit as exc:
        if exc.code:
            raise RuntimeError(f"lightning-mem {' '.join(argv)} exited {exc.code}") from exc
    seconds, epochs = clock.result
    return seconds / epochs


def run_table(nets: list[str], x8: Tensor, y: Tensor, args: argparse.Namespace) -> None:
    k = args.steps_per_call
    print(f"\n## 2. A real run: `lightning-mem fit --config configs/paper/base.yaml ...` (alignment once per "
          f"epoch, validation with held-out alignment, epoch checkpoints); {args.timed_epochs} epochs timed "
          f"after {EpochClock.WARMUP_EPOCHS}\n")
    print(f"| net | --model.steps_per_call | backend | s/epoch | ms per step (all included) | projected "
          f"{args.epochs}-epoch run | target |")
    print("|---|---:|---|---:|---:|---:|---|")
    cifar, cls = torchvision.datasets.cifar, torchvision.datasets.CIFAR10
    saved = cifar.check_integrity, cls._check_integrity
    cifar.check_integrity = lambda *a, **kw: True  # random images: their md5 is not CIFAR-10's
    cls._check_integrity = lambda self: True  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            write_cifar10(root / "data" / "cifar-10-batches-py", x8, y, args.n)
            arms = [(1, "auto")] + [(k, b) for b in args.backends]
            for net in nets:
                for steps_per_call, backend in arms:
                    per_epoch = cli_seconds_per_epoch(net, steps_per_call, backend, args, root)
                    total = args.epochs * per_epoch
                    projected = f"{total / 60:.1f} min" if total < 7200 else f"{total / 3600:.1f} h"
                    arm = backend if steps_per_call > 1 else "ordinary step"
                    print(f"| {net} | {steps_per_call} | {arm} "
                          f"| {per_epoch:.3f} | {per_epoch / args.steps_per_epoch * 1e3:.3f} | {projected} "
                          f"| ≤ {TARGET_RUN_MIN[net]:g} min |", flush=True)
    finally:
        cifar.check_integrity, cls._check_integrity = saved  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--steps", type=int, default=400, help="timed SGD steps per row of table 1")
    parser.add_argument("--warmup", type=int, default=-1, help="untimed steps first (default: one epoch)")
    parser.add_argument("--n", type=int, default=50_000, help="training images (CIFAR-10: 50,000)")
    parser.add_argument("--n-val", type=int, default=10_000, help="held-out images (CIFAR-10: 10,000)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2000, help="run length projected (default 2000)")
    parser.add_argument("--timed-epochs", type=int, default=2, help="epochs timed per real run (default 2)")
    parser.add_argument("--nets", default="MLP,ConvNet", help="comma-separated: MLP, ConvNet")
    parser.add_argument("--steps-per-call", type=int, default=20,
                        help="k of the fused arms (default 20: groups end at the guard's reads, every 20)")
    parser.add_argument("--backends", default="graph", help="fused backends to time: graph, compile, eager")
    parser.add_argument("--tables", default="steps,run,ensemble", help="any of: steps, run, ensemble")
    parser.add_argument("--ensemble-k", default="1,5,15,45", help="members per ensemble ('' skips table 3)")
    parser.add_argument("--ensemble-steps", type=int, default=200, help="timed steps per ensemble row")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls and convolutions")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: CUDA is not available on this machine; nothing was measured. Run it on a GPU, "
              "or try the script itself with `--device cpu --n 256 --n-val 64 --batch-size 16 --steps 3`.")
        return 0
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    unknown = [n for n in nets if n not in NETS]
    if unknown:
        parser.error(f"--nets: unknown {unknown}; allowed: {', '.join(NETS)}")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not args.backends or set(args.backends) - {"graph", "compile", "eager"}:
        parser.error(f"--backends {args.backends}: allowed graph, compile, eager")
    tables = {t.strip() for t in args.tables.split(",") if t.strip()}
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning_mem").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    args.steps_per_epoch = math.ceil(args.n / args.batch_size)
    if args.warmup < 0:
        args.warmup = args.steps_per_epoch  # every graph (both batch sizes) is captured before timing

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    wall0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (args.n + args.n_val, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (args.n + args.n_val,), generator=g)
    x = per_image_standardize(x8).to(args.device)
    yd = y.to(args.device)
    data = DeviceData((x[: args.n], yd[: args.n]), (x[args.n :], yd[args.n :]), args.batch_size)
    if args.device == "cuda":
        hw = f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}"
    else:
        hw = (f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads): a dry run of the "
              "script, not a GPU figure")
    print(f"bench_gpu on {hw}; torch {torch.__version__}, lightning {L.__version__}; "
          f"{'TF32 allowed' if args.tf32 else 'FP32 (TF32 off: the CLI precision policy)'}")
    print(f"data: {args.n} train + {args.n_val} held-out images (3, 32, 32) on {args.device}, batch "
          f"{args.batch_size} ({args.steps_per_epoch} steps/epoch); command: {' '.join(sys.argv)}")
    with tempfile.TemporaryDirectory() as root:
        if "steps" in tables:
            with tf32_policy(args.tf32):
                step_table(nets, data, args, sync, root)
        if "run" in tables:
            run_table(nets, x8, y, args)  # the CLI applies the precision policy itself
    if "ensemble" in tables and args.ensemble_k.strip():
        del data, x, yd
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        ensemble = importlib.import_module("bench_ensemble")
        ns = argparse.Namespace(device=args.device, k=[int(v) for v in args.ensemble_k.split(",")], n=args.n,
                                n_val=args.n_val, steps=args.ensemble_steps, warmup=min(args.warmup, 20),
                                epochs=args.epochs)
        print("\n## 3. Ensembles of the paper's MLP (benchmarks/bench_ensemble.py --modes device)")
        with tf32_policy(False):
            ensemble.run_device(ns)
    print(f"\nbench_gpu took {time.perf_counter() - wall0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
