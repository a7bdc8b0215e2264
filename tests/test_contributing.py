"""CONTRIBUTING.md's recipes, run as written: each ```` ```python title="NAME.py" ```` block becomes a module
of that name in a fresh folder, each ```` ```bash title="NAME.sh" ```` block a command run there with the
installed ``lightning-mem``; the results are checked here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r'^```(python|bash) title="([\w.]+)"\n(.*?)^```$', re.M | re.S)


def _blocks() -> dict[str, str]:
    return {name: body for _, name, body in BLOCK.findall((REPO / "CONTRIBUTING.md").read_text())}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name, body in _blocks().items():
        (tmp_path / name).write_text(body)
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    return tmp_path


def _run(folder: Path, *command: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(folder), "WANDB_MODE": "disabled", "WANDB_DIR": str(folder),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def test_the_recipes_are_all_there() -> None:
    assert set(_blocks()) == {"recipe_network.py", "recipe_network.sh", "recipe_measure.py",
                              "recipe_measure.sh", "recipe_dataset.py", "recipe_dataset_check.py"}


def test_recipe_measure_matches_its_reference(folder: Path) -> None:
    done = _run(folder, sys.executable, "recipe_measure.py")  # its own assert: Gram form = O(n²) form
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_recipe_network_trains_and_is_measured(folder: Path) -> None:
    done = _run(folder, "bash", "recipe_network.sh")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pd.read_csv(folder / "runs/quickstart/net/metrics.csv")
    assert rows["align/rep/act2"].notna().any() and rows["val/acc"].notna().any()


@pytest.mark.slow
def test_recipe_measure_is_logged(folder: Path) -> None:
    done = _run(folder, "bash", "recipe_measure.sh")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pd.read_csv(folder / "runs/quickstart/measure/metrics.csv")
    values = rows["rep/mean_cosine"].dropna()
    assert len(values) >= 2 and values.between(-1, 1).all()
    assert rows.loc[values.index, "epoch"].notna().all()


@pytest.mark.slow
def test_recipe_dataset_trains(folder: Path) -> None:
    done = _run(folder, sys.executable, "recipe_dataset_check.py")
    assert done.returncode == 0, done.stderr[-3000:]
