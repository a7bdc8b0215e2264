"""Dashboards that compare memorization curves across σ, activations, losses, datasets and seeds.

``lightning-mem dashboard html RUN_DIR_OR_MANIFEST... --out FILE.html`` writes one self-contained
HTML file: plotly.js is inlined from the installed ``plotly`` package and the runs are embedded as
JSON, so the file opens from disk with no network and can be mailed. Grouping, filters, statuses and
axis scales are applied in the browser (``dashboard.html``), over this data:

- per run: its status (finished, diverged, failed, interrupted, killed, running), the values of the keys that
  vary across runs (canonical ``hp.<key>`` first, see :mod:`lightning_mem.results.grouping`), its final
  numbers
  (:func:`runsets.run_numbers`, the same as ``report``), and per-epoch curves: ``train/acc``,
  ``val/acc``, ``align/grad/<W1>``, ``align/grad/logits``, ``align/rep/<layer>``,
  ``val/align/rep/<layer>``. A metric logged several times in an epoch (training-batch alignment,
  every few steps) is the mean of that epoch's values. x = epoch + 1 (epochs completed), as in
  ``report``.
- curves are decimated on one grid shared by all runs (every k-th epoch, k = ⌈longest run / 500⌉,
  plus each run's last epoch), so a trace never has much more than 500 points and the seeds of a
  group still share their x values; the step axis is x times the run's steps per epoch.

``lightning-mem dashboard wandb ...`` builds the same panels as a W&B workspace
(:mod:`lightning_mem.results.workspace`).
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_mem import metric_keys, rundir
from lightning_mem.checks import path_arg
from lightning_mem.results.grouping import (
    COLUMNS,
    W1_NAMES,
    Keys,
    Layout,
    factor_keys,
    pick_key,
    run_numbers,
    short,
)
from lightning_mem.results.runs import Run, load_runs
from lightning_mem.rundir import RunDirError

log = logging.getLogger(__name__)

MAX_POINTS = 500  # per trace: 500 runs x 2,000 epochs stay under 25 MB (docs/performance.md)
FILTER_KEYS = ("hp.dataset", "hp.activation", "hp.loss")
SIGMA_KEY, SEED_KEY = "hp.init_std", "hp.seed"
FACET_KEYS = ("hp.activation", "hp.loss", "hp.dataset", "hp.net")  # small multiples by one of these
CURVES = {"train": metric_keys.TRAIN_ACC, "val": metric_keys.VAL_ACC}  # name in the page -> metric key
# Drawn when logged: the memorization of noisy labels (label noise), the losses, the KernelMonitor's
# kernel-target alignment and kernel distance from init (and "wdist": W1's distance from init).
EXTRA_CURVES = {"clean": metric_keys.TRAIN_ACC_CLEAN, "noisy": metric_keys.TRAIN_ACC_NOISY,
                "train_loss": metric_keys.TRAIN_LOSS, "val_loss": metric_keys.VAL_LOSS,
                "kta": metric_keys.KERNEL_TARGET_ALIGNMENT, "kdist": metric_keys.KERNEL_DISTANCE}
LEGEND_NAMES = {"label_noise": "noise", "train_subset": "subset", "batch_size": "batch"}  # short, in legends
PICK_POINTS = 300  # per trace of a key chosen in the metric picker (every logged key is embedded)
# The status checkboxes, in this order; runs of the last two have no outcome (no final numbers).
STATUS_ORDER = (rundir.FINISHED, rundir.DIVERGED, rundir.RUNNING, rundir.INTERRUPTED, rundir.KILLED,
                rundir.FAILED)
NO_OUTCOME = (rundir.DIVERGED, rundir.FAILED)
PLOTLY_MARK, DATA_MARK = "/*PLOTLY_JS*/", "/*DATA_JSON*/"


def epoch_curve(run: Run, key: str | None) -> dict[int, float]:
    """{epoch + 1: mean of the finite values logged in that epoch} for ``key`` of ``run``."""
    if not key or key not in run.metrics:
        return {}
    epochs, values = run.epochs(key), run.values(key)
    ok = np.isfinite(epochs) & np.isfinite(values)
    if not ok.any():
        return {}
    x, inverse = np.unique(epochs[ok].astype(np.int64), return_inverse=True)
    means = np.bincount(inverse, values[ok]) / np.bincount(inverse)
    return dict(zip((x + 1).tolist(), means.tolist(), strict=True))


def _num(v: Any) -> float | None:
    """A float with 4 significant digits for the page (None for NaN/inf)."""
    return float(f"{v:.4g}") if isinstance(v, (int, float)) and math.isfinite(v) else None


def _jsonable(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    return list(v) if isinstance(v, tuple) else v


def picker_keys(runs: Sequence[Run]) -> list[str]:
    """Every logged metric key (all runs), for the page's metric picker; ``epoch`` and the entries of the
    stiffness matrix (drawn as a heat map) excluded."""
    return sorted({k for r in runs for k in r.metrics
                   if k not in ("epoch", "step") and not k.startswith(metric_keys.STIFFNESS_MATRIX)})


def steps_per_epoch(run: Run) -> float | None:
    """Global steps per epoch (the last step logged in an epoch, of the accuracies and losses, over the
    epochs completed), for the page's step axis; None when no row has both."""
    ends = epoch_steps(run)
    return max(ends.values()) / max(ends) if ends else None


def epoch_steps(run: Run) -> dict[int, int]:
    """{epoch + 1: the last global step logged in that epoch + 1} of the accuracies and losses."""
    out: dict[int, int] = {}
    for key in (*CURVES.values(), metric_keys.TRAIN_LOSS, metric_keys.VAL_LOSS):
        if key in run.metrics:
            epochs, steps = run.epochs(key), run.steps(key)
            for e, st in zip(epochs.tolist(), steps.tolist(), strict=True):
                if math.isfinite(e) and math.isfinite(st):
                    out[int(e) + 1] = max(out.get(int(e) + 1, 0), int(st) + 1)
    return out


def stiffness_matrix(run: Run) -> dict[str, Any] | None:
    """The class stiffness matrix of the last epoch that logged it (``stiffness/class_matrix/<c>_<c′>``
    of the KernelMonitor): ``{"epoch": epoch + 1, "classes": C, "z": C × C rows}``; None without."""
    cells: dict[tuple[int, int], str] = {}
    for key in run.metrics:
        a, _, b = key.removeprefix(metric_keys.STIFFNESS_MATRIX).partition("_")
        if key.startswith(metric_keys.STIFFNESS_MATRIX) and a.isdigit() and b.isdigit():
            cells[int(a), int(b)] = key
    if not cells:
        return None
    curves = {cell: epoch_curve(run, key) for cell, key in cells.items()}
    epoch = max((x for c in curves.values() for x in c), default=None)
    if epoch is None:
        return None
    n = 1 + max(max(cell) for cell in cells)
    return {"epoch": epoch, "classes": n,
            "z": [[_num(curves.get((a, b), {}).get(epoch, math.nan)) for b in range(n)] for a in range(n)]}


def run_entry(run: Run, keys: Keys, shown: Sequence[str], stride: int, tail: int,
              picks: Sequence[str] = (), pick_stride: int = 1, wdist: str | None = None) -> dict[str, Any]:
    """One run as the page's JSON: name, status, key values, final numbers, decimated curves and the step
    at each of their x; ``p``: every key of the metric picker that is not one of the curves, on a coarser
    grid; ``stiff``: the last class stiffness matrix (:func:`stiffness_matrix`)."""
    own = keys.resolve(run)
    metric = {**CURVES, **EXTRA_CURVES, "wdist": wdist, "grad": own.grad, "logits": metric_keys.GRAD_LOGITS,
              "rep": own.rep, "val_rep": own.val_rep}
    curves = {name: epoch_curve(run, key) for name, key in metric.items()}
    picked = {}
    for key in (k for k in picks if k not in metric.values()):  # a curve already embedded is not repeated
        c = epoch_curve(run, key)
        last = max(c, default=0)
        px = [x for x in c if x % pick_stride == 0 or x == last]
        if px:
            picked[key] = [px, [_num(c[x]) for x in px]]
    every = sorted({x for c in curves.values() for x in c})
    xs = [x for x in every if x % stride == 0 or x == every[-1]]
    name = run.hp.get("run_name")
    record = run.record
    return {
        "name": f"{name}/{run.path.name}" if name and name != run.path.name else run.path.name,
        "path": str(run.path),
        "status": run.status,
        "reason": record.get("reason") or record.get("message") or "",
        "epochs": int(max(every)) if every else 0,
        "values": {k: _jsonable(run.get(k)) for k in shown},
        "numbers": {k: _num(v) for k, v in run_numbers(run, keys, tail).items()},
        "x": xs,
        "spe": steps_per_epoch(run),  # the step axis: x * spe
        "y": {name: [_num(c.get(x, math.nan)) for x in xs] for name, c in curves.items()
              if c or name not in (*EXTRA_CURVES, "wdist")},  # the extra curves only where logged
        "p": picked,  # metric picker: key -> [x, y]
        "stiff": stiffness_matrix(run),
    }


def payload(runs: Sequence[Run], group_by: Sequence[str] | None, title: str, tail: int = 5) -> dict[str, Any]:
    """Everything the page draws, as JSON-ready data (see the module docstring)."""
    keys = Keys.of(runs)
    layout = Layout.of(runs, group_by)
    # The factors (the one grouping rule), the seed and what --group-by asked for; a filter on each.
    groupable = list(dict.fromkeys([*factor_keys(runs), SEED_KEY, *layout.group_keys]))
    shown = list(dict.fromkeys([*groupable, *FILTER_KEYS, SIGMA_KEY]))
    picks = picker_keys(runs)
    longest = max((int(np.nanmax(r.epochs(k))) + 1 for r in runs for k in CURVES.values()
                   if r.epochs(k).size and np.isfinite(r.epochs(k)).any()), default=1)
    stride = max(1, math.ceil(longest / MAX_POINTS))
    has_logits = any(metric_keys.GRAD_LOGITS in r.metrics for r in runs)
    wdist = pick_key({k for r in runs for k in r.metrics}, metric_keys.WEIGHT_DISTANCE, W1_NAMES)
    extra = {**EXTRA_CURVES, "wdist": wdist}
    return {
        "title": title,
        "created": time.strftime("%Y-%m-%d %H:%M"),
        "metrics": {"train": metric_keys.TRAIN_ACC, "val": metric_keys.VAL_ACC, "grad": keys.grad,
                    "logits": metric_keys.GRAD_LOGITS if has_logits else None, "rep": keys.rep,
                    "val_rep": keys.val_rep, "norm": keys.norm},
        "keys": [{"key": k, "label": short(k), "legend": LEGEND_NAMES.get(short(k), short(k))}
                 for k in shown],
        "groupable": groupable,
        "group_by": layout.group_keys,
        "filters": [k for k in shown if len({json.dumps(r.get(k), default=str) for r in runs}) > 1],
        "facet_candidates": [k for k in FACET_KEYS if k in groupable],
        "extra": {name: key for name, key in extra.items() if key and any(key in r.metrics for r in runs)},
        "picks": picks,
        # The page names none of these itself: the status names (lightning_mem.rundir), the σ and seed
        # keys, the metric picker's first key (lightning_mem.metric_keys), the curve each picked key is.
        "statuses": list(STATUS_ORDER),
        "no_outcome": list(NO_OUTCOME),
        "diverged": rundir.DIVERGED,
        "sigma_key": SIGMA_KEY,
        "seed_key": SEED_KEY,
        "default_pick": metric_keys.TRAIN_LOSS,
        "curve_of": {key: name for name, key in {**CURVES, **extra}.items() if key},
        "columns": COLUMNS,
        "stride": stride,
        "tail": tail,
        "runs": [run_entry(r, keys, shown, stride, tail, picks, max(1, math.ceil(longest / PICK_POINTS)),
                           wdist) for r in runs],
    }


def plotly_js() -> str:
    """plotly.js (minified) from the installed ``plotly`` package: the page needs no network."""
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


# In a <script> element, "</script" ends it and "<!--" followed by "<script" makes the parser swallow the
# rest of the page; "&", U+2028 and U+2029 matter to other embeddings. Escaped, JSON.parse reads the same.
_EMBED_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                                "\u2028": "\\u2028", "\u2029": "\\u2029"})


def embed_json(data: Any) -> str:
    """``data`` as JSON text that no string in it can end or comment out the ``<script>`` element it is
    embedded in: every ``<``, ``>``, ``&``, U+2028 and U+2029 is written as its ``\\uXXXX`` escape."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.translate(_EMBED_ESCAPES)


def render_html(data: dict[str, Any]) -> str:
    """The page: ``dashboard.html`` with plotly.js and ``data`` inlined."""
    page = importlib.resources.files("lightning_mem.results") / "dashboard.html"
    template = page.read_text(encoding="utf-8")
    text = embed_json(data)
    head, rest = template.split(PLOTLY_MARK)
    middle, end = rest.split(DATA_MARK)
    return head + plotly_js() + middle + text + end


MARKER = b"lightning-mem dashboard: written by"  # in the first lines of every page this module writes


def check_out(out: Path) -> None:
    """``--out`` must name a new file or an earlier dashboard (which is replaced); ValueError otherwise."""
    if out.is_dir():
        raise ValueError(f"--out {out}: is a directory; give a file name, e.g. {out / 'dashboard.html'}")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"--out {out}: {parent} is a file, not a folder")
    if out.exists():
        with out.open("rb") as fh:
            head = fh.read(512)
        if MARKER not in head:
            raise ValueError(f"--out {out}: is an existing file that is not a lightning-mem dashboard; "
                             "give a new file name (an earlier dashboard is replaced)")


def write_html(inputs: Sequence[str | Path], out: Path, group_by: Sequence[str] | None = None,
               title: str | None = None, tail: int = 5, watch: float | None = None) -> dict[str, Any]:
    """Load every run under ``inputs`` (all statuses) and write the dashboard to ``out`` (atomically:
    a page open in a browser never reads half a file). ``watch``: the page reloads itself every that
    many seconds, keeping its controls."""
    check_out(out)
    if tail < 1:
        raise ValueError(f"--tail {tail}: must be an integer >= 1 (the last N values averaged)")
    runs = load_runs(inputs, statuses=None)
    if not runs:
        raise ValueError(f"no runs (folders with a metrics.csv) under {', '.join(map(str, inputs))}")
    data = payload(runs, group_by, title or f"lightning-mem: {len(runs)} runs", tail)
    data["watch"] = watch
    rundir.atomic_write_text(out, render_html(data))
    return data


def main(argv: Sequence[str] | None = None) -> None:
    """``lightning-mem dashboard html ...`` and ``lightning-mem dashboard wandb ...``."""
    parser = argparse.ArgumentParser(
        prog="lightning-mem dashboard",
        description="Interactive dashboards of memorization curves: a self-contained HTML file, or a W&B "
        "workspace built from code.")
    sub = parser.add_subparsers(dest="kind", required=True)
    html = sub.add_parser("html", help="One self-contained interactive HTML file (plotly, no network).")
    html.add_argument("inputs", nargs="+", type=path_arg,
                      help="Run folders, folders of runs, or manifest.json files.")
    html.add_argument("--out", type=path_arg, required=True, help="The HTML file to write.")
    html.add_argument("--group-by", nargs="+", default=None, metavar="KEY",
                      help="Initial grouping (default: the keys that differ across runs, except the "
                      "seed); canonical names (init_std, activation, ...) or config keys. The page can "
                      "regroup.")
    html.add_argument("--title", default=None, help="Page title (default: the number of runs).")
    html.add_argument("--tail", type=int, default=5, help="Final alignment: mean of the last N values.")
    html.add_argument("--watch", type=float, default=None, metavar="SECONDS",
                      help="Rewrite the file (atomically) every SECONDS while runs write, until Ctrl-C; the "
                      "open page reloads itself as often and keeps its grouping, filters and axes.")
    from lightning_mem.results import workspace

    workspace.add_arguments(sub.add_parser(
        "wandb", help="The same panels as a W&B workspace (wandb-workspaces), saved on the server."))
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.kind == "wandb":
        workspace.run(args, parser)
        return
    group_by = [k for item in args.group_by or [] for k in item.split(",") if k] or None
    if args.watch is not None and not (math.isfinite(args.watch) and args.watch > 0):
        parser.error(f"--watch {args.watch:g}: must be a number of seconds > 0")
    while True:
        try:
            data = write_html(args.inputs, args.out, group_by, args.title, args.tail, args.watch)
        except (OSError, RunDirError, ValueError) as err:
            parser.error(str(err))
        size = args.out.stat().st_size
        sys.stdout.write(f"{args.out}: {len(data['runs'])} runs, {size / 1e6:.1f} MB\n")
        if args.watch is None:
            return
        sys.stdout.flush()
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return


if __name__ == "__main__":
    main()
