"""What a checkpoint someone sent may make this process do: nothing but load tensors and plain data.

Two classes (issue 21): a file that pickles calls or objects (``os.system``, ``eval``, ``subprocess.Popen``,
a whole ``nn.Module``) is refused by the weights-only unpickler, and the message says it holds objects
that are not allowed, naming the pickled global, and nothing of it ran; a real checkpoint whose stored
config names a class outside the project, torch and Lightning (``this.s``, ``antigravity.fly``, ...) in
any of the places jsonargparse or Lightning import from is refused naming the key and the class, before
anything is imported (``sys.modules`` is checked). A class the command line names itself is allowed.
"""

from __future__ import annotations

import builtins
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_mem.training.checkpoints import CheckpointError, load_checkpoint
from tests.helpers.exitcodes import run_cli
from tests.reliability.test_fuzz import FIT


class _Call:
    """Pickles as ``fn(*args)``: what a hostile file would run on load without the weights-only unpickler."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.fn, self.args


@pytest.fixture(scope="module")
def cli_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint written by a real ``lightning-mem fit`` (with its stored model and data config)."""
    root = tmp_path_factory.mktemp("runs")
    assert run_cli(*FIT, "--run.root", str(root), "--run.name", "t", "--run.id", "r") == 0
    return root / "t" / "r" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize(("case", "named"), [
    ("os.system", "posix.system"),
    ("eval", "eval"),
    ("popen", "Popen"),
    ("nn.Module", "torch.nn.modules.linear.Linear"),
])
def test_a_pickled_call_is_refused_as_objects_not_allowed(case: str, named: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    payload = {
        "os.system": _Call(os.system, f"touch {marker}"),
        "eval": _Call(builtins.eval, f"open({str(marker)!r}, 'w')"),
        "popen": _Call(subprocess.Popen, ["touch", str(marker)]),
        "nn.Module": torch.nn.Linear(2, 2),
    }[case]
    path = tmp_path / "sent.ckpt"
    torch.save({"state_dict": {"w": payload}, "global_step": 1}, path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    text = str(exc.value)
    assert text.startswith(f"ckpt_path={str(path)!r}: the file holds objects that are not allowed in a "
                           "checkpoint (it pickles ")
    assert named in text and "nothing in it was run" in text
    assert "truncated" not in text
    assert not marker.exists()


def _with(ckpt: Path, out: Path, where: str, value: str) -> Path:
    state = torch.load(ckpt, weights_only=True)
    section, *keys = where.split(".")
    tree = state[section]
    for key in keys[:-1]:
        tree = tree[key]
    tree[keys[-1]] = value
    torch.save(state, out)
    return out


PLACES = ["hyper_parameters.net.class_path", "hyper_parameters._instantiator",
          "datamodule_hyper_parameters._instantiator"]
CLASSES = ["this.s", "antigravity.fly", "os.system", "json.decoder.JSONDecoder", "no_such_package.Net"]


@pytest.mark.parametrize("where", PLACES)
@pytest.mark.parametrize("name", CLASSES)
def test_a_stored_class_outside_the_project_is_refused(where: str, name: str, cli_ckpt: Path,
                                                       tmp_path: Path) -> None:
    path = _with(cli_ckpt, tmp_path / "sent.ckpt", where, name)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert f"the checkpoint's stored config names {where}={name!r}, outside the classes" in str(exc.value)
    assert "nothing was imported" in str(exc.value)
    assert load_checkpoint(path, allowed={name})["global_step"] > 0  # named by the user: allowed


@pytest.mark.parametrize("command", ["validate", "test", "fit"])
@pytest.mark.parametrize("name", ["this.s", "antigravity.fly"])
def test_the_cli_imports_nothing_a_checkpoint_names(command: str, name: str, cli_ckpt: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    top = name.split(".")[0]
    assert top not in sys.modules
    path = _with(cli_ckpt, tmp_path / "sent.ckpt", "hyper_parameters.net.class_path", name)
    argv = [command, *FIT[1:]] if command == "fit" else [command, "--trainer.accelerator", "cpu"]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code = run_cli(*argv, "--ckpt_path", str(path), "--run.root", str(tmp_path / "runs"))
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert f"hyper_parameters.net.class_path={name!r}" in err
    assert "Traceback" not in err and "Zen of Python" not in err
    assert top not in sys.modules  # nothing named by the file was imported
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_the_projects_own_checkpoint_still_loads_and_validates(cli_ckpt: Path, tmp_path: Path) -> None:
    net = load_checkpoint(cli_ckpt)["hyper_parameters"]["net"]
    assert net["class_path"] == "lightning_mem.nets.ScaledMLP"
    assert run_cli("validate", "--trainer.accelerator", "cpu", "--trainer.limit_val_batches", "1",
                   "--trainer.enable_progress_bar", "false", "--ckpt_path", str(cli_ckpt),
                   "--run.root", str(tmp_path / "runs")) == 0
