"""Tests of lightning_mem.training.checkpoints on real checkpoints written by a Lightning Trainer, and on
damaged
files (empty, truncated, random bytes, a torch file that is not a checkpoint)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from lightning_mem import rundir
from lightning_mem.data.datamodule import ImageClassificationData
from lightning_mem.nets import ScaledMLP
from lightning_mem.training.checkpoints import (
    CheckpointError,
    config_differences,
    default_overrides,
    load_checkpoint,
    model_config,
    state_differences,
)
from lightning_mem.training.module import MemorizationModule

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
        path.write_bytes(random.Random(0).randbytes(4096))  # fixed bytes (any others: the test below)
    elif kind == "not-a-checkpoint":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "directory":
        path.mkdir()
    return path


@pytest.mark.parametrize(("kind", "says"), [
    ("empty", "does not load as a checkpoint (empty, truncated or not a torch file: EOFError)"),
    ("truncated", "does not load as a checkpoint (empty, truncated or not a torch file: PytorchStreamReader"),
    ("random", "does not load as a checkpoint (empty, truncated or not a torch file: "),
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


def test_random_bytes_never_escape_as_another_error(tmp_path: Path) -> None:
    """200 seeded random files (4 B to 64 kB, some starting like a zip or a pickle): each a CheckpointError
    naming the file. The weights-only unpickler raises IndexError, KeyError, struct.error, ... on garbage."""
    rng = random.Random(0)
    path = tmp_path / "random.ckpt"
    heads = [b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."]
    for i in range(200):
        size = rng.choice([4, 64, 1000, 4096, 65536])
        path.write_bytes(heads[i % len(heads)] + rng.randbytes(size))
        with pytest.raises(CheckpointError) as exc:
            load_checkpoint(path)
        assert str(exc.value).startswith(f"ckpt_path={str(path)!r}: "), exc.value


# ---------------------------------------------------------------- writing: whole files, held until published


def test_run_checkpoint_io_writes_whole_files_only(tmp_path: Path) -> None:
    from lightning_mem.training.checkpoints import RunCheckpointIO

    io = RunCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.ones(2)}}, target)
    assert torch.load(target, weights_only=True)["global_step"] == 1
    old = target.read_bytes()

    def torn(fh: Any, data: Any) -> None:  # the writer dies halfway
        fh.write(bytes(data)[: len(data) // 2])
        raise KeyboardInterrupt

    io._write = torn  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.zeros(2)}}, target)
    assert target.read_bytes() == old  # the previous checkpoint, whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_held_checkpoints_appear_only_when_published(tmp_path: Path) -> None:
    from lightning_mem.training.checkpoints import RunCheckpointIO

    io = RunCheckpointIO()
    folder = tmp_path / "checkpoints"
    io.save_checkpoint({"global_step": 1, "state_dict": {}}, folder / "epoch0.ckpt")
    io.save_checkpoint({"global_step": 1, "state_dict": {}}, folder / "last.ckpt")
    io.hold = True
    io.save_checkpoint({"global_step": 2, "state_dict": {}}, folder / "epoch1.ckpt")
    io.remove_checkpoint(folder / "epoch0.ckpt")
    io.save_checkpoint({"global_step": 2, "state_dict": {}}, folder / "last.ckpt")
    visible = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert visible == ["epoch0.ckpt", "last.ckpt"]
    assert io.pending == [folder / "epoch1.ckpt", folder / "last.ckpt"]
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 1  # still the old one
    io.publish()
    assert sorted(p.name for p in folder.iterdir()) == ["epoch1.ckpt", "last.ckpt"]
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 2
    assert not io.hold and io.pending == []
    # Dropped instead: nothing of the held epoch is left, the published files stay.
    io.hold = True
    io.save_checkpoint({"global_step": 3, "state_dict": {}}, folder / "last.ckpt")
    io.remove_checkpoint(folder / "epoch1.ckpt")
    io.discard()
    assert sorted(p.name for p in folder.iterdir()) == ["epoch1.ckpt", "last.ckpt"]
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 2


def test_last_checkpoint_is_a_hard_link_to_its_epoch_file(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """last.ckpt of the same step and state as the epoch file just written shares its bytes (held or not);
    another state (ModelCheckpoint's at the first epoch), another step, or no hard links: its own bytes."""
    from lightning_mem.training.checkpoints import RunCheckpointIO

    def state(step: int, last_path: str = "last.ckpt") -> dict[str, Any]:
        return {"global_step": step, "epoch": step // 10, "state_dict": {"w": torch.full((64,), float(step))},
                "callbacks": {"ModelCheckpoint": {"last_model_path": last_path}}}

    def files(folder: Path) -> dict[str, tuple[int, int, int]]:
        return {p.name: (p.stat().st_ino, p.stat().st_nlink, torch.load(p, weights_only=True)["global_step"])
                for p in sorted(folder.iterdir())}

    io, folder = RunCheckpointIO(), tmp_path / "checkpoints"
    io.save_checkpoint(state(10, ""), folder / "epoch0.ckpt")  # the first epoch: last_model_path not yet set
    io.save_checkpoint(state(10), folder / "last.ckpt")
    (_, n0, _), (_, n1, _) = files(folder).values()
    assert (n0, n1) == (1, 1)  # their states differ: two files
    io.save_checkpoint(state(20), folder / "epoch1.ckpt")
    io.remove_checkpoint(folder / "epoch0.ckpt")
    io.save_checkpoint(state(20), folder / "last.ckpt")
    got = files(folder)
    assert list(got) == ["epoch1.ckpt", "last.ckpt"] and got["epoch1.ckpt"] == got["last.ckpt"]
    assert got["last.ckpt"][1:] == (2, 20)
    io.hold = True  # held: the link is made to the temporary file and published with it
    io.save_checkpoint(state(30), folder / "epoch2.ckpt")
    io.remove_checkpoint(folder / "epoch1.ckpt")
    io.save_checkpoint(state(30), folder / "last.ckpt")
    assert files(folder)["last.ckpt"][2] == 20  # nothing visible changed yet
    io.publish()
    got = files(folder)
    assert list(got) == ["epoch2.ckpt", "last.ckpt"] and got["epoch2.ckpt"] == got["last.ckpt"]
    assert got["last.ckpt"][1:] == (2, 30)
    io.save_checkpoint(state(31), folder / "last.ckpt")  # another step: its own bytes
    assert files(folder)["last.ckpt"][1:] == (1, 31)

    def no_links(src: Any, dst: Any) -> None:  # a filesystem without hard links (some FUSE and SMB mounts)
        raise PermissionError(1, "Operation not permitted", str(src))

    monkeypatch.setattr("os.link", no_links)
    io.save_checkpoint(state(40), folder / "epoch3.ckpt")
    io.save_checkpoint(state(40), folder / "last.ckpt")
    got = files(folder)
    assert got["last.ckpt"][1:] == (1, 40) and got["last.ckpt"][0] != got["epoch3.ckpt"][0]
    assert not list(folder.glob(".*"))  # no temporary file left


def test_a_fit_publishes_each_epoch_after_its_rows(tmp_path: Path) -> None:
    """In a real fit, a checkpoint is never under its name while metrics.csv lacks its epoch's train/* row
    (Lightning logs that row after ModelCheckpoint runs): looked at right after each save (the logger's
    after_save_checkpoint hook) and at each epoch start. Without the publisher the first look fails."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from lightning_mem.training.checkpoints import CheckpointPublisher, install_checkpoint_io

    seen: list[tuple[str, int, bool, bool]] = []

    def look(when: str, epoch: int) -> None:
        _, rows = rundir.read_metrics_rows(tmp_path / "metrics.csv")
        published = (tmp_path / "checkpoints" / f"epoch{epoch}.ckpt").is_file()
        train_row = any(r["epoch"] == str(epoch) and r.get("train/loss") for r in rows)
        if (when, epoch, published, train_row) not in seen:
            seen.append((when, epoch, published, train_row))

    class Spy(CSVLogger):
        def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
            look("saved", self._epoch)

    class Look(L.Callback):
        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            logger._epoch = trainer.current_epoch

        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.current_epoch:
                look("next epoch", trainer.current_epoch - 1)

    L.seed_everything(0, verbose=False)
    data = ImageClassificationData("digits", batch_size=64)
    module = MemorizationModule(ScaledMLP(data.input_shape, data.num_classes, width=8), lr=0.05)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="epoch{epoch}",
                           auto_insert_metric_name=False, save_last=True)
    logger = Spy(tmp_path, name="", version="")
    trainer = L.Trainer(max_epochs=2, logger=logger, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[CheckpointPublisher(), Look(), ckpt], num_sanity_val_steps=0)
    assert install_checkpoint_io(trainer) is not None
    trainer.fit(module, datamodule=data)
    # Held when written (the row not yet logged), published at the next epoch's start with its row.
    assert seen == [("saved", 0, False, False), ("next epoch", 0, True, True), ("saved", 1, False, False)]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch1.ckpt", "last.ckpt"]
    epoch, last = ((tmp_path / "checkpoints" / name).stat() for name in ("epoch1.ckpt", "last.ckpt"))
    assert (last.st_ino, last.st_nlink) == (epoch.st_ino, 2)  # one copy of the bytes
    assert [r["epoch"] for r in rundir.read_metrics_rows(tmp_path / "metrics.csv")[1] if r["train/loss"]] == [
        "0", "1"]
