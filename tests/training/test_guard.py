"""DivergenceGuard on a real Trainer: host syncs, the divergence row and its place in metrics.csv.

The guard's checkpoint and status behaviour through the CLI is tested in ``test_reliability.py``.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_mem.alignment.monitor import AlignmentMonitor
from lightning_mem.data.datamodule import ImageClassificationData
from lightning_mem.nets import ScaledMLP
from lightning_mem.training.guard import DivergedError, DivergenceGuard
from lightning_mem.training.module import MemorizationModule
from tests.alignment.test_monitor import count_host_syncs
from tests.reliability.test_faults import Poison

STEPS_PER_EPOCH = 12  # digits: ceil(1437 / 128)


def _fit(tmp_path: Path, *callbacks: L.Callback, epochs: int = 1) -> tuple[L.Trainer, MemorizationModule]:
    L.seed_everything(0, verbose=False)
    data = ImageClassificationData("digits", batch_size=128)
    module = MemorizationModule(ScaledMLP(data.input_shape, data.num_classes, width=16), lr=0.05)
    trainer = L.Trainer(max_epochs=epochs, logger=CSVLogger(tmp_path, name="", version=""),
                        callbacks=list(callbacks), log_every_n_steps=STEPS_PER_EPOCH,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    return trainer, module


def _rows(tmp_path: Path) -> list[dict[str, str]]:
    with (tmp_path / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_loss_buffer_syncs_the_host_once_per_read(tmp_path: Path) -> None:
    guard = DivergenceGuard(check_every_n_steps=5)
    syncs: dict[str, Counter[str]] = {}
    count_host_syncs(guard, ["on_train_batch_end"], syncs)
    _fit(tmp_path, guard)
    # Reads after steps 5 and 10 and at the epoch's last batch (step 12): one bool() each.
    assert syncs["on_train_batch_end"] == Counter(__bool__=3)


def test_weight_check_is_one_host_transfer_and_names_the_bad_parameters(tmp_path: Path) -> None:
    guard = DivergenceGuard()
    trainer, module = _fit(tmp_path, guard)
    syncs: dict[str, Counter[str]] = {}
    count_host_syncs(guard, ["check"], syncs)
    guard.check(trainer, module)  # the loss buffer was read at the epoch's end: weights only
    assert syncs["check"] == Counter(tolist=1)
    with torch.no_grad():
        module.net.hidden.weight[0, 0] = float("inf")
        module.net.out.weight[1, 1] = float("nan")
    with pytest.raises(DivergedError, match=r"weights are non-finite \(net.hidden.weight, net.out.weight\)"):
        guard.check(trainer, module)
    assert syncs["check"] == Counter(tolist=2)


def test_divergence_row_has_its_epoch_and_comes_after_the_buffered_alignment_rows(tmp_path: Path) -> None:
    # NaN weights after step 16 -> the loss of step 17 is NaN; the guard reads it after step 20.
    monitor = AlignmentMonitor(every_n_steps=3, val_max_examples=0)
    with pytest.raises(DivergedError, match=r"at step 17 \(epoch 1\): the training loss is nan"):
        _fit(tmp_path, monitor, Poison(step=16), DivergenceGuard(check_every_n_steps=10), epochs=3)
    rows = _rows(tmp_path)
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps)
    assert (rows[-1]["diverged"], rows[-1]["diverged_step"], rows[-1]["epoch"], rows[-1]["step"]) == (
        "1.0", "17.0", "1", "20")
    # Every measurement reached the file before the divergence row, each with its own epoch (the one
    # of step 18, on NaN weights, is all NaN: no row).
    measured = [(int(r["step"]), int(r["epoch"])) for r in rows if r["align/grad/hidden.weight"]]
    assert measured == [(s, s // STEPS_PER_EPOCH) for s in range(0, 17, 3)]
