"""An ensemble resumed as a single run resumes (issue 21): a larger ``--trainer.max_epochs`` (or
``max_steps``) extends it, ending byte-identical to an ensemble run that long from the start; any other
option that differs is refused naming it with both values; a second ensemble on a live one's ``--run.id``
names the holder's pid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lightning_mem.ensemble import extend as pack_extend

REPO = Path(__file__).resolve().parents[2]
ENSEMBLE = [sys.executable, "-m", "lightning_mem", "ensemble", "fit",
            "--config", str(REPO / "configs" / "quickstart.yaml"), "--data.dataset", "digits",
            "--model.net.width", "16", "--trainer.limit_train_batches", "2",
            "--trainer.limit_val_batches", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
            "--ensemble.init_std", "0.01,1"]
MEMBERS = ("00_init_std0.01", "01_init_std1")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "LIGHTNING_MEM_RUN_ID"}


def _ensemble(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ENSEMBLE, "--run.root", str(root), *extra], env=_env(), capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize(("old", "new", "refused", "allowed"), [
    (["--trainer.max_epochs", "2"], ["--trainer.max_epochs", "4"], [],
     ["--trainer.max_epochs: 2 there, 4 here"]),
    (["--trainer.max_epochs=2"], ["--trainer.max_epochs", "2"], [], []),  # the same value, spelt otherwise
    (["--model.net.width", "16"], ["--model.net.width", "16", "--model.net.width", "32"],
     ["--model.net.width: 16 there, 32 here"], []),
    (["--data.label_noise", "0.1"], [], ["--data.label_noise: 0.1 there, (not given) here"], []),
    (["--config", "a.yaml", "--config", "b.yaml"], ["--config", "b.yaml", "--config", "a.yaml"],
     ["--config: a.yaml b.yaml there, b.yaml a.yaml here"], []),
    (["--trainer.max_steps", "10", "--seed_everything", "1"],
     ["--trainer.max_steps", "20", "--seed_everything", "2"],
     ["--seed_everything: 1 there, 2 here"], ["--trainer.max_steps: 10 there, 20 here"]),
])
def test_differences_name_each_option_with_both_values(old: list[str], new: list[str], refused: list[str],
                                                       allowed: list[str]) -> None:
    got = pack_extend.differences([{"run_id": "a", "argv": old}], [{"run_id": "a", "argv": new}])
    assert got == (refused, allowed)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ensemble run 4 epochs from the start."""
    root = tmp_path_factory.mktemp("ref")
    done = _ensemble(root, "--trainer.max_epochs", "4", "--run.id", "E")
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "quickstart"


@pytest.mark.slow  # three real ensemble fits (~20 s)
@pytest.mark.parametrize("longer", [["--trainer.max_epochs", "4"]])
def test_a_resumed_ensemble_extends_like_a_single_run(longer: list[str], reference: Path,
                                                      tmp_path: Path) -> None:
    first = _ensemble(tmp_path, "--trainer.max_epochs", "2", "--run.id", "E")
    assert first.returncode == 0, first.stderr[-3000:]
    extended = _ensemble(tmp_path, *longer, "--run.id", "E", "--ckpt_path", "last")
    assert extended.returncode == 0, extended.stderr[-3000:]
    for member in MEMBERS:
        ours = tmp_path / "quickstart" / f"E_{member}" / "metrics.csv"
        assert ours.read_bytes() == (reference / f"E_{member}" / "metrics.csv").read_bytes(), member
    recorded = json.loads((tmp_path / "quickstart" / "E" / "pack.json").read_text())["members"][0]["argv"]
    assert pack_extend.options(recorded)[longer[0]][-1] == longer[1]  # the new arguments are its record


@pytest.mark.slow
@pytest.mark.parametrize(("option", "value", "says"), [
    ("--model.net.width", "32", "--model.net.width: 16 there, 32 here"),
    ("--data.label_noise", "0.2", "--data.label_noise: (not given) there, 0.2 here"),
    ("--model.lr", "0.5", "--model.lr: (not given) there, 0.5 here"),
])
def test_a_resume_with_another_model_or_data_option_is_refused_naming_it(
        option: str, value: str, says: str, tmp_path: Path) -> None:
    first = _ensemble(tmp_path, "--trainer.max_epochs", "1", "--run.id", "E")
    assert first.returncode == 0, first.stderr[-3000:]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    refused = _ensemble(tmp_path, "--trainer.max_epochs", "2", option, value, "--run.id", "E",
                        "--ckpt_path", "last")
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert f"the ensemble there was started with other options ({says})" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.slow  # a long ensemble fit in the background, then a second one
@pytest.mark.parametrize("second", [[], ["--ckpt_path", "last"]])
def test_a_second_ensemble_on_a_live_run_id_names_its_pid(second: list[str], tmp_path: Path) -> None:
    first = subprocess.Popen([*ENSEMBLE, "--run.root", str(tmp_path), "--trainer.max_epochs", "100000",
                              "--run.id", "E"], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        status = tmp_path / "quickstart" / f"E_{MEMBERS[0]}" / "status.json"
        end = time.monotonic() + 120
        while not status.exists() or '"running"' not in status.read_text():
            assert first.poll() is None and time.monotonic() < end, "the first ensemble did not start"
            time.sleep(0.1)
        done = _ensemble(tmp_path, "--trainer.max_epochs", "100000", "--run.id", "E", *second)
        assert done.returncode == 2, done.stderr[-3000:]
        assert f"is in use by another process (pid {first.pid} on " in done.stderr
        assert "Traceback" not in done.stderr
        assert first.poll() is None  # undisturbed
    finally:
        first.kill()
        first.wait()
