"""Exact metrics after any kill: a fit killed at a chosen moment (SIGKILL or SIGTERM) and resumed with
``--ckpt_path last`` ends with ``metrics.csv`` byte-identical to an uninterrupted run with the same seed, and
the same weights bit for bit (issue 11, fault 7).

The moments are deterministic kill points (``tests/helpers/killpoints.py``, passed to a real ``lightning-mem
fit`` subprocess with ``--trainer.callbacks+=tests.helpers.killpoints.KillAt``): mid-epoch, at an epoch's
last step, during validation, at the epoch end before its checkpoint, while a checkpoint file is written
(torn), right after it is written, right after it is published under its name, right after ``status.json``
changes, at the fit's end; and during a resume's own carry-over of the rows. A few run in the default tier,
every point with both signals in the slow tier, plus kills from a timer thread at spread-out moments and a
chain of kills across resumes.

The run: scikit-learn's 8×8 digits, width 16, batch 64 (23 steps an epoch), 4 epochs: checkpoints 1, 3, 5, 7
are ``epoch<k>.ckpt``, 2, 4, 6, 8 ``last.ckpt``; from the second epoch on ``last.ckpt`` is a hard link to its
epoch's file, so the files whose bytes are written (``ckpt_torn``'s count) are epoch 0's two, then one per
epoch; publications 1..4 are the epoch ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_mem import rundir
from lightning_mem.results.runs import load_runs
from tests.helpers.exitcodes import run_cli

TESTS = Path(__file__).resolve().parents[1]
QUICKSTART = TESTS.parent / "configs" / "quickstart.yaml"
EXE = Path(sys.executable).with_name("lightning-mem")
EPOCHS, STEPS = 4, 23
ARGS = ["fit", "--config", str(QUICKSTART), "--data.dataset", "digits", "--model.net.width", "16",
        "--data.batch_size", "64", "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
        "--trainer.max_epochs", str(EPOCHS)]
LAST = EPOCHS * STEPS

# Every kill point of the run (KillAt's names, see killpoints.POINTS), in the order the fit meets them.
POINTS = [
    "status@1",  # status.json says running; nothing trained
    "batch@1", "batch@12", f"batch@{STEPS}",  # epoch 0: first step, mid-epoch, last step (before validation)
    "val_start@0", "val_batch@0", "val_end@0", "epoch_end@0",
    "ckpt_torn@1", "ckpt_written@1", "ckpt_torn@2", "ckpt_written@2", "ckpt_published@1",  # epoch 0's files
    f"batch@{STEPS + 1}", f"batch@{STEPS + 12}", f"batch@{2 * STEPS}",
    "val_batch@1", "epoch_end@1", "ckpt_written@4", "ckpt_published@2",
    "val_end@2", "ckpt_torn@4", "ckpt_published@3",
    f"batch@{LAST}", "val_end@3", "epoch_end@3", "ckpt_written@8", "ckpt_published@4",  # the last epoch
    "fit_end@0", "status@2",  # every row and file written; status.json says finished (then the kill)
]
# Default tier: before the first checkpoint (the run starts over), just after a checkpoint appears, at an
# epoch's end (SIGTERM). The rest: slow tier.
DEFAULT = [("batch@12", "KILL"), ("ckpt_published@1", "KILL"), ("epoch_end@1", "TERM")]
CASES = [(p, s) for p in POINTS for s in ("KILL", "TERM")]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LIGHTNING_MEM_RUN_ID"}
    path = [str(TESTS / "helpers"), str(TESTS.parent), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(path)
    return {**env, **extra}


def fit_killed(root: Path, point: str, sig: str, run_id: str = "k", *extra: str
               ) -> subprocess.CompletedProcess[str]:
    """A ``lightning-mem fit`` subprocess that kills itself at ``point`` with SIG``sig``."""
    cmd = [str(EXE), *ARGS, "--run.root", str(root), "--run.id", run_id,
           "--trainer.callbacks+=tests.helpers.killpoints.KillAt", *extra]
    env = _env(LIGHTNING_MEM_TEST_KILL=point, LIGHTNING_MEM_TEST_SIGNAL=sig)
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def load_ckpt(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run with the same seed and config (and the KillAt callback, inert): its folder."""
    root = tmp_path_factory.mktemp("reference")
    inert = "--trainer.callbacks+=tests.helpers.killpoints.KillAt"
    assert run_cli(*ARGS, "--run.root", str(root), "--run.id", "ref", inert) == 0
    return root / "quickstart" / "ref"


def assert_killed_state(proc: subprocess.CompletedProcess[str], run_dir: Path, sig: str, point: str) -> None:
    """How the killed fit left its folder: SIGKILL ends it where it stands ("running" read as "killed");
    SIGTERM is a clean stop (exit 143, "interrupted"), or nothing when it lands after training (exit 0)."""
    status = rundir.effective_status(run_dir)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if sig == "KILL":
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        assert status == ("finished" if point == "status@2" else rundir.KILLED), status
    else:
        assert (proc.returncode, status) in ((143, "interrupted"), (0, "finished")), (proc.returncode, status,
                                                                                        proc.stderr[-3000:])
    assert rundir.lock_holder(run_dir) is None
    if sig == "TERM" and (run_dir / rundir.CHECKPOINTS).is_dir():  # a clean stop leaves no temporary file
        assert list((run_dir / rundir.CHECKPOINTS).glob(".*")) == []


def assert_same_as(run_dir: Path, reference: Path) -> None:
    """metrics.csv byte-identical, last.ckpt's weights bitwise equal, the same checkpoint files, finished."""
    assert (run_dir / rundir.METRICS).read_bytes() == (reference / rundir.METRICS).read_bytes()
    want = load_ckpt(reference / "checkpoints" / "last.ckpt")
    got = load_ckpt(run_dir / "checkpoints" / "last.ckpt")
    assert (got["global_step"], got["epoch"]) == (want["global_step"], want["epoch"]) == (LAST, EPOCHS - 1)
    assert want["state_dict"].keys() == got["state_dict"].keys()
    assert all(torch.equal(want["state_dict"][k], got["state_dict"][k]) for k in want["state_dict"])
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch3.ckpt", "last.ckpt"]
    epoch, last = ((run_dir / "checkpoints" / name).stat() for name in ("epoch3.ckpt", "last.ckpt"))
    assert (last.st_ino, last.st_nlink) == (epoch.st_ino, 2)  # one copy of the bytes, after any resume too
    assert rundir.effective_status(run_dir) == "finished"
    assert not (run_dir / rundir.METRICS_RESUME).exists()


def kill_and_resume(point: str, sig: str, reference: Path, root: Path) -> None:
    run_dir = root / "quickstart" / "k"
    killed = fit_killed(root, point, sig)
    assert_killed_state(killed, run_dir, sig, point)
    assert run_cli(*ARGS, "--run.root", str(root), "--run.id", "k", "--ckpt_path", "last") == 0
    assert_same_as(run_dir, reference)


@pytest.mark.parametrize(("point", "sig"), DEFAULT, ids=[f"{p}-{s}" for p, s in DEFAULT])
def test_kill_and_resume(point: str, sig: str, reference: Path, tmp_path: Path) -> None:
    kill_and_resume(point, sig, reference, tmp_path)


@pytest.mark.slow  # 60 kills and resumes: ~8 s each on 2 busy cores
@pytest.mark.parametrize(("point", "sig"), [c for c in CASES if c not in DEFAULT],
                         ids=[f"{p}-{s}" for p, s in CASES if (p, s) not in DEFAULT])
def test_kill_and_resume_at_every_point(point: str, sig: str, reference: Path, tmp_path: Path) -> None:
    kill_and_resume(point, sig, reference, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["KILL", "TERM"])
@pytest.mark.parametrize("ms", [150, 500, 900, 1300, 1800, 2400])
def test_kill_from_a_timer_at_any_moment(ms: int, sig: str, reference: Path, tmp_path: Path) -> None:
    """Kills that land wherever the fit is after ``ms`` ms (a timer thread; the fit lasts ~2 s here)."""
    run_dir = tmp_path / "quickstart" / "k"
    killed = fit_killed(tmp_path, f"thread@{ms}", sig)
    assert "Traceback" not in killed.stderr, killed.stderr[-3000:]
    # -SIGTERM: the signal came after the command had returned (the run finished, Python's default action).
    after = killed.returncode == -signal.SIGTERM and rundir.effective_status(run_dir) == "finished"
    assert killed.returncode in (0, 143, -signal.SIGKILL) or after, killed.returncode
    assert run_cli(*ARGS, "--run.root", str(tmp_path), "--run.id", "k", "--ckpt_path", "last") == 0
    assert_same_as(run_dir, reference)


@pytest.mark.slow
def test_a_chain_of_kills_across_resumes(reference: Path, tmp_path: Path) -> None:
    """Killed, then each resume killed in turn (inside the carry-over of the rows too), then resumed."""
    run_dir = tmp_path / "quickstart" / "k"
    chain = [("batch@30", "KILL"), ("restore@0", "KILL"), ("restore@1", "KILL"), ("batch@52", "TERM"),
             ("ckpt_torn@2", "KILL"), ("ckpt_published@1", "KILL")]
    for point, sig in chain:
        resume = [] if point == "batch@30" else ["--ckpt_path", "last"]
        killed = fit_killed(tmp_path, point, sig, "k", *resume)
        assert killed.returncode in (-signal.SIGKILL, 143), (point, killed.stderr[-3000:])
        assert "Traceback" not in killed.stderr
    assert run_cli(*ARGS, "--run.root", str(tmp_path), "--run.id", "k", "--ckpt_path", "last") == 0
    assert_same_as(run_dir, reference)


def test_a_run_is_running_while_its_process_lives_then_killed(reference: Path, tmp_path: Path) -> None:
    """status.json says "running" for a live fit and still after SIGKILL: readers tell them apart by the run
    folder's lock (rundir.effective_status, runlog, report); the resumed run then ends as the reference."""
    run_dir = tmp_path / "quickstart" / "k"
    cmd = [str(EXE), *ARGS, "--run.root", str(tmp_path), "--run.id", "k",
           "--trainer.callbacks+=tests.reliability.test_faults.Throttle"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "checkpoints" / "last.ckpt").exists() and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the fit ended before it was seen running"
        assert (rundir.read_status(run_dir) or {}).get("status") == "running"
        assert rundir.effective_status(run_dir) == "running"
        assert [r.status for r in load_runs([run_dir], statuses=None)] == ["running"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
    assert (rundir.read_status(run_dir) or {}).get("status") == "running"  # nothing could write its end
    assert rundir.effective_status(run_dir) == rundir.KILLED
    assert [r.status for r in load_runs([run_dir], statuses=None)] == [rundir.KILLED]
    assert load_runs([run_dir]) == []  # report shows finished and diverged runs only
    assert run_cli(*ARGS, "--run.root", str(tmp_path), "--run.id", "k", "--ckpt_path", "last") == 0
    assert_same_as(run_dir, reference)


def test_kill_point_table() -> None:
    """The counts the README quotes."""
    assert (len(POINTS), len(CASES), len(DEFAULT)) == (30, 60, 3)
