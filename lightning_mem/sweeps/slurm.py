"""``lightning-mem sweep slurm FILE`` and ``sweep status ROOT/SWEEP``: a sweep as one SLURM job array.

The sweep file's runs are those of ``sweep local`` (:class:`lightning_mem.sweeps.runner.LocalSweep`: the
same run ids, command lines and run folders ``<root>/<sweep name>/<run id>/``); each array task runs one
of them, submitted through submitit's SLURM executor (no sbatch template of ours). The run folders are
the truth: a task writes only its own run folder (and its claim), never the manifest; ``sweep status``
derives the manifest and the counts from the run folders and ``squeue``.

A task claims its run by ``os.mkdir(<sweep>/claims/<run id>)``: mkdir is one NFS call that either
creates the folder or fails with EEXIST on the server, so two tasks of two submissions on two nodes
cannot both win (``O_CREAT|O_EXCL`` was not atomic before NFSv3 and flock is not reliable on NFS). The
claim holds the winner's SLURM job id; a claim whose job is no longer in ``squeue`` is stale and taken
over. Resubmitting skips finished and diverged runs. Preemption: submitit's signal (``USR2`` unless
``SUBMITIT_PREEMPT_SIGNAL`` says otherwise, sent ``--signal-delay`` seconds before ``--time`` or by
``scancel --signal=USR2``) stops the fit with SIGTERM (it saves ``last.ckpt``) and requeues the task,
which resumes the run with ``--ckpt_path last``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from lightning_mem import rundir
from lightning_mem.checks import path_arg
from lightning_mem.cli.packaged import resolve_sweep
from lightning_mem.sweeps.outcomes import error_line
from lightning_mem.sweeps.runner import LocalSweep
from lightning_mem.sweeps.spec import args_json, check_runs

log = logging.getLogger(__name__)

CLAIMS = "claims"  # <sweep>/claims/<run id>/job: the SLURM job that owns the run
SLURM_JSON = "slurm.json"  # <sweep>/slurm.json: the submissions (array job ids, run id per task)
SLURM_LOGS = "slurm"  # submitit's folder of pickles and task logs
TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^\d+-\d+$")  # SLURM's --time forms (sbatch(1))


class SlurmError(ValueError):
    """Bad input for the cluster (SLURM's own message included); exit 2, nothing submitted."""


# ---------------------------------------------------------------------------- the array task


def job_id() -> str:
    """This task's SLURM id, ``<array job>_<task>`` (unchanged when SLURM requeues it)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", f"pid{os.getpid()}")


def queued_jobs() -> set[str]:
    """Ids (``<array>_<task>`` and plain) of the jobs SLURM still holds (pending or running)."""
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, timeout=60)
    return set(out.stdout.split()) if out.returncode == 0 else set()


def claim(sweep_dir: Path, rid: str, me: str) -> str | None:
    """Claim run ``rid`` for job ``me``; None when claimed, else the live job that holds it."""
    folder = sweep_dir / CLAIMS / rid
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(folder)  # atomic on NFS: exactly one creator wins
    except OSError as err:
        if err.errno != errno.EEXIST:
            raise
        holder = (folder / "job").read_text().strip() if (folder / "job").is_file() else ""
        if holder and holder != me and holder in queued_jobs():
            return holder
    rundir.atomic_write_text(folder / "job", me + "\n")
    return None


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

    def __call__(self) -> str:
        sweep_dir, run_dir = Path(self.sweep_dir), Path(self.sweep_dir) / self.rid
        if (rundir.read_status(run_dir) or {}).get("status") in rundir.DONE:
            return "skipped: already done"
        holder = claim(sweep_dir, self.rid, job_id())
        if holder is not None:
            return f"skipped: job {holder} trains it"
        resume = rundir.last_checkpoint(run_dir).is_file()
        if not resume:
            if run_dir.exists():
                shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True)
            (run_dir / rundir.ARGS_JSON).write_text(args_json(self.params))
        command = [*self.command, *(["--ckpt_path", "last"] if resume else [])]
        env = dict(os.environ, WANDB_MODE=self.wandb_mode, LIGHTNING_MEM_RUN_ID=self.rid)
        for key in ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH"):
            env.pop(key, None)
        for key in [k for k in env if k.startswith(("SLURM_", "SUBMITIT_"))]:
            env.pop(key)  # else Lightning's SLURM plugin would requeue too; the fit is one local process
        with (run_dir / rundir.OUTPUT_LOG).open("ab") as out:
            self._proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                          preexec_fn=_child_signals)
        code = self._proc.wait()
        if code != 0:
            raise RuntimeError(f"run {self.rid} exited {code}: {error_line(run_dir / rundir.OUTPUT_LOG)}")
        return rundir.FINISHED

    def checkpoint(self) -> Any:
        """Stop the fit with SIGTERM (it writes ``last.ckpt`` and exits) and requeue this same task."""
        import submitit  # the task's side only

        if self._proc is not None:  # __call__ is inside Popen.wait, holding its lock: watch /proc instead
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while not _ended(self._proc.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
        return submitit.helpers.DelayedSubmission(RunTask(self.sweep_dir, self.rid, self.command,
                                                          self.params, self.wandb_mode))


# ---------------------------------------------------------------------------- status from run folders


def run_state(sweep_dir: Path, rid: str, queued: set[str]) -> str:
    """finished / diverged / failed / running / pending of one run, from its folder, claim and squeue."""
    record = rundir.read_status(sweep_dir / rid) or {}
    if record.get("status") in rundir.DONE:
        return str(record["status"])
    job = sweep_dir / CLAIMS / rid / "job"
    holder = job.read_text().strip() if job.is_file() else ""
    if holder and holder in queued:
        return rundir.RUNNING
    submitted = {rid for sub in _submissions(sweep_dir) for rid in sub["runs"].values()
                 if sub["job"] in {j.split("_")[0] for j in queued}}
    if rid in submitted:
        return rundir.PENDING
    return rundir.FAILED if holder or record else rundir.PENDING


def _record(sweep_dir: Path) -> dict[str, Any]:
    """``slurm.json``: the sweep file, ``--count``/``--seed`` and every submission (the submitter's)."""
    path = sweep_dir / SLURM_JSON
    return dict(json.loads(path.read_text())) if path.is_file() else {"submissions": []}


def _submissions(sweep_dir: Path) -> list[dict[str, Any]]:
    return list(_record(sweep_dir)["submissions"])


def derive_manifest(sweep: LocalSweep, queued: set[str]) -> dict[str, int]:
    """Write the sweep's manifest from its run folders; the counts by state."""
    sweep.runs = {}
    sweep.load()
    for rid in sweep.grid:
        entry, run_dir = sweep.runs[rid], sweep.dir / rid
        entry["status"] = run_state(sweep.dir, rid, queued)
        try:
            entry["metrics"] = rundir.final_metrics(run_dir) if run_dir.is_dir() else {}
        except rundir.RunDirError as err:
            entry["metrics"], entry["reason"] = {}, str(err)
        if entry["status"] == rundir.FAILED:
            entry["reason"] = error_line(run_dir / rundir.OUTPUT_LOG)
    sweep.save()
    return dict(Counter(sweep.runs[rid]["status"] for rid in sweep.grid))


# ---------------------------------------------------------------------------- commands


def slurm_options(args: argparse.Namespace) -> dict[str, str]:
    """The sbatch options of the flags, as ``{name: value}`` (names as sbatch spells them)."""
    opts = {"partition": args.partition, "time": args.time, "cpus-per-task": args.cpus_per_task,
            "gpus-per-task": args.gpus_per_task, "mem": args.mem, "account": args.account, "qos": args.qos,
            "constraint": args.constraint}
    out = {k: str(v) for k, v in opts.items() if v is not None}
    for item in args.slurm_option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SlurmError(f"--slurm-option {item!r}: expected KEY=VALUE (an sbatch option without --)")
        out[key.lstrip("-")] = value
    return out


def check_cluster(opts: dict[str, str], root: Path) -> None:
    """SLURM's own verdict on the options (``sbatch --test-only``: nothing is queued); SlurmError with its
    message. A root under /tmp is warned about: compute nodes do not share it."""
    if shutil.which("sbatch") is None:
        raise SlurmError("sbatch: not found on PATH (is this a SLURM login node? `module load slurm`?)")
    if "time" in opts and not TIME.match(opts["time"]):
        raise SlurmError(f"--time {opts['time']!r}: sbatch: error: Invalid --time specification "
                         "(allowed: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S)")
    test = ["sbatch", "--test-only", *(f"--{k}={v}" for k, v in opts.items()), "--wrap", "true"]
    out = subprocess.run(test, capture_output=True, text=True, timeout=120)
    errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
    if out.returncode != 0 or errors:
        message = " ".join(errors or out.stderr.split("\n")[-2:]).strip()
        raise SlurmError(message or f"sbatch exit {out.returncode}")
    if str(root.resolve()).startswith(("/tmp/", "/var/tmp/", "/dev/shm/")):
        log.warning("--root %s is under a node-local folder: the compute nodes must share the sweep root "
                    "(a one-node cluster is fine)", root)


def cmd_slurm(args: argparse.Namespace) -> int:
    sweep = LocalSweep(resolve_sweep(args.sweep), Path(args.root), wandb_mode=args.wandb_mode,
                       count=args.count, seed=args.seed)
    check_runs(sweep.spec, sweep.path, sweep.params)
    opts = slurm_options(args)
    sweep.load()
    queued = queued_jobs() if shutil.which("squeue") else set()
    skip = (*rundir.DONE, rundir.RUNNING)
    todo = [rid for rid in sweep.grid if run_state(sweep.dir, rid, queued) not in skip]
    if args.dry_run:
        sys.stdout.write(f"# array of {len(todo)} tasks ({len(sweep.grid) - len(todo)} of {len(sweep.grid)} "
                         f"runs done or running, skipped): sbatch "
                         f"{' '.join(f'--{k}={v}' for k, v in opts.items())}\n")
        for i, rid in enumerate(todo):
            sys.stdout.write(f"# task {i}: {rid}\n{shlex.join(sweep.runs[rid]['command'])}\n")
        return 0
    check_cluster(opts, sweep.root)
    if not todo:
        sys.stdout.write(f"sweep {sweep.name}: all {len(sweep.grid)} runs done or running; "
                         "nothing submitted\n")
        return 0
    import submitit

    sweep.dir.mkdir(parents=True, exist_ok=True)
    executor = submitit.SlurmExecutor(folder=sweep.dir / SLURM_LOGS / "%j", max_num_timeout=args.max_requeue)
    params = {k: v for k, v in opts.items()}
    executor.update_parameters(array_parallelism=args.array_parallelism, signal_delay_s=args.signal_delay,
                               job_name=f"lm-{sweep.name}", additional_parameters=params)
    tasks = [RunTask(str(sweep.dir), rid, sweep.runs[rid]["command"], sweep.runs[rid]["params"],
                     args.wandb_mode) for rid in todo]
    with executor.batch():
        jobs = [executor.submit(task) for task in tasks]
    array = jobs[0].job_id.split("_")[0]
    record = _record(sweep.dir)
    record.update(file=str(sweep.path.resolve()), count=args.count, seed=args.seed, root=str(sweep.root))
    record["submissions"].append({"job": array, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                  "options": opts, "runs": {str(i): rid for i, rid in enumerate(todo)},
                                  "tasks": {str(i): job.job_id for i, job in enumerate(jobs)}})
    rundir.atomic_write_json(sweep.dir / SLURM_JSON, record)
    derive_manifest(sweep, queued_jobs())
    sys.stdout.write(f"sweep {sweep.name}: job array {array}, {len(todo)} tasks "
                     f"({len(sweep.grid) - len(todo)} runs skipped); "
                     f"watch: lightning-mem sweep status {sweep.dir}\n")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    sweep_dir = Path(args.sweep_dir).resolve()
    record = _record(sweep_dir)
    if "file" not in record:
        raise SlurmError(f"{sweep_dir}: no {SLURM_JSON} "
                         "(not a sweep submitted by `lightning-mem sweep slurm`)")
    sweep = LocalSweep(Path(record["file"]), sweep_dir.parent, count=record.get("count"),
                       seed=record.get("seed", 0))
    queued = queued_jobs()
    if args.cancel:
        live = {j.split("_")[0] for j in queued}
        arrays = [sub["job"] for sub in record["submissions"] if sub["job"] in live]
        if arrays:
            subprocess.run(["scancel", *arrays], check=False, timeout=60)
            log.info("scancel %s", " ".join(arrays))
        for _ in range(50):  # wait until SLURM lets the tasks go
            queued = queued_jobs()
            if not any(j.split("_")[0] in arrays for j in queued):
                break
            time.sleep(0.2)
    counts = derive_manifest(sweep, queued)
    n = len(sweep.grid)
    shown = (rundir.FINISHED, rundir.RUNNING, rundir.PENDING, rundir.FAILED, rundir.DIVERGED)
    line = ", ".join(f"{counts.get(s, 0)} of {n} {s}" for s in shown)
    sys.stdout.write(f"sweep {sweep.name}: {line}\n")
    for rid in sweep.grid:
        sys.stdout.write(f"  {sweep.runs[rid]['status']:<9} {rid}\n")
    return 0


def add_parsers(sub: Any, positive: Any) -> None:
    """Register ``slurm`` and ``status`` on the ``sweep`` command's subparsers."""
    sl = sub.add_parser("slurm", help="Submit a sweep YAML as one SLURM job array.")
    sl.add_argument("sweep", type=path_arg, help="W&B sweep YAML, or a packaged sweep's name")
    sl.add_argument("--root", type=path_arg, default="runs",
                    help="runs go to ROOT/<sweep name>/<run id>/, shared by the nodes (default: runs)")
    sl.add_argument("--count", type=positive, default=None, help="runs (method random; caps a grid)")
    sl.add_argument("--seed", type=int, default=0, help="seed of method random's draws (default: 0)")
    sl.add_argument("--partition", help="sbatch --partition")
    sl.add_argument("--time", help="sbatch --time per task (M, H:M:S, D-H:M:S)")
    sl.add_argument("--cpus-per-task", type=positive, help="sbatch --cpus-per-task")
    sl.add_argument("--gpus-per-task", type=positive, help="sbatch --gpus-per-task")
    sl.add_argument("--mem", help="sbatch --mem (e.g. 4G)")
    sl.add_argument("--account", help="sbatch --account")
    sl.add_argument("--qos", help="sbatch --qos")
    sl.add_argument("--constraint", help="sbatch --constraint")
    sl.add_argument("--slurm-option", action="append", metavar="KEY=VALUE",
                    help="any other sbatch option, without its -- (repeatable)")
    sl.add_argument("--array-parallelism", type=positive, default=256, help="tasks at once (default 256)")
    sl.add_argument("--signal-delay", type=positive, default=90,
                    help="seconds before --time the task is told to save and requeue (default 90)")
    sl.add_argument("--max-requeue", type=int, default=3, help="requeues after a time-out (default 3)")
    sl.add_argument("--wandb-mode", default="offline", choices=["offline", "disabled", "online"],
                    help="WANDB_MODE of the runs (default offline: compute nodes often have no network)")
    sl.add_argument("--dry-run", action="store_true", help="print the array and each command")
    sl.set_defaults(func=cmd_slurm)
    st = sub.add_parser("status", help="k of N finished/running/pending/failed (SLURM).")
    st.add_argument("sweep_dir", type=path_arg, help="ROOT/<sweep name>")
    st.add_argument("--cancel", action="store_true", help="scancel its queued tasks (finished runs stay)")
    st.set_defaults(func=cmd_status)
