"""The figures of REPRODUCTION.md (tools/docs.py): the package's report figures drawn from the stored
runs (:mod:`docsdata`), the Theorem 1 figure of :mod:`lightning_mem.analysis.theorem1`, and the curvature
figure
of tools/sharpness.py's data. Only ``render`` draws; ``check`` never compares pixels."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from docsdata import TAIL

from lightning_mem.results import figures
from lightning_mem.results.grouping import Keys, Layout, mean_std


class FigureError(ValueError):
    """A figure that cannot be drawn: the message names it."""


VS_SIGMA = {  # figure kind -> (columns, y label, log y): the panels of report's *_vs_sigma figures
    "acc_vs_sigma": (
        [("val_acc_best", "best held-out accuracy"), ("train_acc", "final train accuracy")],
        "accuracy",
        False,
    ),
    "alignment_vs_sigma": (
        [
            ("align_grad", "gradient alignment ({grad})"),
            ("align_rep", "representation alignment ({rep})"),
            ("val_align_rep", "held-out rep. alignment ({val_rep})"),
        ],
        "in-class alignment Ω",
        False,
    ),
    "grad_norm_vs_sigma": ([("grad_over_weight", "{norm} (mean over training)")], "‖∇W1‖ / ‖W1‖", True),
}


def draw(
    ns: Any, kind: str, sweeps: Any, path: Path, by: Sequence[str] | None, where: dict[str, Any] | None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind in ("theorem1", "sharpness"):
        (plot_theorem1 if kind == "theorem1" else plot_sharpness)(ns.csv(sweeps), path)
        return
    if kind == "grokking":  # tools/docs_grokking.py's curves.csv
        from docs_grokking import plot_grokking

        plot_grokking(ns.csv(sweeps), path)
        return
    runs = ns.stored_runs(sweeps, where=where)
    layout, keys = Layout.of(runs, by), Keys.of(runs)
    if kind in VS_SIGMA:
        cols, ylabel, logy = VS_SIGMA[kind]
        names = {"grad": keys.grad, "rep": keys.rep, "val_rep": keys.val_rep, "norm": keys.norm}
        made = figures.plot_vs_sigma(
            runs, layout, keys, [(c, t.format(**names)) for c, t in cols], ylabel, path, logy=logy, tail=TAIL
        )
    elif kind == "acc_vs_alignment":
        with tempfile.TemporaryDirectory() as tmp:
            made = figures.plot_acc_vs_alignment(runs, layout, keys, Path(tmp), TAIL)
            made = made and Path(shutil.move(made, path))
    elif kind in ("curves", "alignment_curves"):
        curves = ns.stored_runs(sweeps, "curves", where)
        with tempfile.TemporaryDirectory() as tmp:
            made = (
                figures.plot_curves(curves, layout, Path(tmp))
                if kind == "curves"
                else figures.plot_alignment_curves(curves, layout, Keys.of(curves), Path(tmp))
            )
            made = made and Path(shutil.move(made, path))
    else:
        raise FigureError(
            f"figure kind {kind!r} is not known; allowed: curves, alignment_curves, acc_vs_alignment, "
            f"{', '.join(VS_SIGMA)}, theorem1, sharpness, grokking"
        )
    if not made:
        raise FigureError(f"figure {path.name}: the data of {sweeps} lack its metrics")


def plot_theorem1(rows: list[dict[str, Any]], path: Path) -> None:
    from lightning_mem.analysis.theorem1 import plot

    plot(sorted({r["sigma"] for r in rows}), rows, path)


def plot_sharpness(rows: list[dict[str, Any]], path: Path) -> None:
    """λ_max of the Hessian at init vs σ: both layers, W1 block, W2 block, one batch (mean over seeds)."""
    plt = figures._plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=figures.DPI)
    sigmas = sorted({r["sigma"] for r in rows})
    for col, label, style in (
        ("lam_full", "both layers, 4,000 digits", "o-"),
        ("lam_w1", "W1 block", "s--"),
        ("lam_w2", "W2 block", "^--"),
        ("lam_batch", "both layers, one batch of 256", "x:"),
    ):
        ax.plot(
            sigmas,
            [mean_std([r[col] for r in rows if r["sigma"] == s])[0] for s in sigmas],
            style,
            label=label,
        )
    ax.plot(sigmas, [2 / 0.01] * len(sigmas), "k-", lw=0.8, label="2 / lr at the paper's lr 0.01")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("σ (init std of W1)")
    ax.set_ylabel("top Hessian eigenvalue λ_max at init")
    ax.set_title("ReLU MLP + squared loss at init (width 1024, mnist5k)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
