"""The array tasks of ``lightning-mem sweep slurm``: what runs on a compute node, pickled by submitit.

:class:`RunTask` trains one run, :class:`PackTask` (``--pack``) the runs of one pack as one ensemble
process (``lightning-mem ensemble fit --pack``). A task writes only its own run folders (and pack folder)
and its claims, never the manifest.

Claims: a task claims each of its runs by renaming a folder it prepared (``claims/.<run id>-XXXX/job``
holding its SLURM job id) to ``<sweep>/claims/<run id>``. A directory rename is one NFS call (RENAME) that
the server performs or refuses (the target exists and is not empty: EEXIST/ENOTEMPTY), so of two tasks of
two submissions on two nodes exactly one wins, and a claim is never seen without its job id (with mkdir then
write, a task killed in between leaves an empty claim). ``open(O_CREAT|O_EXCL)`` was not atomic on NFSv2
clients, and flock/fcntl locks on NFS depend on the lock daemon, which clusters often lack. A claim whose job
is no longer in ``squeue`` (a task that died, was cancelled or timed out) is stale: it is renamed aside to
``claims/.stale-<run id>-<job>-<mtime>``, a name every racer derives from the claim it read, so only one
rename succeeds, and the run is claimed again as above.

Preemption: submitit's signal (``USR2`` unless ``SUBMITIT_PREEMPT_SIGNAL`` says otherwise) reaches the
task, which sends SIGTERM to its fit (it keeps ``last.ckpt`` and exits) and asks submitit to requeue it;
the requeued task resumes with ``--ckpt_path last``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lightning_mem import rundir
from lightning_mem.ensemble import plan as ensemble_plan
from lightning_mem.sweeps.outcomes import error_line
from lightning_mem.sweeps.spec import args_json

CLAIMS = "claims"  # <sweep>/claims/<run id>/job: the SLURM job that owns the run
SCRUBBED = ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH")  # run ids are ours, not an agent's


def job_id() -> str:
    """This task's SLURM id, ``<array job>_<task>`` (unchanged when SLURM requeues it)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", f"pid{os.getpid()}")


def queued_jobs(strict: bool = False) -> set[str]:
    """Ids (``<array>_<task>`` and plain) of the jobs SLURM still holds (pending or running); when squeue
    fails, an empty set, or with ``strict`` an OSError (a claim must not be taken over on no answer)."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        if strict:
            raise OSError(f"squeue: {err}") from err
        return set()
    if out.returncode != 0 and strict:
        raise OSError(f"squeue exit {out.returncode}: {out.stderr.strip()}")
    return set(out.stdout.split()) if out.returncode == 0 else set()


def _alive(job: str) -> bool:
    """Whether SLURM still holds ``job``; True when squeue gives no answer (skipping a run can be undone by
    a resubmission, training it twice cannot)."""
    try:
        return job in queued_jobs(strict=True)
    except OSError:
        return True


def _holder(folder: Path) -> tuple[str, int] | None:
    """The job in claim ``folder`` and its file's mtime (one open: a consistent pair), None when unclaimed."""
    try:
        with (folder / "job").open() as fh:
            return fh.read().strip(), os.fstat(fh.fileno()).st_mtime_ns
    except (FileNotFoundError, NotADirectoryError):
        return None


def claim(sweep_dir: Path, rid: str, me: str) -> str | None:
    """Claim run ``rid`` for job ``me``; None when it is ours now, else the live job that holds it."""
    claims, folder = sweep_dir / CLAIMS, sweep_dir / CLAIMS / rid
    claims.mkdir(parents=True, exist_ok=True)
    for _ in range(10):
        held = _holder(folder)
        if held is not None and held[0] == me:  # this task, requeued
            return None
        if held is not None and _alive(held[0]):
            return held[0]
        if held is not None:  # stale: moved aside under a name both racers derive from what they read, so
            with contextlib.suppress(FileNotFoundError):  # only the first rename of it succeeds
                try:
                    os.rename(folder, claims / f".stale-{rid}-{held[0]}-{held[1]}")
                except OSError as err:
                    if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    continue  # another task moved it first: read the claim again
        tmp = Path(tempfile.mkdtemp(prefix=f".{rid}-", dir=claims))
        (tmp / "job").write_text(me + "\n")
        try:
            os.rename(tmp, folder)  # onto a claim (never empty) it fails: exactly one creator wins
            return None
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    held = _holder(folder)
    return held[0] if held else "(another task)"


def _ended(pid: int) -> bool:
    """Whether process ``pid`` has exited (gone, or a zombie not yet reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def _child_signals() -> None:
    """In the fit's process: ignore SLURM's warning signals (SIG_IGN survives exec); the task, not the fit,
    answers them, with a SIGTERM to the fit."""
    for name in ("SIGUSR1", "SIGUSR2"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)


def _fit_env(wandb_mode: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, WANDB_MODE=wandb_mode, **extra)
    for key in [*SCRUBBED, *(k for k in env if k.startswith(("SLURM_", "SUBMITIT_")))]:
        env.pop(key, None)  # else Lightning's SLURM plugin would requeue too; the fit is one local process
    return env


def _fresh_run(run_dir: Path, params: dict[str, Any]) -> None:
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / rundir.ARGS_JSON).write_text(args_json(params))


class RunTask:
    """One array task: claim the run, train it (resuming ``last.ckpt`` when there is one), record nothing
    but its run folder. submitit calls :meth:`checkpoint` on preemption or at the time limit."""

    def __init__(self, sweep_dir: str, rid: str, command: list[str], params: dict[str, Any],
                 wandb_mode: str) -> None:
        self.sweep_dir, self.rid, self.command, self.params = sweep_dir, rid, command, params
        self.wandb_mode = wandb_mode
        self._proc: subprocess.Popen[bytes] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_proc": None}

    def _run(self, command: list[str], env: dict[str, str], log: Path) -> int:
        with log.open("ab") as out:
            self._proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                          preexec_fn=_child_signals)
        return self._proc.wait()

    def __call__(self) -> str:
        sweep_dir, run_dir = Path(self.sweep_dir), Path(self.sweep_dir) / self.rid
        if (rundir.read_status(run_dir) or {}).get("status") in rundir.DONE:
            return "skipped: already done"
        holder = claim(sweep_dir, self.rid, job_id())
        if holder is not None:
            return f"skipped: job {holder} trains it"
        resume = rundir.last_checkpoint(run_dir).is_file()
        if not resume:
            _fresh_run(run_dir, self.params)
        command = [*self.command, *(["--ckpt_path", "last"] if resume else [])]
        code = self._run(command, _fit_env(self.wandb_mode, LIGHTNING_MEM_RUN_ID=self.rid),
                         run_dir / rundir.OUTPUT_LOG)
        if code != 0:
            raise RuntimeError(f"run {self.rid} exited {code}: {error_line(run_dir / rundir.OUTPUT_LOG)}")
        return rundir.FINISHED

    def _again(self) -> RunTask:
        return RunTask(self.sweep_dir, self.rid, self.command, self.params, self.wandb_mode)

    def checkpoint(self) -> Any:
        """Stop the fit with SIGTERM (it writes ``last.ckpt`` and exits) and requeue this same task."""
        import submitit  # the task's side only

        if self._proc is not None:  # __call__ is inside Popen.wait, holding its lock: watch /proc instead
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while not _ended(self._proc.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
        return submitit.helpers.DelayedSubmission(self._again())


class PackTask(RunTask):
    """One array task of ``--pack``: the runs ``rids`` (commands and params in ``runs``) trained as one
    ensemble process in ``<sweep>/<pack id>/``, each member in its own run folder. Members already done or
    claimed by a live job are left out (the pack is then the rest's, under its own id); a pack the
    ensemble refuses (exit 2, nothing written) trains its runs one after another."""

    def __init__(self, sweep_dir: str, runs: dict[str, dict[str, Any]], wandb_mode: str,
                 pack: str | None = None) -> None:
        super().__init__(sweep_dir, next(iter(runs)), [], {}, wandb_mode)
        self.runs = runs  # run id -> {"command": [...], "params": {...}}
        self.pack = pack  # the pack folder of the first attempt: a requeued task resumes it

    def __call__(self) -> str:
        sweep_dir, me = Path(self.sweep_dir), job_id()
        todo = [rid for rid in self.runs
                if (rundir.read_status(sweep_dir / rid) or {}).get("status") not in rundir.DONE]
        mine = [rid for rid in todo if claim(sweep_dir, rid, me) is None]
        if not mine:
            return f"skipped: {len(self.runs) - len(todo)} done, the rest trained by other jobs"
        pack_dir = sweep_dir / (self.pack or ensemble_plan.pack_id(mine))
        try:  # requeued: the ensemble resumes its pack, members that ended meanwhile included
            members = {m["run_id"] for m in ensemble_plan.read_pack(pack_dir)}
            resume = rundir.last_checkpoint(pack_dir).is_file() and set(mine) <= members <= set(self.runs)
        except rundir.RunDirError:
            resume = False
        if not resume and len(mine) == 1:
            (rid,) = mine
            return RunTask(self.sweep_dir, rid, self.runs[rid]["command"], self.runs[rid]["params"],
                           self.wandb_mode).__call__()
        if not resume:
            pack_dir = sweep_dir / ensemble_plan.pack_id(mine)
        self.pack = pack_dir.name
        if not resume:
            if pack_dir.exists():
                shutil.rmtree(pack_dir)
            pack_dir.mkdir(parents=True)
            for rid in mine:
                _fresh_run(sweep_dir / rid, self.runs[rid]["params"])
            ensemble_plan.write_pack(pack_dir, [
                {"run_id": rid, "argv": ensemble_plan.fit_args(self.runs[rid]["command"])} for rid in mine])
        command = [sys.executable, "-m", "lightning_mem", "ensemble", "fit", "--pack",
                   str(pack_dir), *(["--ckpt_path", "last"] if resume else [])]
        code = self._run(command, _fit_env(self.wandb_mode), pack_dir / rundir.OUTPUT_LOG)
        statuses = {rid: (rundir.read_status(sweep_dir / rid) or {}).get("status") for rid in mine}
        if code == 2 and not resume and not any(statuses.values()):  # refused: nothing trained
            for rid in mine:
                RunTask(self.sweep_dir, rid, self.runs[rid]["command"], self.runs[rid]["params"],
                        self.wandb_mode).__call__()
            return f"{len(mine)} runs trained alone ({error_line(pack_dir / rundir.OUTPUT_LOG)})"
        failed = [rid for rid, status in statuses.items() if status not in rundir.DONE]
        if failed:
            raise RuntimeError(f"pack {pack_dir.name} exited {code}; not done: {' '.join(failed)} "
                               f"({error_line(pack_dir / rundir.OUTPUT_LOG)})")
        return f"{len(mine)} runs in {pack_dir.name}"

    def _again(self) -> RunTask:
        return PackTask(self.sweep_dir, self.runs, self.wandb_mode, self.pack)


class AgentTask:
    """One array task of ``sweep agents --slurm``: one ``wandb agent`` (its output in the task's log); fails
    with the agent's exit status. W&B's server hands out the runs, so there is nothing to claim."""

    def __init__(self, command: list[str]) -> None:
        self.command = command

    def __call__(self) -> str:
        env = dict(os.environ)
        for key in [k for k in env if k.startswith("SUBMITIT_")]:
            env.pop(key)
        sys.stderr.write(f"wandb agent task {job_id()}: {' '.join(self.command)}\n")
        sys.stderr.flush()
        code = subprocess.run(self.command, env=env, check=False).returncode
        if code != 0:
            raise RuntimeError(f"wandb agent exited {code}: {' '.join(self.command)}")
        return "agent done"
