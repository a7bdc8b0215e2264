"""``lightning-mem report``: every figure and the table, from tiny real runs made here."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from matplotlib.image import imread

from lightning_mem.cli.commands import main as cli_main
from lightning_mem.results.grouping import swept_keys
from lightning_mem.results.report import main
from lightning_mem.results.runs import flatten, load_runs

SIGMAS = ("0.01", "10.0")
SEEDS = ("0", "1")
# name -> (height, width) in pixels for these runs (one panel group, σ swept). Worked out by hand from
# the layout: a panel is 4.8 × 3.6 inches at 100 dpi (480 × 360 px), at most 3 panels per row.
FIGURES = {
    "curves.png": (360, 480),  # one panel: train and held-out accuracy
    "acc_vs_sigma.png": (360, 960),  # two: best held-out and final train accuracy
    "alignment_vs_sigma.png": (360, 1440),  # three: gradient, representation, held-out alignment
    "alignment_curves.png": (360, 1440),  # one row (panel group) × three alignment keys
    "grad_norm_vs_sigma.png": (360, 480),  # one: ‖∇W1‖/‖W1‖
    "acc_vs_alignment.png": (360, 1440),  # three: one per alignment key
}


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    with mock.patch("sys.argv", ["lightning-mem"]):  # pytest's own arguments are not the CLI's
        _make_runs(root)
    return root / "tiny"


def _make_runs(root: Path) -> None:
    for sigma in SIGMAS:
        for seed in SEEDS:
            cli_main([
                "fit", "--model.net", "lightning_mem.nets.ScaledMLP", "--model.net.width", "16",
                "--model.net.init_std", sigma, "--model.lr", "0.1", "--data.dataset", "digits",
                "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1",
                "--trainer.callbacks+=lightning_mem.callbacks.AlignmentMonitor",
                "--trainer.callbacks.every_n_steps", "2",
                "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false",
                "--trainer.enable_model_summary", "false", "--trainer.num_sanity_val_steps", "0",
                "--seed_everything", seed, "--run.root", str(root), "--run.name", "tiny",
                "--run.id", f"s{sigma}-seed{seed}",
            ])


def _column(path: Path, key: str) -> list[float]:
    with path.open(newline="") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


def _table(summary: str) -> dict[str, dict[str, str]]:
    """The first table of ``summary`` (summary.md: mean ± std; then the spread over seeds), by σ."""
    lines = [line for line in summary.split("\n\n")[0].splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    rows = [dict(zip(header, row, strict=True)) for row in cells]
    return {r["σ"]: r for r in rows}


def test_renders_every_figure_and_the_table(runs_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    main([str(runs_root), "--out", str(out)])
    for name, size in FIGURES.items():
        img = imread(out / name)
        assert img.shape[:2] == size, name
        assert img[..., :3].std() > 0.01, f"{name} is blank"
    table = _table((out / "summary.md").read_text())
    assert set(table) == {"0.01", "10"}
    for sigma, label in zip(SIGMAS, ("0.01", "10"), strict=True):
        dirs = [runs_root / f"s{sigma}-seed{seed}" for seed in SEEDS]
        row = table[label]
        assert row["runs"] == "2"
        expected = {
            "final train acc": [_column(d / "metrics.csv", "train/acc")[-1] for d in dirs],
            "best held-out acc": [max(_column(d / "metrics.csv", "val/acc")) for d in dirs],
            "final held-out acc": [_column(d / "metrics.csv", "val/acc")[-1] for d in dirs],
            "grad alignment (W1)": [
                statistics.mean(_column(d / "metrics.csv", "align/grad/hidden.weight")[-5:]) for d in dirs
            ],
            "rep alignment (held-out)": [_column(d / "metrics.csv", "val/align/rep/act")[-1] for d in dirs],
            "‖∇W1‖/‖W1‖ (mean)": [
                statistics.mean(_column(d / "metrics.csv", "norm/grad_over_weight/hidden.weight"))
                for d in dirs
            ],
        }
        for column, values in expected.items():
            assert row[column] == f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}", column
    # runs.csv keeps the per-run numbers at full precision.
    with (out / "runs.csv").open() as f:
        per_run = {Path(r["run_dir"]).name: r for r in csv.DictReader(f)}
    d = runs_root / "s10.0-seed1"
    assert float(per_run[d.name]["val_acc_best"]) == max(_column(d / "metrics.csv", "val/acc"))


def test_swept_keys_come_from_the_configs(runs_root: Path) -> None:
    runs = load_runs([runs_root])
    assert len(runs) == 4
    assert swept_keys(runs) == ["model.net.init_args.init_std", "seed_everything"]
    assert flatten({"a": {"b": 1, "c": [1]}}) == {"a.b": 1, "a.c": ("1",)}


def test_manifest_input_and_group_by(runs_root: Path, tmp_path: Path) -> None:
    # A manifest as `lightning-mem sweep local` writes it; one failed run is left out.
    entries = {
        p.name: {"status": "finished", "params": {"model.net.init_std": float(p.name[1:].split("-")[0])},
                 "run_dir": str(p)}
        for p in sorted(runs_root.iterdir())
    }
    entries["broken"] = {"status": "failed", "params": {}, "run_dir": str(tmp_path / "nowhere")}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"sweep": "tiny", "runs": entries}))
    out = tmp_path / "m"
    main([str(manifest), "--out", str(out), "--group-by", "model.net.init_std"])
    table = _table((out / "summary.md").read_text())
    assert {k: v["runs"] for k, v in table.items()} == {"0.01": "2", "10": "2"}
    # Grouping by the seed instead pools the two σ of each seed.
    main([str(manifest), "--out", str(tmp_path / "s"), "--group-by", "seed_everything"])
    assert "| seed | runs |" in (tmp_path / "s" / "summary.md").read_text()
    assert not (tmp_path / "s" / "acc_vs_sigma.png").exists()  # σ is not a group key there


def test_skips_figures_without_their_metrics(runs_root: Path, tmp_path: Path, caplog) -> None:
    # Copies of the runs with the alignment columns removed (a run without the AlignmentMonitor).
    for src in runs_root.iterdir():
        dst = tmp_path / "plain" / src.name
        dst.mkdir(parents=True)
        shutil.copy(src / "config.yaml", dst / "config.yaml")
        with (src / "metrics.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        keep = [k for k in rows[0] if not k.startswith(("align/", "val/align/", "norm/"))]
        with (dst / "metrics.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, keep, extrasaction="ignore")
            w.writeheader()
            w.writerows(r for r in rows if any(r[k] for k in keep if k not in ("step", "epoch")))
    # One run stopped by the divergence guard: counted, but without final numbers.
    (tmp_path / "plain" / "s10.0-seed1" / "status.json").write_text('{"status": "diverged"}')
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="lightning_mem"):
        main([str(tmp_path / "plain"), "--out", str(out)])
    assert sorted(p.name for p in out.glob("*.png")) == ["acc_vs_sigma.png", "curves.png"]
    assert "skipping alignment_curves.png" in caplog.text
    assert "skipping grad_norm_vs_sigma.png" in caplog.text
    table = _table((out / "summary.md").read_text())
    assert table["10"]["runs"] == "2 (1 diverged)" and table["0.01"]["runs"] == "2"
    assert table["0.01"]["grad alignment (W1)"] == "–"  # absent numbers are a dash, not NaN
    # The diverged run adds nothing: the σ=10 row holds the other seed's numbers, std 0.
    kept = _column(tmp_path / "plain" / "s10.0-seed0" / "metrics.csv", "train/acc")[-1]
    assert table["10"]["final train acc"] == f"{kept:.4f} ± 0.0000"


# ---------------------------------------------------------------- bad input: exit 2, no traceback


def test_report_imports_neither_torch_nor_lightning() -> None:
    code = ("import sys\nfrom lightning_mem.results.report import main\ntry:\n    main(['--help'])\n"
            "except SystemExit as e:\n    assert e.code == 0\n"
            "print(sorted(m for m in ('torch', 'lightning', 'wandb') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.splitlines()[-1] == "[]"


def _bad_inputs(runs_root: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments of `report` before --out, a part of the message)."""
    good = runs_root / "s0.01-seed0"
    (tmp / "empty-folder").mkdir()
    (tmp / "empty.json").write_text("")
    (tmp / "empty.txt").write_text("")
    manifests = {"truncated": '{"runs": {"a": {"status": "fini', "list": '[{"status": "finished"}]',
                 "no-status": '{"runs": {"a": {"run_dir": "x"}}}', "binary": bytes(range(256))}
    for name, content in manifests.items():
        folder = tmp / f"manifest-{name}"
        folder.mkdir()
        data = content if isinstance(content, bytes) else content.encode()
        (folder / "manifest.json").write_bytes(data)
    corrupt = tmp / "corrupt-run"
    shutil.copytree(good, corrupt)
    (corrupt / "metrics.csv").write_bytes(b"step,epoch\n\x80\xff\xfe" + bytes(range(256)))
    return {
        "missing": ([str(tmp / "missing")], f"{tmp / 'missing'}: not a run folder, a folder of runs"),
        "directory-without-runs": ([str(tmp / "empty-folder")], "no finished runs to report"),
        "empty-manifest": ([str(tmp / "empty.json")], f"{tmp / 'empty.json'}: not a valid sweep manifest"),
        "empty-file": ([str(tmp / "empty.txt")], f"{tmp / 'empty.txt'}: not a run folder"),
        "truncated-manifest": ([str(tmp / "manifest-truncated")],
                               f"{tmp / 'manifest-truncated' / 'manifest.json'}: not a valid sweep manifest"),
        "binary-manifest": ([str(tmp / "manifest-binary" / "manifest.json")], "not a valid sweep manifest"),
        "list-manifest": ([str(tmp / "manifest-list")], "not a sweep manifest (expected an object"),
        "manifest-entry-without-status": ([str(tmp / "manifest-no-status")], "run 'a' has no valid status"),
        "corrupt-metrics": ([str(corrupt)], ""),  # the file is named once runlog reads through rundir
        "tail-0": ([str(good), "--tail", "0"], "argument --tail: '0' is not an integer >= 1"),
        "tail-negative": ([str(good), "--tail", "-3"], "argument --tail: '-3' is not an integer >= 1"),
        "tail-text": ([str(good), "--tail", "all"], "argument --tail: 'all' is not an integer >= 1"),
        "group-by-unknown": ([str(good), "--group-by", "model.nope"], "--group-by 'model.nope': no such key"),
        "compare-unknown-key": ([str(runs_root), "--compare", "nope=1,2"], "--compare 'nope': no such key"),
        "compare-unknown-value": ([str(runs_root), "--compare", "init_std=0.01,3"],
                                  "--compare 'init_std=0.01,3': no run has σ=3; values: 0.01, 10"),
        "compare-one-value": ([str(runs_root), "--compare", "init_std=0.01"],
                              "--compare 'init_std=0.01': give two values, KEY=A,B (values of σ: 0.01, 10)"),
    }


BAD = ["missing", "directory-without-runs", "empty-manifest", "empty-file", "truncated-manifest",
       "binary-manifest", "list-manifest", "manifest-entry-without-status", "corrupt-metrics", "tail-0",
       "tail-negative", "tail-text", "group-by-unknown", "compare-unknown-key", "compare-unknown-value",
       "compare-one-value"]


@pytest.mark.parametrize("case", BAD)
def test_bad_inputs_exit_2_with_a_message(case: str, runs_root: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    argv, message = _bad_inputs(runs_root, tmp_path)[case]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:  # any other exception would be a traceback
        cli_main(["report", *argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "lightning-mem report: error: " in err and "Traceback" not in err
    assert message in err, err
    assert not out.exists()


@pytest.mark.parametrize("where", ["existing-file", "under-a-file"])
def test_out_naming_a_file_exits_2_and_keeps_it(where: str, runs_root: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    mine = tmp_path / "summary.md"
    mine.write_text("mine")
    out = mine if where == "existing-file" else mine / "figures"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["report", str(runs_root), "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"--out {out}: " in err and "Traceback" not in err
    assert mine.read_text() == "mine"


def test_a_corrupt_metrics_csv_is_named(runs_root: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    argv, _ = _bad_inputs(runs_root, tmp_path)["corrupt-metrics"]
    with pytest.raises(SystemExit):
        cli_main(["report", *argv, "--out", str(tmp_path / "out")])
    assert f"{tmp_path / 'corrupt-run' / 'metrics.csv'}: not a metrics.csv" in capsys.readouterr().err


# ---------------------------------------------------------------- statistics over seeds


def _best(runs_root: Path, sigma: str) -> list[float]:
    return [max(_column(runs_root / f"s{sigma}-seed{s}" / "metrics.csv", "val/acc")) for s in SEEDS]


def test_compare_prints_difference_ci_p_and_effect_size(runs_root: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    from scipy import stats as sps

    out = tmp_path / "cmp"
    main([str(runs_root), "--out", str(out), "--compare", "init_std=0.01,10"])
    printed = capsys.readouterr().out
    assert printed == (out / "compare.md").read_text()
    lines = [ln for ln in printed.split("\n\n")[0].splitlines()]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["setting", "number", "σ=0.01: mean ± std (n)", "σ=10: mean ± std (n)", "Δ (B − A)",
                      "95% CI of Δ", "Welch t", "p", "Hedges' g", "seeds to resolve", "resolved"]
    rows = {r[1]: r for r in ([c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:])}
    assert {"final held-out acc", "best held-out acc"} <= set(rows)  # both, labelled
    a, b = _best(runs_root, "0.01"), _best(runs_root, "10.0")
    ref = sps.ttest_ind(b, a, equal_var=False)  # the independent reference
    low, high = ref.confidence_interval(0.95)
    row = rows["best held-out acc"]
    assert row[4] == f"{statistics.mean(b) - statistics.mean(a):+.4f}"
    assert row[5] == f"[{low:.4f}, {high:.4f}]"
    assert row[6] == f"{ref.statistic:.2f}"
    assert float(row[7]) == pytest.approx(float(ref.pvalue), rel=0.05)  # printed to 2 digits
    pooled = ((statistics.variance(a) + statistics.variance(b)) / 2) ** 0.5  # equal n
    assert row[8] == f"{(statistics.mean(b) - statistics.mean(a)) / pooled * (1 - 3 / (4 * 4 - 9)):.2f}"
    assert row[10] == ("yes" if low > 0 or high < 0 else "not resolved")


def test_summary_and_runs_csv_carry_the_spread_over_seeds(runs_root: Path, tmp_path: Path) -> None:
    from scipy import stats as sps

    out = tmp_path / "spread"
    main([str(runs_root), "--out", str(out)])
    summary = (out / "summary.md").read_text()
    spread = summary.split("Spread over seeds:\n\n")[1]
    assert spread.startswith("| σ | n | final held-out acc: mean ± std, 95% CI | "
                             "best held-out acc: mean ± std, 95% CI |")
    best = _best(runs_root, "10.0")
    low, high = sps.ttest_1samp(best, 0.0).confidence_interval(0.95)
    cell = f"{statistics.mean(best):.4f} ± {statistics.stdev(best):.4f}, 95% CI [{low:.4f}, {high:.4f}] |"
    assert cell in spread
    with (out / "runs.csv").open() as f:
        rows = list(csv.DictReader(f))
    mine = [r for r in rows if Path(r["run_dir"]).name.startswith("s10.0-")]
    for r in mine:  # each run carries its group's spread, full precision
        assert int(r["val_acc_best_n"]) == 2
        assert float(r["val_acc_best_mean"]) == pytest.approx(statistics.mean(best), abs=1e-12)
        assert float(r["val_acc_best_ci95_low"]) == pytest.approx(low, rel=1e-9)
        assert float(r["val_acc_best_ci95_high"]) == pytest.approx(high, rel=1e-9)
        assert {"val_acc_n", "val_acc_std"} <= set(r)
