"""``lightning_mem.results.stats`` against scipy on seeded data, and a difference whose CI straddles 0."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from lightning_mem.results.stats import compare, describe, seeds_needed, spread, verdict

RNG = np.random.default_rng(23)
A = RNG.normal(0.910, 0.007, size=3)
B = RNG.normal(0.923, 0.021, size=5)


def test_spread_matches_scipy() -> None:
    s = spread([*A, math.nan])  # a diverged run: left out
    assert s.n == 3
    assert s.mean == pytest.approx(float(np.mean(A)), abs=1e-15)
    assert s.std == pytest.approx(float(np.std(A, ddof=1)), rel=1e-12)
    low, high = sps.ttest_1samp(A, 0.0).confidence_interval(0.95)
    assert (s.ci_low, s.ci_high) == pytest.approx((low, high), rel=1e-12)


def test_spread_of_one_and_of_none() -> None:
    one = spread([0.5])
    assert (one.n, one.mean, one.std) == (1, 0.5, 0.0) and math.isnan(one.ci_low)
    assert spread([math.nan]).n == 0 and math.isnan(spread([]).mean)


def test_difference_matches_scipy_welch() -> None:
    d = compare(A, B)
    ref = sps.ttest_ind(B, A, equal_var=False)
    assert d.diff == pytest.approx(float(B.mean() - A.mean()), abs=1e-15)
    assert (d.t, d.p) == pytest.approx((float(ref.statistic), float(ref.pvalue)), rel=1e-12)
    assert d.df == pytest.approx(float(ref.df), rel=1e-12)
    low, high = ref.confidence_interval(0.95)
    assert (d.ci_low, d.ci_high) == pytest.approx((low, high), rel=1e-12)


def test_hedges_g_from_its_definition() -> None:
    # Hand-computed: a = (1, 2, 3), b = (4, 5, 6): pooled std 1, d = 3, J = 1 − 3/(4·6 − 9) = 0.8.
    assert compare([1, 2, 3], [4, 5, 6]).hedges_g == pytest.approx(2.4, abs=1e-12)
    na, nb = len(A), len(B)
    pooled = math.sqrt(((na - 1) * A.var(ddof=1) + (nb - 1) * B.var(ddof=1)) / (na + nb - 2))
    want = (B.mean() - A.mean()) / pooled * (1 - 3 / (4 * (na + nb) - 9))
    assert compare(A, B).hedges_g == pytest.approx(want, rel=1e-12)


def test_a_ci_straddling_zero_is_not_resolved() -> None:
    a, b = [0.905, 0.912, 0.913], [0.899, 0.931, 0.940]  # Δ = +0.0133, spread 0.021
    d = compare(a, b)
    assert d.ci_low < 0 < d.ci_high and not d.resolved
    assert sps.ttest_ind(b, a, equal_var=False).pvalue > 0.05
    assert verdict(d, "higher") == "not resolved at n = 3"
    assert verdict(compare(a, b[:2]), "higher") == "not resolved at n = 3 / 2"
    need = d.seeds_needed
    assert need is not None and need > 3
    # At `need` seeds per group the same means and stds give a Welch CI that excludes 0; at need − 1 not.
    for n, excludes in ((need, True), (need - 1, False)):
        va, vb = np.var(a, ddof=1) / n, np.var(b, ddof=1) / n
        df = (va + vb) ** 2 / (va**2 / (n - 1) + vb**2 / (n - 1))
        half = sps.t.ppf(0.975, df) * math.sqrt(va + vb)
        assert bool(half < abs(d.diff)) is excludes, n
    assert "not resolved" not in verdict(compare([0.1, 0.11, 0.12], [0.9, 0.91, 0.92]), "higher")


def test_verdict_reads_the_interval_against_the_threshold() -> None:
    low, high = [0.10, 0.11, 0.12], [0.90, 0.91, 0.92]
    assert verdict(compare(low, high), "higher") == "yes"
    assert verdict(compare(high, low), "lower", threshold=-0.5) == "yes"  # falls by more than 0.5
    assert verdict(compare(high, low), "higher", threshold=-0.9) == "yes"  # falls by less than 0.9
    assert verdict(compare(low, high), "lower") == "no"
    assert verdict(compare(low, high), "higher", threshold=0.9) == "no"  # Δ = 0.8 for sure: not 0.9
    assert verdict(compare(low, high), "higher", threshold=0.8).startswith("not resolved")
    with pytest.raises(ValueError, match="direction 'up': not one of higher, lower"):
        verdict(compare(low, high), "up")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold nan: must be a finite number"):
        verdict(compare(low, high), "higher", threshold=math.nan)


def test_seeds_needed_edge_cases() -> None:
    assert seeds_needed(0.0, 0.1, 0.1) is None
    assert seeds_needed(0.5, 0.0, 0.0) == 2
    assert seeds_needed(1e-9, 1.0, 1.0) is None  # beyond MAX_SEEDS
    text = describe(compare([1, 2, 3], [4, 5, 6]))
    assert text.startswith("Δ = 3.0000, 95% CI [") and "Hedges' g = 2.40, n = 3" in text
