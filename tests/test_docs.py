"""REPRODUCTION.md and the README's measured tables are rendered from the committed run data
(``tools/docs.py``, data in ``docs/data/``): the committed text equals a fresh rendering, a number
edited by hand (or a changed datum) fails the check, the template holds no hand-typed measurement,
and ``collect`` stores runs so that the rendered table is exactly ``lightning-mem report``'s."""

from __future__ import annotations

import ast
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from lightning_mem.cli.commands import main as cli_main
from lightning_mem.results.grouping import Keys, Layout, run_numbers
from lightning_mem.results.report import summary_table
from lightning_mem.results.runs import load_runs
from lightning_mem.rundir import write_manifest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import docsdata  # noqa: E402  (tools/ is not a package)

TOOL = [sys.executable, str(REPO / "tools" / "docs.py")]


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TOOL, "--root", str(root), "check"], capture_output=True, text=True, timeout=120)


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    """What the renderer reads, copied: the two documents, docs/ (template, blocks, data, figures) and
    the configs the template quotes."""
    for name in ("REPRODUCTION.md", "README.md"):
        shutil.copy(REPO / name, tmp_path / name)
    for folder in ("docs", "configs"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    return tmp_path


def test_committed_documents_match_their_data() -> None:
    done = _check(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("up to date")


def _edit_first_table_number(path: Path, marker: str) -> tuple[str, str]:
    """Change the last digit of the first number in the first table row after ``marker``."""
    text = path.read_text()
    start = text.index(marker)
    row_at = text.index("\n| ", text.index("|---", start)) + 1
    row = text[row_at : text.index("\n", row_at)]
    number = re.search(r"\b\d+\.\d+\b", row.split("|", 3)[3] if row.count("|") > 3 else row)
    assert number, row
    old = number.group(0)
    new = old[:-1] + ("1" if old[-1] != "1" else "2")
    edited = row.replace(old, new, 1)
    path.write_text(text[:row_at] + edited + text[row_at + len(row) :])
    return row, edited


def test_a_number_edited_by_hand_in_a_table_fails_the_check(copy: Path) -> None:
    row, edited = _edit_first_table_number(copy / "REPRODUCTION.md", "## Claim 1")
    done = _check(copy)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"-{edited}" in done.stdout and f"+{row}" in done.stdout  # the diff names both versions
    assert "REPRODUCTION.md (committed)" in done.stdout


@pytest.mark.parametrize(("page", "block"), [("README.md", "quickstart"), ("docs/alignment.md", "alignment")])
def test_a_number_edited_by_hand_in_a_page_table_fails_the_check(copy: Path, page: str, block: str) -> None:
    row, edited = _edit_first_table_number(copy / page, f"<!-- docs:begin {block} -->")
    done = _check(copy)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"-{edited}" in done.stdout and f"+{row}" in done.stdout
    assert f"{page} (committed)" in done.stdout


def test_changed_data_fail_the_check(copy: Path) -> None:
    # One run's best held-out accuracy in the committed data: the σ row of the claim-1 table moves.
    runs = copy / "docs" / "data" / "sin_sigma" / "runs.csv"
    lines = runs.read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    cells = lines[1].rstrip("\n").split(",")
    col = header.index("val_acc_best")
    cells[col] = repr(float(cells[col]) - 0.05)
    lines[1] = ",".join(cells) + "\n"
    runs.write_text("".join(lines))
    done = _check(copy)
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"^-\| 0\.001 \| 3 \|", done.stdout, re.M), done.stdout


def test_a_readme_without_its_blocks_is_named(copy: Path) -> None:
    readme = copy / "README.md"
    readme.write_text(readme.read_text().replace("<!-- docs:begin quickstart -->\n", ""))
    done = _check(copy)
    assert done.returncode == 2
    named = re.search(r"(README\.md, docs/alignment\.md[^:]*): blocks (\[.*?\]) but docs/README\.blocks\.md "
                      r"defines (\[.*?\])", done.stderr)
    assert named, done.stderr
    found, defined = ast.literal_eval(named.group(2)), ast.literal_eval(named.group(3))
    assert set(defined) - set(found) == {"quickstart"} and "alignment" in found  # the missing one, named


# A decimal with two or more significant digits (0.908, 2.7, 0.19) outside placeholders, code and
# links is a measurement typed by hand. Single-digit decimals (σ = 0.01, lr 0.1) are settings.
MEASUREMENT = re.compile(r"(?<![\w.])\d+\.\d+(?:e[-+]?\d+)?(?![\w.])")


def _significant(number: str) -> int:
    mantissa = number.split("e")[0].replace(".", "").lstrip("0").rstrip("0")
    return len(mantissa)


def test_the_template_holds_no_hand_typed_measurement() -> None:
    for name in ("docs/REPRODUCTION.template.md", "docs/README.blocks.md"):
        text = (REPO / name).read_text()
        text = re.sub(r"\{\{.+?\}\}", "", text, flags=re.S)  # placeholders
        text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks (commands)
        text = re.sub(r"`[^`]*`", "", text)  # inline code (file names, flags)
        text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets
        found = [n for n in MEASUREMENT.findall(text) if _significant(n) >= 2]
        assert not found, f"{name}: numbers typed by hand: {found}; render them with a placeholder"


# ---------------------------------------------------------------------------- collect


def _fit(root: Path, run_id: str, *extra: str) -> None:
    with mock.patch("sys.argv", ["lightning-mem"]):
        cli_main(
            [
                "fit",
                "--model.net",
                "lightning_mem.nets.ScaledMLP",
                "--model.net.width",
                "16",
                "--data.dataset",
                "digits",
                "--trainer.max_epochs",
                "2",
                "--trainer.log_every_n_steps",
                "1",
                "--trainer.callbacks+=lightning_mem.callbacks.AlignmentMonitor",
                "--trainer.callbacks.every_n_steps",
                "3",
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.enable_checkpointing",
                "false",
                "--trainer.enable_model_summary",
                "false",
                "--trainer.num_sanity_val_steps",
                "0",
                "--run.root",
                str(root),
                "--run.name",
                "tiny",
                "--run.id",
                run_id,
                *extra,
            ]
        )


@pytest.mark.slow  # five real fits: ~10 s of CPU
def test_collect_stores_what_report_shows(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    entries = {}
    for sigma in ("0.01", "10.0"):
        for seed in ("0", "1"):
            run_id = f"s{sigma}-{seed}"
            _fit(root, run_id, "--model.net.init_std", sigma, "--seed_everything", seed, "--model.lr", "0.1")
            entries[run_id] = {
                "status": "finished",
                "run_dir": str(root / "tiny" / run_id),
                "duration_s": 1.5,
            }
    with pytest.raises(SystemExit):  # diverges: exit code 3 (the README's example, smaller)
        _fit(
            root,
            "diverged",
            "--model.net.width",
            "128",
            "--model.net.activation",
            "relu",
            "--model.net.init_std",
            "10.0",
            "--model.loss",
            "squared",
            "--model.lr",
            "0.03",
            "--data.batch_size",
            "64",
        )
    entries["diverged"] = {
        "status": "diverged",
        "run_dir": str(root / "tiny" / "diverged"),
        "duration_s": 1.0,
    }
    write_manifest(root / "tiny" / "manifest.json", {"runs": entries})
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text("name: tiny\nmethod: grid\nparameters: {}\n")

    out = tmp_path / "data" / "tiny"
    docsdata.collect(sweep, root, out, {"wall_s": 12.5})  # raises if its table differs from report's
    raw = load_runs([root / "tiny" / "manifest.json"])
    stored = docsdata.summary_runs(out)
    by = ["init_std", "activation"]
    assert summary_table(stored, Layout.of(stored, by), Keys.of(stored)) == summary_table(
        raw, Layout.of(raw, by), Keys.of(raw)
    )
    assert "| 10 | relu | 1 (1 diverged) | – | – | – | – | – | – | – |" in summary_table(
        stored, Layout.of(stored, by), Keys.of(stored)
    )
    keys = Keys.of(raw)
    for r, s in zip(sorted(raw, key=lambda r: r.path.name), stored, strict=True):
        want, got = run_numbers(r, keys), run_numbers(s, Keys.of(stored))
        assert want.keys() == got.keys()
        assert all(
            w == g or (math.isnan(w) and math.isnan(g))
            for w, g in zip(want.values(), got.values(), strict=True)
        ), r.path
    curves = {c.path.name: c for c in docsdata.curve_runs(out)}
    for r in raw:  # per-epoch held-out accuracy exactly; alignment as the epoch's mean (6 digits)
        c = curves[r.path.name]
        assert list(c.epochs("val/acc")) == list(r.epochs("val/acc"))
        assert c.values("val/acc") == pytest.approx(r.values("val/acc"), rel=1e-5)
        if r.status == "finished":
            e0 = r.epochs("align/rep/act") == 0
            assert c.values("align/rep/act")[0] == pytest.approx(
                r.values("align/rep/act")[e0].mean(), rel=1e-5
            )


# ---------------------------------------------------------------------------- verdicts


def test_a_hand_typed_verdict_fails_the_check(copy: Path) -> None:
    template = copy / "docs" / "REPRODUCTION.template.md"
    text = template.read_text()
    at = text.index("{{ verdict('c8-final') }}")
    line = text.count("\n", 0, at) + 1
    template.write_text(text.replace("{{ verdict('c8-final') }}", "**yes**", 1))
    done = _check(copy)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"docs/REPRODUCTION.template.md:{line}: hand-typed verdict **yes**" in done.stdout
    assert "declare it with {{ claim(NAME, ...) }}" in done.stdout


def test_a_hand_typed_verdict_row_fails_the_check(copy: Path) -> None:
    template = copy / "docs" / "REPRODUCTION.template.md"
    text = template.read_text()
    start = text.index("{{ claim('c8-final'")
    end = text.index("}}", start) + 2
    line = text.count("\n", 0, start) + 1
    typed = "| 8. ConvNet > MLP: final held-out acc | reduced | net | 3 / 3 | +0.014 | yes |"
    rest = text[end:].replace("{{ verdict('c8-final') }}", "unresolved", 1)
    template.write_text(text[:start] + typed + rest)
    done = _check(copy)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"docs/REPRODUCTION.template.md:{line}: hand-typed verdict in a table cell: 'yes'" in done.stdout


def test_a_verdict_follows_its_data(copy: Path) -> None:
    # Claim 8's final held-out accuracy is not resolved at n = 3; give every ConvNet run 0.99 and it is.
    runs = copy / "docs" / "data" / "convnet_vs_mlp" / "runs.csv"
    lines = runs.read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    net, col = header.index("net"), header.index("val_acc")
    for i in range(1, len(lines)):
        cells = lines[i].rstrip("\n").split(",")
        if cells[net] == "ConvNet":
            cells[col] = repr(0.99 - 0.001 * i)
        lines[i] = ",".join(cells) + "\n"
    runs.write_text("".join(lines))
    done = _check(copy)
    assert done.returncode == 1, done.stdout + done.stderr
    old = re.search(r"^-\| 8\. ConvNet > MLP: final held-out acc \|.*\*\*(.+?)\*\* \|$", done.stdout, re.M)
    new = re.search(r"^\+\| 8\. ConvNet > MLP: final held-out acc \|.*\*\*(.+?)\*\* \|$", done.stdout, re.M)
    assert old and new, done.stdout
    assert (old.group(1), new.group(1)) == ("not resolved at n = 3", "yes")


def test_a_verdict_of_an_undeclared_test_is_named(copy: Path) -> None:
    template = copy / "docs" / "REPRODUCTION.template.md"
    template.write_text(template.read_text().replace("{{ verdict('c8-final') }}", "{{ verdict('c9') }}", 1))
    done = _check(copy)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "verdict('c9'): no test of that name declared before it" in done.stderr
