"""The committed run data behind REPRODUCTION.md and the README's measured tables (``docs/data/``).

Layout, one folder per sweep (``docs/data/<sweep>/``):

    runs.csv     one row per run: id, status, seed, the canonical hyperparameters (``hp.json``), the
                 command's duration, the metric keys used, and the final numbers of
                 :func:`lightning_mem.results.grouping.run_numbers` (full precision, ``repr``) plus the tail
                 means of ``align/grad/out.weight`` and ``align/grad/logits``
    curves.csv   one row per run and epoch: train and held-out accuracy, the epoch's mean of each
                 training-batch alignment and of ‖∇W1‖/‖W1‖, the held-out alignment (6 digits)
    sweep.json   the sweep file, its run folder name, runs, runs at a time, wall time, load average

:func:`collect` reads finished runs through the package's own reader
(:func:`lightning_mem.results.runs.load_runs`) and writes these files; :func:`summary_runs` and
:func:`curve_runs` turn them back into :class:`lightning_mem.results.runs.Run` objects that the package's
own table (:func:`lightning_mem.results.report.summary_table`) and figure functions take unchanged: a
"summary run" holds one- or two-point series whose :func:`run_numbers` are exactly the stored final
numbers, a "curve run" the per-epoch series.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lightning_mem.results.grouping import COLUMNS, Keys, Layout, run_numbers
from lightning_mem.results.report import summary_table
from lightning_mem.results.runs import Run, Series, load_runs
from lightning_mem.rundir import HP_KEYS, read_manifest

TAIL = 5  # final training-batch alignment: mean of the last TAIL measurements (report's default)
KEY_FIELDS = ("grad", "rep", "val_rep", "norm")  # Keys fields -> runs.csv columns <field>_key
EXTRA = {"align_grad_out": "align/grad/out.weight", "align_logits": "align/grad/logits"}
RUN_FIELDS = [
    "run_id",
    "status",
    "seed",
    *[k for k in HP_KEYS if k != "seed"],
    "duration_s",
    "epochs",
    "diverged_epoch",
    "diverged_step",
    *[f"{f}_key" for f in KEY_FIELDS],
    *COLUMNS,
    *EXTRA,
]
CURVE_FIELDS = [
    "run_id",
    "epoch",
    "step",
    "train_acc",
    "val_acc",
    "align_grad",
    "align_rep",
    "val_align_rep",
    "grad_over_weight",
]
CURVE_KEYS = {"train_acc": "train/acc", "val_acc": "val/acc"}  # the others come from the run's Keys


def sweep_name(sweep_file: Path) -> str:
    """The ``name:`` of a sweep YAML: the folder its runs go to under ``--root``."""
    return str(yaml.safe_load(sweep_file.read_text())["name"])


def _cell(v: Any) -> str:
    if v is None:
        return ""
    return repr(float(v)) if isinstance(v, float) else str(v)


def _parse(text: str) -> Any:
    """A runs.csv cell back to None, int, float or str (hyperparameters keep their type)."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _tail_mean(run: Run, key: str) -> float:
    v = run.values(key)
    return float(v[-TAIL:].mean()) if v.size and run.status != "diverged" else math.nan


def _per_epoch(series: Series) -> dict[int, tuple[float, float]]:
    """epoch -> (last step, mean value) of one metric's rows."""
    out = {}
    for e in np.unique(series.epochs[~np.isnan(series.epochs)]):
        rows = series.epochs == e
        out[int(e)] = (float(series.steps[rows].max()), float(series.values[rows].mean()))
    return out


def run_row(run: Run, keys: Keys, durations: dict[str, float]) -> dict[str, Any]:
    own = keys.resolve(run)
    epochs = run.epochs("train/acc")
    row: dict[str, Any] = {
        "run_id": run.path.name,
        "status": run.status,
        "seed": run.hp.get("seed"),
        **{k: run.hp.get(k) for k in HP_KEYS if k != "seed"},
        "duration_s": durations.get(run.path.name),
        "epochs": int(epochs.max()) + 1 if epochs.size else 0,
        "diverged_epoch": run.record.get("epoch") if run.status == "diverged" else None,
        "diverged_step": run.record.get("step") if run.status == "diverged" else None,
        **{f"{f}_key": getattr(own, f) for f in KEY_FIELDS},
    }
    row |= run_numbers(run, keys, TAIL)
    row |= {col: _tail_mean(run, key) for col, key in EXTRA.items()}
    return row


def curve_rows(run: Run, keys: Keys) -> list[dict[str, Any]]:
    own = keys.resolve(run)
    names = CURVE_KEYS | {
        "align_grad": own.grad,
        "align_rep": own.rep,
        "val_align_rep": own.val_rep,
        "grad_over_weight": own.norm,
    }
    per = {col: _per_epoch(run.metrics[k]) for col, k in names.items() if k and k in run.metrics}
    epochs = sorted({e for p in per.values() for e in p})
    rows = []
    for e in epochs:
        step = max(p[e][0] for p in per.values() if e in p)
        row = {"run_id": run.path.name, "epoch": e, "step": int(step)}
        row |= {col: f"{p[e][1]:.6g}" for col, p in per.items() if e in p}
        rows.append(row)
    return rows


def _write_csv(path: Path, fields: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k)) for k in fields})


def collect(sweep_file: Path, root: Path, out: Path, timing: dict[str, Any]) -> list[Run]:
    """Write ``out``/runs.csv, curves.csv and sweep.json (``timing`` and the run count) from the finished
    and diverged runs of ``sweep_file`` under ``root``; raises if a run of the manifest is in any other
    state, or if the table rendered from the written data differs from ``report``'s table of the raw runs."""
    name = sweep_name(sweep_file)
    manifest = root / name / "manifest.json"
    entries = read_manifest(manifest)["runs"]
    unfinished = {k: e["status"] for k, e in entries.items() if e["status"] not in ("finished", "diverged")}
    if unfinished:
        raise ValueError(f"{manifest}: runs not finished: {unfinished}; rerun the sweep first")
    runs = sorted(load_runs([manifest]), key=lambda r: r.path.name)
    keys = Keys.of(runs)
    durations = {k: e.get("duration_s") for k, e in entries.items()}
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "runs.csv", RUN_FIELDS, (run_row(r, keys, durations) for r in runs))
    _write_csv(out / "curves.csv", CURVE_FIELDS, (row for r in runs for row in curve_rows(r, keys)))
    meta = {"name": name, "runs": len(runs), **timing}
    (out / "sweep.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    again = summary_runs(out)
    by = [k.removeprefix("hp.") for k in Layout.of(again).group_keys]  # the canonical keys that vary
    if summary_table(runs, Layout.of(runs, by), keys, TAIL) != summary_table(
        again, Layout.of(again, by), Keys.of(again), TAIL
    ):
        raise AssertionError(f"{out}: the table from the written data differs from report's (a bug here)")
    return runs


# ---------------------------------------------------------------------------- loading


def read_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _params(row: dict[str, Any]) -> dict[str, Any]:
    hp = {k: row.get(k) for k in HP_KEYS if k != "seed"} | {"seed": row["seed"]}
    return {f"hp.{k}": v for k, v in hp.items()}


def _point(*values: float) -> Series:
    n = np.arange(len(values), dtype=np.float64)
    return Series(n, n, np.asarray(values, dtype=np.float64))


def summary_runs(folder: Path) -> list[Run]:
    """One :class:`Run` per row of ``folder``/runs.csv whose :func:`run_numbers` (any tail) are the
    row's numbers: val/acc is the series [best, final], every other metric one point."""
    runs = []
    for row in read_rows(folder / "runs.csv"):
        metrics = {}
        if math.isfinite(row["train_acc"]):
            metrics["train/acc"] = _point(row["train_acc"])
        if math.isfinite(row["val_acc"]):
            metrics["val/acc"] = _point(row["val_acc_best"], row["val_acc"])
        for field, col in zip(
            KEY_FIELDS, ("align_grad", "align_rep", "val_align_rep", "grad_over_weight"), strict=True
        ):
            key = row[f"{field}_key"]
            if key and math.isfinite(row[col]):
                metrics[key] = _point(row[col])
        for col, key in EXTRA.items():
            if math.isfinite(row[col]):
                metrics[key] = _point(row[col])
        params = _params(row)
        runs.append(
            Run(
                Path(row["run_id"]),
                params,
                metrics,
                row["status"],
                {k[3:]: v for k, v in params.items()},
                {"epoch": row["diverged_epoch"]},
            )
        )
    return runs


def curve_runs(folder: Path) -> list[Run]:
    """One :class:`Run` per run of ``folder``/curves.csv with per-epoch series under the metric keys
    of runs.csv (epoch means of the training-batch measurements, at each epoch's last step)."""
    rows = read_rows(folder / "curves.csv")
    runs = []
    for info in read_rows(folder / "runs.csv"):
        mine = [r for r in rows if r["run_id"] == info["run_id"]]
        names = CURVE_KEYS | {
            "align_grad": info["grad_key"],
            "align_rep": info["rep_key"],
            "val_align_rep": info["val_rep_key"],
            "grad_over_weight": info["norm_key"],
        }
        metrics = {}
        for col, key in names.items():
            pts = [(r["step"], r["epoch"], r[col]) for r in mine if key and r[col] is not None]
            if pts:
                metrics[key] = Series(*(np.asarray(v, dtype=np.float64) for v in zip(*pts, strict=True)))
        params = _params(info)
        runs.append(
            Run(Path(info["run_id"]), params, metrics, info["status"], {k[3:]: v for k, v in params.items()})
        )
    return runs
