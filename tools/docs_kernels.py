"""The measured section of docs/kernels.md, rendered from committed run data.

    python tools/docs_kernels.py collect --runs /tmp/runs  # <runs>/kernel_sigma -> docs/data/kernel_sigma/
    python tools/docs_kernels.py render                    # kernels.csv -> the block of docs/kernels.md
    python tools/docs_kernels.py check                     # exit 1 when the block differs from the data

The block sits between ``<!-- kernels:begin -->`` and ``<!-- kernels:end -->``. ``kernels.csv`` holds one
row per run and epoch with the run's activation, σ and seed and the logged values the section uses.
Exit codes: 0 written / same, 1 ``check`` found a difference, 2 bad input (named).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SWEEP = "kernel_sigma"
DATA = Path("docs/data") / SWEEP / "kernels.csv"
PAGE = Path("docs/kernels.md")
BEGIN, END = "<!-- kernels:begin -->", "<!-- kernels:end -->"
KEYS = {
    "val_acc": "val/acc",
    "train_acc": "train/acc",
    "kta": "kernel/target_alignment",
    "kta_centered": "kernel/target_alignment_centered",
    "k_dist": "kernel/distance_from_init",
    "velocity": "kernel/velocity",
    "w1_dist": "weights/distance_from_init/hidden.weight",
    "pattern": "act/pattern_change",
    "stiff_diag": "stiffness/class_matrix/diag_mean",
    "stiff_off": "stiffness/class_matrix/off_diag_mean",
    "val_align_rep": "val/align/rep/act",
    "align_grad": "align/grad/hidden.weight",
}


class DocsError(ValueError):
    pass


def collect(runs: Path) -> pd.DataFrame:
    """One row per (run, epoch): the epoch's last logged value of every key."""
    folder = runs / SWEEP
    if not folder.is_dir():
        raise DocsError(f"--runs {runs}: no folder {SWEEP}/ (run sweeps/kernels/{SWEEP}.yaml into it)")
    rows = []
    for run in sorted(p for p in folder.iterdir() if (p / "metrics.csv").is_file()):
        hp = json.loads((run / "hp.json").read_text())
        hp = hp.get("hp", hp)
        m = pd.read_csv(run / "metrics.csv")
        present = {short: key for short, key in KEYS.items() if key in m.columns}
        per_epoch = m.groupby("epoch")[list(present.values())].last().rename(
            columns={v: k for k, v in present.items()})
        for epoch, values in per_epoch.iterrows():
            rows.append({"run": run.name, "activation": hp["activation"], "sigma": float(hp["init_std"]),
                         "seed": int(hp["seed"]), "epoch": int(epoch), **values.to_dict()})
    if not rows:
        raise DocsError(f"{folder}: no runs with a metrics.csv")
    return pd.DataFrame(rows)


def _spearman(a: pd.Series, b: pd.Series) -> float:
    return float(a.rank().corr(b.rank()))


def render_block(df: pd.DataFrame) -> str:
    last = df.loc[df.groupby("run")["epoch"].idxmax()]
    epochs = int(last["epoch"].max()) + 1
    lines = [BEGIN, "",
             f"Final epoch ({epochs} epochs) of `sweeps/kernels/{SWEEP}.yaml`, mean ± sd over "
             f"{last['seed'].nunique()} seeds; kernel measures on the fixed probe of 256 held-out "
             "digits:", "",
             "| φ | σ | final held-out acc | kernel–target align. | centred | Θ distance from init | "
             "‖W1−W1₀‖/‖W1₀‖ | pattern change | stiffness in / cross class |",
             "|---|---|---|---|---|---|---|---|---|"]

    def ms(g: pd.DataFrame, col: str, fmt: str = ".3f") -> str:
        return f"{g[col].mean():{fmt}} ± {g[col].std():{fmt}}"

    for (act, sigma), g in last.groupby(["activation", "sigma"]):
        lines.append(f"| {act} | {sigma:g} | {ms(g, 'val_acc')} | {ms(g, 'kta')} | {ms(g, 'kta_centered')} | "
                     f"{ms(g, 'k_dist', '.2g')} | {ms(g, 'w1_dist', '.2g')} | {ms(g, 'pattern', '.2g')} | "
                     f"{g['stiff_diag'].mean():.3f} / {g['stiff_off'].mean():.3f} |")
    lines += ["", "Spearman rank correlation with the final held-out accuracy across the 5 σ of each seed "
              "(mean ± sd over the seeds), and over all 15 runs of an activation:", "",
              "| φ | measure | per seed | all runs |", "|---|---|---|---|"]
    measures = {"kta": "kernel–target alignment", "kta_centered": "centred kernel–target alignment",
                "val_align_rep": "Ω of held-out representations (`val/align/rep/act`)",
                "align_grad": "Ω of W1 gradients (`align/grad/hidden.weight`)",
                "k_dist": "Θ distance from init"}
    for act, g in last.groupby("activation"):
        for col, name in measures.items():
            per_seed = pd.Series([_spearman(s[col], s["val_acc"]) for _, s in g.groupby("seed")])
            lines.append(f"| {act} | {name} | {per_seed.mean():+.2f} ± {per_seed.std():.2f} | "
                         f"{_spearman(g[col], g['val_acc']):+.2f} |")
    lines += ["", END]
    return "\n".join(lines)


def _page(root: Path, df: pd.DataFrame) -> tuple[str, str]:
    text = (root / PAGE).read_text()
    if BEGIN not in text or END not in text:
        raise DocsError(f"{root / PAGE}: no {BEGIN} … {END} block")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    return text, head + render_block(df) + tail


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/docs_kernels.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT)
    sub = parser.add_subparsers(dest="command", required=True)
    col = sub.add_parser("collect")
    col.add_argument("--runs", type=Path, required=True, help="the --root the sweep ran into")
    sub.add_parser("render")
    sub.add_parser("check")
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    try:
        if args.command == "collect":
            df = collect(args.runs)
            (root / DATA).parent.mkdir(parents=True, exist_ok=True)
            df.to_csv(root / DATA, index=False, float_format="%.6g")
            sys.stdout.write(f"{df['run'].nunique()} runs -> {DATA}\n")
            return 0
        if not (root / DATA).is_file():
            raise DocsError(f"{root / DATA}: no such file (run `collect` first)")
        old, new = _page(root, pd.read_csv(root / DATA))
        if args.command == "render":
            (root / PAGE).write_text(new)
            sys.stdout.write(f"wrote {PAGE}\n")
            return 0
        sys.stdout.write("up to date\n" if old == new else f"{PAGE} differs from {DATA}: run render\n")
        return 0 if old == new else 1
    except (ValueError, OSError, KeyError) as err:
        sys.stderr.write(f"tools/docs_kernels.py: {err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
