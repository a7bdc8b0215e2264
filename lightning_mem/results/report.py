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
- ``noisy_curves.png`` (label noise): train accuracy on the corrupted labels (dotted) and on the kept
  ones (dash-dot) beside held-out accuracy, the same panels, for the runs that logged them.
- ``acc_vs_sigma.png``: best held-out accuracy and final train accuracy vs σ, one line per panel.
- ``alignment_vs_sigma.png``: in-class gradient alignment of W1 and representation alignment
  (train batches and held-out) vs σ (Fig. 2c/2d, 4b/4c).
- ``alignment_curves.png``: the same alignments over training steps, one line per σ.
- ``grad_norm_vs_sigma.png``: ‖∇W1‖/‖W1‖ (mean over training) vs σ (Fig. 2b).
- ``acc_vs_alignment.png``: best held-out accuracy vs final alignment, one point per run (Fig. 1b).

Tables: ``summary.md`` (mean ± std per group, then n and the 95% CI over seeds of the final and the
best held-out accuracy) and ``runs.csv`` (one row per run, full precision, with its group's spread).
``--compare KEY=A,B`` adds ``compare.md`` (:mod:`lightning_mem.results.spread`), also printed.
A run that diverged (``status.json`` of the divergence guard, or the manifest) counts in a group but
has no final numbers. "Final" alignment is the mean of the last ``--tail`` measurements (alignment
is measured on single batches and is noisy); final accuracies are the last epoch's; ‖∇W1‖/‖W1‖ is
the mean over training.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from lightning_mem import rundir
from lightning_mem.checks import path_arg
from lightning_mem.results.figures import (
    plot_acc_vs_alignment,
    plot_alignment_curves,
    plot_curves,
    plot_noisy_curves,
    plot_vs_sigma,
)
from lightning_mem.results.grouping import (
    COLUMNS,
    SEED_KEYS,
    Keys,
    Layout,
    fmt_mean_std,
    fmt_value,
    grouped,
    mean_std,
    run_numbers,
    short,
)
from lightning_mem.results.kernel_figures import plot_kernel_curves
from lightning_mem.results.runs import Run, load_runs
from lightning_mem.results.spread import (
    Comparison,
    comparison_table,
    parse_compare,
    spread_columns,
    spread_table,
)
from lightning_mem.rundir import MANIFEST, read_manifest

log = logging.getLogger(__name__)


def summary_table(runs: Sequence[Run], layout: Layout, keys: Keys, tail: int = 5) -> str:
    """Markdown table: one row per group, mean ± std over its runs (seeds) of each number."""
    header = [short(k) for k in layout.group_keys] + ["runs"] + list(COLUMNS.values())
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for values, members in grouped(runs, layout.group).items():
        nums = [run_numbers(r, keys, tail) for r in members]
        diverged = sum(r.status == rundir.DIVERGED for r in members)
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
    spread_header, spreads = spread_columns(runs, layout, keys, tail)  # each run carries its group's
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run_dir", *layout.group_keys, seed_key, *COLUMNS, *spread_header])
        for r in runs:
            n = run_numbers(r, keys, tail)
            w.writerow([str(r.path), *[r.params.get(k) for k in layout.group_keys], r.params.get(seed_key),
                        *[repr(n[c]) for c in COLUMNS], *spreads[id(r)]])


def render(
    runs: Sequence[Run], out: Path, group_by: Sequence[str] | None = None, tail: int = 5,
    compare: str | None = None,
) -> list[Path]:
    """Write every figure that the runs' metrics allow, ``summary.md`` and ``runs.csv``; with
    ``compare`` (``KEY=A,B`` or ``KEY``) also ``compare.md``, written to stdout too."""
    if not runs:
        raise ValueError("no finished runs to report")
    layout = Layout.of(runs, group_by)  # a bad --group-by or --compare fails before anything is written
    keys = Keys.of(runs)
    cmp: Comparison | None = parse_compare(runs, compare) if compare else None
    if cmp and cmp.key not in layout.group_keys:
        layout = Layout.of(runs, [*layout.group_keys, cmp.key])
    compared = comparison_table(runs, layout, keys, cmp, tail) if cmp else None
    out.mkdir(parents=True, exist_ok=True)
    log.info("%d runs; grouped by %s; σ key %s", len(runs), layout.group_keys or "nothing", layout.sigma_key)
    written = [
        plot_curves(runs, layout, out),
        plot_noisy_curves(runs, layout, out),
        plot_vs_sigma(runs, layout, keys, [("val_acc_best", "best held-out accuracy"),
                                      ("train_acc", "final train accuracy")], "accuracy",
                  out / "acc_vs_sigma.png", tail=tail),
        plot_vs_sigma(runs, layout, keys, [("align_grad", f"gradient alignment ({keys.grad})"),
                                      ("align_rep", f"representation alignment ({keys.rep})"),
                                      ("val_align_rep", f"held-out rep. alignment ({keys.val_rep})")],
                  "in-class alignment Ω", out / "alignment_vs_sigma.png", tail=tail),
        plot_alignment_curves(runs, layout, keys, out),
        plot_vs_sigma(runs, layout, keys, [("grad_over_weight", f"{keys.norm} (mean over training)")],
                  "‖∇W1‖ / ‖W1‖", out / "grad_norm_vs_sigma.png", logy=True, tail=tail),
        plot_acc_vs_alignment(runs, layout, keys, out, tail),
        plot_kernel_curves(runs, layout, out),  # lightning_mem.results.kernel_figures
    ]
    spread = "\nSpread over seeds:\n\n" + spread_table(runs, layout, keys, tail)
    (out / "summary.md").write_text(summary_table(runs, layout, keys, tail) + spread)
    write_runs_csv(runs, layout, keys, out / "runs.csv", tail)
    log.info("wrote %s and %s", out / "summary.md", out / "runs.csv")
    tables = [out / "summary.md", out / "runs.csv"]
    if compared is not None:
        (out / "compare.md").write_text(compared)
        sys.stdout.write(compared)
        tables.append(out / "compare.md")
    return [p for p in written if p is not None] + tables


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1 (the number of last measurements "
                                         "averaged into the final alignment)")
    return value


def check_out(out: Path) -> None:
    """ValueError naming ``out`` unless it is a folder or can be made one (nothing is created here)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is an existing file; give a folder (created if missing)")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"--out {out}: {parent} is a file, not a folder")


def check_manifests(inputs: Sequence[str]) -> None:
    """Manifests among ``inputs`` checked by :func:`rundir.read_manifest` (RunDirError naming the file)."""
    for item in map(Path, inputs):
        path = item / MANIFEST if item.is_dir() else item
        if path.is_file() and path.suffix == ".json":
            read_manifest(path)


def main(argv: Sequence[str] | None = None) -> None:
    """``lightning-mem report RUN_DIR_OR_MANIFEST... --out DIR [--group-by KEY ...] [--tail N]
    [--compare KEY=A,B]``.

    Exit codes: 0 written; 2 bad input (a missing or corrupt input, --out a file, --tail < 1, a --compare
    key or value the runs do not hold), named.
    """
    parser = argparse.ArgumentParser(
        prog="lightning-mem report",
        description="Figures (PNG) and a Markdown table from finished runs or sweep manifests.",
    )
    parser.add_argument("inputs", nargs="+", type=path_arg,
                        help="Run folders, folders of runs, or manifest.json files.")
    parser.add_argument("--out", type=path_arg, required=True,
                        help="Folder for the figures, summary.md and runs.csv (created if missing).")
    parser.add_argument("--group-by", nargs="+", default=None, metavar="KEY",
                        help="Config keys that define a group (default: the swept keys except the seed); "
                        "comma-separated or repeated; CLI spellings such as model.net.init_std work.")
    parser.add_argument("--tail", type=_positive_int, default=5,
                        help="Final alignment: mean of the last N measurements (default: 5).")
    parser.add_argument("--compare", default=None, metavar="KEY=A,B",
                        help="Compare two values of a key over seeds (e.g. init_std=0.01,10, or net when it "
                        "takes two values): per setting of the other keys, B − A with its 95%% CI, Welch "
                        "t-test p-value, Hedges' g and the seeds needed to resolve it; printed and written "
                        "to compare.md.")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    group_by = [k for item in args.group_by or [] for k in item.split(",") if k] or None
    try:  # RunDirError (a corrupt metrics.csv or manifest, named) is a ValueError
        check_out(args.out)
        check_manifests(args.inputs)
        runs = load_runs(args.inputs)
        render(runs, args.out, group_by, args.tail, args.compare)
    except (OSError, ValueError) as err:
        parser.error(str(err))
