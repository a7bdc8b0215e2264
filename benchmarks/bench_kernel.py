"""Cost of KernelMonitor on the paper's 3072→1024→10 sin MLP at batch 256, on CPU.

Trainer arms (benchmarks/bench_alignment.py's net, data and Trainer run, apart from the callbacks;
synthetic CIFAR-shaped data pre-batched in memory, no validation), interleaved round by round in one
process, ratios per round, median over rounds:

- ``plain``        training only
- ``align_10``     today's AlignmentMonitor(every_n_steps=10)
- ``kernel_10``    KernelMonitor(train_every_n_steps=10): Θ_t and Θ₀ of the training batch, target
                   alignment, distance from init and pattern change every 10 steps; Θ_t from the x W1ᵀ
                   of the step's own forward
- ``kernel_10_prestep`` the same with x W1ᵀ recomputed before the step (what it does where the
                   forward is not IEEE fp32: TF32, AMP, the fused step)
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
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_alignment import BATCH, CLASSES, SHAPE, WIDTH, _now, _setup, _trainer_arm

EPOCH_STEPS = 50_000 // BATCH + 1  # CIFAR-10 at batch 256: 196 steps
ARMS = ("plain", "align_10", "kernel_10", "kernel_10_prestep", "both_10")


def trainer_arm(arm: str, warmup: int, steps: int, threads: int) -> tuple[float, float]:
    """(wall, CPU) seconds per step of bench_alignment's Trainer run with this arm's monitors."""
    from lightning_mem.alignment.kernel_monitor import KernelMonitor
    from lightning_mem.alignment.monitor import AlignmentMonitor

    monitors: list[Any] = []
    if arm in ("align_10", "both_10"):
        monitors.append(AlignmentMonitor(every_n_steps=10))
    if arm.startswith("kernel_10") or arm == "both_10":
        monitor = KernelMonitor(train_every_n_steps=10)
        monitor._reuse_forward = arm != "kernel_10_prestep"  # prestep: x W1ᵀ recomputed before the step
        monitors.append(monitor)
    return _trainer_arm(arm, warmup, steps, threads, monitors)


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
    print("arm                ms/step (CPU)  ms/step (wall)  x plain (CPU)  x plain (wall)")
    for arm in ARMS:
        cpu = statistics.median(c for _, c in per_round[arm])
        wall = statistics.median(w for w, _ in per_round[arm])
        pairs = list(zip(per_round[arm], per_round["plain"], strict=True))
        r_cpu = statistics.median(a[1] / p[1] for a, p in pairs)
        r_wall = statistics.median(a[0] / p[0] for a, p in pairs)
        print(f"{arm:<18} {1e3 * cpu:13.1f}  {1e3 * wall:14.1f}  {r_cpu:13.3f}  {r_wall:14.3f}")
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
