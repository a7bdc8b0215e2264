"""Cost of AlignmentMonitor on the paper's 3072→1024→10 sin MLP at batch 256, on CPU.

Arms (identical apart from the measurement; synthetic CIFAR-shaped data pre-batched in memory):

- ``plain``        a real ``lightning.Trainer`` run, training only
- ``every_1``      the same with AlignmentMonitor(every_n_steps=1): Ω of W1, W2, logits, representation
- ``every_10``     the same with AlignmentMonitor(every_n_steps=10)
- ``reference``    the paper's reference code (extreme_memorization/train.py): one forward of the
                   batch, then one ``autograd.grad`` of each example's loss ℓ_i through the batch
                   graph, for the weights and for the logits; plus a plain training step
- ``per_example``  the cheapest per-example loop: one forward + ``autograd.grad`` of a single
                   example at a time; plus a plain training step

Both loops fold each gradient at once into fp64 per-class sums (they never hold the 3 GiB of
per-example gradients the reference code keeps), so their cost is a lower bound; they run a
few steps (after one warm-up) and are extrapolated. The Trainer arms run interleaved, round by
round, in one process; ratios are per round, then the median over rounds. Peak RSS comes from a
separate short process per arm. CPU time is reported next to wall time: on a shared machine it
is the robust one (single-threaded torch, so CPU time ≈ the wall time of an idle machine).

    python benchmarks/bench_alignment.py --steps 30 --rounds 5 --ref-steps 2 --threads 1
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import time
from typing import Any

BATCH, SHAPE, CLASSES, WIDTH = 256, (3, 32, 32), 10, 1024
LOOPS = ("reference", "per_example")


def _setup(threads: int) -> tuple[Any, Any]:
    import torch

    from lightning_mem.nets import ScaledMLP

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = ScaledMLP(SHAPE, CLASSES, WIDTH, activation="sin", init_std=0.1)
    g = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randn(BATCH, *SHAPE, generator=g),
            torch.randint(0, CLASSES, (BATCH,), generator=g),
            torch.zeros(BATCH, dtype=torch.bool),
        )
        for _ in range(8)
    ]
    return net, batches


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _trainer_arm(
    arm: str, warmup: int, steps: int, threads: int, monitors: list[Any] | None = None
) -> tuple[float, float]:
    """(wall, CPU) seconds per step over steps [warmup, warmup + steps) of a Trainer run; its callbacks
    are ``monitors`` when given (benchmarks/bench_kernel.py), else the AlignmentMonitor of ``arm``."""
    import lightning as L
    from lightning.pytorch.loggers import Logger
    from torch.utils.data import DataLoader

    from lightning_mem.alignment.monitor import AlignmentMonitor
    from lightning_mem.training.module import MemorizationModule

    class NullLogger(Logger):  # the monitor only measures when a logger is attached: same in every arm
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
    callbacks: list[L.Callback] = [*(monitors or []), clock]
    if monitors is None and arm != "plain":
        callbacks.insert(0, AlignmentMonitor(every_n_steps=int(arm.split("_")[1])))
    trainer = L.Trainer(
        max_steps=warmup + steps,
        accelerator="cpu",
        logger=NullLogger(),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    loader = DataLoader([batches[i % len(batches)] for i in range(warmup + steps)], batch_size=None)
    trainer.fit(MemorizationModule(net), train_dataloaders=loader)
    return ((clock.end[0] - clock.start[0]) / steps, (clock.end[1] - clock.start[1]) / steps)


def _reference_arm(steps: int, threads: int, mode: str) -> tuple[float, float]:
    """(wall, CPU) seconds per measured step of a per-example loop (measurement only)."""
    import torch

    from lightning_mem.alignment.measures import class_alignment_from_sums
    from lightning_mem.training.losses import cross_entropy

    net, batches = _setup(threads)
    params = [net.hidden.weight, net.out.weight]
    times = []
    for x, y, _ in batches[: steps + 1]:
        start = _now()
        sizes = [p.numel() for p in params] + [CLASSES]  # W1, W2, logits
        sums = [torch.zeros(CLASSES, n + 3, dtype=torch.float64) for n in sizes]
        if mode == "reference":  # train.py: tape.gradient(loss_vector[i], variables), then w.r.t. logits
            logits = net(x)
            losses = cross_entropy(logits, y)
        for i in range(BATCH):
            if mode == "reference":
                *weights, g_logits = torch.autograd.grad(losses[i], [*params, logits], retain_graph=True)
                grads = [*weights, g_logits[i]]
            else:
                one = net(x[i : i + 1])
                grads = list(torch.autograd.grad(cross_entropy(one, y[i : i + 1]).sum(), [*params, one]))
            c = int(y[i])
            for total, g in zip(sums, grads, strict=True):
                v = g.reshape(-1).double()
                sq = v @ v
                total[c, :-3] += v
                total[c, -3:] += torch.stack([sq, sq.sqrt(), torch.ones_like(sq)])
        [class_alignment_from_sums(total).mean for total in sums]
        end = _now()
        times.append((end[0] - start[0], end[1] - start[1]))
    kept = times[1:] or times  # the first one warms up
    return statistics.mean(t[0] for t in kept), statistics.mean(t[1] for t in kept)


def _timing_worker(
    arms: list[str], rounds: int, warmup: int, steps: int, threads: int
) -> dict[str, list[tuple[float, float]]]:
    # All Trainer arms in one process, interleaved round by round (order reversed on odd rounds), so
    # that slow drifts in machine load hit every arm alike.
    times: dict[str, list[tuple[float, float]]] = {a: [] for a in arms}
    for r in range(rounds):
        for arm in arms if r % 2 == 0 else arms[::-1]:
            wall, cpu = _trainer_arm(arm, warmup, steps, threads)
            times[arm].append((wall, cpu))
            print(
                f"round {r} {arm:9s} wall {1000 * wall:7.1f} ms/step  cpu {1000 * cpu:7.1f} ms/step",
                flush=True,
            )
    return times


def _memory_worker(
    arm: str, warmup: int, steps: int, ref_steps: int, threads: int
) -> tuple[tuple[float, float], float]:
    if arm in LOOPS:
        seconds = _reference_arm(ref_steps, threads, arm)
    else:
        seconds = _trainer_arm(arm, warmup, steps, threads)
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS, KiB -> MiB


def _entry(fn: Any, args: tuple[Any, ...], out: Any) -> None:
    try:
        out.put(fn(*args))
    except BaseException as exc:
        out.put(exc)
        raise


def run(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a fresh spawned process (its own peak RSS, no state shared between arms)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_entry, args=(fn, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if isinstance(result, BaseException):
        raise RuntimeError(f"{fn.__name__}{args} failed") from result
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=40, help="timed steps per Trainer arm (after 10 warm-up)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved repetitions of every Trainer arm")
    parser.add_argument("--ref-steps", type=int, default=2, help="measured steps of the per-example loop")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    warmup = 10  # the timed window starts at a multiple of 10: every_10 measures exactly 1 step in 10
    arms = ["plain", "every_1", "every_10"]
    times = run(_timing_worker, arms, args.rounds, warmup, args.steps, args.threads)
    rss = {arm: run(_memory_worker, arm, warmup, 2, 0, args.threads)[1] for arm in arms}
    loops = {}
    for arm in LOOPS:
        loops[arm], rss[arm] = run(_memory_worker, arm, 0, 0, args.ref_steps, args.threads)
    rows = {}
    for k, clock in enumerate(("wall", "cpu")):
        per_arm = {a: [t[k] for t in times[a]] for a in arms}
        plain = statistics.median(per_arm["plain"])
        # Ratios per round (the arms of one round ran seconds apart), then the median over rounds.
        ratio = {
            a: statistics.median(t / p for t, p in zip(per_arm[a], per_arm["plain"], strict=True))
            for a in arms
        }
        ms = {a: 1000 * statistics.median(per_arm[a]) for a in arms}
        for arm in LOOPS:  # a plain training step plus the per-example measurement
            ratio[arm] = (plain + loops[arm][k]) / plain
            ms[arm] = 1000 * (plain + loops[arm][k])
        rows[clock] = (ms, ratio)
    load = os.getloadavg()[0]
    print(
        f"\n3072→1024→10 sin MLP, batch {BATCH}, CPU, {args.threads} thread(s), {args.rounds} rounds, "
        f"load average {load:.1f} on {os.cpu_count()} cores"
    )
    print("| arm | wall ms/step | wall × plain | CPU ms/step | CPU × plain | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for arm in [*arms, *LOOPS]:
        (wm, wr), (cm, cr) = (
            (rows["wall"][0][arm], rows["wall"][1][arm]),
            (rows["cpu"][0][arm], rows["cpu"][1][arm]),
        )
        print(f"| {arm} | {wm:.1f} | {wr:.3f} | {cm:.1f} | {cr:.3f} | {rss[arm]:.0f} |")
    gib = BATCH * (3072 * WIDTH + WIDTH * CLASSES) * 4 / 2**30
    print(f"\nper-example gradients of W1 and W2 (never formed by the Gram path): {gib:.2f} GiB in fp32")
    print(f"loops: mean of {args.ref_steps} measured step(s) after one warm-up step, plus a plain step")
    print(
        "× plain: median over rounds of the per-round ratio; CPU: process CPU time (robust on a shared box)"
    )


if __name__ == "__main__":
    main()
