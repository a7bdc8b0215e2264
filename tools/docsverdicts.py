"""Verdicts of docs/REPRODUCTION.template.md, computed from a declared test (tools/docs.py).

A claim's test is declared once, in the verdicts table, by a placeholder

    {{ claim('c8-final', '8. ConvNet > MLP', 'reduced', 'val_acc',
             ('convnet_vs_mlp', {'net': 'ScaledMLP'}), ('convnet_vs_mlp', {'net': 'ConvNet'}),
             'higher', 0.0) }}

(name, claim, scale, the number of docs/data's runs.csv — ``val_acc`` final or ``val_acc_best``
best held-out accuracy, ...; group A and group B as (sweep, where); the claimed direction of B − A
and its threshold: ``higher`` claims B − A > threshold, ``lower`` B − A < threshold). It renders a
table row: the test, the settings that differ between the groups (all of them: settings that
change together are named together), Δ with its Welch 95% CI, p, Hedges' g and the verdict of
:func:`lightning_mem.results.stats.verdict` — "yes", "no", "not resolved at n = 3" — or "not measurable"
when a group has no finished run. Later text quotes it with ``{{ verdict('c8-final') }}``.

:func:`hand_typed` finds verdicts typed by hand in the template (``check`` fails on them): a bold
span outside placeholders that holds a verdict word, or a table cell that is one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lightning_mem import rundir
from lightning_mem.results.grouping import COLUMNS
from lightning_mem.results.stats import DIRECTIONS, Difference, compare, fmt_ci, fmt_p, verdict
from lightning_mem.rundir import HP_KEYS

if TYPE_CHECKING:
    from docsns import Namespace

SCALES = {"reduced": "reduced", "paper": "paper's settings"}
SHOWN = {"init_std": "σ", "loss_scale": "loss scale", "max_epochs": "epochs", "label_noise": "label noise"}
IGNORED = ("seed", "run_name")


@dataclass(frozen=True)
class Test:
    name: str
    metric: str
    direction: str
    threshold: float
    difference: Difference
    verdict: str


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return "default" if v is None else str(v)


def _values(rows: list[dict[str, Any]], key: str) -> str:
    vals = sorted({_fmt(r.get(key)) for r in rows})
    return vals[0] if len(vals) == 1 else "{" + ", ".join(vals) + "}"


class Verdicts:
    """The tests declared so far in one rendering (declaration order is the template's)."""

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns
        self.tests: dict[str, Test] = {}

    def claim(
        self,
        name: str,
        claim: str,
        scale: str,
        metric: str,
        a: tuple[str, dict[str, Any]],
        b: tuple[str, dict[str, Any]],
        direction: str,
        threshold: float = 0.0,
    ) -> str:
        """Declare the test ``name`` and render its row of the verdicts table."""
        from docsns import DocsError

        if name in self.tests:
            raise DocsError(f"claim {name!r}: declared twice")
        if scale not in SCALES:
            raise DocsError(f"claim {name!r}: scale {scale!r} is not one of {', '.join(SCALES)}")
        if metric not in COLUMNS:
            raise DocsError(f"claim {name!r}: metric {metric!r} is not one of {', '.join(COLUMNS)}")
        if direction not in DIRECTIONS:
            raise DocsError(f"claim {name!r}: direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
        rows_a, rows_b = (self.ns.rows(sweep, **where) for sweep, where in (a, b))
        d = compare(
            [float(r[metric]) for r in rows_a if r["status"] == rundir.FINISHED],
            [float(r[metric]) for r in rows_b if r["status"] == rundir.FINISHED],
        )
        if d.a.n == 0 or d.b.n == 0:
            text = "not measurable (no finished run: " + ("A" if d.a.n == 0 else "B") + " diverged)"
        else:
            text = verdict(d, direction, threshold)  # type: ignore[arg-type]
        self.tests[name] = Test(name, metric, direction, threshold, d, text)
        changed = [
            f"{SHOWN.get(k, k)} {_values(rows_a, k)} → {_values(rows_b, k)}"
            for k in HP_KEYS
            if k not in IGNORED and _values(rows_a, k) != _values(rows_b, k)
        ]
        together = "; ".join(changed) if changed else "nothing (same settings)"
        if len(changed) > 1:
            together = f"together: {together}"
        if a[0] != b[0]:
            together += f" (runs of {a[0]} → {b[0]})"
        op = ">" if direction == "higher" else "<"
        test = f"{COLUMNS[metric]}: B − A {op} {threshold:g}"
        stats = (
            f"{d.diff:+.3f} {fmt_ci(d.ci_low, d.ci_high, '.3f')}"
            if math.isfinite(d.diff)
            else "–"
        )
        p = fmt_p(d.p)
        g = f"{d.hedges_g:.1f}" if math.isfinite(d.hedges_g) else "–"
        n = f"{d.a.n} / {d.b.n}"
        return f"| {claim} | {SCALES[scale]} | {test} | {together} | {n} | {stats} | {p} | {g} | **{text}** |"

    def verdict(self, name: str) -> str:
        """The bold verdict of a test declared earlier in the template."""
        from docsns import DocsError

        if name not in self.tests:
            raise DocsError(
                f"verdict({name!r}): no test of that name declared before it; declare it with "
                f"claim({name!r}, ...) in the verdicts table ({', '.join(self.tests) or 'none yet'})"
            )
        return f"**{self.tests[name].verdict}**"


VERDICT_WORDS = re.compile(
    r"\b(yes|no|partly|reproduces?|reproduced|not resolved|not measurable|verdicts?|holds|unchanged|"
    r"restored|restores)\b",
    re.I,
)
BOLD = re.compile(r"\*\*(.+?)\*\*", re.S)
PLACEHOLDER = re.compile(r"\{\{(.+?)\}\}", re.S)  # tools/docs.py's


def hand_typed(template: str, source: str) -> list[str]:
    """``source:line: ...`` for each verdict typed by hand: a bold span holding a verdict word, or a
    table cell that is one, outside placeholders."""
    # Placeholders blanked to the same number of newlines, so that line numbers stay right.
    text = PLACEHOLDER.sub(lambda m: "X" + "\n" * m.group(0).count("\n"), template)
    text = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    found = []
    for m in BOLD.finditer(text):
        if VERDICT_WORDS.search(m.group(1)):
            line = text.count("\n", 0, m.start()) + 1
            found.append(f"{source}:{line}: hand-typed verdict **{m.group(1)}**")
    lines = text.splitlines()
    for i, line in enumerate(lines, 1):
        header = i < len(lines) and re.match(r"\|\s*:?-", lines[i]) is not None  # the next line: |---|
        if line.startswith("|") and not header:
            for cell in line.strip().strip("|").split("|"):
                if VERDICT_WORDS.fullmatch(cell.strip().strip("*").strip(" .")):
                    found.append(f"{source}:{i}: hand-typed verdict in a table cell: {cell.strip()!r}")
    return found
