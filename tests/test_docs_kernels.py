"""tools/docs_kernels.py: the kernel sweeps' committed data, its collection from run folders, and the
statistics REPRODUCTION.md's kernel section quotes (rank correlations, their bootstrap over seeds),
checked against scipy and a brute-force enumeration."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
spec = importlib.util.spec_from_file_location("docs_kernels", REPO / "tools" / "docs_kernels.py")
assert spec is not None and spec.loader is not None
docs_kernels = importlib.util.module_from_spec(spec)
spec.loader.exec_module(docs_kernels)
KernelData = docs_kernels.KernelData


def test_committed_kernel_data_covers_both_sweeps() -> None:
    reduced = KernelData.load(REPO, "kernel_sigma")
    assert reduced.n() == 30 and reduced.seeds == [0, 1, 2] and reduced.epochs == 15
    assert set(reduced.last["activation"]) == {"sin", "relu"}
    assert reduced.sigmas == [0.001, 0.01, 0.1, 1, 10]
    paper = KernelData.load(REPO, "kernel_sigma_paper")
    assert paper.n() == 5 and paper.seeds == [0] and set(paper.last["activation"]) == {"sin"}
    assert paper.sigmas == [0.001, 0.01, 0.1, 1, 10]
    meta = json.loads((REPO / "docs/data/kernel_sigma_paper/sweep.json").read_text())
    assert meta["runs"] == 5 and meta["packs"] == 1 and meta["wall_s"] > 0
    for data in (reduced, paper):  # every column the documents use is there at every final epoch
        assert data.last[list(docs_kernels.NAMES)].notna().all().all()


def test_spearman_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 4, 20).astype(float), rng.normal(size=20)
    assert docs_kernels.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert docs_kernels.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)


def test_seed_resamples_are_every_ordered_draw_or_fixed_draws() -> None:
    exact = docs_kernels.seed_resamples([0, 1, 2])
    assert len(exact) == 27 == len(set(exact)) and set(exact) == set(itertools.product([0, 1, 2], repeat=3))
    many = docs_kernels.seed_resamples(list(range(6)))  # 6**6 > EXACT_UP_TO: drawn, the same each time
    assert len(many) == docs_kernels.DRAWS and many == docs_kernels.seed_resamples(list(range(6)))


def _frame(seed: int = 0) -> pd.DataFrame:
    """3 seeds x 5 σ of one activation, two epochs each; the final epoch carries the numbers."""
    rng = np.random.default_rng(seed)
    rows = []
    for s, sigma in itertools.product(range(3), [0.001, 0.01, 0.1, 1.0, 10.0]):
        acc = 0.9 - 0.1 * math.log10(sigma) / 3 + rng.normal(0, 0.05)
        for epoch in (0, 1):
            rows.append({"run": f"r{s}_{sigma}", "activation": "sin", "sigma": sigma, "seed": s,
                         "epoch": epoch,
                         "val_acc": acc if epoch else 0.0, "kta": acc + rng.normal(0, 0.05) if epoch else 9.0,
                         "val_align_rep": rng.normal() if epoch else 9.0})
    return pd.DataFrame(rows)


def test_rho_interval_is_the_percentile_interval_of_the_seed_bootstrap() -> None:
    df = _frame()
    data = KernelData(df, "test")
    last = df[df["epoch"] == 1]
    assert data.rho("kta") == pytest.approx(spearmanr(last["kta"], last["val_acc"]).statistic)
    stats, diffs = [], []
    for pick in itertools.product(range(3), repeat=3):  # brute force, scipy's ρ
        h = pd.concat([last[last["seed"] == s] for s in pick])
        r = spearmanr(h["kta"], h["val_acc"]).statistic
        stats.append(r)
        diffs.append(r - spearmanr(h["val_align_rep"], h["val_acc"]).statistic)
    assert data.rho_interval("kta") == pytest.approx(tuple(np.percentile(stats, [2.5, 97.5])))
    lo, hi = data.rho_interval("kta", "val_align_rep")
    assert (lo, hi) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))
    assert lo > 0 and data.compare("kta", "val_align_rep", "sin") == "better"  # noise ranks worse
    assert data.compare("val_align_rep", "kta", "sin") == "worse"
    assert data.compare("kta", "kta", "sin") == "no better and no worse"
    assert data.rho_per_seed("val_acc") == pytest.approx([1.0, 1.0, 1.0])


def test_lazy_and_falls_read_the_sign_of_rho_with_sigma() -> None:
    df = _frame()
    df["k_dist"] = df["sigma"]  # grows with σ: not lazy
    data = KernelData(df, "test")
    assert data.lazy("sin").startswith("no, ") and "+1.00" in data.lazy("sin")
    df["k_dist"] = -df["sigma"]
    assert KernelData(df, "test").lazy("sin").startswith("yes, ")
    assert data.falls("kta", "sin").startswith("yes (")
    df["kta"] = df["sigma"]
    assert KernelData(df, "test").falls("kta", "sin").startswith("no (")
    with pytest.raises(ValueError, match="no run with activation=relu"):
        data.final("kta", "relu")


def _collect(root: Path, sweep: str) -> int:
    return int(docs_kernels.main(["--root", str(root), "collect", "--runs", str(root), sweep]))


def test_collect_takes_each_epochs_last_value_and_the_manifest_wall_time(tmp_path: Path) -> None:
    folder = tmp_path / "kernel_sigma_paper"
    for i, sigma in enumerate((0.01, 10.0)):
        run = folder / f"run{i}"
        run.mkdir(parents=True)
        (run / "hp.json").write_text(json.dumps({"hp": {"activation": "sin", "init_std": sigma, "seed": 0}}))
        metrics = pd.DataFrame({"epoch": [0, 0, 0, 1], "step": [1, 2, 2, 3],
                                "val/acc": [0.5, np.nan, 0.6, 0.7],
                                "kernel/target_alignment": [0.1, 0.2, np.nan, 0.3]})
        metrics.to_csv(run / "metrics.csv", index=False)
    (folder / "manifest.json").write_text(json.dumps({"runs": {
        "a": {"started": "2026-12-07T14:00:00+0000", "duration_s": 100.0, "pack": "p"},
        "b": {"started": "2026-12-07T14:00:10+0000", "duration_s": 100.0, "pack": "p"}}}))
    assert _collect(tmp_path, "kernel_sigma_paper") == 0
    out = pd.read_csv(tmp_path / "docs/data/kernel_sigma_paper/kernels.csv")
    first = out[(out["run"] == "run0") & (out["epoch"] == 0)].iloc[0]
    assert first["val_acc"] == 0.6 and first["kta"] == 0.2 and first["sigma"] == 0.01  # last non-empty
    assert len(out) == 4 and set(out["epoch"]) == {0, 1}
    meta = json.loads((tmp_path / "docs/data/kernel_sigma_paper/sweep.json").read_text())
    assert meta == {"packs": 1, "runs": 2, "sweep_file": "sweeps/kernels/kernel_sigma_paper.yaml",
                    "wall_s": 110.0}


def test_bad_input_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _collect(tmp_path, "kernel_x") == 2
    assert "sweep 'kernel_x' is not one of kernel_sigma, kernel_sigma_paper" in capsys.readouterr().err
    assert _collect(tmp_path, "kernel_sigma") == 2
    assert "no folder kernel_sigma/" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"kernels\.csv: missing"):
        KernelData.load(tmp_path, "kernel_sigma")


@pytest.mark.slow
def test_a_changed_datum_changes_the_rendered_section(tmp_path: Path) -> None:
    import docs

    for name in ("REPRODUCTION.md", "README.md"):
        shutil.copy(REPO / name, tmp_path / name)
    for folder in ("docs", "configs"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    assert docs.check(tmp_path) == []
    path = tmp_path / "docs/data/kernel_sigma/kernels.csv"
    df = pd.read_csv(path)
    final = df.groupby("run")["epoch"].idxmax()
    df.loc[final, "kta"] = -df.loc[final, "kta"]  # kernel-target alignment now rises with σ
    df.to_csv(path, index=False)
    diffs = "".join(docs.check(tmp_path))
    assert "REPRODUCTION.md (committed)" in diffs and "docs/kernels.md (committed)" in diffs
    assert "\n-  ReLU: yes (ρ with σ -0.94; held-out accuracy's -0.87)" in diffs  # docs/kernels.md's answer
    assert "\n+  ReLU: no (ρ with σ +0.94; held-out accuracy's -0.87)" in diffs
