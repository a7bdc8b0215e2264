"""Tests of lightning_mem.cli.packaged: the configs and sweeps shipped in the package, by name from any
folder (a real path wins), ``lightning-mem configs list|show|copy``, and bad names exiting 2 listing what
exists."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from lightning_mem.cli import packaged
from lightning_mem.ensemble.plan import net_class
from tests.helpers.exitcodes import exit_code, run_cli

REPO = Path(__file__).resolve().parents[2]


def _repo_yaml(folder: str) -> list[str]:
    root = REPO / folder
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def _same(folder: Path, name: str) -> bool:
    return (folder / name).read_bytes() == (REPO / name).read_bytes()


def test_packaged_names_are_the_repository_folders() -> None:
    # One source: every YAML under configs/ and sweeps/, by its path without .yaml, the same bytes.
    assert packaged.names("config") == _repo_yaml("configs")
    assert packaged.names("sweep") == _repo_yaml("sweeps")
    assert {"quickstart", "paper/base", "logger/wandb"} <= set(packaged.names("config"))
    assert {"cpu_mnist5k", "repro/sin_sigma"} <= set(packaged.names("sweep"))
    found = packaged.packaged_path("config", "paper/base")
    assert found is not None and found.read_bytes() == (REPO / "configs/paper/base.yaml").read_bytes()
    sweep = packaged.packaged_path("sweep", "sweeps/repro/sin_sigma.yaml")
    assert sweep is not None and sweep.read_bytes() == (REPO / "sweeps/repro/sin_sigma.yaml").read_bytes()
    assert packaged.packaged_path("config", "cpu_mnist5k") is None  # a sweep is not a config
    assert packaged.packaged_path("config", "paper") is None  # a folder is not a config


def test_config_names_resolve_only_when_no_such_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    quick = str(packaged.packaged_path("config", "quickstart"))
    base = str(packaged.packaged_path("config", "paper/base"))
    wandb = str(packaged.packaged_path("config", "logger/wandb"))
    argv = ["fit", "--config", "quickstart", "--config=paper/base", "--config", "{trainer: {max_epochs: 1}}",
            "--config", "configs/logger/wandb.yaml", "--config", "nope", "--model.net.init_std", "quickstart"]
    assert packaged.resolve_config_args(argv) == [
        "fit", "--config", quick, f"--config={base}", "--config", "{trainer: {max_epochs: 1}}",
        "--config", wandb, "--config", "nope", "--model.net.init_std", "quickstart"]
    (tmp_path / "quickstart").write_text("trainer: {max_epochs: 1}\n")  # a real path always wins
    assert packaged.resolve_config_args(["--config", "quickstart"]) == ["--config", "quickstart"]
    # The ensemble planner reads a packaged config's net too (sweep local --pack from an empty folder).
    assert net_class(["--config", "configs/quickstart.yaml"], {}) == "lightning_mem.nets.ScaledMLP"


def test_unknown_config_name_exits_2_listing_the_packaged_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_cli("fit", "--config", "quickstrat", "--run.root", str(tmp_path / "runs")) == 2
    err = capsys.readouterr().err
    assert "--config quickstrat: no such file and no packaged config of that name" in err
    assert "the packaged configs: grokking/omnigrok_mnist, " in err and ", quickstart, " in err
    n_paper = len([n for n in _repo_yaml("configs") if n.startswith("paper/")])
    assert f", paper/* ({n_paper})," in err  # a large folder folded; `configs list` names every one
    assert "Traceback" not in err and not any(tmp_path.iterdir())
    assert exit_code(packaged.main, ["show", "quickstrat"]) == 2
    err = capsys.readouterr().err
    assert "'quickstrat': no packaged config or sweep of that name" in err
    assert "the packaged sweeps: cpu_mnist5k, " in err


def test_configs_list_show_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(packaged.main, ["list"]) == 0
    assert capsys.readouterr().out.splitlines() == [*(f"configs/{n}" for n in _repo_yaml("configs")),
                                                    *(f"sweeps/{n}" for n in _repo_yaml("sweeps"))]
    assert exit_code(packaged.main, ["list", "sweep"]) == 0
    assert capsys.readouterr().out.splitlines() == _repo_yaml("sweeps")
    assert exit_code(packaged.main, ["show", "quickstart"]) == 0
    assert capsys.readouterr().out == (REPO / "configs/quickstart.yaml").read_text()
    assert exit_code(packaged.main, ["copy", "paper/base", str(tmp_path)]) == 0
    assert _same(tmp_path, "configs/paper/base.yaml")
    assert exit_code(packaged.main, ["copy", "cpu_mnist5k", str(tmp_path)]) == 0  # only a sweep has the name
    assert _same(tmp_path, "sweeps/cpu_mnist5k.yaml")
    capsys.readouterr()
    (tmp_path / "configs/paper/base.yaml").write_text("edited: true\n")
    assert exit_code(packaged.main, ["copy", "paper/base", str(tmp_path)]) == 2  # nothing written is lost
    assert "already exists; nothing was copied (--force overwrites it)" in capsys.readouterr().err
    assert (tmp_path / "configs/paper/base.yaml").read_text() == "edited: true\n"
    assert exit_code(packaged.main, ["copy", "paper/base", str(tmp_path), "--force"]) == 0
    assert _same(tmp_path, "configs/paper/base.yaml")


def _build_wheel(tmp_path: Path) -> Path:
    """The wheel ``pip wheel --no-deps`` builds from a copy of this tree's files (setuptools writes build/
    beside its sources)."""
    src, dist = tmp_path / "src", tmp_path / "dist"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
                   check=True, timeout=600, capture_output=True)
    return next(dist.glob("lightning_mem-*.whl"))


@pytest.mark.slow
def test_the_built_wheel_runs_from_an_empty_folder(tmp_path: Path) -> None:
    # The wheel, installed into a fresh venv that reuses this interpreter's packages (torch & co.) through a
    # .pth file, runs the quickstart by name, copies a config and runs a shipped sweep by name, all from an
    # empty folder; bad names exit 2 listing what exists.
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as whl:
        shipped = {n for n in whl.namelist() if n.endswith(".yaml")}
    assert shipped == {f"lightning_mem/configs/{n}.yaml" for n in _repo_yaml("configs")} \
        | {f"lightning_mem/sweep_files/{n}.yaml" for n in _repo_yaml("sweeps")}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    site = next((venv / "lib").glob("python*/site-packages"))
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "_deps.pth").write_text("\n".join(deps) + "\n")  # torch & co., after the venv's own packages
    py = venv / "bin/python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   timeout=300, capture_output=True)
    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"  # the sweep's `${env} lightning-mem`

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(venv / "bin/lightning-mem"), *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=600)

    where = subprocess.run([str(py), "-c", "import lightning_mem; print(lightning_mem.__file__)"], cwd=work,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), where  # the wheel's copy, not this tree
    short = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    fit = run("fit", "--config", "quickstart", "--trainer.max_epochs", "1", *short, "--run.id", "q",
              "--trainer.enable_progress_bar", "false")
    assert fit.returncode == 0, fit.stderr[-3000:]
    header = (work / "runs/quickstart/q/metrics.csv").read_text().splitlines()[0]
    assert "align/grad/hidden.weight" in header and "val/acc" in header
    bad = run("fit", "--config", "quickstrat")
    assert bad.returncode == 2 and "the packaged configs: grokking/omnigrok_mnist, " in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
    dry = run("sweep", "local", "cpu_mnist5k", "--dry-run")  # the check before launch reads packaged configs
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert dry.stdout.count("lightning-mem fit --config configs/quickstart.yaml") == 4
    unknown = run("sweep", "local", "cpu_mnist5", "--dry-run")
    assert unknown.returncode == 2 and "the packaged sweeps: cpu_mnist5k, " in unknown.stderr, unknown.stderr
    copied = run("configs", "copy", "quickstart", ".")
    assert copied.returncode == 0 and copied.stdout == "configs/quickstart.yaml\n", copied.stderr
    assert (work / "configs/quickstart.yaml").read_bytes() == (REPO / "configs/quickstart.yaml").read_bytes()
    # The copy, shrunk, is what the shipped sweep (by name) now runs: a real path wins over the packaged one.
    config = yaml.safe_load((work / "configs/quickstart.yaml").read_text())
    config["trainer"] |= {"limit_train_batches": 2, "limit_val_batches": 1}
    config["model"]["net"]["init_args"]["width"] = 16
    (work / "configs/quickstart.yaml").write_text(yaml.safe_dump(config))
    swept = run("sweep", "local", "cpu_mnist5k", "--count", "1", "--wandb-mode", "disabled")
    assert swept.returncode == 0, (swept.stdout + swept.stderr)[-3000:]
    manifest = json.loads((work / "runs/cpu_mnist5k/manifest.json").read_text())
    assert sorted(r["status"] for r in manifest["runs"].values()) == ["finished"]  # --count 1: the first
    (run_dir,) = [p.parent for p in (work / "runs/cpu_mnist5k").glob("*/metrics.csv")]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["net"]["init_args"]["width"] == 16 and saved["trainer"]["max_epochs"] == 10
