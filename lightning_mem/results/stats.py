"""Statistics over seeds: the spread of one group, the difference of two groups, and a verdict.

Pure functions of plain numbers (no runs, no I/O); :mod:`lightning_mem.results.report` and ``tools/docs.py``
call them. Non-finite values (a diverged run has no final numbers) are left out, so ``n`` counts the
runs that have the number.

- :func:`spread`: n, mean, sample std (ddof 1) and the 95% confidence interval of the mean,
  mean ± t_{0.975, n−1} · std/√n (Student's t; undefined, NaN, for n < 2).
- :func:`compare`: the difference of means b − a, its Welch confidence interval (Welch–Satterthwaite
  degrees of freedom), the Welch t-test's two-sided p-value (as ``scipy.stats.ttest_ind(equal_var=False)``),
  Hedges' g (Cohen's d with the pooled std, times the small-sample correction 1 − 3/(4(n_a+n_b)−9)),
  and :func:`seeds_needed`.
- :func:`verdict`: a declared one-sided test (direction and signed threshold) read off that interval:
  "yes" when the whole interval lies beyond the threshold on the claimed side, "no" when it lies
  wholly on the other side, "not resolved at n = …" when it straddles the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats as sps

LEVEL = 0.95
Direction = Literal["higher", "lower"]
DIRECTIONS: tuple[Direction, ...] = ("higher", "lower")
MAX_SEEDS = 100_000  # seeds_needed gives up (None) beyond this many per group


def _finite(values: Iterable[float]) -> np.ndarray:
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    return v[np.isfinite(v)]


@dataclass(frozen=True)
class Spread:
    """One group over its seeds: ``n`` finite values, their mean, sample std and 95% CI of the mean."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


def spread(values: Iterable[float], level: float = LEVEL) -> Spread:
    """:class:`Spread` of the finite ``values`` (NaN mean for none; std 0 and a NaN CI for one)."""
    v = _finite(values)
    n = int(v.size)
    if n == 0:
        return Spread(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(v.mean())
    if n == 1:
        return Spread(1, mean, 0.0, math.nan, math.nan)
    std = float(v.std(ddof=1))
    half = float(sps.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return Spread(n, mean, std, mean - half, mean + half)


def _welch_df(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    """Welch–Satterthwaite degrees of freedom (n − 1 of the one group with spread when the other has none)."""
    qa, qb = var_a / n_a, var_b / n_b
    denom = qa**2 / (n_a - 1) + qb**2 / (n_b - 1)
    return (qa + qb) ** 2 / denom if denom > 0 else math.inf


def seeds_needed(diff: float, std_a: float, std_b: float, level: float = LEVEL) -> int | None:
    """The fewest seeds per group for which the Welch CI of a difference ``diff``, with these stds,
    would exclude 0: the smallest n ≥ 2 with t_{level, df(n)} · √((std_a² + std_b²)/n) < |diff|.
    None when ``diff`` is 0 or not finite, or more than :data:`MAX_SEEDS` would be needed."""
    if not math.isfinite(diff) or diff == 0 or not (math.isfinite(std_a) and math.isfinite(std_b)):
        return None
    var = std_a**2 + std_b**2
    if var == 0:
        return 2
    q = 0.5 + level / 2

    def resolves(n: int) -> bool:
        df = _welch_df(std_a**2, n, std_b**2, n)
        return float(sps.t.ppf(q, df)) * math.sqrt(var / n) < abs(diff)

    if not resolves(MAX_SEEDS):
        return None
    lo, hi = 2, MAX_SEEDS  # resolves() is monotone in n: bisect for the first n that resolves
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if resolves(mid) else (mid + 1, hi)
    return lo


@dataclass(frozen=True)
class Difference:
    """b − a over seeds: the two spreads, the difference of means with its Welch CI, the Welch t-test
    (t, df, two-sided p), Hedges' g, and the seeds per group the observed spread needs to resolve it."""

    a: Spread
    b: Spread
    diff: float
    ci_low: float
    ci_high: float
    t: float
    df: float
    p: float
    hedges_g: float
    seeds_needed: int | None

    @property
    def resolved(self) -> bool:
        """The CI excludes 0."""
        return self.ci_low > 0 or self.ci_high < 0


def compare(a: Iterable[float], b: Iterable[float], level: float = LEVEL) -> Difference:
    """:class:`Difference` of group ``b`` minus group ``a`` (finite values only; NaN statistics when
    a group has fewer than 2)."""
    va, vb = _finite(a), _finite(b)
    sa, sb = spread(va, level), spread(vb, level)
    diff = sb.mean - sa.mean
    nan = math.nan
    if sa.n < 2 or sb.n < 2:
        return Difference(sa, sb, diff, nan, nan, nan, nan, nan, nan, None)
    se = math.sqrt(sa.std**2 / sa.n + sb.std**2 / sb.n)
    df = _welch_df(sa.std**2, sa.n, sb.std**2, sb.n)
    if se == 0:  # no spread at all: the difference is exact
        t = math.copysign(math.inf, diff) if diff else nan
        p = 0.0 if diff else 1.0
        low = high = diff
    else:  # Welch's t-test, as scipy.stats.ttest_ind(b, a, equal_var=False) (without its warning
        # on a constant group): t = Δ / se, two-sided p from Student's t with the Welch df
        t = diff / se
        p = float(2 * sps.t.sf(abs(t), df))
        half = float(sps.t.ppf(0.5 + level / 2, df)) * se
        low, high = diff - half, diff + half
    pooled = math.sqrt(((sa.n - 1) * sa.std**2 + (sb.n - 1) * sb.std**2) / (sa.n + sb.n - 2))
    correction = 1 - 3 / (4 * (sa.n + sb.n) - 9)
    g = diff / pooled * correction if pooled > 0 else (math.copysign(math.inf, diff) if diff else nan)
    return Difference(sa, sb, diff, low, high, t, df, p, g, seeds_needed(diff, sa.std, sb.std, level))


def verdict(d: Difference, direction: Direction, threshold: float = 0.0) -> str:
    """"yes", "no" or "not resolved at n = …" for the claim that b − a is ``direction`` than
    ``threshold`` (``higher``: b − a > threshold; ``lower``: b − a < threshold), read off the 95% CI:
    yes when the whole CI is on the claimed side of the threshold, no when it is wholly on the other."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r}: not one of {', '.join(DIRECTIONS)}")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold {threshold!r}: must be a finite number (a size of b − a)")
    if not (math.isfinite(d.ci_low) and math.isfinite(d.ci_high)):
        return f"not resolved at n = {n_text(d)}"
    above, below = d.ci_low > threshold, d.ci_high < threshold
    if above or below:
        return "yes" if above == (direction == "higher") else "no"
    return f"not resolved at n = {n_text(d)}"


def n_text(d: Difference) -> str:
    """``3`` for equal groups, ``3 / 2`` otherwise."""
    return f"{d.a.n}" if d.a.n == d.b.n else f"{d.a.n} / {d.b.n}"


def fmt_ci(low: float, high: float, spec: str = ".4f") -> str:
    """``[0.9012, 0.9230]``; ``–`` when undefined."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "–"
    return f"[{low:{spec}}, {high:{spec}}]"


def fmt_p(p: float) -> str:
    """p-values: 2 significant digits (``0.031``, ``2.4e-06``); ``–`` when undefined."""
    if not math.isfinite(p):
        return "–"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def describe(d: Difference, spec: str = ".4f") -> str:
    """One line: Δ (b − a), its CI, Welch t and p, Hedges' g, n, the seeds needed."""
    need = "–" if d.seeds_needed is None else str(d.seeds_needed)
    return (
        f"Δ = {d.diff:{spec}}, 95% CI {fmt_ci(d.ci_low, d.ci_high, spec)}, Welch t = {d.t:.2f} "
        f"(df {d.df:.1f}), p = {fmt_p(d.p)}, Hedges' g = {d.hedges_g:.2f}, n = {n_text(d)}, "
        f"seeds to resolve: {need}"
    )
