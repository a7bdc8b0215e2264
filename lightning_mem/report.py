"""Figures and tables from finished runs: ``lightning-mem report RUN_DIR_OR_MANIFEST... --out DIR``.

Inputs are run folders (``metrics.csv`` + ``config.yaml``, as the CLI writes them), folders that
hold run folders at any depth (e.g. ``runs/<name>``), or sweep manifests (``manifest.json`` of
``lightning-mem sweep local``). Each run's ``config.yaml`` is flattened to dotted keys
(``model.net.init_args.init_std``); the keys whose values differ across runs are the swept keys.
Runs are grouped by the swept keys other than the seed (or by ``--group-by``), and the seeds of
a group give mean ± std (sample std, ddof 1; 0 for one seed).

Figures (PNG, matplotlib Agg), each skipped with a logged note when its metrics are absent:

- ``curves.png``: train (dashed) and held-out (solid) accuracy over epochs, one line per σ
  (or per group when σ is not swept), one panel per activation/loss/... (Fig. 1a/2a).
- ``acc_vs_sigma.png``: best held-out accuracy and final train accuracy vs σ, one line per panel.
- ``alignment_vs_sigma.png``: in-class gradient alignment of W1 and representation alignment
  (train batches and held-out) vs σ (Fig. 2c/2d, 4b/4c).
- ``alignment_curves.png``: the same alignments over training steps, one line per σ.
- ``grad_norm_vs_sigma.png``: ‖∇W1‖/‖W1‖ (mean over training) vs σ (Fig. 2b).
- ``acc_vs_alignment.png``: best held-out accuracy vs final alignment, one point per run (Fig. 1b).

Tables: ``summary.md`` (mean ± std per group) and ``runs.csv`` (one row per run, full precision).
A run that diverged (``status.json`` of the divergence guard, or the manifest) counts in a group but
has no final numbers. "Final" alignment is the mean of the last ``--tail`` measurements (alignment
is measured on single batches and is noisy); final accuracies are the last epoch's; ‖∇W1‖/‖W1‖ is
the mean over training.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

log = logging.getLogger(__name__)

SIGMA_SUFFIX = "init_std"  # the swept scale: model.net.init_args.init_std
SEED_KEYS = ("seed_everything", "data.seed")
# Config keys that differ between runs without being an experimental factor.
IGNORED_PREFIXES = (
    "config", "run.id", "run.root", "ckpt_path", "data.seed", "data.data_dir", "trainer.logger",
    "trainer.callbacks", "trainer.default_root_dir", "data.download",
)
DPI = 100
PANEL_W, PANEL_H = 4.8, 3.6  # inches per subplot
# Manifest statuses whose runs are reported; a diverged run is a result (its metrics up to then).
FINISHED = {"finished", "diverged"}


# ---------------------------------------------------------------------------- loading


@dataclass
class Run:
    """One finished run: flat config, and each metric as (step, epoch, value) rows in log order."""

    path: Path
    params: dict[str, Any]
    metrics: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)
    status: str = "finished"  # or "diverged" (the divergence guard's status.json, or the manifest)

    def values(self, key: str) -> np.ndarray:
        return np.array([v for _, _, v in self.metrics.get(key, [])], dtype=np.float64)

    def steps(self, key: str) -> np.ndarray:
        return np.array([s for s, _, _ in self.metrics.get(key, [])], dtype=np.float64)

    def epochs(self, key: str) -> np.ndarray:
        return np.array([e for _, e, _ in self.metrics.get(key, [])], dtype=np.float64)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {dotted key: leaf}; lists are kept as leaves (made hashable as tuples)."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(tree, list):
        return {prefix: tuple(json.dumps(x, sort_keys=True, default=str) for x in tree)}
    return {prefix: tree}


def read_metrics(path: Path) -> dict[str, list[tuple[int, float, float]]]:
    """Lightning's CSV: one row per log call with blanks for keys not logged there."""
    out: dict[str, list[tuple[int, float, float]]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row.get("step") or 0))
            epoch = float(row["epoch"]) if row.get("epoch") else math.nan
            for key, text in row.items():
                if key in ("step", "epoch") or text in (None, ""):
                    continue
                try:
                    out.setdefault(key, []).append((step, epoch, float(text)))
                except ValueError:
                    continue
    return out


def load_run(path: Path, params: dict[str, Any] | None = None) -> Run | None:
    metrics_file = path / "metrics.csv"
    if not metrics_file.is_file():
        log.warning("skipping %s: no metrics.csv", path)
        return None
    flat: dict[str, Any] = {}
    config_file = path / "config.yaml"
    if config_file.is_file():
        flat = flatten(yaml.safe_load(config_file.read_text()) or {})
    for key, value in (params or {}).items():
        # Manifest params use CLI keys (model.net.init_std); config.yaml holds .init_args. forms.
        if not any(k == key or k.replace(".init_args", "") == key for k in flat):
            flat[key] = value
    status = "finished"
    marker = path / "status.json"
    if marker.is_file():
        with contextlib.suppress(ValueError, AttributeError):
            status = str(json.loads(marker.read_text()).get("status", status))
    return Run(path, flat, read_metrics(metrics_file), status)


def _manifest_entries(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, dict):
        runs = data.get("runs", data)  # sweep.py: {"runs": {run_id: {status, params, run_dir, ...}}}
        data = list(runs.values()) if isinstance(runs, dict) else runs
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []


def load_manifest(path: Path) -> list[Run]:
    """Runs listed in a sweep manifest (``run_dir`` relative to the manifest or absolute)."""
    runs = []
    for entry in _manifest_entries(json.loads(path.read_text())):
        status = str(entry.get("status", "finished")).lower()
        where = entry.get("run_dir") or entry.get("dir") or entry.get("path")
        if status not in FINISHED:
            log.warning("skipping manifest entry %s: status %r", where, status)
            continue
        if not where:
            log.warning("skipping manifest entry without a run directory: %s", entry)
            continue
        run_dir = Path(where)
        if not run_dir.is_absolute() and not run_dir.exists():
            run_dir = path.parent / run_dir
        params = entry.get("params") or entry.get("parameters") or {}
        run = load_run(run_dir, params if isinstance(params, dict) else {})
        if run is not None:
            run.status = "diverged" if status == "diverged" else run.status
            runs.append(run)
    return runs


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Runs from run folders, folders of runs (searched recursively) and manifests; no duplicates."""
    runs: list[Run] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        if p.is_file() and p.suffix == ".json":
            found = load_manifest(p)
        elif (p / "manifest.json").is_file():
            found = load_manifest(p / "manifest.json")
        elif (p / "metrics.csv").is_file():
            found = [r for r in [load_run(p)] if r is not None]
        elif p.is_dir():
            found = [r for d in sorted(p.rglob("metrics.csv")) if (r := load_run(d.parent)) is not None]
        else:
            raise FileNotFoundError(f"{p}: not a run folder, a folder of runs or a manifest.json")
        for run in found:
            if run.path.resolve() not in seen:
                seen.add(run.path.resolve())
                runs.append(run)
    return runs


# ---------------------------------------------------------------------------- grouping


def swept_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys whose values differ across runs (bookkeeping keys excluded), sorted."""
    keys = sorted({k for r in runs for k in r.params})
    out = []
    for k in keys:
        if any(k == p or k.startswith(p + ".") for p in IGNORED_PREFIXES):
            continue
        if len({_hashable(r.params.get(k)) for r in runs}) > 1:
            out.append(k)
    return out


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else v


def short(key: str) -> str:
    """``model.net.init_args.activation`` -> ``activation``; ``seed_everything`` -> ``seed``."""
    if key == "seed_everything":
        return "seed"
    if key.endswith(SIGMA_SUFFIX):
        return "σ"
    parts = key.replace(".init_args", "").split(".")
    return parts[-1] if parts[-1] != "class_path" else parts[-2]


def fmt_value(v: Any) -> str:
    if isinstance(v, str) and "." in v and v.split(".")[0].isidentifier():
        return v.rsplit(".", 1)[-1]  # class paths -> class name
    if v is None:
        return "default"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def label(keys: Sequence[str], values: Sequence[Any]) -> str:
    return ", ".join(f"{short(k)}={fmt_value(v)}" for k, v in zip(keys, values, strict=True)) or "all runs"


@dataclass
class Layout:
    """How runs split: ``group_keys`` (a row of the table), ``sigma_key`` (x axis), ``panel_keys``."""

    group_keys: list[str]
    sigma_key: str | None
    panel_keys: list[str]

    @classmethod
    def of(cls, runs: Sequence[Run], group_by: Sequence[str] | None = None) -> Layout:
        swept = swept_keys(runs)
        if group_by:
            group_keys = [_resolve_key(runs, k) for k in group_by]
        else:
            group_keys = [k for k in swept if k not in SEED_KEYS]
        sigma = next((k for k in group_keys if k.endswith(SIGMA_SUFFIX)), None)
        return cls(group_keys, sigma, [k for k in group_keys if k != sigma])

    def group(self, run: Run) -> tuple[Any, ...]:
        return tuple(run.params.get(k) for k in self.group_keys)

    def panel(self, run: Run) -> tuple[Any, ...]:
        return tuple(run.params.get(k) for k in self.panel_keys)

    def sigma_tuple(self, run: Run) -> tuple[float | None]:
        return (self.sigma(run),)

    def sigma(self, run: Run) -> float | None:
        v = run.params.get(self.sigma_key) if self.sigma_key else None
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _resolve_key(runs: Sequence[Run], key: str) -> str:
    """Accept CLI spellings (model.net.init_std) and short names (init_std) for --group-by."""
    keys = {k for r in runs for k in r.params}
    if key in keys:
        return key
    matches = sorted(k for k in keys if k.replace(".init_args", "") == key or k.endswith("." + key))
    if len(matches) == 1:
        return matches[0]
    why = "ambiguous: " + ", ".join(matches) if matches else "no such key"
    raise ValueError(f"--group-by {key!r}: {why}")


def _sort_key(values: tuple[Any, ...]) -> tuple[Any, ...]:
    # Numbers first, in order; then None and strings by their text.
    return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in values)


def grouped(runs: Sequence[Run], key_fn: Any) -> dict[tuple[Any, ...], list[Run]]:
    groups: dict[tuple[Any, ...], list[Run]] = {}
    for r in runs:
        groups.setdefault(key_fn(r), []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: _sort_key(kv[0])))


# ---------------------------------------------------------------------------- per-run numbers


def first_key(run_or_runs: Run | Sequence[Run], prefix: str, prefer: Sequence[str] = ()) -> str | None:
    """The metric key to use under ``prefix``: a preferred suffix if present, else the first found.

    Per-class keys (``.../class_<c>``) and logit gradients are never chosen.
    """
    runs = [run_or_runs] if isinstance(run_or_runs, Run) else list(run_or_runs)
    keys = sorted({
        k for r in runs for k in r.metrics
        if k.startswith(prefix) and "/class_" not in k and not k.endswith("/logits")
    })
    for p in prefer:
        if prefix + p in keys:
            return prefix + p
    return keys[0] if keys else None


W1_NAMES = ("hidden.weight", "conv1.weight", "backbone.conv1.weight")


@dataclass
class Keys:
    """The metric keys a report uses, chosen once for all runs."""

    grad: str | None
    rep: str | None
    val_rep: str | None
    norm: str | None

    @classmethod
    def of(cls, runs: Sequence[Run]) -> Keys:
        return cls(
            first_key(runs, "align/grad/", W1_NAMES),
            first_key(runs, "align/rep/", ("act", "features")),
            first_key(runs, "val/align/rep/", ("act", "features")),
            first_key(runs, "norm/grad_over_weight/", W1_NAMES),
        )

    def resolve(self, run: Run) -> Keys:
        """These keys where ``run`` logged them, else the run's own choice (e.g. a ConvNet's
        ``conv1.weight`` in a report that also holds MLPs with ``hidden.weight``)."""
        own = Keys.of([run])
        pairs = zip(astuple(self), astuple(own), strict=True)
        return Keys(*(mine if mine and mine in run.metrics else theirs for mine, theirs in pairs))


COLUMNS = {  # name -> (table header, how it is computed)
    "train_acc": "final train acc",
    "val_acc_best": "best held-out acc",
    "val_acc": "final held-out acc",
    "align_grad": "grad alignment (W1)",
    "align_rep": "rep alignment (train)",
    "val_align_rep": "rep alignment (held-out)",
    "grad_over_weight": "‖∇W1‖/‖W1‖ (mean)",
}


def run_numbers(run: Run, keys: Keys, tail: int = 5) -> dict[str, float]:
    """Final numbers of one run (NaN where the metric is absent); see the module docstring."""
    if run.status == "diverged":  # no final numbers: what it logged before diverging is not an outcome
        return dict.fromkeys(COLUMNS, math.nan)
    keys = keys.resolve(run)

    def last(key: str | None) -> float:
        v = run.values(key) if key else np.empty(0)
        return float(v[-1]) if v.size else math.nan

    def tail_mean(key: str | None) -> float:
        v = run.values(key) if key else np.empty(0)
        return float(v[-tail:].mean()) if v.size else math.nan

    val = run.values("val/acc")
    norm = run.values(keys.norm) if keys.norm else np.empty(0)
    return {
        "train_acc": last("train/acc"),
        "val_acc_best": float(val.max()) if val.size else math.nan,
        "val_acc": last("val/acc"),
        "align_grad": tail_mean(keys.grad),
        "align_rep": tail_mean(keys.rep),
        "val_align_rep": last(keys.val_rep),
        "grad_over_weight": float(norm.mean()) if norm.size else math.nan,
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof 1; 0 for one value) of the finite values; NaN when none."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    if not v.size:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def fmt_mean_std(m: float, s: float) -> str:
    return "–" if not math.isfinite(m) else f"{m:.4f} ± {s:.4f}"


def summary_table(runs: Sequence[Run], layout: Layout, keys: Keys, tail: int = 5) -> str:
    """Markdown table: one row per group, mean ± std over its runs (seeds) of each number."""
    header = [short(k) for k in layout.group_keys] + ["runs"] + list(COLUMNS.values())
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for values, members in grouped(runs, layout.group).items():
        nums = [run_numbers(r, keys, tail) for r in members]
        diverged = sum(r.status == "diverged" for r in members)
        count = f"{len(members)}" + (f" ({diverged} diverged)" if diverged else "")
        cells = [fmt_value(v) for v in values] + [count]
        cells += [fmt_mean_std(*mean_std([n[c] for n in nums])) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        f"Mean ± sample std over the runs of each row (seeds). Alignment: mean of the last {tail} "
        "measurements; held-out = the validation split. A diverged run (stopped by the divergence guard) "
        "counts in `runs` but has no final numbers; – = no value."
    ]
    used = {"grad": keys.grad, "rep": keys.rep, "held-out rep": keys.val_rep, "norm": keys.norm}
    notes.append("Metric keys: " + ", ".join(f"{n} `{k}`" for n, k in used.items() if k)
                 + " (a run without one uses its own first layer, e.g. `conv1.weight`).")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def write_runs_csv(runs: Sequence[Run], layout: Layout, keys: Keys, path: Path, tail: int = 5) -> None:
    seed_key = next((k for k in SEED_KEYS if any(k in r.params for r in runs)), "seed_everything")
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run_dir", *layout.group_keys, seed_key, *COLUMNS])
        for r in runs:
            n = run_numbers(r, keys, tail)
            w.writerow([str(r.path), *[r.params.get(k) for k in layout.group_keys], r.params.get(seed_key),
                        *[repr(n[c]) for c in COLUMNS]])


# ---------------------------------------------------------------------------- figures


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def figure_size(n_panels: int) -> tuple[int, int]:
    """Pixel (width, height) of a figure with ``n_panels`` subplots (for tests and docs)."""
    rows, cols = _grid(n_panels)
    return round(cols * PANEL_W * DPI), round(rows * PANEL_H * DPI)


def _figure(n_panels: int) -> tuple[Any, list[Any]]:
    plt = _plt()
    rows, cols = _grid(n_panels)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * PANEL_W, rows * PANEL_H), dpi=DPI, squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]


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
    fig.savefig(path, dpi=DPI)
    _plt().close(fig)
    log.info("wrote %s", path)
    return path


def _legend(ax: Any, **kwargs: Any) -> None:
    if ax.get_legend_handles_labels()[0]:  # a panel may have no line (e.g. every run diverged)
        ax.legend(**kwargs)


def _color(i: int, n: int) -> Any:
    return _plt().get_cmap("viridis")(i / max(n - 1, 1) * 0.9)


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


def _panels(runs: Sequence[Run], layout: Layout) -> dict[tuple[Any, ...], list[Run]]:
    # Without σ swept every group gets its own line in one panel.
    return grouped(runs, layout.panel) if layout.sigma_key else {(): list(runs)}


def _lines(runs: Sequence[Run], layout: Layout) -> dict[tuple[Any, ...], list[Run]]:
    return grouped(runs, layout.group)


def plot_curves(runs: Sequence[Run], layout: Layout, out: Path) -> Path | None:
    """Train (dashed) and held-out (solid) accuracy per epoch, a line per σ (Fig. 1a/2a)."""
    if not any(r.metrics.get("train/acc") and r.metrics.get("val/acc") for r in runs):
        log.info("skipping curves.png: no train/acc and val/acc")
        return None
    panels = _panels(runs, layout)
    fig, axes = _figure(len(panels))
    for ax, (pvals, members) in zip(axes, panels.items(), strict=True):
        lines = _lines(members, layout)
        for i, group in enumerate(lines.values()):
            c = _color(i, len(lines))
            name = _line_label(layout, group[0])
            for key, style, what in (("val/acc", "-", "held-out"), ("train/acc", "--", "train")):
                x, m, s = _mean_curve(group, key, "epoch")
                if x.size:
                    ax.plot(x + 1, m, style, color=c, label=f"{name} {what}")
                    ax.fill_between(x + 1, m - s, m + s, color=c, alpha=0.15, linewidth=0)
        title = label(layout.panel_keys, pvals) if layout.panel_keys and layout.sigma_key else ""
        ax.set_title(f"train (dashed) vs held-out (solid)\n{title}".strip(), fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        long_labels = max(map(len, ax.get_legend_handles_labels()[1]), default=0) > 24
        _legend(ax, fontsize=6 if not long_labels else 5, ncol=1 if long_labels else 2)
    return _save(fig, out / "curves.png")


def _vs_sigma(
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
        ax.set_title(title, fontsize=9)
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
                x, m, _ = _mean_curve(group, key, "step")
                if x.size:
                    ax.plot(x, m, color=_color(i, len(lines)), label=_line_label(layout, group[0]))
            where = label(layout.panel_keys, pvals) if layout.sigma_key else ""
            ax.set_title(f"{key}\n{where}".strip(), fontsize=8)
            ax.set_xlabel("step")
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


def render(
    runs: Sequence[Run], out: Path, group_by: Sequence[str] | None = None, tail: int = 5
) -> list[Path]:
    """Write every figure that the runs' metrics allow, ``summary.md`` and ``runs.csv``."""
    if not runs:
        raise ValueError("no finished runs to report")
    out.mkdir(parents=True, exist_ok=True)
    layout = Layout.of(runs, group_by)
    keys = Keys.of(runs)
    log.info("%d runs; grouped by %s; σ key %s", len(runs), layout.group_keys or "nothing", layout.sigma_key)
    written = [
        plot_curves(runs, layout, out),
        _vs_sigma(runs, layout, keys, [("val_acc_best", "best held-out accuracy"),
                                      ("train_acc", "final train accuracy")], "accuracy",
                  out / "acc_vs_sigma.png", tail=tail),
        _vs_sigma(runs, layout, keys, [("align_grad", f"gradient alignment ({keys.grad})"),
                                      ("align_rep", f"representation alignment ({keys.rep})"),
                                      ("val_align_rep", f"held-out rep. alignment ({keys.val_rep})")],
                  "in-class alignment Ω", out / "alignment_vs_sigma.png", tail=tail),
        plot_alignment_curves(runs, layout, keys, out),
        _vs_sigma(runs, layout, keys, [("grad_over_weight", f"{keys.norm} (mean over training)")],
                  "‖∇W1‖ / ‖W1‖", out / "grad_norm_vs_sigma.png", logy=True, tail=tail),
        plot_acc_vs_alignment(runs, layout, keys, out, tail),
    ]
    (out / "summary.md").write_text(summary_table(runs, layout, keys, tail))
    write_runs_csv(runs, layout, keys, out / "runs.csv", tail)
    log.info("wrote %s and %s", out / "summary.md", out / "runs.csv")
    return [p for p in written if p is not None] + [out / "summary.md", out / "runs.csv"]


def main(argv: Sequence[str] | None = None) -> None:
    """``lightning-mem report RUN_DIR_OR_MANIFEST... --out DIR [--group-by KEY ...]``."""
    parser = argparse.ArgumentParser(
        prog="lightning-mem report",
        description="Figures (PNG) and a Markdown table from finished runs or sweep manifests.",
    )
    parser.add_argument("inputs", nargs="+", help="Run folders, folders of runs, or manifest.json files.")
    parser.add_argument("--out", type=Path, required=True, help="Folder for the figures and summary.md.")
    parser.add_argument("--group-by", nargs="+", default=None, metavar="KEY",
                        help="Config keys that define a group (default: the swept keys except the seed); "
                        "comma-separated or repeated; CLI spellings such as model.net.init_std work.")
    parser.add_argument("--tail", type=int, default=5, help="Final alignment: mean of the last N values.")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    group_by = [k for item in args.group_by or [] for k in item.split(",") if k] or None
    try:
        runs = load_runs(args.inputs)
        render(runs, args.out, group_by, args.tail)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
