"""Curvature of the squared loss at init vs σ: why ReLU + squared loss diverges at large σ and which
learning rate is stable there (REPRODUCTION.md, "Squared loss at the paper's settings").

For the ReLU MLP z = W2 relu(W1 x) with W1 ~ N(0, σ²), the hidden features scale as σ
(relu is 1-homogeneous), so the Hessian of the squared loss w.r.t. W2 scales as σ² while the block
of W1 does not grow with σ. Plain (S)GD is stable only for lr < 2/λ_max. This script measures
λ_max of the Hessian of the mean training loss (the module's loss) at init by power iteration on
Hessian-vector products (double backward), over the whole training set and over single batches,
for the W1 block, the W2 block and both together, and writes one CSV row per (σ, seed).

    python tools/sharpness.py --sigma 0.001 0.01 0.1 1 10 --seeds 0 1 2 --batches 2 --iters 20 \\
        --out docs/data/sharpness/sharpness.csv --spectrum-out docs/data/sharpness/spectrum.csv \\
        --gd-out docs/data/sharpness/frozen_gd.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_mem.data.datamodule import ImageClassificationData
from lightning_mem.nets import ScaledMLP
from lightning_mem.training.losses import LOSSES


def top_eigenvalue(
    loss_fn: object, params: Sequence[nn.Parameter], iters: int, gen: torch.Generator
) -> float:
    """λ_max of the Hessian of ``loss_fn()`` w.r.t. ``params`` by power iteration on Hessian-vector
    products (the loss is convex in W2, and its top eigenvalue dominates in magnitude here)."""
    loss = loss_fn()  # type: ignore[operator]
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((x * x).sum() for x in v))
        v = [x / norm for x in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))  # Rayleigh quotient
        v = [h.detach() for h in hv]
    return lam


SPECTRUM_K = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def spectrum_rows(
    x: Tensor, num_classes: int, width: int, sigma: float, seed: int, input_shape: Sequence[int]
) -> list[dict[str, float]]:
    """The W2 block of the squared loss's Hessian at init, (2/(k·N)) HᵀH for the (N, width) ReLU
    features H: its k-th largest eigenvalue for k in :data:`SPECTRUM_K`, λ_1/λ_k (how many times
    slower than the top direction that direction converges under one learning rate) and the std of
    the initial logits (the function the squared loss must first cancel)."""
    torch.manual_seed(seed)
    net = ScaledMLP(input_shape, num_classes, width, "relu", sigma).double()
    with torch.no_grad():
        h = torch.relu(x.reshape(len(x), -1) @ net.hidden.weight.T)  # (N, width)
        ev = torch.linalg.eigvalsh(h.T @ h * (2.0 / (num_classes * len(h)))).flip(0)  # descending
        logit_std = float((h @ net.out.weight.T).std())
    return [
        {
            "sigma": sigma,
            "seed": seed,
            "k": k,
            "lam_k": float(ev[k - 1]),
            "ratio": float(ev[0] / ev[k - 1]),
            "logit_std": logit_std,
        }
        for k in SPECTRUM_K
        if k <= len(ev)
    ]


GD_STEPS = tuple(
    16 * e for e in (0, 20, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)
)  # epochs of 16 steps


def frozen_feature_gd(
    x: Tensor, y: Tensor, num_classes: int, width: int, sigma: float, seed: int, input_shape: Sequence[int]
) -> list[dict[str, float]]:
    """Full-batch gradient descent on W2 alone (W1 frozen at init) with the squared loss at
    lr = 1/λ_max, in closed form: with H = U S Vᵀ the (N, width) features, the residual along u_k
    shrinks by (1 − lr λ_k)^t, λ_k = 2 s_k² / (k N). For t in :data:`GD_STEPS`: the std of what is left
    of the initial function W2₀H and the train accuracy of argmax of the logits. The model of a ReLU
    net at large σ, where W1 barely moves (no SGD noise, no W1 motion)."""
    torch.manual_seed(seed)
    net = ScaledMLP(input_shape, num_classes, width, "relu", sigma).double()
    with torch.no_grad():
        h = torch.relu(x.reshape(len(x), -1) @ net.hidden.weight.T)  # (N, width)
        z0 = h @ net.out.weight.T  # (N, k) initial logits
        target = torch.nn.functional.one_hot(y, num_classes).double()
        u, s, _ = torch.linalg.svd(h, full_matrices=False)  # u (N, width)
        lam = s.pow(2) * (2.0 / (num_classes * len(h)))
        coef = u.T @ (z0 - target)  # residual along each direction
        outside = (z0 - target) - u @ coef  # outside the features' span: never moves
        rows = []
        for t in GD_STEPS:
            shrink = (1 - lam / lam[0]).pow(t)[:, None]
            logits = target + outside + u @ (shrink * coef)
            rows.append(
                {
                    "sigma": sigma,
                    "seed": seed,
                    "steps": t,
                    "init_std": float((u @ (shrink * (u.T @ z0))).std()),
                    "train_acc": float((logits.argmax(1) == y).double().mean()),
                }
            )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sigma", type=float, nargs="+", default=[0.001, 0.01, 0.1, 1.0, 10.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--loss", default="squared", choices=list(LOSSES))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=4, help="single batches averaged per (σ, seed)")
    parser.add_argument("--iters", type=int, default=40, help="power iterations")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--spectrum-out",
        type=Path,
        help="also (or only, with --no-hessian) write the W2 "
        "block's spectrum and the initial logit std per (σ, seed) here",
    )
    parser.add_argument(
        "--gd-out", type=Path, help="also write frozen_feature_gd's predictions per (σ, seed) here"
    )
    parser.add_argument("--no-hessian", action="store_true", help="skip the power iterations")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = ImageClassificationData("mnist5k", batch_size=args.batch_size)
    data.setup("fit")
    x, y = data.train_x.double(), data.train_y
    per_example = LOSSES[args.loss]
    if args.spectrum_out:
        spec = [
            r
            for sigma in args.sigma
            for seed in args.seeds
            for r in spectrum_rows(x, data.num_classes, args.width, sigma, seed, data.input_shape)
        ]
        write_csv(args.spectrum_out, spec)
    if args.gd_out:
        gd = [
            r
            for sigma in args.sigma
            for seed in args.seeds
            for r in frozen_feature_gd(x, y, data.num_classes, args.width, sigma, seed, data.input_shape)
        ]
        write_csv(args.gd_out, gd)
    if args.no_hessian:
        return
    rows = []
    for sigma in args.sigma:
        for seed in args.seeds:
            torch.manual_seed(seed)
            net = ScaledMLP(data.input_shape, data.num_classes, args.width, "relu", sigma).double()
            w1, w2 = net.hidden.weight, net.out.weight
            gen = torch.Generator().manual_seed(seed)

            def full(xb: Tensor = x, yb: Tensor = y, net: nn.Module = net) -> Tensor:
                return per_example(net(xb), yb).mean()

            row = {
                "sigma": sigma,
                "seed": seed,
                "lam_full": top_eigenvalue(full, [w1, w2], args.iters, gen),
                "lam_w1": top_eigenvalue(full, [w1], args.iters, gen),
                "lam_w2": top_eigenvalue(full, [w2], args.iters, gen),
            }
            perm = torch.randperm(len(y), generator=gen)
            lams = []
            for b in range(args.batches):
                idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
                lams.append(
                    top_eigenvalue(
                        lambda i=idx, net=net: per_example(net(x[i]), y[i]).mean(), [w1, w2], args.iters, gen
                    )
                )
            row["lam_batch"] = sum(lams) / len(lams)
            rows.append(row)
            sys.stdout.write(", ".join(f"{k}={v:.6g}" for k, v in row.items()) + "\n")
    write_csv(args.out, rows)


def write_csv(path: Path, rows: list[dict[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows({k: repr(v) for k, v in r.items()} for r in rows)


if __name__ == "__main__":
    main()
