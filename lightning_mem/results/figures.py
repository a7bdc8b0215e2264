"""The report's figures (PNG, matplotlib Agg); each returns its path, or None when the runs lack
its metrics. See :mod:`lightning_mem.results.report` for what each figure shows.
"""

from __future__ import annotations

import itertools
import logging
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_mem import metric_keys
from lightning_mem.results.grouping import SIGMA_SUFFIX, Keys, Layout, grouped, label, mean_std, run_numbers
from lightning_mem.results.runs import Run

log = logging.getLogger(__name__)

DPI = 100
PANEL_W, PANEL_H = 4.8, 3.6  # inches per subplot


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int) -> tuple[int, int]:
    """(rows, cols) for ``n`` panels: up to 3 per row."""
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def _figure(n_panels: int) -> tuple[Any, list[Any]]:
    plt = _plt()
    rows, cols = _grid(n_panels)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * PANEL_W, rows * PANEL_H), dpi=DPI, squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]


def text_boxes(fig: Any) -> list[tuple[str, Any]]:
    """(text, window extent in pixels) of every visible, non-empty text of a drawn figure: titles, axis
    labels, tick labels, legend entries; texts of hidden axes are left out."""
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    undrawn = set()  # the labels of ticks outside the view: matplotlib keeps them but does not draw them
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            slack = 1e-9 * max(abs(lo), abs(hi), 1.0)
            for tick in (*axis.get_major_ticks(), *axis.get_minor_ticks()):
                if not lo - slack <= tick.get_loc() <= hi + slack:
                    undrawn |= {id(tick.label1), id(tick.label2)}
    out = []
    for t in fig.findobj(Text):
        hidden = (t.axes is not None and not t.axes.get_visible()) or id(t) in undrawn
        if hidden or not t.get_visible() or not t.get_text().strip():
            continue
        box = t.get_window_extent(renderer)
        if box.width > 0 and box.height > 0:
            out.append((t.get_text(), box))
    return out


def layout_problems(fig: Any) -> list[str]:
    """What is wrong with a figure's layout, from matplotlib's text extents (the renderer's): two text
    boxes that overlap (by more than a pixel each way), and a text or legend that leaves the figure."""
    fig.canvas.draw()
    boxes, whole = text_boxes(fig), fig.bbox
    problems = []
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        overlap_w = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
        overlap_h = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
        if overlap_w > 1 and overlap_h > 1:
            problems.append(f"text {a!r} overlaps {b!r}")
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_visible() and ax.get_legend())]
    renderer = fig.canvas.get_renderer()
    for what, box in [*boxes, *(("legend", lg.get_window_extent(renderer)) for lg in legends)]:
        if box.x0 < whole.x0 - 1 or box.y0 < whole.y0 - 1 or box.x1 > whole.x1 + 1 or box.y1 > whole.y1 + 1:
            problems.append(f"{what!r} leaves the figure")
    return problems


def check_layout(fig: Any, path: Path) -> None:
    """Log a warning naming ``path`` and each :func:`layout_problems` of ``fig`` (none: silent)."""
    problems = layout_problems(fig)
    if problems:
        log.warning("%s: %d layout problems: %s", path, len(problems), "; ".join(problems[:10]))


def wrap_title(text: str, width: int = 52) -> str:
    """A panel title folded to lines of at most ``width`` characters (a facet label never runs into the
    next panel's title), its own line breaks kept."""
    return "\n".join(textwrap.fill(line, width, break_on_hyphens=False) for line in text.split("\n"))


def _save(fig: Any, path: Path, legend_from: Any = None) -> Path:
    """Save; with ``legend_from`` (an axes) one legend for the figure, below the panels."""
    bottom = 0.0
    if legend_from is not None:
        handles, labels = legend_from.get_legend_handles_labels()
        if handles:
            ncol = 3 if max(map(len, labels)) < 40 else 2
            rows = math.ceil(len(labels) / ncol)
            height = fig.get_size_inches()[1]
            bottom = min(0.6, (0.17 * rows + 0.1) / height)  # legend height as a fraction of the figure
            fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0.0, bottom, 1.0, 1.0))
    check_layout(fig, path)
    fig.savefig(path, dpi=DPI)
    _plt().close(fig)
    log.info("wrote %s", path)
    return path


def _legend(ax: Any, **kwargs: Any) -> None:
    if ax.get_legend_handles_labels()[0]:  # a panel may have no line (e.g. every run diverged)
        ax.legend(**kwargs)


def _color(i: int, n: int) -> Any:
    return _plt().get_cmap("viridis")(i / max(n - 1, 1) * 0.9)


def _sigma_color(layout: Layout, runs: Sequence[Run], run: Run, i: int, n: int) -> Any:
    """σ on one logarithmic viridis scale over all ``runs`` (the dashboard's); else by index."""
    s = layout.sigma(run)
    sigmas = [v for r in runs if (v := layout.sigma(r)) is not None and v > 0]
    if s is None or s <= 0 or not sigmas:
        return _color(i, n)
    lo, hi = math.log10(min(sigmas)), math.log10(max(sigmas))
    t = (math.log10(s) - lo) / (hi - lo) if hi > lo else 0.5
    return _plt().get_cmap("viridis")(t * 0.9)


def _line_label(layout: Layout, run: Run) -> str:
    s = layout.sigma(run)
    return f"σ={s:g}" if s is not None else label(layout.panel_keys, layout.panel(run))


def _mean_curve(runs: Sequence[Run], key: str, x: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over runs of ``key`` against epoch or step, on the x values all runs share."""
    series = []
    for r in runs:
        xs = r.epochs(key) if x == "epoch" else r.steps(key)
        series.append(dict(zip(xs.tolist(), r.values(key).tolist(), strict=True)))
    common = sorted(set.intersection(*(set(s) for s in series))) if series else []
    ys = np.array([[s[c] for c in common] for s in series], dtype=np.float64).reshape(len(series), -1)
    return np.array(common), ys.mean(0), ys.std(0)


def _epoch_mean_curve(runs: Sequence[Run], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean over runs of each run's epoch mean of ``key`` against epoch + 1, as the dashboard draws it
    (training-batch alignment is logged several times an epoch), on the epochs all runs share."""
    from lightning_mem.results.dashboard import epoch_curve

    curves = [epoch_curve(r, key) for r in runs]
    common = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return np.array(common), np.array([np.mean([c[x] for c in curves]) for x in common])


def _panels(runs: Sequence[Run], layout: Layout) -> dict[tuple[Any, ...], list[Run]]:
    # Without σ swept every group gets its own line in one panel.
    return grouped(runs, layout.panel) if layout.sigma_key else {(): list(runs)}


def _lines(runs: Sequence[Run], layout: Layout) -> dict[tuple[Any, ...], list[Run]]:
    return grouped(runs, layout.group)


CURVES = ((metric_keys.VAL_ACC, "-", "held-out"), (metric_keys.TRAIN_ACC, "--", "train"))
NOISY_CURVES = ((metric_keys.VAL_ACC, "-", "held-out"), (metric_keys.TRAIN_ACC_NOISY, ":", "noisy"),
                (metric_keys.TRAIN_ACC_CLEAN, "-.", "clean"))


def plot_noisy_curves(runs: Sequence[Run], layout: Layout, out: Path) -> Path | None:
    """``noisy_curves.png``: the memorization of noisy labels — train accuracy on the corrupted labels
    (dotted) and on the kept ones (dash-dot) beside held-out accuracy (solid), a line per σ, for the runs
    that logged ``train/acc_noisy``; None without label noise."""
    noisy = [r for r in runs if r.metrics.get(metric_keys.TRAIN_ACC_NOISY)]
    if not noisy:
        log.info("skipping noisy_curves.png: no train/acc_noisy (no label noise)")
        return None
    return plot_curves(noisy, layout, out, NOISY_CURVES, "noisy_curves.png",
                       "train on noisy (dotted) / clean (dash-dot) labels, held-out (solid)")


def plot_curves(runs: Sequence[Run], layout: Layout, out: Path,
                series: Sequence[tuple[str, str, str]] = CURVES, name: str = "curves.png",
                what: str = "train (dashed) vs held-out (solid)") -> Path | None:
    """Train (dashed) and held-out (solid) accuracy per epoch, a line per σ (Fig. 1a/2a); ``series``:
    other (metric key, line style, label) triples."""
    if not any(r.metrics.get(metric_keys.TRAIN_ACC) and r.metrics.get(metric_keys.VAL_ACC) for r in runs):
        log.info("skipping curves.png: no train/acc and val/acc")
        return None
    panels = _panels(runs, layout)
    fig, axes = _figure(len(panels))
    for ax, (pvals, members) in zip(axes, panels.items(), strict=True):
        lines = _lines(members, layout)
        for i, group in enumerate(lines.values()):
            c = _sigma_color(layout, runs, group[0], i, len(lines))
            line = _line_label(layout, group[0])
            for key, style, kind in series:
                x, m, s = _mean_curve(group, key, "epoch")
                if x.size:
                    ax.plot(x + 1, m, style, color=c, label=f"{line} {kind}")
                    ax.fill_between(x + 1, m - s, m + s, color=c, alpha=0.15, linewidth=0)
        title = label(layout.panel_keys, pvals) if layout.panel_keys and layout.sigma_key else ""
        ax.set_title(wrap_title(f"{what}\n{title}".strip()), fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        long_labels = max(map(len, ax.get_legend_handles_labels()[1]), default=0) > 24
        _legend(ax, fontsize=6 if not long_labels else 5, ncol=1 if long_labels else 2)
    return _save(fig, out / name)


def plot_vs_sigma(
    runs: Sequence[Run], layout: Layout, keys: Keys, cols: Sequence[tuple[str, str]], ylabel: str,
    path: Path, logy: bool = False, tail: int = 5,
) -> Path | None:
    """One panel per column ``(number, title)``: mean ± std over seeds vs σ, a line per panel group."""
    if layout.sigma_key is None:
        log.info("skipping %s: σ (%s) is not swept", path.name, SIGMA_SUFFIX)
        return None
    numbers = {id(r): run_numbers(r, keys, tail) for r in runs}
    present = [(c, t) for c, t in cols if any(math.isfinite(n[c]) for n in numbers.values())]
    if not present:
        log.info("skipping %s: no %s", path.name, ", ".join(c for c, _ in cols))
        return None
    fig, axes = _figure(len(present))
    panels = grouped(runs, layout.panel)
    for ax, (col, title) in zip(axes, present, strict=True):
        for i, (pvals, members) in enumerate(panels.items()):
            pts = []
            for sigma_runs in grouped([r for r in members if layout.sigma(r)], layout.sigma_tuple).values():
                m, s = mean_std([numbers[id(r)][col] for r in sigma_runs])
                if math.isfinite(m):
                    pts.append((layout.sigma(sigma_runs[0]), m, s))
            if pts:
                xs, ms, ss = (np.array(v, dtype=np.float64) for v in zip(*pts, strict=True))
                ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, color=f"C{i}",
                            label=label(layout.panel_keys, pvals))
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("σ (init std of W1)")
        ax.set_ylabel(ylabel)
        ax.set_title(wrap_title(title), fontsize=9)
        ax.grid(alpha=0.3, which="both")
    return _save(fig, path, legend_from=axes[0])


def plot_alignment_curves(runs: Sequence[Run], layout: Layout, keys: Keys, out: Path) -> Path | None:
    """Alignment over training steps, a line per σ (or group); a row of panels per panel group."""
    metrics = [k for k in (keys.grad, keys.rep, keys.val_rep) if k]
    if not metrics:
        log.info("skipping alignment_curves.png: no align/* metrics (add the AlignmentMonitor callback)")
        return None
    panels = _panels(runs, layout)
    plt = _plt()
    nrows, ncols = len(panels), len(metrics)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * PANEL_W, nrows * PANEL_H), dpi=DPI, squeeze=False)
    for row, (pvals, members) in enumerate(panels.items()):
        lines = _lines(members, layout)
        for col, key in enumerate(metrics):
            ax = axes[row][col]
            for i, group in enumerate(lines.values()):
                x, m = _epoch_mean_curve(group, key)
                if x.size:
                    ax.plot(x, m, color=_sigma_color(layout, runs, group[0], i, len(lines)),
                            label=_line_label(layout, group[0]))
            where = label(layout.panel_keys, pvals) if layout.sigma_key else ""
            ax.set_title(wrap_title(f"{key}\n{where}".strip(), 60), fontsize=8)
            ax.set_xlabel("epoch")
            ax.set_ylabel("in-class alignment Ω")
            ax.grid(alpha=0.3)
            _legend(ax, fontsize=6)
    return _save(fig, out / "alignment_curves.png")


def plot_acc_vs_alignment(
    runs: Sequence[Run], layout: Layout, keys: Keys, out: Path, tail: int = 5
) -> Path | None:
    """Best held-out accuracy vs final alignment, one point per run (Fig. 1b)."""
    cols = [(c, k) for c, k in (("align_grad", keys.grad), ("align_rep", keys.rep),
                                ("val_align_rep", keys.val_rep)) if k]
    if not cols:
        log.info("skipping acc_vs_alignment.png: no align/* metrics")
        return None
    numbers = {id(r): run_numbers(r, keys, tail) for r in runs}
    fig, axes = _figure(len(cols))
    # Colour: σ (or the group when σ is not swept); marker: the panel group (activation, loss, ...).
    sigmas = sorted({s for r in runs if (s := layout.sigma(r)) is not None})
    panels = list(grouped(runs, layout.panel))
    groups = _lines(runs, layout)
    markers = "osD^vP*X<>hp"
    for ax, (col, key) in zip(axes, cols, strict=True):
        for i, group in enumerate(groups.values()):
            pts = [(numbers[id(r)][col], numbers[id(r)]["val_acc_best"]) for r in group]
            pts = [p for p in pts if all(map(math.isfinite, p))]
            if not pts:
                continue
            s = layout.sigma(group[0])
            color = _color(sigmas.index(s), len(sigmas)) if s is not None else _color(i, len(groups))
            marker = markers[panels.index(layout.panel(group[0])) % len(markers)]
            ax.scatter(*zip(*pts, strict=True), color=color, marker=marker, s=22, alpha=0.85,
                       label=None if sigmas else label(layout.group_keys, layout.group(group[0])))
        ax.set_xlabel(f"final {key}")
        ax.set_ylabel("best held-out accuracy")
        ax.grid(alpha=0.3)
    if sigmas:  # a compact legend: one entry per σ (colour) and one per panel group (marker)
        from matplotlib.lines import Line2D

        for i, s in enumerate(sigmas):
            color = _color(i, len(sigmas))
            axes[0].add_line(Line2D([], [], color=color, marker="o", ls="", label=f"σ={s:g}"))
        if layout.panel_keys:
            for j, pvals in enumerate(panels):
                axes[0].add_line(Line2D([], [], color="grey", marker=markers[j % len(markers)], ls="",
                                        label=label(layout.panel_keys, pvals)))
    return _save(fig, out / "acc_vs_alignment.png", legend_from=axes[0])
