"""Images/s through the training loader on CIFAR-shaped data (target: >= 400k images/s on a CPU).

50,000 random uint8 images (3, 32, 32) go through the real preprocessing (per-image
standardization) and the real ``TensorBatchLoader`` that ``ImageClassificationData`` serves:
batch 256, shuffled, batches ``(x, y, noisy)``. For contrast, on the same tensors: torch's
multi-threaded ``index_select`` per batch, and a torch ``DataLoader`` over a ``TensorDataset``
(per-sample ``__getitem__`` + collate). Each epoch is timed by wall clock and by this process's
CPU time; on a shared machine read the load average printed with the table.

    python benchmarks/bench_data.py [--epochs 10] [--threads 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_mem.data.labels import corrupt_labels
from lightning_mem.data.loader import TensorBatchLoader
from lightning_mem.data.transforms import per_image_standardize


def torch_index_select(tensors: tuple[Tensor, ...], batch_size: int) -> Iterator[tuple[Tensor, ...]]:
    """One epoch of batches gathered with torch's (intra-op parallel) ``index_select``."""
    flat = [t.reshape(len(t), -1) if t.ndim > 2 else t for t in tensors]
    for idx in torch.randperm(len(tensors[0])).split(batch_size):
        yield tuple(f.index_select(0, idx) for f in flat)


Batches = Iterable[tuple[Tensor, ...]]


def epoch_rates(make_epoch: Callable[[], Batches], epochs: int) -> list[tuple[float, float]]:
    """(images per wall-clock second, images per CPU second of this process) of each epoch.

    On a shared machine the wall-clock rate falls with the load; the CPU-time rate says what one
    otherwise idle core would do (it counts threads spinning in parallel regions as busy).
    """
    rates = []
    for _ in range(epochs):
        n = 0
        wall, cpu = time.perf_counter(), time.process_time()
        for batch in make_epoch():
            n += len(batch[0])
        rates.append((n / (time.perf_counter() - wall), n / max(time.process_time() - cpu, 1e-9)))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="number of images")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (args.n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.n,), generator=g)
    start = time.perf_counter()
    x = per_image_standardize(raw)  # float32 (N, 3, 32, 32), as the DataModule's setup
    y, noisy = corrupt_labels(labels, 10, 0.2, "uniform", seed=0)
    prep_s = time.perf_counter() - start

    tensors = (x, y, noisy)
    ours = TensorBatchLoader(tensors, args.batch_size, shuffle=True, seed=0)
    epoch_rates(lambda: ours, 1)  # warm-up
    per_sample = DataLoader(TensorDataset(*tensors), batch_size=args.batch_size, shuffle=True)
    rows = [
        ("TensorBatchLoader (lightning_mem)", epoch_rates(lambda: ours, args.epochs)),
        (
            "torch index_select per batch",
            epoch_rates(lambda: torch_index_select(tensors, args.batch_size), args.epochs),
        ),
        ("torch DataLoader(TensorDataset)", epoch_rates(lambda: per_sample, 1)),
    ]

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"CIFAR-shaped data: {args.n} images (3, 32, 32), batch {args.batch_size}; torch threads "
        f"{torch.get_num_threads()}, {os.cpu_count()} CPUs, load average {load}; "
        f"preprocessing (per_image) {prep_s:.2f} s"
    )
    print("| loader                            | epochs | best images/s | median images/s | images/CPU-s |")
    print("|-----------------------------------|--------|---------------|-----------------|--------------|")
    for name, rates in rows:
        wall = [r[0] for r in rates]
        cpu = statistics.median(r[1] for r in rates)
        print(
            f"| {name:33s} | {len(rates):6d} | {max(wall):13,.0f} | {statistics.median(wall):15,.0f} "
            f"| {cpu:12,.0f} |"
        )
    best = max(r[0] for r in rows[0][1])
    print(f"target >= 400,000 images/s (best epoch, wall clock): {'met' if best >= 400_000 else 'NOT met'}")


if __name__ == "__main__":
    main()
