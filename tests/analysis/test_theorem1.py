"""Theorem 1: the Monte Carlo estimate of E[sin(wᵀx) sin(wᵀx′)] against the closed form."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scipy import integrate

from lightning_mem.analysis.theorem1 import main, mc_sin_kernel, sin_kernel, theorem1_bound


def _integral_1d(x: float, x2: float, sigma: float) -> float:
    """E[sin(wx) sin(wx′)], w ~ N(0, σ²), by adaptive quadrature of the definition (no closed form used)."""
    def f(w: float) -> float:
        density = math.exp(-(w**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
        return math.sin(w * x) * math.sin(w * x2) * density
    return integrate.quad(f, -12 * sigma, 12 * sigma, limit=400, epsabs=1e-13)[0]


def _integral_2d(x: list[float], x2: list[float], sigma: float) -> float:
    """The same for w ~ N(0, σ² I₂), as a double integral over the plane (±10σ holds all but e⁻⁵⁰)."""
    def f(b: float, a: float) -> float:
        density = math.exp(-(a * a + b * b) / (2 * sigma**2)) / (2 * math.pi * sigma**2)
        return math.sin(a * x[0] + b * x[1]) * math.sin(a * x2[0] + b * x2[1]) * density
    return integrate.dblquad(f, -10 * sigma, 10 * sigma, -10 * sigma, 10 * sigma, epsabs=1e-11)[0]


CASES = [  # (x, x′, σ): values from −0.03 to 0.42, none 0 by symmetry
    ([1.3], [0.4], 1.1),
    ([0.5], [0.45], 2.0),
    ([1.0, 0.5], [0.3, -0.8], 0.7),
    ([0.2, 0.1], [0.25, 0.05], 2.0),
    ([1.0, -1.0], [0.8, -0.6], 1.5),
]


@pytest.mark.parametrize(("x", "x2", "sigma"), CASES)
def test_closed_form_matches_numerical_integration(x: list[float], x2: list[float], sigma: float) -> None:
    want = _integral_1d(x[0], x2[0], sigma) if len(x) == 1 else _integral_2d(x, x2, sigma)
    assert abs(want) > 0.02  # a non-trivial expectation
    t, t2 = torch.tensor(x, dtype=torch.float64), torch.tensor(x2, dtype=torch.float64)  # exact inputs
    got = sin_kernel(t, t2, sigma).item()
    assert got == pytest.approx(want, abs=1e-9)


def test_closed_form_on_the_diagonal_and_the_bound() -> None:
    sigma = 0.7
    x = torch.tensor([1.0, 0.0], dtype=torch.float64)
    same = sin_kernel(x, x, sigma).item()  # E sin²(wᵀx) = ½(1 − exp(−2σ²‖x‖²))
    assert same == pytest.approx(0.5 * (1 - math.exp(-2 * sigma**2)), rel=1e-12)
    assert same == pytest.approx(_integral_1d(1.0, 1.0, sigma), abs=1e-9)
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


@pytest.mark.slow  # loads the 5,000 MNIST digits through lightning_mem.data (which imports Lightning)
def test_command_writes_plot_and_csv(tmp_path) -> None:
    main(["--sigma", "0.01", "1", "--pairs", "2", "--samples", "200", "--out", str(tmp_path)])
    from matplotlib.image import imread

    img = imread(tmp_path / "theorem1.png")
    assert img.shape[:2] == (400, 1100) and img.std() > 0
    lines = (tmp_path / "theorem1.csv").read_text().splitlines()
    assert lines[0].startswith("sigma,pair,same_class") and len(lines) == 1 + 2 * 2


# ---------------------------------------------------------------- the command's inputs


def test_help_does_not_import_torch() -> None:
    code = ("import sys\nfrom lightning_mem.analysis.theorem1 import main\ntry:\n    main(['--help'])\n"
            "except SystemExit as e:\n    assert e.code == 0\n"
            "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.splitlines()[-1] == "[]"


def _bad_arguments(tmp: Path) -> dict[str, tuple[list[str], str]]:
    (tmp / "file.png").write_bytes(b"mine")
    return {
        **{f"sigma-{v}": (["--sigma", "1", v], f"argument --sigma: '{v}' is not allowed: σ must be a "
                          "finite number > 0") for v in ("nan", "inf", "0", "-1", "abc", "")},
        "sigma--inf": (["--sigma=-inf"], "argument --sigma: '-inf' is not allowed"),
        "pairs-0": (["--pairs", "0"], "argument --pairs: '0' is not allowed: --pairs must be an integer in "
                    "[1, 10000]"),
        "pairs-huge": (["--pairs", str(10**20)], f"'{10**20}' is not allowed: --pairs must be an integer in "
                       "[1, 10000]"),
        "samples-1": (["--samples", "1"], "'1' is not allowed: --samples must be an integer in [2, 10**8]"),
        "samples-float": (["--samples", "2.5"], "'2.5' is not allowed: --samples must be an integer in"),
        "samples-huge": (["--samples", str(10**20)], "--samples must be an integer in [2, 10**8]"),
        "seed-negative": (["--seed", "-1"], "'-1' is not allowed: --seed must be an integer in [0, 2**63)"),
        "seed-huge": (["--seed", str(2**64)], "--seed must be an integer in [0, 2**63)"),
        "out-existing-file": (["--out", str(tmp / "file.png")],
                              f"--out {tmp / 'file.png'}: is an existing file; give a folder"),
        "out-under-a-file": (["--out", str(tmp / "file.png" / "sub")],
                             f"--out {tmp / 'file.png' / 'sub'}: cannot create the folder"),
    }


CASE_NAMES = [*(f"sigma-{v}" for v in ("nan", "inf", "-inf", "0", "-1", "abc", "")), "pairs-0", "pairs-huge",
              "samples-1", "samples-float", "samples-huge", "seed-negative", "seed-huge", "out-existing-file",
              "out-under-a-file"]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_arguments_exit_2_naming_the_value(case: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    from lightning_mem.cli.commands import main as cli_main

    argv, message = _bad_arguments(tmp_path)[case]
    if "--out" not in argv:
        argv = [*argv, "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:  # any other exception would be a traceback
        cli_main(["theorem1", *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists() and (tmp_path / "file.png").read_bytes() == b"mine"
