"""The report's kernel figure: kernel–target alignment and kernel distance from init vs epoch.

One row of panels per panel group (activation, loss, ...), one line per σ (mean over seeds, ± std
shaded), colour on one log scale of σ. None when no run logged ``kernel/*`` (add the KernelMonitor).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lightning_mem.results.figures import check_layout, wrap_title
from lightning_mem.results.grouping import Layout, grouped, label
from lightning_mem.results.runs import Run

log = logging.getLogger(__name__)

KERNEL_KEYS = (("kernel/target_alignment", "kernel–target alignment"),
               ("kernel/distance_from_init", "Θ distance from init"))
DPI, PANEL_W, PANEL_H = 100, 4.8, 3.6


def _mean_by_epoch(runs: Sequence[Run], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs every run logged ``key`` at (its last value per epoch), mean and std over the runs."""
    per_run = [dict(zip(r.epochs(key).tolist(), r.values(key).tolist(), strict=True)) for r in runs]
    if not per_run:  # a group none of whose runs logged the key (e.g. the ReLU runs of a study without it)
        return np.empty(0), np.empty(0), np.empty(0)
    common = sorted(set.intersection(*(set(d) for d in per_run))) if per_run else []
    ys = np.array([[d[e] for e in common] for d in per_run], dtype=np.float64).reshape(len(per_run), -1)
    return np.array(common), ys.mean(0), ys.std(0)


def plot_kernel_curves(runs: Sequence[Run], layout: Layout, out: Path) -> Path | None:
    """Write ``kernel_curves.png``; returns its path, or None without kernel metrics."""
    if not any(key in r.metrics for r in runs for key, _ in KERNEL_KEYS):
        log.info("skipping kernel_curves.png: no kernel/* metrics (add the KernelMonitor callback)")
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    panels = grouped(runs, layout.panel) if layout.sigma_key else {(): list(runs)}
    sigmas = [s for r in runs if (s := layout.sigma(r)) is not None and s > 0]
    norm = LogNorm(min(sigmas), max(sigmas) * (1 + 1e-9)) if sigmas else None
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(len(panels), len(KERNEL_KEYS), figsize=(len(KERNEL_KEYS) * PANEL_W,
                             len(panels) * PANEL_H), dpi=DPI, squeeze=False)
    for row, (pvals, members) in enumerate(panels.items()):
        lines = grouped(members, layout.group)
        for col, (key, title) in enumerate(KERNEL_KEYS):
            ax = axes[row][col]
            for i, group in enumerate(lines.values()):
                x, m, sd = _mean_by_epoch([r for r in group if key in r.metrics], key)
                if not x.size:
                    continue
                sigma = layout.sigma(group[0])
                if norm is not None and sigma is not None and sigma > 0:
                    color, name = cmap(0.9 * float(norm(sigma))), f"σ={sigma:g}"
                else:
                    color = cmap(i / max(len(lines) - 1, 1) * 0.9)
                    name = label(layout.group_keys, layout.group(group[0]))
                ax.plot(x, m, color=color, label=name)
                ax.fill_between(x, m - sd, m + sd, color=color, alpha=0.2)
            where = label(layout.panel_keys, pvals) if layout.panel_keys and layout.sigma_key else ""
            ax.set_title(wrap_title(f"{title} ({key})\n{where}".strip(), 60), fontsize=8)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
    fig.tight_layout()
    path = out / "kernel_curves.png"
    check_layout(fig, path)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    log.info("wrote %s", path)
    return path
