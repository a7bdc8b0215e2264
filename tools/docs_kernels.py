"""The kernel sweeps' committed data and what the documents compute from it.

    python tools/docs_kernels.py collect --runs /tmp/runs [SWEEP ...]
        <runs>/<sweep>/ (sweeps/kernels/<sweep>.yaml, default both) -> docs/data/<sweep>/kernels.csv
        and, from the sweep's manifest.json, docs/data/<sweep>/sweep.json (runs, packs, wall time)

``kernels.csv`` holds one row per run and epoch with the run's activation, σ and seed and the epoch's
last logged value of each key of :data:`KEYS`. REPRODUCTION.md's kernel section and docs/kernels.md's
block are rendered from it by ``tools/docs.py`` through :class:`KernelData` (``kernels(SWEEP)`` in a
placeholder). Exit codes: 0 written, 2 bad input (named).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ("kernel_sigma", "kernel_sigma_paper")
DATA = Path("docs/data")
FILE = "kernels.csv"
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
NAMES = {  # column -> what the documents call it
    "val_acc": "final held-out accuracy",
    "kta": "kernel–target alignment",
    "kta_centered": "centred kernel–target alignment",
    "val_align_rep": "Ω of held-out representations (`val/align/rep/act`)",
    "align_grad": "Ω of W1 gradients (`align/grad/hidden.weight`)",
    "k_dist": "Θ distance from init",
    "w1_dist": "‖W1−W1₀‖/‖W1₀‖",
    "pattern": "pattern change",
}
ALIGNMENTS = ("kta", "kta_centered", "val_align_rep", "align_grad")  # compared with each other
EXACT_UP_TO = 5000  # resamples: below this many ordered seed tuples the bootstrap is enumerated exactly
DRAWS = 2000  # above it: this many draws of a fixed generator


class DocsError(ValueError):
    pass


def collect(runs: Path, sweep: str) -> pd.DataFrame:
    """One row per (run, epoch) of ``runs/sweep``: the epoch's last logged value of every key."""
    folder = runs / sweep
    if not folder.is_dir():
        raise DocsError(f"--runs {runs}: no folder {sweep}/ (run sweeps/kernels/{sweep}.yaml into it)")
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


def sweep_meta(runs: Path, sweep: str) -> dict[str, Any] | None:
    """sweep.json of docs/data/<sweep>/ from the sweep's manifest: its file, runs and wall time (first
    start to last end); None without a manifest."""
    path = runs / sweep / "manifest.json"
    if not path.is_file():
        return None
    entries = list(json.loads(path.read_text())["runs"].values())
    if any(e.get("duration_s") is None for e in entries):
        raise DocsError(f"{path}: a run has not ended (no duration_s)")
    starts = [datetime.strptime(e["started"], "%Y-%m-%dT%H:%M:%S%z").timestamp() for e in entries]
    ends = [t + float(e["duration_s"]) for t, e in zip(starts, entries, strict=True)]
    return {"sweep_file": f"sweeps/kernels/{sweep}.yaml", "runs": len(entries),
            "packs": len({e.get("pack") for e in entries}), "wall_s": round(max(ends) - min(starts), 1)}


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (ties: average ranks)."""
    ra, rb = rankdata(np.asarray(a, dtype=np.float64)), rankdata(np.asarray(b, dtype=np.float64))
    return float(np.corrcoef(ra, rb)[0, 1])


def seed_resamples(seeds: Sequence[int]) -> list[tuple[int, ...]]:
    """The bootstrap's resamples of the seeds (with replacement): every ordered tuple when there are
    at most :data:`EXACT_UP_TO` (the exact bootstrap distribution), else :data:`DRAWS` draws of
    ``numpy.random.default_rng(0)``."""
    n = len(seeds)
    if n**n <= EXACT_UP_TO:
        return list(itertools.product(seeds, repeat=n))
    rng = np.random.default_rng(0)
    return [tuple(int(s) for s in rng.choice(list(seeds), n)) for _ in range(DRAWS)]


class KernelData:
    """The final epoch of each run of one kernel sweep, and the statistics the documents quote."""

    def __init__(self, df: pd.DataFrame, sweep: str) -> None:
        self.sweep = sweep
        self.all = df
        self.last = df.loc[df.groupby("run")["epoch"].idxmax()].reset_index(drop=True)
        self.epochs = int(self.last["epoch"].max()) + 1
        self.seeds = sorted(int(s) for s in self.last["seed"].unique())
        self.sigmas = sorted(float(s) for s in self.last["sigma"].unique())

    @classmethod
    def load(cls, root: Path, sweep: str) -> KernelData:
        path = root / DATA / sweep / FILE
        if not path.is_file():
            raise DocsError(f"{path}: missing; run `python tools/docs_kernels.py collect --runs ... {sweep}`")
        return cls(pd.read_csv(path), sweep)

    def _runs(self, activation: str | None = None, **where: Any) -> pd.DataFrame:
        g = self.last if activation is None else self.last[self.last["activation"] == activation]
        for k, v in where.items():
            g = g[np.isclose(g[k], v)] if isinstance(v, (int, float)) else g[g[k] == v]
        if g.empty:
            raise DocsError(f"{self.sweep}: no run with activation={activation} {where}")
        return g

    def final(self, col: str, activation: str | None = None, **where: Any) -> float:
        """Mean over the matching runs of ``col`` at their final epoch."""
        return float(self._runs(activation, **where)[col].mean())

    def n(self, activation: str | None = None) -> int:
        return len(self._runs(activation))

    def rho(self, col: str, against: str = "val_acc", activation: str | None = None) -> float:
        """Spearman's ρ of ``col`` with ``against`` over all matching runs (final epoch)."""
        g = self._runs(activation)
        return spearman(g[col], g[against])

    def rho_per_seed(self, col: str, against: str = "val_acc", activation: str | None = None) -> list[float]:
        """ρ over the σ of each seed."""
        return [spearman(s[col], s[against]) for _, s in self._runs(activation).groupby("seed")]

    def rho_interval(self, col: str, minus: str | None = None, against: str = "val_acc",
                     activation: str | None = None, level: float = 0.95) -> tuple[float, float]:
        """Percentile interval, bootstrap over seeds (:func:`seed_resamples`: a resample takes all runs
        of each drawn seed), of ρ(``col``, ``against``) − ρ(``minus``, ``against``) (or of ρ alone)."""
        g = self._runs(activation)
        by_seed = {int(s): part for s, part in g.groupby("seed")}
        stats = []
        for pick in seed_resamples(sorted(by_seed)):
            h = pd.concat([by_seed[s] for s in pick])
            stat = spearman(h[col], h[against])
            stats.append(stat - spearman(h[minus], h[against]) if minus else stat)
        tail = 100 * (1 - level) / 2
        lo, hi = np.percentile(stats, [tail, 100 - tail])
        return float(lo), float(hi)

    def compare(self, col: str, ref: str, activation: str) -> str:
        """'better' / 'worse' when the 95% bootstrap interval of ρ(col) − ρ(ref) lies above / below 0,
        else 'no better and no worse'."""
        lo, hi = self.rho_interval(col, ref, activation=activation)
        return "better" if lo > 0 else "worse" if hi < 0 else "no better and no worse"

    def max(self, col: str) -> float:
        return float(self.last[col].max())

    def lazy(self, activation: str) -> str:
        """Whether Θ stays closer to its init as σ grows: the sign of ρ(Θ distance from init, σ)."""
        r = self.rho("k_dist", "sigma", activation=activation)
        return (f"yes, Θ's distance from init falls as σ grows (ρ with σ {r:+.2f})" if r < 0 else
                f"no, Θ's distance from init grows with σ (ρ with σ {r:+.2f})")

    def falls(self, col: str, activation: str) -> str:
        """Whether ``col`` falls with σ as the final held-out accuracy does (signs of their ρ with σ)."""
        r = self.rho(col, "sigma", activation=activation)
        acc = self.rho("val_acc", "sigma", activation=activation)
        same = (r < 0) == (acc < 0)
        word = "yes" if same and r < 0 else "no"
        return f"{word} (ρ with σ {r:+.2f}; held-out accuracy's {acc:+.2f})"

    # ---------------------------------------------------------------- tables
    def table(self) -> str:
        """Final epoch per (φ, σ): mean ± sd over the seeds of the accuracy and the kernel measures."""
        spread = len(self.seeds) > 1
        lines = ["| φ | σ | final held-out acc | kernel–target align. | centred | Θ distance from init | "
                 "‖W1−W1₀‖/‖W1₀‖ | pattern change | stiffness in / cross class |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

        def ms(g: pd.DataFrame, col: str, fmt: str = ".3f") -> str:
            return f"{g[col].mean():{fmt}} ± {g[col].std():{fmt}}" if spread else f"{g[col].mean():{fmt}}"

        for (act, sigma), g in self.last.groupby(["activation", "sigma"]):
            lines.append(f"| {act} | {sigma:g} | {ms(g, 'val_acc')} | {ms(g, 'kta')} | "
                         f"{ms(g, 'kta_centered')} | {ms(g, 'k_dist', '.2g')} | {ms(g, 'w1_dist', '.2g')} | "
                         f"{ms(g, 'pattern', '.2g')} | "
                         f"{g['stiff_diag'].mean():.3f} / {g['stiff_off'].mean():.3f} |")
        return "\n".join(lines)

    def rank_table(self, measures: Sequence[str] = ("kta", "kta_centered", "val_align_rep", "align_grad",
                                                    "k_dist"), ref: str = "val_align_rep") -> str:
        """Per activation and measure: ρ with the final held-out accuracy over all runs, its bootstrap
        interval over seeds, ρ within each seed (mean ± sd), and the interval of ρ − ρ(``ref``)."""
        lines = [f"| φ | measure | ρ, all runs | 95% interval (seeds) | ρ per seed (mean ± sd) | "
                 f"ρ − ρ of {NAMES[ref].split(' (')[0]}, 95% interval |",
                 "|---|---|---:|---:|---:|---:|"]
        for act in sorted(self.last["activation"].unique()):
            for col in measures:
                lo, hi = self.rho_interval(col, activation=act)
                per_seed = self.rho_per_seed(col, activation=act)
                sd = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else math.nan
                if col == ref or col not in ALIGNMENTS:
                    diff = "–"
                else:
                    dlo, dhi = self.rho_interval(col, ref, activation=act)
                    diff = f"[{dlo:+.2f}, {dhi:+.2f}]"
                lines.append(f"| {act} | {NAMES[col]} | {self.rho(col, activation=act):+.2f} | "
                             f"[{lo:+.2f}, {hi:+.2f}] | {np.mean(per_seed):+.2f} ± {sd:.2f} | {diff} |")
        return "\n".join(lines)

    def sigma_table(self, activation: str | None = None,
                    cols: Sequence[str] = ("val_acc", "kta", "k_dist", "w1_dist", "pattern")) -> str:
        """ρ of each measure with σ over all runs (per activation): the direction each moves in."""
        acts = [activation] if activation else sorted(self.last["activation"].unique())
        lines = ["| φ | " + " | ".join(NAMES[c] for c in cols) + " |", "|---|" + "---:|" * len(cols)]
        for act in acts:
            cells = [f"{self.rho(c, 'sigma', activation=act):+.2f}" for c in cols]
            lines.append(f"| {act} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/docs_kernels.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT)
    sub = parser.add_subparsers(dest="command", required=True)
    col = sub.add_parser("collect")
    col.add_argument("--runs", type=Path, required=True, help="the --root the sweeps ran into")
    col.add_argument("sweeps", nargs="*", default=list(SWEEPS), help=f"default: {' '.join(SWEEPS)}")
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    try:
        for sweep in args.sweeps:
            if sweep not in SWEEPS:
                raise DocsError(f"sweep {sweep!r} is not one of {', '.join(SWEEPS)}")
            df = collect(args.runs, sweep)
            out = root / DATA / sweep / FILE
            out.parent.mkdir(parents=True, exist_ok=True)
            df.to_csv(out, index=False, float_format="%.6g")
            meta = sweep_meta(args.runs, sweep)
            if meta is not None:
                (out.parent / "sweep.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
            sys.stdout.write(f"{df['run'].nunique()} runs -> {out.relative_to(root)}\n")
        return 0
    except (ValueError, OSError, KeyError) as err:
        sys.stderr.write(f"tools/docs_kernels.py: {err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
