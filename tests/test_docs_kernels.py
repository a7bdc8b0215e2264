"""docs/kernels.md's measured block equals the one rendered from the committed kernel sweep data."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("docs_kernels", REPO / "tools" / "docs_kernels.py")
assert spec is not None and spec.loader is not None
docs_kernels = importlib.util.module_from_spec(spec)
spec.loader.exec_module(docs_kernels)


def test_committed_page_is_rendered_from_the_committed_data(capsys: pytest.CaptureFixture[str]) -> None:
    assert docs_kernels.main(["check"]) == 0
    data = pd.read_csv(REPO / docs_kernels.DATA)
    assert data["run"].nunique() == 30 and set(data["seed"]) == {0, 1, 2}
    assert set(data["activation"]) == {"sin", "relu"}
    assert sorted(set(data["sigma"])) == [0.001, 0.01, 0.1, 1, 10]


def test_a_changed_number_is_found_and_a_missing_block_exits_2(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "docs" / "data" / "kernel_sigma").mkdir(parents=True)
    shutil.copy(REPO / docs_kernels.DATA, tmp_path / docs_kernels.DATA)
    shutil.copy(REPO / docs_kernels.PAGE, tmp_path / docs_kernels.PAGE)
    df = pd.read_csv(tmp_path / docs_kernels.DATA)
    df.loc[df.index[-1], "kta"] += 0.5  # the last epoch of the last run: a number of the table
    df.to_csv(tmp_path / docs_kernels.DATA, index=False)
    assert docs_kernels.main(["--root", str(tmp_path), "check"]) == 1
    (tmp_path / docs_kernels.PAGE).write_text("# no block\n")
    assert docs_kernels.main(["--root", str(tmp_path), "check"]) == 2
    assert "no <!-- kernels:begin --> … <!-- kernels:end --> block" in capsys.readouterr().err
