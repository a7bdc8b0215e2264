"""Steps/s of the paper's MLP and ConvNet on one GPU, with and without alignment, and the projected wall
time of a 2000-epoch CIFAR-10 run. Sized to finish in well under 5 minutes on an H100.

Data: 50,000 random CIFAR-shaped images (3, 32, 32), per-image standardized, and 10 random classes,
preloaded on the device as ``ImageClassificationData(preload_to_device=True)`` keeps CIFAR-10; batches
of 256 by index gather (``TensorBatchLoader``), 196 steps per epoch. Every row is the real Lightning
loop of a run from the CLI (``Trainer`` + ``MemorizationModule``, CSV logger, ``DivergenceGuard``,
``RunStatus``, ``log_every_n_steps`` 196, no progress bar), timed after ``--warmup`` steps with the
device synchronized at both ends:

- sin MLP 3072 -> 1024 -> 10 (the paper's) and the Section 5 ConvNet;
- without alignment, with ``AlignmentMonitor`` every 196 steps (once per epoch: the paper configs)
  and every step;
- for reference, a hand-written PyTorch loop on the same data (no alignment).

The projection of a 2000-epoch CIFAR-10 run adds, per epoch, one validation pass over 10,000
held-out images and the two checkpoint writes (``epoch*.ckpt`` and ``last.ckpt``), both measured.
Matmuls run in full fp32 as the paper's reference code; ``--tf32`` allows TF32 (Ampere and newer).

    python benchmarks/bench_gpu.py                                   # needs CUDA; prints the GPU name
    python benchmarks/bench_gpu.py --device cpu --steps 3 --n 1024   # a dry run of this script on a CPU
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn

from lightning_mem.callbacks import AlignmentMonitor
from lightning_mem.data import TensorBatchLoader, per_image_standardize
from lightning_mem.guard import DivergenceGuard, RunStatus
from lightning_mem.losses import cross_entropy
from lightning_mem.module import MemorizationModule
from lightning_mem.nets import ConvNet, ScaledMLP

NETS: dict[str, Callable[[], nn.Module]] = {
    "MLP": lambda: ScaledMLP((3, 32, 32), 10, width=1024, activation="sin"),
    "ConvNet": lambda: ConvNet((3, 32, 32), 10),
}


class DeviceData(L.LightningDataModule):
    """Train ``(x, y, noisy)`` and held-out ``(x, y)`` batches of tensors already on the device."""

    def __init__(self, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], batch_size: int) -> None:
        super().__init__()
        self.train, self.val, self.batch_size, self.label_noise = train, val, batch_size, 0.0
        self.noisy = torch.zeros(len(train[1]), dtype=torch.bool, device=train[1].device)

    def train_dataloader(self) -> TensorBatchLoader:
        return TensorBatchLoader((*self.train, self.noisy), self.batch_size, shuffle=True, seed=0,
                                 epoch_fn=lambda: self.trainer.current_epoch if self.trainer else None)

    def val_dataloader(self) -> TensorBatchLoader:
        return TensorBatchLoader(self.val, max(self.batch_size, 1024))


class StepTimer(L.Callback):
    """Seconds from the start of step ``warmup`` to the end of training, the device synchronized."""

    def __init__(self, warmup: int, sync: Callable[[], None]) -> None:
        self.warmup, self.sync = warmup, sync
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.warmup and not self.start:
            self.sync()
            self.start = time.perf_counter()

    def on_train_end(self, *args: object) -> None:
        self.sync()
        self.end = time.perf_counter()


def _trainer(device: str, root: str, callbacks: list[L.Callback], **kwargs: object) -> L.Trainer:
    return L.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1,
                     logger=CSVLogger(root, name="b"),
                     callbacks=[*callbacks, DivergenceGuard(), RunStatus(root)],
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     log_every_n_steps=196, num_sanity_val_steps=0, **kwargs)  # type: ignore[arg-type]


def lightning_steps_per_s(net: str, align_every: int | None, data: DeviceData, args: argparse.Namespace,
                          sync: Callable[[], None], root: str) -> float:
    torch.manual_seed(0)
    module = MemorizationModule(NETS[net](), lr=0.01)
    timer = StepTimer(args.warmup, sync)
    callbacks: list[L.Callback] = [timer]
    if align_every is not None:
        callbacks.append(AlignmentMonitor(every_n_steps=align_every, val_max_examples=0))
    trainer = _trainer(args.device, root, callbacks, max_steps=args.warmup + args.steps, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    return args.steps / (timer.end - timer.start)


def hand_steps_per_s(net: str, data: DeviceData, args: argparse.Namespace, sync: Callable[[], None]) -> float:
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
                return args.steps / (time.perf_counter() - start)
    raise AssertionError("unreachable")


def validation_seconds(net: str, data: DeviceData, args: argparse.Namespace, root: str) -> float:
    """One validation epoch over the held-out images (the second of two; the first warms up)."""
    module = MemorizationModule(NETS[net](), lr=0.01)
    trainer = _trainer(args.device, root, [])
    trainer.validate(module, datamodule=data, verbose=False)
    start = time.perf_counter()
    trainer.validate(module, datamodule=data, verbose=False)
    return time.perf_counter() - start


def checkpoint_seconds(net: str, data: DeviceData, args: argparse.Namespace, root: str) -> float:
    """The two checkpoint writes of an epoch end (``epoch*.ckpt`` and ``last.ckpt``)."""
    module = MemorizationModule(NETS[net](), lr=0.01)
    trainer = _trainer(args.device, root, [], max_steps=1, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    path = Path(root, "bench.ckpt")
    trainer.save_checkpoint(path)  # warm-up
    start = time.perf_counter()
    for _ in range(2):
        trainer.save_checkpoint(path)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--steps", type=int, default=400, help="timed steps per row (default 400)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps first (default 30)")
    parser.add_argument("--n", type=int, default=50_000, help="training images (CIFAR-10: 50,000)")
    parser.add_argument("--n-val", type=int, default=10_000, help="held-out images (CIFAR-10: 10,000)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2000, help="run length projected (default 2000)")
    parser.add_argument("--nets", default="MLP,ConvNet", help="comma-separated: MLP, ConvNet")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls and convolutions")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: CUDA is not available on this machine; nothing was measured. Run it on a GPU, "
              "or try the script itself with `--device cpu --steps 3 --n 1024`.")
        return 0
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    unknown = [n for n in nets if n not in NETS]
    if unknown:
        parser.error(f"--nets: unknown {unknown}; allowed: {', '.join(NETS)}")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    wall0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    x = per_image_standardize(torch.randint(0, 256, (args.n + args.n_val, 3, 32, 32), dtype=torch.uint8,
                                            generator=g)).to(args.device)
    y = torch.randint(0, 10, (args.n + args.n_val,), generator=g).to(args.device)
    data = DeviceData((x[: args.n], y[: args.n]), (x[args.n :], y[args.n :]), args.batch_size)
    steps_per_epoch = math.ceil(args.n / args.batch_size)
    if args.device == "cuda":
        name = torch.cuda.get_device_name()
        hw = f"{name}, CUDA {torch.version.cuda}, {'TF32' if args.tf32 else 'fp32'} matmuls"
    else:
        hw = (f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads): a dry run of the "
              "script, not a GPU figure")
    print(f"bench_gpu on {hw}; torch {torch.__version__}, lightning {L.__version__}")
    print(f"data: {args.n} train + {args.n_val} held-out images (3, 32, 32) on {args.device}, batch "
          f"{args.batch_size} ({steps_per_epoch} steps/epoch); {args.steps} timed steps per row after "
          f"{args.warmup} warm-up steps")
    print(f"| net | loop | alignment | steps/s | ms/step | projected {args.epochs}-epoch run |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as root:
        for net in nets:
            val_s = validation_seconds(net, data, args, root)
            ckpt_s = checkpoint_seconds(net, data, args, root)

            per_epoch = val_s + ckpt_s  # seconds added to every epoch's training steps
            rows = [("hand-written", "none", hand_steps_per_s(net, data, args, sync))]
            for label, every in (("none", None), ("every 196 steps", 196), ("every step", 1)):
                rows.append(("Lightning", label, lightning_steps_per_s(net, every, data, args, sync, root)))
            for loop, label, sps in rows:
                total = args.epochs * (steps_per_epoch / sps + per_epoch)
                projected = f"{total / 60:.1f} min" if total < 7200 else f"{total / 3600:.1f} h"
                print(f"| {net} | {loop} | {label} | {sps:,.1f} | {1e3 / sps:.2f} | {projected} |")
            print(f"| {net} | per epoch | validation {val_s * 1e3:.1f} ms, checkpoints {ckpt_s * 1e3:.1f} ms "
                  "|  |  |  |")
    print(f"projection: {args.epochs} x ({steps_per_epoch} steps / (steps/s) + validation + 2 checkpoint "
          f"writes); this benchmark took {time.perf_counter() - wall0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
