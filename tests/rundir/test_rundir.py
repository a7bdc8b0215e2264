"""The run folder module: names, atomic writes, status.json, metrics.csv, hp.json, manifests, locks.

``metrics.csv`` is written by Lightning's own CSV logger here (the real writer), and read back
against Python's csv module as the independent reference. The lock tests hold the lock in a real
second process and kill it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.loggers import CSVLogger

from lightning_mem import rundir
from lightning_mem.rundir import FolderLock, LockedError, RunDirError
from lightning_mem.rundir import metrics as rundir_metrics

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- names and layout


@pytest.mark.parametrize("bad", ["", ".", "..", "../escape", "a/b", "/abs", ".hidden", "-rf", "a b",
                                 "x" * 129, "tab\t", "a\\b"])
def test_bad_names_are_refused_with_the_key_and_the_rule(bad: str) -> None:
    with pytest.raises(RunDirError, match=r"run\.id=.* must be one folder name"):
        rundir.run_path("runs", "ok", bad)
    with pytest.raises(RunDirError, match=r"run\.name=.* must be one folder name"):
        rundir.run_path("runs", bad, "ok")


@pytest.mark.parametrize("good", ["quickstart", "20261130-210534-4146-a6b7", "init_std0.01_seed1-3f2a9c1e",
                                  "a=b+c", "_x", "0"])
def test_good_names_stay_one_level_below_the_root(good: str, tmp_path: Path) -> None:
    path = rundir.run_path(tmp_path, good, good)
    assert path.resolve().parent.parent == tmp_path.resolve()


def test_find_run_dirs_skips_wandb_folders(tmp_path: Path) -> None:
    for rel in ("a/1", "a/2", "b/deep/3", "a/1/wandb/offline-run-x/files"):
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "metrics.csv").write_text("step\n0\n")
    found = [p.relative_to(tmp_path).as_posix() for p in rundir.find_run_dirs(tmp_path)]
    assert found == ["a/1", "a/2", "b/deep/3"]


def test_newest_run_with_checkpoint(tmp_path: Path) -> None:
    assert rundir.newest_run_with_checkpoint(tmp_path, "q") is None
    for i, rid in enumerate(("old", "new")):
        ckpt = rundir.last_checkpoint(tmp_path / "q" / rid)
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"x")
        os.utime(ckpt, (1000 + i, 1000 + i))
    assert rundir.newest_run_with_checkpoint(tmp_path, "q") == tmp_path / "q" / "new"


# ---------------------------------------------------------------- atomic writes and status.json


def test_atomic_json_maps_non_finite_to_null_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.json"
    rundir.atomic_write_json(path, {"a": math.nan, "b": [1.5, math.inf], "c": "s"})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.5, None], "c": "s"}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_status_round_trip_and_bad_records(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert rundir.read_status(tmp_path) is None
    rundir.write_status(tmp_path, "diverged", step=5, reason="the training loss is nan")
    record = rundir.read_status(tmp_path)
    assert record is not None and record["status"] == "diverged" and record["step"] == 5 and "time" in record
    with pytest.raises(ValueError, match="status='done'; allowed: running, finished, diverged"):
        rundir.write_status(tmp_path, "done")
    for text in ("{not json", "[1, 2]", '{"status": "weird"}', "\xff\xfe"):
        (tmp_path / "status.json").write_text(text, errors="surrogateescape")
        assert rundir.read_status(tmp_path) is None
    assert str(tmp_path / "status.json") in caplog.text


# ---------------------------------------------------------------- metrics.csv


def _lightning_csv(tmp_path: Path) -> Path:
    """A metrics.csv written by Lightning's CSV logger: sparse rows, a logged NaN, keys added late."""
    logger = CSVLogger(tmp_path, name="r", version="v")
    logger.log_metrics({"align/rep/act": 0.25, "epoch": 0}, step=0)
    logger.log_metrics({"train/loss": 2.5, "train/acc": 0.125, "epoch": 0}, step=3)
    logger.save()
    logger.log_metrics({"val/acc": 0.5, "val/loss": 1.75, "epoch": 0}, step=3)
    logger.log_metrics({"train/loss": math.nan, "train/acc": 0.25, "epoch": 1}, step=7)
    logger.save()
    return Path(logger.log_dir) / "metrics.csv"


def test_read_metrics_matches_the_csv_module(tmp_path: Path) -> None:
    path = _lightning_csv(tmp_path)
    table = rundir.read_metrics(path.parent)
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(table.values) == len(rows) == 4
    assert set(table.keys) == {k for k in rows[0] if k not in ("step", "epoch")}
    for key in table.keys:
        steps, epochs, values = table.series(key)
        ref = [(int(r["step"]), float(r["epoch"]), float(r[key])) for r in rows if r[key] != ""]
        assert list(steps) == [s for s, _, _ in ref] and list(epochs) == [e for _, e, _ in ref]
        assert [v if not math.isnan(v) else "nan" for v in values] == [
            v if not math.isnan(v) else "nan" for _, _, v in ref]
    assert table.values["step"].dtype.kind == "i"
    # Last values: a logged NaN is a value (None), not a blank to skip.
    assert rundir.final_metrics(path.parent) == {"align/rep/act": 0.25, "epoch": 1.0, "step": 7.0,
                                                 "train/acc": 0.25, "train/loss": None, "val/acc": 0.5,
                                                 "val/loss": 1.75}
    header, raw = rundir.read_metrics_rows(path)
    assert header == list(rows[0]) and raw == rows


def test_missing_or_empty_metrics_are_an_empty_table(tmp_path: Path) -> None:
    for table in (rundir.read_metrics(tmp_path / "none.csv"), rundir.read_metrics(tmp_path)):
        assert table.keys == [] and len(table.values) == 0
    (tmp_path / "metrics.csv").write_text("")
    assert rundir.final_metrics(tmp_path) == {}
    assert rundir.read_metrics_rows(tmp_path / "absent.csv") == ([], [])


def test_metrics_without_an_epoch_column_get_nan_epochs(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text("step,val/acc\n4,0.5\n")
    steps, epochs, values = rundir.read_metrics(tmp_path).series("val/acc")
    assert list(steps) == [4] and math.isnan(epochs[0]) and list(values) == [0.5]
    steps, epochs, values = rundir.read_metrics(tmp_path).series("absent")
    assert len(steps) == len(epochs) == len(values) == 0


def test_metrics_carried_over_a_resume_keep_the_rows_before_the_checkpoint(tmp_path: Path) -> None:
    """set_metrics_aside + restore_metrics on a file Lightning's CSV logger wrote, with a checkpoint at the
    end of epoch 0 (global_step 4): rows before step 4 stay, rows at step 4 stay if they belong to epoch 0
    (its validation) and go if they belong to epoch 1 (its first batch, logged again by the resumed run)."""
    logger = CSVLogger(tmp_path, name="", version="")
    logger.log_metrics({"align/rep/act": 0.5, "epoch": 0}, step=0)
    logger.log_metrics({"train/acc": 0.25, "epoch": 0}, step=3)
    logger.log_metrics({"val/align/rep/act": 0.125, "epoch": 0}, step=4)  # at global_step: epoch 0's
    logger.log_metrics({"align/rep/act": 0.75, "epoch": 1}, step=4)  # epoch 1's first batch
    logger.log_metrics({"val/acc": 0.875}, step=4)  # no epoch (older logs): kept
    logger.log_metrics({"train/acc": 0.5, "epoch": 1}, step=7)
    logger.save()
    path = tmp_path / "metrics.csv"
    full = path.read_bytes()
    rundir.set_metrics_aside(tmp_path)
    assert not path.exists() and (tmp_path / "metrics.resume.csv").read_bytes() == full
    rundir.set_metrics_aside(tmp_path)  # a second resume after a kill here: nothing lost
    header = rundir.restore_metrics(tmp_path, step=4, epoch=0)
    assert header == ["align/rep/act", "epoch", "step", "train/acc", "val/acc", "val/align/rep/act"]
    assert not (tmp_path / "metrics.resume.csv").exists()
    lines = full.split(b"\r\n")  # the CSV logger's own line ends, kept byte for byte
    assert path.read_bytes() == b"\r\n".join([*lines[:4], lines[5], b""])
    assert rundir.restore_metrics(tmp_path, step=4, epoch=0) == []  # nothing set aside: nothing to do


@pytest.mark.parametrize(("row", "kept"), [
    ({"step": "3", "epoch": "9"}, True), ({"step": "4", "epoch": "0"}, True),
    ({"step": "4", "epoch": "0.0"}, True), ({"step": "4", "epoch": "1"}, False),
    ({"step": "4", "epoch": ""}, True), ({"step": "5", "epoch": "0"}, False),
    ({"step": "", "epoch": "0"}, False), ({"step": "4", "epoch": "x"}, False),
])
def test_row_before_a_checkpoint(row: dict[str, str], kept: bool) -> None:
    assert rundir_metrics._row_before(row, 4, 0) is kept


def test_lock_holder_reads_without_changing_anything(tmp_path: Path) -> None:
    assert rundir.lock_holder(tmp_path) is None and not (tmp_path / ".lock").exists()
    proc = _hold(tmp_path)
    try:
        before = (tmp_path / ".lock").read_bytes()
        holder = rundir.lock_holder(tmp_path)
        assert holder is not None and holder.startswith(f"pid {proc.pid} on ")
        assert (tmp_path / ".lock").read_bytes() == before
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert rundir.lock_holder(tmp_path) is None  # a dead holder holds nothing


@pytest.mark.parametrize(("content", "why"), [
    (b"\xff\xfe\x00garbage\x00", "UnicodeDecodeError"),
    (b"epoch,val/acc\n0,0.5\n", "no 'step' column"),
    (b"step,val/acc\n0,abc\n", "a cell is not a number"),
    (b"step,val/acc\n,0.5\n", "every row needs an integer step"),
    (b"step,val/acc\n1.5,0.5\n", "every row needs an integer step"),
    (b'step,val/acc\n0,"0.5\n', "not a metrics.csv"),
])
def test_corrupt_metrics_name_the_file(tmp_path: Path, content: bytes, why: str) -> None:
    (tmp_path / "metrics.csv").write_bytes(content)
    with pytest.raises(RunDirError) as err:
        rundir.read_metrics(tmp_path)
    assert str(tmp_path / "metrics.csv") in str(err.value) and why in str(err.value)


# ---------------------------------------------------------------- hp.json


def test_canonical_hp_from_a_saved_config(tmp_path: Path) -> None:
    config = {
        "seed_everything": 3,
        "run": {"name": "q", "root": "runs", "id": "x"},
        "trainer": {"max_epochs": 7},
        "model": {"net": {"class_path": "lightning_mem.nets.ScaledMLP",
                          "init_args": {"width": 64, "activation": "relu", "init_std": 10.0, "depth": 2,
                                        "bias": True, "init_scale": 8.0, "init_rule": "torch"}},
                  "loss": "hinge", "loss_scale": 2.0, "loss_scale_with_init": False, "lr": 0.05,
                  "optimizer": "adamw", "weight_decay": 0.01},
        "data": {"dataset": "digits", "label_noise": 0.5, "label_noise_mode": "shuffle", "train_subset": None,
                 "batch_size": 64},
    }
    hp = rundir.canonical_hp(yaml.safe_load(yaml.safe_dump(config)))
    assert list(hp) == list(rundir.HP_KEYS)
    assert hp == {"run_name": "q", "net": "ScaledMLP", "init_std": 10.0, "width": 64, "activation": "relu",
                  "loss": "hinge", "loss_scale": 2.0, "loss_scale_with_init": False, "lr": 0.05,
                  "dataset": "digits", "label_noise": 0.5, "label_noise_mode": "shuffle",
                  "train_subset": None, "batch_size": 64, "max_epochs": 7, "seed": 3,
                  "depth": 2, "bias": True, "init_scale": 8.0, "init_rule": "torch", "optimizer": "adamw",
                  "momentum": None, "weight_decay": 0.01}
    rundir.write_hp(tmp_path, hp)
    assert rundir.read_hp(tmp_path) == hp
    assert rundir.canonical_hp({"seed_everything": True})["seed"] is None
    (tmp_path / "hp.json").write_text("[1]")
    with pytest.raises(RunDirError, match="expected a JSON object"):
        rundir.read_hp(tmp_path)
    assert rundir.read_hp(tmp_path / "absent") is None


# ---------------------------------------------------------------- manifest.json


@pytest.mark.parametrize(("text", "why"), [
    ("{", "not a valid sweep manifest"),
    ("[]", "expected an object with a 'runs' object"),
    ('{"runs": []}', "expected an object with a 'runs' object"),
    ('{"runs": {"a": {"params": {}}}}', "run 'a' has no valid status"),
    ('{"runs": {"a": 3}}', "run 'a' has no valid status"),
    ('{"runs": {"a": {"status": "exploded"}}}', "run 'a' has no valid status"),
])
def test_manifest_of_the_wrong_shape_is_refused(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(text)
    with pytest.raises(RunDirError) as err:
        rundir.read_manifest(path)
    assert str(path) in str(err.value) and why in str(err.value) and "move it away" in str(err.value)


def test_manifest_round_trip(tmp_path: Path) -> None:
    runs = {"a": {"status": "pending"}, "b": {"status": "finished", "metrics": {"x": 1}}}
    data = {"sweep": "s", "runs": runs}
    rundir.write_manifest(tmp_path / "manifest.json", data)
    assert rundir.read_manifest(tmp_path / "manifest.json") == data


# ---------------------------------------------------------------- locks

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from lightning_mem.rundir import FolderLock
    lock = FolderLock(Path(sys.argv[1]), "run folder x").acquire()
    print("held", flush=True)
    time.sleep(60)
""")


def _hold(folder: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_lock_names_the_live_holder_and_is_taken_over_after_it_dies(tmp_path: Path) -> None:
    proc = _hold(tmp_path)
    try:
        with pytest.raises(LockedError) as err:
            FolderLock(tmp_path, "run folder x").acquire()
        assert f"pid {proc.pid}" in str(err.value) and "run folder x is in use" in str(err.value)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The holder died without releasing: the kernel dropped its lock, the next process takes it.
    with rundir.locked(tmp_path, "run folder x") as lock:
        assert lock.held and json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert not lock.held


def test_lock_excludes_a_second_holder_in_the_same_process(tmp_path: Path) -> None:
    first = FolderLock(tmp_path, "sweep folder s").acquire()
    t0 = time.monotonic()
    with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
        FolderLock(tmp_path, "sweep folder s").acquire()
    assert time.monotonic() - t0 < 5  # refused at once, not after waiting
    first.release()
    FolderLock(tmp_path, "sweep folder s").acquire().release()


# ---------------------------------------------------------------- kills: torn rows, atomic rewrites, status


def _three_saves(tmp_path: Path) -> tuple[Path, bytes]:
    """A metrics.csv written by Lightning's own CSV logger: three saves, the second with a new key."""
    logger = CSVLogger(tmp_path, name="", version="")
    logger.log_metrics({"train/loss": 1.5, "epoch": 0}, step=3)
    logger.save()
    logger.log_metrics({"val/acc": 0.25, "epoch": 0}, step=3)  # a new key: Lightning rewrites the file
    logger.log_metrics({"train/loss": 1.25, "epoch": 1}, step=7)
    logger.save()
    path = tmp_path / "metrics.csv"
    return path, path.read_bytes()


def test_a_torn_last_row_is_left_out_by_every_reader(tmp_path: Path) -> None:
    path, whole = _three_saves(tmp_path)
    path.write_bytes(whole + b"1,1.0,1")  # a row a killed writer left half written: "1,1.0,11" was meant
    table = rundir.read_metrics(path)
    assert list(table.values["step"]) == [3, 3, 7]
    header, rows = rundir.read_metrics_rows(path)
    assert header == ["epoch", "step", "train/loss", "val/acc"]
    assert [r["step"] for r in rows] == ["3", "3", "7"]
    # A resume from the checkpoint at step 7, epoch 0 keeps the complete rows before it, never the torn one.
    rundir.set_metrics_aside(tmp_path)
    rundir.restore_metrics(tmp_path, step=7, epoch=0)
    assert path.read_bytes() == whole.rsplit(b"1,7,", 1)[0]
    path.write_bytes(b"epoch,st")  # the header itself cut short: no rows yet
    assert rundir.read_metrics(path).values.empty


def test_write_metrics_rows_matches_lightnings_writer_byte_for_byte(tmp_path: Path) -> None:
    path, whole = _three_saves(tmp_path)
    header, rows = rundir.read_metrics_rows(path)
    rundir.write_metrics_rows(tmp_path / "again.csv", header, rows)
    assert (tmp_path / "again.csv").read_bytes() == whole
    assert whole.count(b"\r\n") == 4  # the excel dialect's line ends, as Lightning writes them


def test_a_header_rewrite_replaces_the_file_instead_of_truncating_it(tmp_path: Path) -> None:
    """RunCSVLogger's writer rewrites for a new key by renaming a complete new file over the old one: a
    reader (or a kill) meets the old file or the new, never a truncated one. Lightning's own writer
    truncates in place, which a handle opened before the rewrite sees as an empty file."""
    from lightning_mem.training.loggers import RunCSVLogger

    logger = RunCSVLogger(str(tmp_path), name="", version="")
    logger.log_metrics({"train/loss": 1.5, "epoch": 0}, step=3)
    logger.save()
    path = tmp_path / "metrics.csv"
    old = path.read_bytes()
    with path.open("rb") as reader:  # opened before the rewrite
        logger.log_metrics({"val/acc": 0.25, "epoch": 0}, step=3)
        logger.save()
        assert reader.read() == old  # the old file is intact, not truncated under the reader
    reference = CSVLogger(tmp_path / "lightning", name="", version="")  # the same rows, Lightning's writer
    reference.log_metrics({"train/loss": 1.5, "epoch": 0}, step=3)
    reference.save()
    reference.log_metrics({"val/acc": 0.25, "epoch": 0}, step=3)
    reference.save()
    assert path.read_bytes() == (tmp_path / "lightning" / "metrics.csv").read_bytes()


def test_effective_status_tells_a_live_run_from_a_killed_one(tmp_path: Path) -> None:
    assert rundir.effective_status(tmp_path) is None  # no status.json
    rundir.write_status(tmp_path, "running", pid=1, host="h")
    assert rundir.effective_status(tmp_path) == "killed"  # no process holds the folder
    with FolderLock(tmp_path, "run folder"):
        assert rundir.effective_status(tmp_path) == "running"
    assert rundir.effective_status(tmp_path) == "killed"
    for status in ("finished", "diverged", "interrupted", "failed"):
        rundir.write_status(tmp_path, status)
        assert rundir.effective_status(tmp_path) == status  # the lock only matters for "running"
    assert rundir.effective_status(tmp_path, {"status": "running"}) == "killed"  # a record already read


def test_atomic_files_get_the_permissions_open_gives(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        rundir.atomic_write_text(tmp_path / "a.json", "{}\n")
        rundir.write_status(tmp_path, "finished")
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    plain = (tmp_path / "plain").stat().st_mode & 0o777
    assert plain == 0o640
    assert {(tmp_path / n).stat().st_mode & 0o777 for n in ("a.json", "status.json")} == {plain}
