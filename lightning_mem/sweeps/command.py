"""``lightning-mem sweep local|agents``: run a W&B sweep YAML on this machine, or one ``wandb agent`` per GPU.

``local SWEEP.yaml`` runs the sweep's points (:mod:`lightning_mem.sweeps.spec`, with
:mod:`lightning_mem.sweeps.search`): ``method: grid`` every combination; ``method: random`` ``--count N``
seeded
draws (``--seed``) with W&B's distributions; ``run_cap`` in the file caps either. ``method: bayes`` is
refused (exit 2): it needs W&B's server; run ``wandb agent`` against it.

Each run's command is built from the sweep's ``command`` with wandb's own functions, substituted as
``wandb agent`` does, plus ``--run.root/--run.name/--run.id`` so that every run's folder is
``<root>/<sweep name>/<run id>/``; :mod:`lightning_mem.sweeps.runner` runs them.
The sweep's state is ``<root>/<sweep name>/manifest.json`` (:mod:`lightning_mem.rundir`), rewritten
atomically after every change; a rerun skips finished (and diverged) runs and retries the others
(a run the manifest says is ``running`` while no process holds its folder's lock is shown as ``killed``).
The runner holds the sweep folder's lock for its lifetime: a second runner of the same sweep exits 2
naming the holder; the lock of a killed runner is taken over. A failing run never stops the sweep;
SIGINT/SIGTERM stop the running children and mark them ``interrupted``.

GPUs (:mod:`lightning_mem.sweeps.launch`): ``--gpus`` lists indices into this process's own
``CUDA_VISIBLE_DEVICES`` when it is set, ``--gpus-per-run K`` groups them K at a time, one run per
group at once. ``agents SWEEP_ID --gpus ...`` starts one ``wandb agent`` per slot, forwards
SIGINT/SIGTERM to them and exits 1 if any agent failed.

Exit codes: 0 every run finished; 1 a run failed; 2 bad input (sweep file, manifest, GPU ids, a
sweep folder in use); 128 + signal when stopped.
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
import time
from pathlib import Path

from lightning_mem import rundir
from lightning_mem.checks import path_arg
from lightning_mem.cli.packaged import resolve_sweep
from lightning_mem.errors import EXIT_BAD_INPUT
from lightning_mem.sweeps.launch import cmd_agents, slots_of
from lightning_mem.sweeps.progress import DEFAULT_EVERY
from lightning_mem.sweeps.runner import LocalSweep
from lightning_mem.sweeps.slurm import add_cluster_flags, cmd_agents_slurm, slurm_options
from lightning_mem.sweeps.slurm import add_parsers as add_slurm_parsers
from lightning_mem.sweeps.spec import check_runs

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- commands


def _dry_run_packs(sweep: LocalSweep, slots: list[str | None]) -> int:
    """``--dry-run --pack``: each process the sweep would start, a pack with its runs listed."""
    for rid in sweep.grid:
        entry = sweep.runs[rid]
        if entry["status"] in rundir.DONE:
            sys.stdout.write(f"# {entry['status']}, skipped: {shlex.join(entry['command'])}\n")
    todo = [rid for rid in sweep.grid if sweep.runs[rid]["status"] not in rundir.DONE]
    for job in sweep.jobs(todo, len(slots)):
        if job.pack is None:
            sys.stdout.write(f"{shlex.join(sweep.runs[job.rids[0]]['command'])}\n")
        else:
            verb = "resume" if job.resume else "pack"
            sys.stdout.write(f"# {verb} {job.pack}: {len(job.rids)} runs in one process: "
                             f"{' '.join(job.rids)}\n{shlex.join(sweep.pack_command(job))}\n")
    return 0


class _CheckReport:
    """What the check before launch is doing, on the log: its start, a count every few seconds, its end."""

    def __init__(self, every: float = 3.0) -> None:
        self.every, self.t0, self.shown = every, time.monotonic(), time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done == 0:
            log.info("checking the command lines of %d runs as `lightning-mem fit` parses them (torch and "
                     "Lightning are imported first)...", total)
        elif done == total:
            log.info("checked %d of %d runs in %.1f s", done, total, now - self.t0)
        elif now - self.shown >= self.every:
            self.shown = now
            log.info("checked %d of %d runs...", done, total)


def cmd_local(args: argparse.Namespace) -> int:
    sweep = LocalSweep(resolve_sweep(args.sweep), Path(args.root), wandb_mode=args.wandb_mode,
                       kill_timeout=args.kill_timeout, count=args.count, seed=args.seed, pack=args.pack,
                       pack_size=args.pack_size, progress_every=args.progress_every)
    check_runs(sweep.spec, sweep.path, sweep.params, report=_CheckReport())  # before anything is written
    gpus = slots_of(args)
    n = args.max_parallel or len(gpus) or 1
    slots: list[str | None] = [gpus[i % len(gpus)] for i in range(n)] if gpus else [None] * n
    if args.dry_run:  # reads the manifest (written atomically) without the lock; writes nothing
        sweep.load()
        if sweep.pack:
            return _dry_run_packs(sweep, slots)
        for i, rid in enumerate(sweep.grid):
            entry = sweep.runs[rid]
            gpu = slots[i % len(slots)]
            prefix = f"CUDA_VISIBLE_DEVICES={gpu} " if gpu is not None else ""
            skip = f"# {entry['status']}, skipped: " if entry["status"] in rundir.DONE else ""
            sys.stdout.write(f"{skip}{prefix}{shlex.join(entry['command'])}\n")
        return 0
    if sweep.manifest.is_file():
        rundir.read_manifest(sweep.manifest)  # a damaged manifest stops the sweep before the folder is locked
    try:
        sweep.lock.acquire()  # LockedError (exit 2) names the runner that holds it
    except OSError as err:  # --root is a file, or not writable
        raise ValueError(f"--root {args.root}: cannot create the sweep folder {sweep.dir} ({err})") from err
    try:
        sweep.load()
        code = sweep.run(slots)
    finally:
        sweep.lock.release()
    sys.stdout.write(sweep.summary())
    return code


def _cmd_agents(args: argparse.Namespace) -> int:
    if args.slurm:
        return cmd_agents_slurm(args)
    stray = [flag for flag, value in (("--agents", args.agents != 1), ("--dry-run", args.dry_run)) if value]
    stray += [f"--{key}" for key in slurm_options(args)]
    if stray:
        raise ValueError(f"{' and '.join(stray)}: only with --slurm (or give --gpus for local agents)")
    return cmd_agents(args)


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:  # "+3", "-1", "0", "x" refused
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return int(text)


MAX_PARALLEL = 1024  # processes at once: more than any machine runs (and [slot] * 10**30 cannot be built)


def _parallel(text: str) -> int:
    value = _positive(text)
    if value > MAX_PARALLEL:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {MAX_PARALLEL} processes at once")
    return value


def _seconds(text: str) -> float:
    """A wait in seconds: finite, 0 to a day (nan, inf and negative waits refused)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 86_400:  # nan fails too
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds in [0, 86400]")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lightning-mem sweep", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    gpu_help = ("comma-separated GPU indices (into this process's CUDA_VISIBLE_DEVICES when it is set), "
                "one slot per --gpus-per-run of them (default: no pinning)")
    per_run_help = "GPUs per run (agent): --gpus 0,1,2,3 --gpus-per-run 2 gives slots 0,1 and 2,3 (default 1)"
    loc = sub.add_parser("local", help="Run a sweep YAML (grid or random) on this machine, with a manifest.")
    loc.add_argument("sweep", type=path_arg, help="W&B sweep YAML, or the name of a packaged sweep "
                     "(`lightning-mem configs list sweep`)")
    loc.add_argument("--gpus", help=gpu_help)
    loc.add_argument("--gpus-per-run", type=_positive, default=1, help=per_run_help)
    loc.add_argument("--max-parallel", type=_parallel, default=None,
                     help="runs at once (default: number of GPU slots or 1)")
    loc.add_argument("--count", type=_positive, default=None,
                     help="number of runs: required for method random (unless run_cap), caps a grid")
    loc.add_argument("--seed", type=int, default=0, help="seed of method random's draws (default: 0)")
    loc.add_argument("--root", type=path_arg, default="runs",
                     help="runs go to ROOT/<sweep name>/<run id>/ (default: runs)")
    loc.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    loc.add_argument("--wandb-mode", default="offline", choices=["offline", "disabled", "online"],
                     help="WANDB_MODE of the runs (default: offline; `wandb sync` uploads them later)")
    loc.add_argument("--kill-timeout", type=_seconds, default=15.0,
                     help="seconds between SIGTERM and SIGKILL")
    loc.add_argument("--progress-every", type=_seconds, default=DEFAULT_EVERY, metavar="SECONDS",
                     help="a summary line (k of N finished, diverged, failed, running, time left) at every "
                     f"change and at least every SECONDS (default: {DEFAULT_EVERY:g}; 0: at changes only)")
    loc.add_argument("--pack", action="store_true",
                     help="train runs that differ only in σ, seed, lr, loss scale or label seed (a ScaledMLP "
                     "`lightning-mem fit`) as one ensemble per process; each keeps its own run folder and "
                     "manifest entry (README, 'Many runs in one process')")
    loc.add_argument("--pack-size", type=_positive, default=None,
                     help="members per ensemble at most (default: as many as fit, split so that every "
                     "--max-parallel slot gets one)")
    loc.set_defaults(func=cmd_local)
    ag = sub.add_parser("agents", help="One `wandb agent SWEEP_ID` per GPU slot, or per SLURM array task.")
    ag.add_argument("sweep_id", help="entity/project/sweep_id as printed by `wandb sweep`")
    ag.add_argument("--gpus", help=gpu_help.replace("slot", "agent") + "; required without --slurm")
    ag.add_argument("--gpus-per-run", type=_positive, default=1, help=per_run_help)
    ag.add_argument("--count", type=_positive, default=None,
                    help="runs per agent (default: until the sweep ends)")
    ag.add_argument("--stagger", type=_seconds, default=10.0,
                    help="seconds between agent starts (default: 10)")
    ag.add_argument("--slurm", action="store_true",
                    help="submit --agents SLURM array tasks, one agent each (the nodes reach the W&B server)")
    ag.add_argument("--agents", type=_positive, default=1, help="--slurm: array tasks (default 1)")
    ag.add_argument("--logs", type=path_arg, default="runs/slurm-agents",
                    help="--slurm: folder of submitit's pickles and task logs, shared by the nodes")
    ag.add_argument("--dry-run", action="store_true", help="--slurm: print the array and the agent command")
    add_cluster_flags(ag, _positive)
    ag.set_defaults(func=_cmd_agents)
    add_slurm_parsers(sub, _positive)
    return p


def run(argv: list[str] | None = None) -> int:
    """Parse and run; bad input is logged and returns 2 (argparse itself exits 2 on a bad option)."""
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as err:  # RunDirError and SearchError are ValueErrors
        log.error("%s", err)
        return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``lightning-mem sweep ...``; exits with the sweep's status."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code = run(sys.argv[1:] if argv is None else argv)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
