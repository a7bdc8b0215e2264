"""Cost of KernelMonitor on the paper's 3072→1024→10 sin MLP at batch 256, on CPU.

Trainer arms (identical apart from the callbacks; synthetic CIFAR-shaped data pre-batched in memory,
no validation), interleaved round by round in one process, ratios per round, median over rounds:

- ``plain``        training only
- ``align_10``     today's AlignmentMonitor(every_n_steps=10)
- ``kernel_10``    KernelMonitor(train_every_n_steps=10): Θ_t and Θ₀ of the training batch, target
                   alignment, distance from init and pattern change every 10 steps
- ``both_10``      both monitors every 10 steps

The held-out probe measures (once per validation) are timed directly: one
``KernelMonitor`` probe measurement of 256 examples (Θ_t, pattern change, weight distances, the
class stiffness matrix; Θ₀ is computed once per run and reported apart), as a fraction of a
CIFAR-10 epoch of plain steps (50,000 / 256 → 196 steps). CPU time (single-threaded torch) is the
robust number on a shared machine; wall time is printed beside it.

    python benchmarks/bench_kernel.py --steps 30 --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

BATCH, SHAPE, CLASSES, WIDTH = 256, (3, 32, 32), 10, 1024
EPOCH_STEPS = 50_000 // BATCH + 1  # CIFAR-10 at batch 256: 196 steps
ARMS = ("plain", "align_10", "kernel_10", "both_10")


def _setup(threads: int) -> tuple[Any, Any]:
    import torch

    from lightning_mem.nets import ScaledMLP

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = ScaledMLP(SHAPE, CLASSES, WIDTH, activation="sin", init_std=0.1)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(BATCH, *SHAPE, generator=g), torch.randint(0, CLASSES, (BATCH,), generator=g),
                torch.zeros(BATCH, dtype=torch.bool)) for _ in range(8)]
    return net, batches


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def trainer_arm(arm: str, warmup: int, steps: int, threads: int) -> tuple[float, float]:
    """(wall, CPU) seconds per step over steps [warmup, warmup + steps) of a Trainer run."""
    import lightning as L
    from lightning.pytorch.loggers import Logger
    from torch.utils.data import DataLoader

    from lightning_mem.alignment.kernel_monitor import KernelMonitor
    from lightning_mem.alignment.monitor import AlignmentMonitor
    from lightning_mem.training.module import MemorizationModule

    class NullLogger(Logger):  # the monitors measure only when a logger is attached: same in every arm
        name, version = "null", 0

        def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
            pass

        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            pass

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.start = self.end = (0.0, 0.0)

        def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
            if trainer.global_step == warmup:
                self.start = _now()

        def on_train_end(self, trainer: L.Trainer, *args: Any) -> None:
            self.end = _now()

    net, batches = _setup(threads)
    clock = Clock()
    callbacks: list[L.Callback] = []
    if arm in ("align_10", "both_10"):
        callbacks.append(AlignmentMonitor(every_n_steps=10))
    if arm in ("kernel_10", "both_10"):
        callbacks.append(KernelMonitor(train_every_n_steps=10))
    trainer = L.Trainer(max_steps=warmup + steps, accelerator="cpu", logger=NullLogger(),
                        callbacks=[*callbacks, clock], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    loader = DataLoader([batches[i % len(batches)] for i in range(warmup + steps)], batch_size=None)
    trainer.fit(MemorizationModule(net), train_dataloaders=loader)
    return (clock.end[0] - clock.start[0]) / steps, (clock.end[1] - clock.start[1]) / steps


def probe_cost(threads: int, repeats: int) -> dict[str, float]:
    """(wall, CPU) seconds of the first probe measurement (with Θ₀) and the median of the next ones."""
    import torch
    import torch.nn.functional as F

    from lightning_mem.alignment.kernel_monitor import KernelMonitor, NetKernels

    net, batches = _setup(threads)
    monitor = KernelMonitor(probe_size=BATCH)
    monitor._kernels = NetKernels(net, lambda z, y: F.cross_entropy(z, y, reduction="none"), 32)
    monitor._init = {n: p.detach().clone() for n, p in net.named_parameters()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))  # trained weights differ from init
    monitor._probe = batches[0][0], batches[0][1]
    times = []
    for _ in range(repeats + 1):
        t0 = _now()
        monitor._measure_probe()
        t1 = _now()
        times.append((t1[0] - t0[0], t1[1] - t0[1]))
    rest = times[1:]
    return {"first_wall": times[0][0], "first_cpu": times[0][1],
            "wall": statistics.median(t[0] for t in rest), "cpu": statistics.median(t[1] for t in rest)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per arm and round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="probe measurements timed after the first")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    per_round: dict[str, list[tuple[float, float]]] = {arm: [] for arm in ARMS}
    for _ in range(args.rounds):
        for arm in ARMS:
            per_round[arm].append(trainer_arm(arm, args.warmup, args.steps, args.threads))
    print(f"paper MLP {SHAPE} -> {WIDTH} -> {CLASSES}, batch {BATCH}, {args.threads} thread(s), "
          f"{args.steps} steps x {args.rounds} rounds")
    print("arm         ms/step (CPU)  ms/step (wall)  x plain (CPU)  x plain (wall)")
    for arm in ARMS:
        cpu = statistics.median(c for _, c in per_round[arm])
        wall = statistics.median(w for w, _ in per_round[arm])
        pairs = list(zip(per_round[arm], per_round["plain"], strict=True))
        r_cpu = statistics.median(a[1] / p[1] for a, p in pairs)
        r_wall = statistics.median(a[0] / p[0] for a, p in pairs)
        print(f"{arm:<11} {1e3 * cpu:13.1f}  {1e3 * wall:14.1f}  {r_cpu:13.3f}  {r_wall:14.3f}")
    probe = probe_cost(args.threads, args.repeats)
    step_cpu = statistics.median(c for _, c in per_round["plain"])
    step_wall = statistics.median(w for w, _ in per_round["plain"])
    print(f"probe of {BATCH} held-out examples: {1e3 * probe['cpu']:.0f} ms CPU "
          f"({1e3 * probe['wall']:.0f} ms wall); first, with Θ₀: {1e3 * probe['first_cpu']:.0f} ms CPU")
    share_cpu = 100 * probe["cpu"] / (EPOCH_STEPS * step_cpu)
    share_wall = 100 * probe["wall"] / (EPOCH_STEPS * step_wall)
    print(f"probe / CIFAR-10 epoch of {EPOCH_STEPS} plain steps: {share_cpu:.2f}% CPU, "
          f"{share_wall:.2f}% wall")


if __name__ == "__main__":
    main()
