"""Tests of lightning_mem.cli.packaged: the configs and sweeps shipped in the package, by name from any
folder (a real path wins), ``lightning-mem configs list|show|copy``, and bad names exiting 2 listing what
exists."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    assert "the packaged configs: grokking/omnigrok_mnist, " in err and "paper/base" in err
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
