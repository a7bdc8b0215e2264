"""Theorem 1: the Monte Carlo estimate of E[sin(wᵀx) sin(wᵀx′)] against the closed form."""

import math

import pytest
import torch

from lightning_mem.theory import main, mc_sin_kernel, sin_kernel, theorem1_bound


def test_closed_form_matches_direct_formula() -> None:
    x, x2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    sigma = 0.7
    want = 0.5 * (math.exp(-(sigma**2) * 5 / 2) - math.exp(-(sigma**2) * 5 / 2))  # ‖x−x′‖² = ‖x+x′‖² = 5
    assert sin_kernel(x, x2, sigma).item() == pytest.approx(want, abs=1e-12)
    same = sin_kernel(x, x, sigma).item()  # E sin²(wᵀx) = ½(1 − exp(−2σ²‖x‖²))
    assert same == pytest.approx(0.5 * (1 - math.exp(-2 * sigma**2)), rel=1e-12)
    # The closed form never exceeds half of the paper's bound.
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 6, generator=g), torch.randn(50, 6, generator=g)
    for s in (0.01, 0.3, 1.0, 3.0):
        assert torch.all(sin_kernel(a, b, s) <= 0.5 * theorem1_bound(a, b, s) + 1e-15)


@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.5])
def test_monte_carlo_within_error_of_closed_form(sigma: float) -> None:
    g = torch.Generator().manual_seed(1)
    x, x2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    x2[:4] = x[:4] + 0.2 * x2[:4]  # some close pairs, where the expectation is far from 0
    mean, se = mc_sin_kernel(x, x2, sigma, num_samples=40_000, generator=g)
    closed = sin_kernel(x, x2, sigma)
    assert mean.shape == se.shape == (8,)
    assert torch.all(se > 0)
    assert torch.all((mean - closed).abs() <= 4 * se), ((mean - closed) / se)
    if sigma <= 0.5:  # close pairs keep a signal of many standard errors: the check is not vacuous
        assert (closed[:4].abs() / se[:4]).min() > 5


def test_single_pair_returns_scalars() -> None:
    mean, se = mc_sin_kernel(torch.ones(3), torch.ones(3), 0.2, 1000, torch.Generator().manual_seed(0))
    assert mean.ndim == 0 and se.ndim == 0


def test_command_writes_plot_and_csv(tmp_path) -> None:
    main(["--sigma", "0.01", "1", "--pairs", "2", "--samples", "200", "--out", str(tmp_path)])
    from matplotlib.image import imread

    img = imread(tmp_path / "theorem1.png")
    assert img.shape[:2] == (400, 1100) and img.std() > 0
    lines = (tmp_path / "theorem1.csv").read_text().splitlines()
    assert lines[0].startswith("sigma,pair,same_class") and len(lines) == 1 + 2 * 2
