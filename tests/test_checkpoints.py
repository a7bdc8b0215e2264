"""Tests of lightning_mem.checkpoints on real checkpoints written by a Lightning Trainer, and on damaged
files (empty, truncated, random bytes, a torch file that is not a checkpoint)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from lightning_mem.checkpoints import (
    CheckpointError,
    config_differences,
    default_overrides,
    load_checkpoint,
    model_config,
    state_differences,
)
from lightning_mem.data import ImageClassificationData
from lightning_mem.module import MemorizationModule
from lightning_mem.nets import ScaledMLP

# The hparams record LightningCLI leaves in a checkpoint of this package (a fit's last.ckpt, abridged).
CLI_HPARAMS = {
    "net": {"class_path": "lightning_mem.nets.ScaledMLP",
            "init_args": {"input_shape": [1, 8, 8], "num_classes": 10, "width": 16, "activation": "sin",
                          "init_std": 0.01}},
    "loss": "cross_entropy", "loss_scale": 1.0, "loss_scale_with_init": False, "lr": 0.1, "momentum": 0.0,
    "weight_decay": 0.0, "_instantiator": "lightning.pytorch.cli.instantiate_module",
}


@pytest.fixture(scope="module")
def notebook_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of a module built by hand (no CLI): its hparams record no net."""
    path = tmp_path_factory.mktemp("ckpt") / "hand.ckpt"
    L.seed_everything(0, verbose=False)
    module = MemorizationModule(ScaledMLP((1, 8, 8), 10, width=16))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=ImageClassificationData("digits", batch_size=64))
    trainer.save_checkpoint(path)
    return path


def test_a_module_built_by_hand_records_no_net(notebook_ckpt: Path, recwarn: pytest.WarningsRecorder) -> None:
    module = MemorizationModule(ScaledMLP((1, 8, 8), 10, width=8), lr=0.5)
    assert "net" not in module.hparams and "net" not in module.hparams_initial
    assert module.hparams["lr"] == 0.5
    assert not [w for w in recwarn if "nn.Module" in str(w.message)]  # Lightning's warning is not shown
    ckpt = load_checkpoint(notebook_ckpt)
    assert model_config(ckpt) is None and config_differences(ckpt, CLI_HPARAMS) == []
    # Without a recorded net the parameters themselves are compared.
    assert state_differences(ckpt, MemorizationModule(ScaledMLP((1, 8, 8), 10, width=16))) == []
    wrong = MemorizationModule(ScaledMLP((1, 8, 8), 10, width=32))
    assert state_differences(ckpt, wrong)[:2] == [
        "checkpoint has net.hidden.weight of shape (16, 64), the config builds (32, 64)",
        "checkpoint has net.out.weight of shape (10, 16), the config builds (10, 32)",
    ]
    loaded = MemorizationModule.load_from_checkpoint(notebook_ckpt, net=ScaledMLP((1, 8, 8), 10, width=16))
    assert torch.equal(loaded.net.hidden.weight, ckpt["state_dict"]["net.hidden.weight"])


def test_config_differences_name_the_key_and_both_values() -> None:
    ckpt: dict[str, Any] = {"hyper_parameters": CLI_HPARAMS, "state_dict": {}, "global_step": 1}
    config = {**CLI_HPARAMS, "net": {"class_path": "lightning_mem.nets.ScaledMLP",
                                     "init_args": {**CLI_HPARAMS["net"]["init_args"], "width": 512,
                                                   "input_shape": (1, 8, 8)}}}
    assert config_differences(ckpt, config) == ["checkpoint has width 16, config asks for 512"]
    convnet = {**CLI_HPARAMS, "lr": 0.01,
               "net": {"class_path": "lightning_mem.nets.ConvNet", "init_args": {}}}
    assert config_differences(ckpt, convnet) == ["checkpoint has net 'ScaledMLP', config asks for 'ConvNet'",
                                                 "checkpoint has lr 0.1, config asks for 0.01"]


def test_default_overrides_leave_linked_values_to_the_links() -> None:
    ckpt = {"hyper_parameters": CLI_HPARAMS, "state_dict": {}, "global_step": 1,
            "datamodule_hyper_parameters": {"dataset": "digits", "seed": 3, "batch_size": 64,
                                            "_instantiator": "x"}}
    defaults = default_overrides(ckpt, "validate")
    net_args = {"width": 16, "activation": "sin", "init_std": 0.01}  # no num_classes, input_shape: linked
    mlp = "lightning_mem.nets.ScaledMLP"
    assert defaults["validate.model.net"] == {"class_path": mlp, "init_args": net_args}
    assert defaults["validate.model.lr"] == 0.1 and defaults["validate.data.dataset"] == "digits"
    internal = {"validate.data.seed", "validate.model._instantiator", "validate.data._instantiator"}
    assert not internal & set(defaults)


def _damaged(tmp_path: Path, kind: str, good: Path) -> Path:
    path = tmp_path / f"{kind}.ckpt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:2000])
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "not-a-checkpoint":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "directory":
        path.mkdir()
    return path


@pytest.mark.parametrize(("kind", "says"), [
    ("empty", "does not load as a checkpoint (empty, truncated or not a torch file: EOFError)"),
    ("truncated", "does not load as a checkpoint (empty, truncated or not a torch file: PytorchStreamReader"),
    ("random", "does not load as a checkpoint (empty, truncated or not a torch file: UnpicklingError)"),
    ("not-a-checkpoint", "a torch file but not a Lightning checkpoint (no state_dict and global_step)"),
    ("directory", "no such checkpoint file"),
    ("missing", "no such checkpoint file"),
])
def test_damaged_checkpoints_name_the_file(kind: str, says: str, notebook_ckpt: Path, tmp_path: Path) -> None:
    path = _damaged(tmp_path, kind, notebook_ckpt)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert str(exc.value).startswith(f"ckpt_path={str(path)!r}: ")
    assert says in str(exc.value)
    assert "give a .ckpt written by `lightning-mem fit`" in str(exc.value)
