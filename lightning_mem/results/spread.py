"""The statistics of ``lightning-mem report``: spread over seeds per group and ``--compare``.

- :func:`spread_table`: per group, n, mean ± std and the 95% CI of the mean over seeds of the final
  and the best held-out accuracy (always both, labelled) — the second table of ``summary.md``.
- :func:`spread_columns`: the same numbers as extra columns of ``runs.csv`` (each run carries its
  group's).
- :func:`parse_compare` / :func:`comparison_table`: ``--compare KEY=A,B`` (or ``--compare KEY`` when
  KEY takes exactly two values): per setting of the other group keys and per final number, the
  difference B − A with its Welch 95% CI, the Welch t-test's p-value, Hedges' g and the seeds per
  group the observed spread needs to resolve the difference (:mod:`lightning_mem.results.stats`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lightning_mem.results.grouping import (
    COLUMNS,
    Keys,
    Layout,
    fmt_value,
    grouped,
    label,
    resolve_key,
    run_numbers,
    short,
)
from lightning_mem.results.stats import Spread, compare, fmt_ci, fmt_p, spread

if TYPE_CHECKING:
    from lightning_mem.results.runs import Run

ACCURACIES = {"val_acc": "final held-out acc", "val_acc_best": "best held-out acc"}
SPREAD_FIELDS = ("n", "mean", "std", "ci95_low", "ci95_high")


def _spread_cell(s: Spread) -> str:
    if s.n == 0:
        return "–"
    return f"{s.mean:.4f} ± {s.std:.4f}, 95% CI {fmt_ci(s.ci_low, s.ci_high)}"


def _group_spreads(
    runs: Sequence[Run], layout: Layout, keys: Keys, tail: int
) -> dict[tuple[Any, ...], dict[str, Spread]]:
    out = {}
    for values, members in grouped(runs, layout.group).items():
        nums = [run_numbers(r, keys, tail) for r in members]
        out[values] = {c: spread([n[c] for n in nums]) for c in ACCURACIES}
    return out


def spread_table(runs: Sequence[Run], layout: Layout, keys: Keys, tail: int = 5) -> str:
    """Markdown: one row per group, n and mean ± std with the 95% CI over seeds of both held-out
    accuracies (final = last epoch, best = max over epochs)."""
    header = (
        [short(k) for k in layout.group_keys]
        + ["n"]
        + [f"{h}: mean ± std, 95% CI" for h in ACCURACIES.values()]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for values, sp in _group_spreads(runs, layout, keys, tail).items():
        n = "/".join(sorted({str(s.n) for s in sp.values()}))
        cells = [fmt_value(v) for v in values] + [n] + [_spread_cell(sp[c]) for c in ACCURACIES]
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "n = runs with the number (a diverged run has none); 95% CI of the mean over seeds, "
        "mean ± t(0.975, n−1)·std/√n (– for n < 2)."
    )
    return "\n".join(lines) + "\n\n" + note + "\n"


def spread_columns(
    runs: Sequence[Run], layout: Layout, keys: Keys, tail: int = 5
) -> tuple[list[str], dict[int, list[str]]]:
    """Header and, per run (by ``id``), its group's n, mean, std and 95% CI of both held-out accuracies."""
    header = [f"{c}_{f}" for c in ACCURACIES for f in SPREAD_FIELDS]
    spreads = _group_spreads(runs, layout, keys, tail)
    cells: dict[int, list[str]] = {}
    for r in runs:
        sp = spreads[layout.group(r)]
        cells[id(r)] = [
            repr(v) for c in ACCURACIES for v in (sp[c].n, sp[c].mean, sp[c].std, sp[c].ci_low, sp[c].ci_high)
        ]
    return header, cells


@dataclass(frozen=True)
class Comparison:
    """``--compare``: the run key, its two values (as typed) and their labels."""

    key: str
    a: str
    b: str


def _same(value: Any, text: str) -> bool:
    if fmt_value(value) == text or str(value) == text:
        return True
    try:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and float(value) == float(text)
    except ValueError:
        return False


def parse_compare(runs: Sequence[Run], text: str) -> Comparison:
    """``KEY=A,B`` or ``KEY`` (two values) -> :class:`Comparison`; ValueError naming the key or value
    and the values the runs hold."""
    name, _, values = text.partition("=")
    try:
        key = resolve_key(runs, name.strip())
    except ValueError as err:
        raise ValueError(str(err).replace("--group-by", "--compare", 1)) from None
    held = sorted({fmt_value(r.get(key)) for r in runs})
    if not values:
        if len(held) != 2:
            raise ValueError(
                f"--compare {text!r}: {short(key)} takes {len(held)} values ({', '.join(held)}); "
                f"name two: --compare {name}=A,B"
            )
        return Comparison(key, held[0], held[1])
    parts = [p.strip() for p in values.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(
            f"--compare {text!r}: give two values, KEY=A,B (values of {short(key)}: {', '.join(held)})"
        )
    for p in parts:
        if not any(_same(r.get(key), p) for r in runs):
            raise ValueError(f"--compare {text!r}: no run has {short(key)}={p}; values: {', '.join(held)}")
    if parts[0] == parts[1] or all(_same(r.get(key), parts[1]) for r in runs if _same(r.get(key), parts[0])):
        raise ValueError(f"--compare {text!r}: the two values are the same setting")
    return Comparison(key, parts[0], parts[1])


def comparison_table(runs: Sequence[Run], layout: Layout, keys: Keys, cmp: Comparison, tail: int = 5) -> str:
    """Markdown: per setting of the other group keys and per final number, B − A over seeds."""
    others = [k for k in layout.group_keys if k != cmp.key]
    header = [
        "setting",
        "number",
        f"{short(cmp.key)}={cmp.a}: mean ± std (n)",
        f"{short(cmp.key)}={cmp.b}: mean ± std (n)",
        "Δ (B − A)",
        "95% CI of Δ",
        "Welch t",
        "p",
        "Hedges' g",
        "seeds to resolve",
        "resolved",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def other(r: Run) -> tuple[Any, ...]:
        return tuple(r.get(k) for k in others)

    for values, members in grouped(runs, other).items():
        side = {
            s: [run_numbers(r, keys, tail) for r in members if _same(r.get(cmp.key), v)]
            for s, v in (("a", cmp.a), ("b", cmp.b))
        }
        if not side["a"] or not side["b"]:
            continue
        for col, head in COLUMNS.items():
            d = compare([n[col] for n in side["a"]], [n[col] for n in side["b"]])
            if d.a.n == 0 or d.b.n == 0:
                continue
            need = "–" if d.seeds_needed is None else str(d.seeds_needed)
            ok = "yes" if d.resolved else ("–" if math.isnan(d.ci_low) else "not resolved")
            lines.append(
                "| "
                + " | ".join(
                    [
                        label(others, values),
                        head,
                        f"{d.a.mean:.4f} ± {d.a.std:.4f} ({d.a.n})",
                        f"{d.b.mean:.4f} ± {d.b.std:.4f} ({d.b.n})",
                        f"{d.diff:+.4f}",
                        fmt_ci(d.ci_low, d.ci_high),
                        "–" if math.isnan(d.t) else f"{d.t:.2f}",
                        fmt_p(d.p),
                        "–" if math.isnan(d.hedges_g) else f"{d.hedges_g:.2f}",
                        need,
                        ok,
                    ]
                )
                + " |"
            )
    if len(lines) == 2:
        raise ValueError(
            f"--compare {short(cmp.key)}={cmp.a},{cmp.b}: no setting of "
            f"{', '.join(map(short, others)) or 'the runs'} has runs with both values"
        )
    note = (
        "Δ = mean of B − mean of A over seeds; Welch's 95% CI and t-test (two-sided p, scipy); "
        "Hedges' g = Δ / pooled std × (1 − 3/(4(n_A + n_B) − 9)); seeds to resolve: the fewest seeds per "
        "group for which the observed stds give a CI of Δ that excludes 0; resolved: this CI excludes 0."
    )
    return "\n".join(lines) + "\n\n" + note + "\n"
