"""Faults of the machine under a real fit (issue 21): a full disk, a file-size limit, a removed run folder.

A real ``lightning-mem fit`` subprocess meets the fault at a chosen moment (``tests/helpers/faultpoints.py``:
mid-epoch or at an epoch's end before its checkpoint). It must exit 2 with one message naming the file and
the errno, no traceback; for a full disk (a small tmpfs mounted here: skipped where mounting is not
allowed) and the file-size limit (``RLIMIT_FSIZE``), ``status.json`` says ``failed``, ``last.ckpt`` loads and
``metrics.csv`` reads, and once there is room ``--ckpt_path last`` finishes the run with ``metrics.csv``
byte-identical and ``last.ckpt``'s weights bitwise equal to an uninterrupted run's. A removed run folder is
not created again.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lightning_mem import rundir
from lightning_mem.cli import faults as machinefaults
from lightning_mem.training.checkpoints import load_checkpoint

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
FIT = ["fit", "--config", str(REPO / "configs" / "quickstart.yaml"), "--data.dataset", "digits",
       "--model.net.width", "16", "--trainer.max_epochs", "4", "--trainer.limit_train_batches", "4",
       "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
       "--trainer.accelerator", "cpu", "--data.data_dir", str(REPO / "data"),
       "--trainer.callbacks+=tests.helpers.faultpoints.FaultAt", "--run.name", "t"]


def _fit(root: Path, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "LIGHTNING_MEM_RUN_ID"}
    environ |= {"PYTHONPATH": str(REPO), **env}
    # stdout and stderr are pipes: a file-size limit would also cut a log file the test redirected to
    return subprocess.run([sys.executable, "-m", "lightning_mem", *FIT, "--run.root", str(root), *extra],
                          env=environ, capture_output=True, text=True, timeout=600)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs (root only; skipped where mounting is refused)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run's folder."""
    root = tmp_path_factory.mktemp("reference")
    done = _fit(root, "--run.id", "r")
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "t" / "r"


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(rundir.last_checkpoint(run_dir), weights_only=True)["state_dict"]


def _check_stopped(done: subprocess.CompletedProcess[str], name: str, run_dir: Path) -> str:
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    error = next(line for line in done.stderr.splitlines() if line.startswith("error: "))
    code = getattr(errno, name)
    assert f"({name}, errno {code})" in error
    assert f"{run_dir}" in error
    return error


def _check_resumable(run_dir: Path, name: str, reference: Path, root: Path) -> None:
    record = json.loads((run_dir / rundir.STATUS).read_text())
    assert record["status"] == "failed" and f"[Errno {getattr(errno, name)}]" in record["reason"]
    assert load_checkpoint(rundir.last_checkpoint(run_dir))["global_step"] > 0  # whole
    rows = rundir.read_metrics(run_dir)  # whole rows (a torn last one is left out)
    assert len(rows.values) > 0
    resumed = _fit(root, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / rundir.STATUS).read_text())["status"] == "finished"
    assert (run_dir / rundir.METRICS).read_bytes() == (reference / rundir.METRICS).read_bytes()
    ours, theirs = _weights(run_dir), _weights(reference)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.slow  # two real fits per case (~12 s)
@pytest.mark.parametrize("moment", ["epoch_end@1", "batch@6", "epoch_end@2"])
def test_a_full_disk_stops_the_fit_resumably(moment: str, tmpfs: Path, reference: Path) -> None:
    root = tmpfs / "runs"
    filler = tmpfs / "filler"
    done = _fit(root, "--run.id", "r", LIGHTNING_MEM_TEST_FAULT=f"fill:{moment}",
                LIGHTNING_MEM_TEST_FILLER=str(filler))
    run_dir = root / "t" / "r"
    error = _check_stopped(done, "ENOSPC", run_dir)
    assert "the disk is full" in error and "MB free on that filesystem" in error
    assert "--ckpt_path last" in error
    filler.unlink()  # room again
    _check_resumable(run_dir, "ENOSPC", reference, root)


@pytest.mark.slow
@pytest.mark.parametrize(("moment", "slack"),
                         [("epoch_end@2", "0"), ("batch@6", "0"), ("epoch_end@1", "100")])
def test_the_file_size_limit_stops_the_fit_resumably(moment: str, slack: str, tmp_path: Path,
                                                     reference: Path) -> None:
    root = tmp_path / "runs"
    done = _fit(root, "--run.id", "r", LIGHTNING_MEM_TEST_FAULT=f"fsize:{moment}",
                LIGHTNING_MEM_TEST_FSIZE_SLACK=slack)
    run_dir = root / "t" / "r"
    error = _check_stopped(done, "EFBIG", run_dir)
    assert "ulimit -f" in error
    _check_resumable(run_dir, "EFBIG", reference, root)  # the next process has no limit


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["batch@5", "epoch_end@1", "epoch_end@3"])
def test_a_run_folder_removed_under_the_fit_stops_it(moment: str, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    done = _fit(root, "--run.id", "r", LIGHTNING_MEM_TEST_FAULT=f"rmtree:{moment}")
    run_dir = root / "t" / "r"
    error = _check_stopped(done, "ENOENT", run_dir)
    assert "the run folder was removed while the fit ran" in error and "start the run again" in error
    assert not run_dir.exists()  # not created again for a lone file


# ---------------------------------------------------------------------------- in this process (fast)


def test_status_is_recorded_on_a_full_disk(tmpfs: Path) -> None:
    from tests.helpers.faultpoints import fill

    run_dir = tmpfs / "run"
    run_dir.mkdir()
    rundir.write_status(run_dir, "running", pid=1, host="h")
    assert fill(tmpfs / "filler") > 0
    with pytest.raises(OSError) as exc:  # no room for the temporary file of an atomic write
        rundir.atomic_write_json(run_dir / "other.json", {"a": 1})
    assert exc.value.errno == errno.ENOSPC
    rundir.write_status(run_dir, "failed", reason="OSError: [Errno 28] No space left on device")
    record = rundir.read_status(run_dir)
    assert record is not None and record["status"] == "failed" and "Errno 28" in record["reason"]
    assert sorted(p.name for p in run_dir.iterdir()) == [rundir.STATUS]  # no temporary file left


def test_status_of_a_removed_run_folder_creates_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "gone" / "r"
    with pytest.raises(FileNotFoundError) as exc:
        rundir.write_status(run_dir, "failed", reason="x")
    assert exc.value.filename == str(run_dir)
    assert not (tmp_path / "gone").exists()


@pytest.mark.parametrize(("code", "says"), [
    (errno.ENOSPC, "the disk is full"), (errno.EDQUOT, "the disk quota is used up"),
    (errno.EFBIG, "ulimit -f"), (errno.EROFS, "read-only"), (errno.EIO, "I/O error"),
])
def test_the_message_names_the_file_and_the_errno(code: int, says: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    err = OSError(code, os.strerror(code), str(run_dir / "metrics.csv"))
    assert machinefaults.is_fault(err, run_dir)
    text = machinefaults.message(err, run_dir)
    assert text.startswith(f"{run_dir / 'metrics.csv'}: {os.strerror(code)} ({errno.errorcode[code]}, "
                           f"errno {code})")
    assert says in text and "--ckpt_path last" in text
    assert "does not exist yet" in text  # no checkpoint in this folder
    # a missing file is a fault only when the run folder itself is gone
    missing = FileNotFoundError(errno.ENOENT, "No such file", str(run_dir / "x"))
    assert not machinefaults.is_fault(missing, run_dir)
    assert machinefaults.is_fault(missing, tmp_path / "gone")
    assert not machinefaults.is_fault(ValueError("x"), run_dir)
