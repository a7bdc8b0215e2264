"""Paths read from files get the checks of paths typed on the command line (issue 21).

- A sweep file's ``name:`` is one safe folder name (``rundir.check_name``): ``..``, ``.``, ``../..``,
  ``../../etc``, ``-x`` exit 2 naming the file and the value, and nothing is written under ``--root`` or its
  parent.
- A run folder's files (``metrics.csv``, ``config.yaml``, ``hp.json``, a manifest) that are symbolic links
  out of their folder are refused by ``report`` and ``dashboard html``, naming the link and its target;
  the target's content (a secret) reaches no output. A link inside the run folder, or a run folder that is
  itself a link, still reads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers.exitcodes import run_cli
from tests.reliability.test_fuzz import FIT, run_tool, snapshot

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-token-4242"


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    assert run_cli(*FIT, "--run.root", str(root), "--run.name", "t", "--run.id", "r") == 0
    return root / "t" / "r"


SWEEP = """name: {name}
method: grid
parameters:
  model.lr: {{values: [0.1]}}
command: [lightning-mem, fit, --config, {config}, "${{args}}"]
"""


@pytest.mark.parametrize("name", ["..", ".", "../..", "../../etc", "-x", "'.. '"])
def test_a_sweep_name_must_be_one_folder_name(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              caplog: pytest.LogCaptureFixture) -> None:
    work = tmp_path / "work"
    root = work / "root"
    root.mkdir(parents=True)
    sweep = work / "s.yaml"
    sweep.write_text(SWEEP.format(name=name, config=REPO / "configs" / "quickstart.yaml"))
    before = snapshot(tmp_path)
    code, output = run_tool(["sweep", "local", str(sweep), "--root", str(root)], capsys, caplog)
    assert code == 2, output[-1500:]
    assert f"{sweep}: name=" in output and "must be one folder name" in output
    assert "Traceback" not in output
    assert snapshot(tmp_path) == before  # no lock, manifest or run folder anywhere


def _copy(real_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "t" / "r"
    shutil.copytree(real_run, run)
    return run


def _link_out(run: Path, name: str, tmp_path: Path) -> Path:
    """Replace ``run/name`` by a link to a file outside the run holding the secret (in the file's own
    format, so that following the link would read it whole)."""
    outside = tmp_path / "elsewhere" / name
    outside.parent.mkdir(exist_ok=True)
    original = (run / name).read_text()
    if name == "metrics.csv":
        header, first = original.splitlines()[:2]
        outside.write_text(f"{header},{SECRET}\n{first},1\n")
    elif name == "hp.json":
        outside.write_text(original.replace('"run_name": "t"', f'"run_name": "{SECRET}"'))
    else:
        outside.write_text(original.replace("name: t", f"name: {SECRET}"))
    (run / name).unlink()
    (run / name).symlink_to(outside)
    return outside


@pytest.mark.parametrize("tool", ["report", "dashboard"])
@pytest.mark.parametrize("name", ["metrics.csv", "config.yaml", "hp.json"])
def test_a_run_file_linked_out_of_its_folder_is_refused(tool: str, name: str, real_run: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    run = _copy(real_run, tmp_path)
    outside = _link_out(run, name, tmp_path)
    out = tmp_path / "out"
    argv = (["report", str(run.parent), "--out", str(out)] if tool == "report"
            else ["dashboard", "html", str(run.parent), "--out", str(out / "d.html")])
    code, output = run_tool(argv, capsys, caplog)
    assert code == 2, output[-1500:]
    assert f"{run / name}: a symbolic link to {outside.resolve()}, outside its folder {run}" in output
    assert "Traceback" not in output and SECRET not in output
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not any(SECRET in p.read_text(errors="replace") for p in written)


def test_links_inside_the_run_folder_and_a_linked_run_folder_still_read(
        real_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    run = _copy(real_run, tmp_path)
    (run / "metrics.csv").rename(run / "rows.csv")
    (run / "metrics.csv").symlink_to("rows.csv")
    elsewhere = tmp_path / "linked"
    elsewhere.mkdir()
    (elsewhere / "r2").symlink_to(run, target_is_directory=True)
    for inputs in (run.parent, elsewhere / "r2"):
        code, output = run_tool(["report", str(inputs), "--out", str(tmp_path / f"out-{inputs.name}")],
                                capsys, caplog)
        assert code == 0, output[-1500:]
        assert (tmp_path / f"out-{inputs.name}" / "runs.csv").is_file()


def test_a_manifest_linked_out_of_its_sweep_folder_is_refused(real_run: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    outside = tmp_path / "elsewhere.json"
    outside.write_text(json.dumps({"runs": {SECRET: {"status": "finished", "run_dir": str(real_run)}}}))
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "manifest.json").symlink_to(outside)
    code, output = run_tool(["report", str(sweep / "manifest.json"), "--out", str(tmp_path / "out")],
                            capsys, caplog)
    assert code == 2, output[-1500:]
    assert f"{sweep / 'manifest.json'}: a symbolic link to {outside}, outside its folder {sweep}" in output
    assert SECRET not in output
