"""The grokking section of REPRODUCTION.md: collect a packed Omnigrok run into docs/data, draw its figure.

    python tools/docs_grokking.py collect --runs RUN_NAME_FOLDER --out docs/data/grokking_alpha \\
        --wall-s SECONDS --cpu-s SECONDS --command "lightning-mem ensemble fit ..."

reads every member folder (``metrics.csv``, ``hp.json``, ``grokking.json`` when the fit ended) and writes

- ``members.csv``: one row per member (alpha, seed, fit_step, val_step, delay_steps, best/final accuracies,
  weight norms, Ω of the representation on training batches and held out, first and last);
- ``curves.csv``: per member and logged step: train_acc, val_acc, weight_norm, align_rep, val_align_rep;
- ``sweep.json``: the command, wall and CPU seconds, steps, members.

``fit_step`` / ``val_step`` follow :class:`lightning_mem.callbacks.GrokkingMonitor` (its own functions, at
the trainer's step after the epoch: the logged row's step + 1); when a member wrote ``grokking.json`` its
values must agree. ``tools/docs.py render`` draws ``grokking`` figures with :func:`plot_grokking`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_mem.training.grokking import GROKKING_JSON, first_step  # noqa: E402

PLATEAU_TOL = 0.01  # GrokkingMonitor's default: the plateau starts within 1 point of the best val/acc
TRAIN_THRESHOLD = 0.99


def _step(row: dict[str, str]) -> int:
    """The trainer's step of a row: an epoch-end row (train/*, val/*, weight_norm) is logged at the epoch's
    last step, one before ``global_step`` after it; a training-batch alignment row at its own step."""
    return int(row["step"]) + (0 if row.get("align/rep/act") not in (None, "") else 1)


def _series(rows: list[dict[str, str]], key: str) -> list[tuple[int, float]]:
    return [(_step(r), float(r[key])) for r in rows if r.get(key) not in (None, "")]


def member_record(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(members.csv row, curves.csv rows) of one member's run folder."""
    hp = json.loads((folder / "hp.json").read_text())
    hp = hp.get("hp", hp)
    with (folder / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    train, val = _series(rows, "train/acc"), _series(rows, "val/acc")
    norms = _series(rows, "weight_norm")
    rep, val_rep = _series(rows, "align/rep/act"), _series(rows, "val/align/rep/act")
    best = max(v for _, v in val)
    fit = first_step(train, TRAIN_THRESHOLD)
    plateau = first_step(val, best - PLATEAU_TOL)
    summary = folder / GROKKING_JSON
    if summary.is_file():  # the fit ended: the monitor's own record must say the same
        saved = json.loads(summary.read_text())
        assert (saved["fit_step"], saved["val_step"]) == (fit, plateau), (folder, saved, fit, plateau)
    record = {
        "alpha": float(hp["init_scale"]), "seed": int(hp["seed"]), "steps": max(s for s, _ in train),
        "fit_step": fit if fit is not None else "", "val_step": plateau,
        "delay_steps": plateau - fit if fit is not None else "",
        "best_val_acc": best, "final_train_acc": train[-1][1], "final_val_acc": val[-1][1],
        "norm_first": norms[0][1], "norm_last": norms[-1][1], "norm_min": min(v for _, v in norms),
        "align_rep_first": rep[0][1], "align_rep_last": rep[-1][1],
        "val_align_rep_first": val_rep[0][1], "val_align_rep_last": val_rep[-1][1],
        "val_acc_at_fit": next((v for s, v in val if fit is not None and s >= fit), ""),
    }
    curves = []
    for r in rows:
        values = {key: r.get(col, "") for key, col in (
            ("train_acc", "train/acc"), ("val_acc", "val/acc"), ("weight_norm", "weight_norm"),
            ("align_rep", "align/rep/act"), ("val_align_rep", "val/align/rep/act"))}
        if any(v != "" for v in values.values()):
            curves.append({"alpha": record["alpha"], "seed": record["seed"], "step": _step(r),
                           **values})
    return record, curves


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def collect(runs: Path, out: Path, wall_s: float, cpu_s: float, command: str) -> None:
    folders = sorted(p for p in runs.iterdir() if (p / "hp.json").is_file() and (p / "metrics.csv").is_file())
    records, curves = [], []
    for folder in folders:
        record, rows = member_record(folder)
        records.append(record)
        curves += rows
    order = sorted(range(len(records)), key=lambda i: (records[i]["alpha"], records[i]["seed"]))
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "members.csv", [records[i] for i in order])
    _write(out / "curves.csv", sorted(curves, key=lambda r: (r["alpha"], r["seed"], r["step"])))
    sweep = {"command": command, "wall_s": round(wall_s), "cpu_s": round(cpu_s), "members": len(records),
             "steps": max(r["steps"] for r in records)}
    (out / "sweep.json").write_text(json.dumps(sweep, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------- table


def _cell(value: Any, spec: str) -> str:
    return "not reached" if value in (None, "") else format(value, spec)


def member_table(rows: list[dict[str, Any]]) -> str:
    """One Markdown row per member of members.csv (as ``tools/docs.py`` reads it: numbers parsed, empty
    cells None)."""
    head = ("| α | seed | fit step (train ≥ 0.99) | plateau step (val within 0.01 of best) | delay | "
            "val/acc at fit | best val/acc | final train/acc | ‖θ‖ first → last | held-out Ω first → last |")
    lines = [head, "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['alpha']:g} | {r['seed']} | {_cell(r['fit_step'], 'd')} | {r['val_step']} | "
            f"{_cell(r['delay_steps'], 'd')} | {_cell(r['val_acc_at_fit'], '.3f')} | "
            f"{r['best_val_acc']:.3f} | "
            f"{r['final_train_acc']:.3f} | {r['norm_first']:.2f} → {r['norm_last']:.2f} | "
            f"{r['val_align_rep_first']:.3f} → {r['val_align_rep_last']:.3f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- figure


def _band(rows: list[dict[str, Any]], alpha: float, col: str) -> tuple[list[int], list[float], list[float],
                                                                       list[float]]:
    """steps, mean, min, max over the seeds of ``alpha`` at the steps every seed logged ``col``."""
    by_step: dict[int, list[float]] = {}
    seeds = {r["seed"] for r in rows if r["alpha"] == alpha}
    for r in rows:
        if r["alpha"] == alpha and isinstance(r.get(col), (int, float)) and math.isfinite(r[col]):
            by_step.setdefault(int(r["step"]), []).append(float(r[col]))
    steps = sorted(s for s, v in by_step.items() if len(v) == len(seeds))
    return (steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], [min(by_step[s]) for s in steps],
            [max(by_step[s]) for s in steps])


def plot_grokking(rows: list[dict[str, Any]], path: Path) -> None:
    """Accuracies, weight norm and held-out Ω against the step (log axis), one colour per α (mean over
    seeds, band: min to max)."""
    from lightning_mem.results import figures

    plt = figures._plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=figures.DPI)
    colours = {1.0: "tab:blue", 8.0: "tab:red"}
    for alpha in sorted({r["alpha"] for r in rows}):
        colour = colours.get(alpha)
        for ax, col, style, label in (
            (axes[0], "train_acc", "--", "train"), (axes[0], "val_acc", "-", "held-out"),
            (axes[1], "weight_norm", "-", None), (axes[2], "val_align_rep", "-", "held-out"),
            (axes[2], "align_rep", "o--", "train batch"),
        ):
            steps, mean, lo, hi = _band(rows, alpha, col)
            if not steps:
                continue
            text = f"α = {alpha:g}" + (f", {label}" if label else "")
            steps = [max(s, 1) for s in steps]  # the measurement at step 0 drawn at 1 (log axis)
            ax.plot(steps, mean, style, color=colour, label=text, ms=3)
            ax.fill_between(steps, lo, hi, color=colour, alpha=0.15, lw=0)
    for ax, ylabel in zip(axes, ("accuracy", "‖θ‖₂ (all parameters)", "in-class Ω of the representation"),
                          strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0].set_title("MLP 784→200→200→10, MSE, AdamW, 1,000 digits", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    col = sub.add_parser("collect")
    col.add_argument("--runs", type=Path, required=True, help="the run-name folder holding the members")
    col.add_argument("--out", type=Path, default=ROOT / "docs/data/grokking_alpha")
    col.add_argument("--wall-s", type=float, required=True)
    col.add_argument("--cpu-s", type=float, required=True)
    col.add_argument("--command", required=True)
    args = parser.parse_args(argv)
    collect(args.runs, args.out, args.wall_s, args.cpu_s, args.command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
