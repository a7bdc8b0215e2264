"""The report's figures on hand-written run folders (``config.yaml`` + ``metrics.csv``): the curves'
mean and spread against numbers worked out by hand, pixel sizes from the layout, and the figures that
are skipped when their metrics are absent."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from lightning_mem.results import figures
from lightning_mem.results.grouping import Keys, Layout
from lightning_mem.results.runs import load_runs


def _run(root: Path, name: str, sigma: float, seed: int, rows: list[str], header: str) -> None:
    run = root / name
    run.mkdir(parents=True)
    config = {"model": {"net": {"init_args": {"init_std": sigma}}}, "seed_everything": seed}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.csv").write_text(header + "\n" + "\n".join(rows) + "\n")


HEADER = "epoch,step,train/acc,val/acc,align/grad/hidden.weight"


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    # σ = 0.1: two seeds; the second has no epoch 2 (shorter run); σ = 1: one seed.
    _run(root, "a", 0.1, 0, ["0,4,0.5,0.40,0.9", "1,9,0.7,0.50,0.8", "2,14,0.9,0.60,0.7"], HEADER)
    _run(root, "b", 0.1, 1, ["0,4,0.3,0.20,0.5", "1,9,0.5,0.30,0.4"], HEADER)
    _run(root, "c", 1.0, 0, ["0,4,0.6,0.10,0.2", "1,9,0.8,0.10,0.1", "2,14,1.0,0.10,0.0"], HEADER)
    return root


def test_mean_curve_averages_the_epochs_all_runs_share(runs: Path) -> None:
    loaded = {r.path.name: r for r in load_runs([runs])}
    x, mean, std = figures._mean_curve([loaded["a"], loaded["b"]], "val/acc", "epoch")
    assert x.tolist() == [0.0, 1.0]  # epoch 2 only in run a
    assert mean == pytest.approx([0.30, 0.40])  # (0.40 + 0.20) / 2, (0.50 + 0.30) / 2
    assert std == pytest.approx([0.10, 0.10])  # population std of two values: half their gap
    x, mean, _ = figures._mean_curve([loaded["a"], loaded["b"]], "align/grad/hidden.weight", "step")
    assert x.tolist() == [4.0, 9.0] and mean == pytest.approx([0.70, 0.60])


def test_a_figure_of_four_panels_is_two_rows_of_three(runs: Path, tmp_path: Path) -> None:
    loaded = load_runs([runs])
    layout, keys = Layout.of(loaded), Keys.of(loaded)
    cols = [("train_acc", "a"), ("val_acc", "b"), ("val_acc_best", "c"), ("align_grad", "d")]
    path = figures.plot_vs_sigma(loaded, layout, keys, cols, "y", tmp_path / "four.png")
    assert path == tmp_path / "four.png"
    # 3 panels of 4.8 × 3.6 in per row at 100 dpi: 1440 px wide, two rows of 360 px.
    assert imread(path).shape[:2] == (720, 1440)


def test_curves_of_one_panel_have_the_panel_size(runs: Path, tmp_path: Path) -> None:
    loaded = load_runs([runs])
    path = figures.plot_curves(loaded, Layout.of(loaded), tmp_path)
    img = imread(path)  # type: ignore[arg-type]
    assert img.shape[:2] == (360, 480) and img[..., :3].std() > 0.01


def test_figures_without_their_metrics_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "runs"
    for i, sigma in enumerate((0.1, 1.0)):  # no alignment metrics, no accuracies
        _run(root, f"r{i}", sigma, 0, ["0,4,1.5"], "epoch,step,train/loss")
    loaded = load_runs([root])
    layout, keys = Layout.of(loaded), Keys.of(loaded)
    with caplog.at_level(logging.INFO, logger="lightning_mem"):
        assert figures.plot_curves(loaded, layout, tmp_path) is None
        assert figures.plot_alignment_curves(loaded, layout, keys, tmp_path) is None
        assert figures.plot_acc_vs_alignment(loaded, layout, keys, tmp_path) is None
        assert figures.plot_vs_sigma(loaded, layout, keys, [("val_acc", "x")], "y", tmp_path / "v.png") \
            is None
    assert "skipping curves.png: no train/acc and val/acc" in caplog.text
    assert "skipping v.png: no val_acc" in caplog.text
    assert not list(tmp_path.glob("*.png"))


def test_vs_sigma_is_skipped_when_sigma_is_not_swept(runs: Path, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    loaded = load_runs([runs])
    layout = Layout.of(loaded, group_by=["seed_everything"])
    with caplog.at_level(logging.INFO, logger="lightning_mem"):
        assert figures.plot_vs_sigma(loaded, layout, Keys.of(loaded), [("val_acc", "x")], "y",
                                     tmp_path / "s.png") is None
    assert "skipping s.png: σ (init_std) is not swept" in caplog.text
    assert np.isclose(layout.sigma(loaded[0]) or 0.0, 0.0)  # σ is not a group key here


def test_layout_problems_finds_overlapping_text_and_a_legend_outside(tmp_path: Path) -> None:
    plt = figures._plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(6, 3), dpi=100)
    left.set_title("a title long enough to run over the next panel's title")
    right.set_title("the next title")
    left.plot([0, 1], [0, 1], label="line")
    left.legend(loc="upper left", bbox_to_anchor=(-0.5, 1.0))  # sticks out at the left edge
    problems = figures.layout_problems(fig)
    long_title = "a title long enough to run over the next panel's title"
    assert f"text {long_title!r} overlaps 'the next title'" in problems
    assert "'legend' leaves the figure" in problems
    left.set_title(figures.wrap_title(left.get_title(), 20), fontsize=6)
    right.set_title("")
    left.get_legend().remove()
    fig.tight_layout()
    assert figures.layout_problems(fig) == []
    plt.close(fig)
    assert figures.wrap_title("train (dashed)\nactivation=sigmoid, lr=0.1, label_noise=0.5", 30) == (
        "train (dashed)\nactivation=sigmoid, lr=0.1,\nlabel_noise=0.5")


@pytest.mark.slow
def test_report_figures_of_the_study_have_no_overlapping_text(study: Path, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """`report` on the 102 finished and diverged runs of the mixed study (tests/helpers/study.py): every
    figure is checked by matplotlib's text extents as it is saved; none may log a layout problem."""
    from lightning_mem.results.report import render

    runs = load_runs([study])
    with caplog.at_level(logging.INFO, logger="lightning_mem"):
        written = render(runs, tmp_path / "report")
    pngs = sorted(p.name for p in written if p.suffix == ".png")
    assert pngs == ["acc_vs_alignment.png", "acc_vs_sigma.png", "alignment_curves.png",
                    "alignment_vs_sigma.png", "curves.png", "grad_norm_vs_sigma.png", "kernel_curves.png",
                    "noisy_curves.png"]
    from matplotlib.image import imread

    # One panel (sin, label noise 0.5): the noisy-label runs only.
    assert imread(tmp_path / "report" / "noisy_curves.png").shape[:2] == (360, 480)
    assert "layout problems" not in caplog.text, [r.message for r in caplog.records if "layout" in r.message]
    assert "grouped by ['hp.init_std', 'hp.activation', 'hp.lr', 'hp.label_noise']" in caplog.text
