"""What a placeholder of docs/REPRODUCTION.template.md and docs/README.blocks.md can use
(tools/docs.py): numbers from the stored runs (:mod:`docsdata`) and CSVs of docs/data, the report's
tables, and figure links (drawn by :mod:`docsfigures` when rendering)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import docsfigures
from docs_kernels import KernelData
from docsdata import TAIL, curve_runs, read_rows, summary_runs
from docsverdicts import Verdicts

from lightning_mem.results.grouping import Keys, Layout, mean_std
from lightning_mem.results.report import summary_table
from lightning_mem.results.runs import Run
from lightning_mem.results.spread import spread_table

DATA = "docs/data"
FIGURES = "docs/figures"
SHORT = {"sigma": "init_std"}  # where-keys: canonical names (hp.json) plus this alias


class DocsError(ValueError):
    """Bad input to this tool: the message names the file, placeholder or value."""


def duration(seconds: float) -> str:
    """1234.5 -> '20 min 35 s'; under a minute '12.6 s'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


class Namespace:
    """What a placeholder can use. ``sweep`` names a folder of docs/data; ``where`` keywords select
    runs by canonical hyperparameter (``sigma``, ``loss``, ``activation``, ``loss_scale``, ``seed``, ...;
    a list matches any of its values). Numbers come back as floats, formatted by the placeholder."""

    def __init__(self, root: Path, draw: bool) -> None:
        self.root, self.draw = root, draw
        self.figures: list[Path] = []  # every figure linked: must exist
        self._cache: dict[tuple[str, str], list[Run]] = {}
        self._csv: dict[Path, list[dict[str, Any]]] = {}
        self._kernels: dict[str, KernelData] = {}
        self._verdicts = Verdicts(self)  # claim(...) declares a test, verdict(name) quotes it

    def _read(self, path: Path) -> list[dict[str, Any]]:
        if path not in self._csv:
            self._csv[path] = read_rows(path)
        return self._csv[path]

    def names(self) -> dict[str, Any]:
        public = {
            n: getattr(self, n) for n in dir(self) if not n.startswith("_") and callable(getattr(self, n))
        }
        tests = {"claim": self._verdicts.claim, "verdict": self._verdicts.verdict}
        return public | tests | {"TAIL": TAIL, "duration": duration, "math": math}

    # ------------------------------------------------------------------ data
    def _folder(self, sweep: str) -> Path:
        folder = self.root / DATA / sweep
        if not folder.is_dir():
            raise DocsError(f"{folder}: missing; run `python tools/docs.py collect ... {sweep}`")
        return folder

    def stored_runs(
        self, sweeps: str | Sequence[str], kind: str = "summary", where: dict[str, Any] | None = None
    ) -> list[Run]:
        out = []
        for sweep in [sweeps] if isinstance(sweeps, str) else sweeps:
            if (sweep, kind) not in self._cache:
                load = summary_runs if kind == "summary" else curve_runs
                self._cache[sweep, kind] = load(self._folder(sweep))
            out += self._cache[sweep, kind]
        return [r for r in out if _matches(r, where or {})]

    def rows(self, sweep: str, **where: Any) -> list[dict[str, Any]]:
        """runs.csv rows of ``sweep`` matching ``where`` (at least one, else an error)."""
        rows = [
            r
            for r in self._read(self._folder(sweep) / "runs.csv")
            if all(_same(r.get(SHORT.get(k, k)), v) for k, v in where.items())
        ]
        if not rows:
            raise DocsError(f"no run of {sweep} matches {where}")
        return rows

    def values(self, sweep: str, col: str, **where: Any) -> list[float]:
        return [float(r[col]) for r in self.rows(sweep, **where)]

    def mean(self, sweep: str, col: str, **where: Any) -> float:
        """Mean over the matching runs (NaN of diverged runs left out; NaN when none is left)."""
        return mean_std(self.values(sweep, col, **where))[0]

    def std(self, sweep: str, col: str, **where: Any) -> float:
        return mean_std(self.values(sweep, col, **where))[1]

    def paired_max_diff(self, sweep_a: str, sweep_b: str, col: str, **where: Any) -> float:
        """max over seeds of |``col`` of ``sweep_b`` − ``col`` of ``sweep_a``|, runs paired by seed."""
        a = {r["seed"]: float(r[col]) for r in self.rows(sweep_a, **where)}
        b = {r["seed"]: float(r[col]) for r in self.rows(sweep_b, **where)}
        if set(a) != set(b) or len(a) != len(self.rows(sweep_a, **where)):
            raise DocsError(f"{sweep_a} and {sweep_b} ({where}): not one run per seed in each")
        return max(abs(b[s] - a[s]) for s in a)

    def lo(self, sweep: str, col: str, **where: Any) -> float:
        return min(v for v in self.values(sweep, col, **where) if math.isfinite(v))

    def hi(self, sweep: str, col: str, **where: Any) -> float:
        return max(v for v in self.values(sweep, col, **where) if math.isfinite(v))

    def count(self, sweep: str, status: str | None = None, **where: Any) -> int:
        return sum(status in (None, r["status"]) for r in self.rows(sweep, **where))

    def sweep(self, sweep: str) -> dict[str, Any]:
        """sweep.json: ``runs``, ``wall_s``, ``max_parallel``, ``load_start``, ``load_end``, ..."""
        return json.loads((self._folder(sweep) / "sweep.json").read_text())

    def wall(self, *sweeps: str) -> str:
        return duration(sum(self.sweep(s)["wall_s"] for s in sweeps))

    def times_table(self, *sweeps: str) -> str:
        """Rows ``| sweeps/repro/<s>.yaml | runs | wall time | load |`` and a total row."""
        lines, runs, wall = [], 0, 0.0
        for s in sweeps:
            meta = self.sweep(s)
            load = (
                f"{meta['load_start']:.1f} → {meta['load_end']:.1f}"
                if "load_start" in meta
                else "not recorded"
            )
            name = f"`{meta.get('sweep_file', s)}`"
            lines.append(f"| {name} | {meta.get('runs', '')} | {duration(meta['wall_s'])} | {load} |")
            runs += int(meta.get("runs", 0))
            wall += meta["wall_s"]
        lines.append(f"| total | {runs} | {duration(wall)} | |")
        return "\n".join(lines)

    def curve(self, sweep: str, col: str, **where: Any) -> list[list[float]]:
        """Per run (matching ``where``): the per-epoch values of curves.csv column ``col``."""
        ids = {r["run_id"] for r in self.rows(sweep, **where)}
        out: dict[str, list[float]] = {}
        for r in self._read(self._folder(sweep) / "curves.csv"):
            if r["run_id"] in ids and r[col] is not None:
                out.setdefault(r["run_id"], []).append(float(r[col]))
        return list(out.values())

    def first_epoch(self, sweep: str, col: str, at_least: float, **where: Any) -> int:
        """The latest, over the matching runs, of the first epoch (1-based) with ``col`` ≥ ``at_least``."""
        firsts = [
            next((i + 1 for i, v in enumerate(c) if v >= at_least), math.inf)
            for c in self.curve(sweep, col, **where)
        ]
        if not firsts or max(firsts) == math.inf:
            raise DocsError(f"{sweep}: some run never reaches {col} >= {at_least} ({where})")
        return int(max(firsts))

    def kernels(self, sweep: str) -> KernelData:
        """The kernel sweep ``sweep``: docs/data/<sweep>/kernels.csv (tools/docs_kernels.py)."""
        if sweep not in self._kernels:
            self._kernels[sweep] = KernelData.load(self.root, sweep)
        return self._kernels[sweep]

    def csv(self, path: str) -> list[dict[str, Any]]:
        """Rows of a CSV under docs/data (numbers parsed)."""
        return self._read(self.root / DATA / path)

    # ------------------------------------------------------------------ tables and figures
    def table(
        self, sweeps: str | Sequence[str], by: Sequence[str], where: dict[str, Any] | None = None
    ) -> str:
        """report's summary table (mean ± std per group) of the stored runs, in a marked block."""
        runs = self.stored_runs(sweeps, where=where)
        lines = summary_table(runs, Layout.of(runs, by), Keys.of(runs), TAIL).split("\n\n")[0]
        what = "+".join([sweeps] if isinstance(sweeps, str) else sweeps)
        return f"<!-- docs:table {what} by {','.join(by)} -->\n{lines}\n<!-- docs:end table -->"

    def spread(
        self, sweeps: str | Sequence[str], by: Sequence[str], where: dict[str, Any] | None = None
    ) -> str:
        """report's spread-over-seeds table (n, mean ± std, 95% CI of final and best held-out accuracy)."""
        runs = self.stored_runs(sweeps, where=where)
        return spread_table(runs, Layout.of(runs, by), Keys.of(runs), TAIL).split("\n\n")[0]

    def run_table(
        self,
        sweep: str,
        columns: Sequence[tuple[str, str]],
        order: Sequence[Any],
        by: str = "sigma",
        align: str = "",
    ) -> str:
        """One row per run of ``sweep`` with ``by`` in ``order``; ``columns`` = (header, format string
        over the runs.csv row, e.g. ``"{train_acc:.3f}"``); ``align`` one letter per column, l or r
        (default: the first left, the others right)."""
        align = align or "l" + "r" * (len(columns) - 1)
        lines = [
            "| " + " | ".join(h for h, _ in columns) + " |",
            "|" + "".join("---|" if a == "l" else "---:|" for a in align),
        ]
        for value in order:
            (row,) = self.rows(sweep, **{by: value})
            lines.append("| " + " | ".join(fmt.format(**row) for _, fmt in columns) + " |")
        return "\n".join(lines)

    def grid(
        self,
        sweep: str,
        row: str,
        col: str,
        cell: str,
        diverged: str,
        row_fmt: str = "{:g}",
        col_fmt: str = "{:g}",
    ) -> str:
        """A table of ``sweep`` with one row per value of ``row`` and one column per value of ``col``
        (canonical keys, one run per cell): ``cell`` formats a finished run's runs.csv row,
        ``diverged`` a diverged one's."""
        rows = self.rows(sweep)
        rv = sorted({r[SHORT.get(row, row)] for r in rows})
        cv = sorted({r[SHORT.get(col, col)] for r in rows}, reverse=True)
        lines = [
            f"| {row} \\ {col} | " + " | ".join(col_fmt.format(c) for c in cv) + " |",
            "|---|" + "---|" * len(cv),
        ]
        for v in rv:
            cells = []
            for c in cv:
                (r,) = self.rows(sweep, **{row: v, col: c})
                cells.append((diverged if r["status"] == "diverged" else cell).format(**r))
            lines.append(f"| {row_fmt.format(v)} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def csv_mean(self, path: str, col: str, **where: Any) -> float:
        """Mean of column ``col`` over the rows of docs/data/``path`` matching ``where``."""
        vals = [r[col] for r in self.csv(path) if all(_same(r.get(k), v) for k, v in where.items())]
        if not vals:
            raise DocsError(f"no row of {path} matches {where}")
        return mean_std(vals)[0]

    def csv_table(
        self,
        path: str,
        by: str,
        columns: Sequence[tuple[str, Callable[[dict[str, Any]], float], str]],
        label: str | None = None,
    ) -> str:
        """Mean over the rows of docs/data/``path`` per value of ``by``; ``columns`` = (header, row ->
        number, format spec)."""
        rows = self.csv(path)
        lines = [
            f"| {label or by} | " + " | ".join(h for h, _, _ in columns) + " |",
            "|---:|" + "---:|" * len(columns),
        ]
        for v in sorted({r[by] for r in rows}):
            mine = [r for r in rows if r[by] == v]
            cells = [format(mean_std([fn(r) for r in mine])[0], spec) for _, fn, spec in columns]
            lines.append(f"| {v:g} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def gd_epochs(self, sigma: float, at_least: float, steps_per_epoch: int = 16) -> int:
        """The fewest epochs on the grid of frozen_gd.csv at which the predicted train accuracy (mean
        over seeds) of σ reaches ``at_least``."""
        rows = [r for r in self.csv("sharpness/frozen_gd.csv") if _same(r["sigma"], sigma)]
        for steps in sorted({r["steps"] for r in rows}):
            if mean_std([r["train_acc"] for r in rows if r["steps"] == steps])[0] >= at_least:
                return int(steps) // steps_per_epoch
        raise DocsError(f"frozen_gd.csv: σ={sigma} never reaches a predicted train accuracy of {at_least}")

    def frozen_gd_table(
        self,
        sigmas: Sequence[float],
        measured: dict[int, str],
        steps: Sequence[int],
        steps_per_epoch: int = 16,
    ) -> str:
        """Frozen-feature GD (docs/data/sharpness/frozen_gd.csv, mean over seeds) against the runs:
        one row per σ and step count; ``measured`` maps a step count to the sweep whose final train
        accuracy (mean over its runs at that σ) stands next to the prediction ("–": not run)."""
        rows = self.csv("sharpness/frozen_gd.csv")
        lines = [
            "| σ | epochs (steps) | initial function left (std) | predicted train acc | measured train acc |",
            "|---:|---:|---:|---:|---:|",
        ]
        for sigma in sigmas:
            for t in steps:
                sel = [r for r in rows if r["sigma"] == sigma and r["steps"] == t]
                if not sel:
                    raise DocsError(f"frozen_gd.csv has no row for σ={sigma}, {t} steps")
                seen = measured.get(t)
                have = seen and any(
                    _same(r["init_std"], sigma) for r in self._read(self._folder(seen) / "runs.csv")
                )
                got = f"{self.mean(seen, 'train_acc', sigma=sigma):.3f}" if have else "–"
                lines.append(
                    f"| {sigma:g} | {t // steps_per_epoch:,} ({t:,}) | "
                    f"{mean_std([r['init_std'] for r in sel])[0]:.3g} | "
                    f"{mean_std([r['train_acc'] for r in sel])[0]:.3f} | {got} |"
                )
        return "\n".join(lines)

    def theorem1_max_z(self) -> float:
        """max over σ and pairs of |Monte Carlo − closed form| / standard error."""
        return max(
            abs(r["mc"] - r["closed"]) / r["stderr"]
            for r in self.csv("theorem1/theorem1.csv")
            if r["stderr"] > 0
        )

    def grokking_table(self, path: str) -> str:
        """One row per member of a grokking run's members.csv (tools/docs_grokking.py)."""
        from docs_grokking import member_table

        return member_table(self.csv(path))

    def config(self, path: str, dotted: str) -> Any:
        """A value of a YAML config of this checkout: ``config('configs/repro/mnist.yaml', 'model.lr')``."""
        import yaml

        node: Any = yaml.safe_load((self.root / path).read_text())
        for part in dotted.split("."):
            node = node[part]
        return node

    def figure(
        self,
        kind: str,
        sweeps: str | Sequence[str],
        name: str,
        alt: str,
        by: Sequence[str] | None = None,
        where: dict[str, Any] | None = None,
    ) -> str:
        """Markdown image link to docs/figures/``name``.png; ``render`` draws it with the package's
        report figure ``kind`` (curves, acc_vs_sigma, alignment_vs_sigma, grad_norm_vs_sigma,
        acc_vs_alignment, alignment_curves) or theorem1 / sharpness from their CSVs."""
        path = self.root / FIGURES / f"{name}.png"
        self.figures.append(path)
        if self.draw:
            docsfigures.draw(self, kind, sweeps, path, by, where)
        return f"![{alt}]({FIGURES}/{name}.png)"


def _same(value: Any, wanted: Any) -> bool:
    if isinstance(wanted, (list, tuple, set)):
        return any(_same(value, w) for w in wanted)
    if isinstance(wanted, (int, float)) and isinstance(value, (int, float)):
        return float(value) == float(wanted)
    return value == wanted


def _matches(run: Run, where: dict[str, Any]) -> bool:
    return all(_same(run.hp.get(SHORT.get(k, k)), v) for k, v in where.items())
