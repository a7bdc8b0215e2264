"""Every private name of another library that ``lightning_mem._compat`` uses still exists in the installed
releases: a Lightning, torch, jsonargparse or wandb-workspaces release that moves one fails here, naming
it."""

from __future__ import annotations

import inspect

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from lightning_mem import _compat


def test_every_private_name_is_checked_here() -> None:
    names = {name for _, _, name in _compat.PRIVATE_NAMES}
    assert names == {"_batches_that_stepped", "_checkpoint_io", "_rewrite_with_new_header", "_parser",
                     "_every_n_train_steps", "_instantiator", "_class_path", "_spec", "_get_scale_async",
                     "_TORCHVISION_AVAILABLE"}


def test_lightning_trainer_attributes() -> None:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    loop = trainer.fit_loop.epoch_loop
    assert isinstance(getattr(loop, "_batches_that_stepped", None), int), \
        "lightning: fit_loop.epoch_loop._batches_that_stepped moved"
    assert _compat.batches_that_stepped(trainer) == 0
    _compat.advance_batches_that_stepped(trainer, 3)
    assert _compat.batches_that_stepped(trainer) == 3
    assert hasattr(trainer.strategy, "_checkpoint_io"), "lightning: Strategy._checkpoint_io moved"
    assert _compat.configured_checkpoint_io(trainer) is None  # nothing configured yet


def test_lightning_class_members() -> None:
    assert callable(getattr(ExperimentWriter, "_rewrite_with_new_header", None)), \
        "lightning: ExperimentWriter._rewrite_with_new_header moved"
    assert callable(getattr(LightningCLI, "_parser", None)), "lightning: LightningCLI._parser moved"
    params = inspect.signature(ExperimentWriter._rewrite_with_new_header).parameters
    assert list(params) == ["self", "fieldnames"], "lightning: _rewrite_with_new_header changed signature"
    assert _compat.every_n_train_steps(ModelCheckpoint(every_n_train_steps=7)) == 7, \
        "lightning: ModelCheckpoint._every_n_train_steps moved"


def test_header_rewrite_is_routed() -> None:
    calls: list[list[str]] = []

    @_compat.route_header_rewrite
    class Writer(ExperimentWriter):
        def rewrite_with_new_header(self, fieldnames: list[str]) -> None:
            calls.append(fieldnames)

    Writer._rewrite_with_new_header(object.__new__(Writer), ["a", "b"])  # type: ignore[arg-type]
    assert calls == [["a", "b"]]


def test_cli_internal_hparams_are_still_written() -> None:
    source = inspect.getsource(inspect.getmodule(LightningCLI))  # type: ignore[arg-type]
    for key in _compat.CLI_INTERNAL_HPARAMS:
        assert f'"{key}"' in source, f"lightning: LightningCLI no longer writes hyper_parameters[{key!r}]"


def test_grad_scaler_scale_tensor() -> None:
    assert hasattr(torch.amp.GradScaler, "_get_scale_async"), "torch: GradScaler._get_scale_async moved"


def test_workspace_spec() -> None:
    ws = pytest.importorskip("wandb_workspaces.workspaces")
    assert hasattr(ws.Workspace, "_spec"), "wandb-workspaces: Workspace._spec moved"
    spec = _compat.workspace_spec(ws.Workspace(entity="e", project="p", name="n"))
    assert isinstance(spec, dict) and spec


def test_torchmetrics_torchvision_flag() -> None:
    # The flag torchmetrics reads before importing torchvision, and the cache that keeps it off once set
    # (the effect itself, no torchvision in a fit's process: tests/cli/test_progress.py).
    from lightning_utilities.core.imports import RequirementCache
    from torchmetrics.utilities import imports

    flag = getattr(imports, "_TORCHVISION_AVAILABLE", None)
    assert isinstance(flag, RequirementCache), "torchmetrics: utilities.imports._TORCHVISION_AVAILABLE moved"
    off = RequirementCache("torchvision")
    off.available = False
    assert not off, "lightning_utilities: RequirementCache no longer keeps a set `available`"
    import importlib

    arniqa = importlib.import_module("torchmetrics.functional.image.arniqa")  # the module, not its function
    assert "_TORCHVISION_AVAILABLE" in vars(arniqa), "torchmetrics: arniqa no longer reads the flag"
