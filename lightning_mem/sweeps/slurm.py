"""``lightning-mem sweep slurm FILE`` and ``sweep status ROOT/SWEEP``: a sweep as one SLURM job array.

The sweep file's runs are those of ``sweep local`` (:class:`lightning_mem.sweeps.runner.LocalSweep`: the
same run ids, command lines and run folders ``<root>/<sweep name>/<run id>/``); each array task runs one
of them, or with ``--pack`` one pack of them as an ensemble process, submitted through submitit's SLURM
executor (no sbatch template of ours). The run folders are the truth: a task
(:mod:`lightning_mem.sweeps.slurmtask`: its claims, preemption and requeue) writes only its own run
folders and claims, never the manifest; ``sweep status`` derives the manifest and the counts from the run
folders and ``squeue``. Resubmitting skips finished and diverged runs and those a queued job holds.
``sweep agents SWEEP_ID --slurm`` (:func:`cmd_agents_slurm`) submits one ``wandb agent`` per array task.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import shutil
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
from lightning_mem.sweeps.runner import Job, LocalSweep
from lightning_mem.sweeps.slurmtask import CLAIMS, AgentTask, PackTask, RunTask, queued_jobs
from lightning_mem.sweeps.spec import check_runs

log = logging.getLogger(__name__)

SLURM_JSON = "slurm.json"  # <sweep>/slurm.json: the submissions (array job ids, run id per task)
SLURM_LOGS = "slurm"  # submitit's folder of pickles and task logs
TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^\d+-\d+$")  # SLURM's --time forms (sbatch(1))


class SlurmError(ValueError):
    """Bad input for the cluster (SLURM's own message included); exit 2, nothing submitted."""


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
    live = {j.split("_")[0] for j in queued}
    submitted = {rid for sub in _submissions(sweep_dir) if sub["job"] in live
                 for task in sub["runs"].values() for rid in task_runs(task)}
    if rid in submitted:
        return rundir.PENDING
    return rundir.FAILED if holder or record else rundir.PENDING


def _record(sweep_dir: Path) -> dict[str, Any]:
    """``slurm.json``: the sweep file, ``--count``/``--seed`` and every submission (the submitter's)."""
    path = sweep_dir / SLURM_JSON
    return dict(json.loads(path.read_text())) if path.is_file() else {"submissions": []}


def task_runs(task: str | list[str]) -> list[str]:
    """The run ids of one task in ``slurm.json``'s ``runs``: a run id, or (``--pack``) a pack's list."""
    return [task] if isinstance(task, str) else list(task)


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


def check_cluster(opts: dict[str, str], root: Path, flag: str = "--root") -> None:
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
        log.warning("%s %s is under a node-local folder: the compute nodes must share it "
                    "(a one-node cluster is fine)", flag, root)


def cmd_slurm(args: argparse.Namespace) -> int:
    sweep = LocalSweep(resolve_sweep(args.sweep), Path(args.root), wandb_mode=args.wandb_mode,
                       count=args.count, seed=args.seed, pack=args.pack, pack_size=args.pack_size)
    check_runs(sweep.spec, sweep.path, sweep.params)
    opts = slurm_options(args)
    sweep.load()
    queued = queued_jobs() if shutil.which("squeue") else set()
    skip = (*rundir.DONE, rundir.RUNNING)
    todo = [rid for rid in sweep.grid if run_state(sweep.dir, rid, queued) not in skip]
    jobs = sweep.jobs(todo, 1)  # --pack: packs as large as --pack-size allows, one task each
    if args.dry_run:
        sys.stdout.write(f"# array of {len(jobs)} tasks for {len(todo)} runs ({len(sweep.grid) - len(todo)} "
                         f"of {len(sweep.grid)} runs done or running, skipped): sbatch "
                         f"{' '.join(f'--{k}={v}' for k, v in opts.items())}\n")
        for i, job in enumerate(jobs):
            if job.pack is None:
                rid = job.rids[0]
                sys.stdout.write(f"# task {i}: {rid}\n{shlex.join(sweep.runs[rid]['command'])}\n")
            else:
                sys.stdout.write(f"# task {i}: {job.pack}: {len(job.rids)} runs in one process: "
                                 f"{' '.join(job.rids)}\n{shlex.join(sweep.pack_command(job))}\n")
        return 0
    check_cluster(opts, sweep.root)
    if not todo:
        sys.stdout.write(f"sweep {sweep.name}: all {len(sweep.grid)} runs done or running; "
                         "nothing submitted\n")
        return 0
    import submitit

    sweep.dir.mkdir(parents=True, exist_ok=True)
    executor = submitit.SlurmExecutor(folder=sweep.dir / SLURM_LOGS / "%j", max_num_timeout=args.max_requeue)
    executor.update_parameters(array_parallelism=args.array_parallelism, signal_delay_s=args.signal_delay,
                               job_name=f"lm-{sweep.name}", additional_parameters=dict(opts))
    with executor.batch():
        submitted = [executor.submit(_task(sweep, job, args.wandb_mode)) for job in jobs]
    array = submitted[0].job_id.split("_")[0]
    record = _record(sweep.dir)
    record.update(file=str(sweep.path.resolve()), count=args.count, seed=args.seed, root=str(sweep.root),
                  pack=args.pack, pack_size=args.pack_size)
    record["submissions"].append({
        "job": array, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "options": opts,
        "runs": {str(i): job.rids if job.pack else job.rids[0] for i, job in enumerate(jobs)},
        "tasks": {str(i): sub.job_id for i, sub in enumerate(submitted)}})
    rundir.atomic_write_json(sweep.dir / SLURM_JSON, record)
    derive_manifest(sweep, queued_jobs())
    sys.stdout.write(f"sweep {sweep.name}: job array {array}, {len(jobs)} tasks for {len(todo)} runs "
                     f"({len(sweep.grid) - len(todo)} runs skipped); "
                     f"watch: lightning-mem sweep status {sweep.dir}\n")
    return 0


def _task(sweep: LocalSweep, job: Job, wandb_mode: str) -> RunTask:
    """The array task of one job: a run, or a pack's runs in one ensemble process."""
    if job.pack is None:
        entry = sweep.runs[job.rids[0]]
        return RunTask(str(sweep.dir), job.rids[0], entry["command"], entry["params"], wandb_mode)
    runs = {rid: {"command": sweep.runs[rid]["command"], "params": sweep.runs[rid]["params"]}
            for rid in job.rids}
    return PackTask(str(sweep.dir), runs, wandb_mode)


def cmd_agents_slurm(args: argparse.Namespace) -> int:
    """``sweep agents SWEEP_ID --slurm``: ``--agents`` array tasks, one ``wandb agent`` each."""
    opts = slurm_options(args)
    command = [sys.executable, "-m", "wandb", "agent", *(["--count", str(args.count)] if args.count else []),
               args.sweep_id]
    if args.dry_run:
        sys.stdout.write(f"# array of {args.agents} tasks, one wandb agent each: sbatch "
                         f"{' '.join(f'--{k}={v}' for k, v in opts.items())}\n")
        for i in range(args.agents):
            sys.stdout.write(f"# task {i}\n{shlex.join(command)}\n")
        return 0
    logs = Path(args.logs)
    check_cluster(opts, logs, "--logs")
    import submitit

    executor = submitit.SlurmExecutor(folder=logs.resolve() / "%j", max_num_timeout=0)
    executor.update_parameters(array_parallelism=args.array_parallelism, job_name="lm-agent",
                               additional_parameters=dict(opts))
    with executor.batch():
        jobs = [executor.submit(AgentTask(command)) for _ in range(args.agents)]
    array = jobs[0].job_id.split("_")[0]
    sys.stdout.write(f"wandb agents for {args.sweep_id}: job array {array}, {args.agents} tasks; "
                     f"logs: {logs.resolve() / array}_<task>/\n")
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


def add_cluster_flags(p: argparse.ArgumentParser, positive: Any) -> None:
    """The sbatch options as flags (``sweep slurm`` and ``sweep agents --slurm``)."""
    p.add_argument("--partition", help="sbatch --partition")
    p.add_argument("--time", help="sbatch --time per task (M, H:M:S, D-H:M:S)")
    p.add_argument("--cpus-per-task", type=positive, help="sbatch --cpus-per-task")
    p.add_argument("--gpus-per-task", type=positive, help="sbatch --gpus-per-task")
    p.add_argument("--mem", help="sbatch --mem (e.g. 4G)")
    p.add_argument("--account", help="sbatch --account")
    p.add_argument("--qos", help="sbatch --qos")
    p.add_argument("--constraint", help="sbatch --constraint")
    p.add_argument("--slurm-option", action="append", metavar="KEY=VALUE",
                    help="any other sbatch option, without its -- (repeatable)")
    p.add_argument("--array-parallelism", type=positive, default=256, help="tasks at once (default 256)")


def add_parsers(sub: Any, positive: Any) -> None:
    """Register ``slurm`` and ``status`` on the ``sweep`` command's subparsers."""
    sl = sub.add_parser("slurm", help="Submit a sweep YAML as one SLURM job array.")
    sl.add_argument("sweep", type=path_arg, help="W&B sweep YAML, or a packaged sweep's name")
    sl.add_argument("--root", type=path_arg, default="runs",
                    help="runs go to ROOT/<sweep name>/<run id>/, shared by the nodes (default: runs)")
    sl.add_argument("--count", type=positive, default=None, help="runs (method random; caps a grid)")
    sl.add_argument("--seed", type=int, default=0, help="seed of method random's draws (default: 0)")
    add_cluster_flags(sl, positive)
    sl.add_argument("--signal-delay", type=positive, default=90,
                    help="seconds before --time the task is told to save and requeue (default 90)")
    sl.add_argument("--max-requeue", type=int, default=3, help="requeues after a time-out (default 3)")
    sl.add_argument("--wandb-mode", default="offline", choices=["offline", "disabled", "online"],
                    help="WANDB_MODE of the runs (default offline: compute nodes often have no network)")
    sl.add_argument("--pack", action="store_true",
                    help="one task per pack: runs that differ only in σ, seed, lr, loss scale or label seed "
                    "train as one ensemble process, each in its own run folder (as `sweep local --pack`)")
    sl.add_argument("--pack-size", type=positive, default=None,
                    help="members per pack at most (default: all the runs that may share one)")
    sl.add_argument("--dry-run", action="store_true", help="print the array and each command")
    sl.set_defaults(func=cmd_slurm)
    st = sub.add_parser("status", help="k of N finished/running/pending/failed (SLURM).")
    st.add_argument("sweep_dir", type=path_arg, help="ROOT/<sweep name>")
    st.add_argument("--cancel", action="store_true", help="scancel its queued tasks (finished runs stay)")
    st.set_defaults(func=cmd_status)
