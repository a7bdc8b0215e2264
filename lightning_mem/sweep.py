"""``lightning-mem sweep local|agents``: run a W&B sweep YAML on this machine, or one ``wandb agent`` per GPU.

``local SWEEP.yaml`` runs the sweep's points (:mod:`lightning_mem.search`): ``method: grid`` every
combination; ``method: random`` ``--count N`` seeded draws (``--seed``) with W&B's distributions;
``run_cap`` in the file caps either. ``method: bayes`` is refused (exit 2): it needs W&B's server; run
``wandb agent`` against it. W&B's open-source engine (``sweeps`` on PyPI) is not used because it
requires ``numpy<2``, and we need numpy 2 (torch 2.14, pandas 3).

Each run's command is built from the sweep's ``command`` with wandb's own functions
(``create_sweep_command``, ``create_sweep_command_args``), substituted as ``wandb agent`` does
(``${env}``, ``${interpreter}`` = this Python, ``${program}``, ``${args}``, ``${args_json_file}``, ...),
plus ``--run.root/--run.name/--run.id`` so that every run's folder is ``<root>/<sweep name>/<run id>/``.
The sweep's state is ``<root>/<sweep name>/manifest.json`` (:mod:`lightning_mem.rundir`), rewritten
atomically after every change; a rerun skips finished (and diverged) runs and retries the others
(a run the manifest says is ``running`` while no process holds its folder's lock is shown as ``killed``).
The runner holds the sweep folder's lock for its lifetime: a second runner of the same sweep exits 2
naming the holder; the lock of a killed runner is taken over. A failing run never stops the sweep;
SIGINT/SIGTERM stop the running children and mark them ``interrupted``.

GPUs (:mod:`lightning_mem.launch`): ``--gpus`` lists indices into this process's own
``CUDA_VISIBLE_DEVICES`` when it is set, ``--gpus-per-run K`` groups them K at a time, one run per
group at once. ``agents SWEEP_ID --gpus ...`` starts one ``wandb agent`` per slot, forwards
SIGINT/SIGTERM to them and exits 1 if any agent failed.

Exit codes: 0 every run finished; 1 a run failed; 2 bad input (sweep file, manifest, GPU ids, a
sweep folder in use); 128 + signal when stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lightning_mem import ensemble_plan, rundir, search
from lightning_mem.checks import path_arg
from lightning_mem.launch import Signals, child_env, cmd_agents, slots_of
from lightning_mem.rundir import FolderLock, RunDirError

log = logging.getLogger(__name__)

DONE = ("finished", "diverged")  # statuses a rerun skips; every other status is run again
METHODS = ("grid", "random")
BAYES = ("method 'bayes' fits a model to earlier results, which W&B keeps on its server: run `wandb sweep "
         "FILE` and then `wandb agent SWEEP_ID` (or `lightning-mem sweep agents SWEEP_ID --gpus ...`); "
         "locally, use `method: random` with --count N, or `method: grid` (W&B's engine, `sweeps` on PyPI, "
         "requires numpy<2 and does not install beside our numpy 2)")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")  # run ids and folder names: keep to these


# ---------------------------------------------------------------------------- the sweep file


def load_spec(path: Path) -> dict[str, Any]:
    """The sweep file as a mapping with ``parameters`` and a ``command`` list; ValueError naming it."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read the sweep file ({err})") from err
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(loaded, dict) or not isinstance(loaded.get("parameters", {}), dict):
        raise ValueError(f"{path}: a sweep is a mapping with `parameters:` (a mapping), `command:`")
    if not isinstance(loaded.get("command"), list):
        raise ValueError(f"{path}: the sweep needs a `command:` list (lightning-mem fit ...)")
    return loaded


def run_id(params: dict[str, Any], show: list[str] | None = None, prefix: str = "") -> str:
    """A readable id, the same on every rerun: ``<prefix><key><value>_...-<hash of all params>``.

    The readable part names the ``show`` keys (default: all) by their last dotted part, dotted string
    values (class paths) by theirs, and floats with 4 significant digits: ``init_std0.01_seed1-3f2a9c1e``.
    """
    digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
    parts = []
    for key in params if show is None else show:
        value = params[key]
        if isinstance(value, str):
            value = value.rsplit(".", 1)[-1]
        elif isinstance(value, float) and prefix:  # random draws: 0.0123 rather than 0.012345678901
            value = f"{value:.4g}"
        if not isinstance(value, dict):
            parts.append(f"{key.rsplit('.', 1)[-1]}{value}")
    return f"{prefix}{_UNSAFE.sub('', '_'.join(parts))[:48] or 'run'}-{digest}"


MAX_RUNS = 10_000  # runs of one local sweep: each is a process (and is checked before launch)
MAX_GRID = 1_000_000  # grid points expanded (then cut to --count / run_cap)


def points(
    spec: dict[str, Any], path: Path, count: int | None, seed: int
) -> list[tuple[str, dict[str, Any]]]:
    """(run id, parameters) of every run of the sweep, in order (see the module docstring)."""
    method = spec.get("method", "grid")
    if method == "bayes":
        raise ValueError(f"{path}: {BAYES}")
    if method not in METHODS:
        raise ValueError(f"{path}: method {method!r}; the local runner runs {', '.join(METHODS)} (and bayes "
                         "through `wandb agent`)")
    cap = spec.get("run_cap")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise ValueError(f"{path}: run_cap={cap!r} must be an integer >= 1")
    limits = [n for n in (count, cap) if n is not None]
    parameters = spec.get("parameters") or {}
    if limits and min(limits) > MAX_RUNS:
        raise ValueError(f"{path}: {min(limits)} runs asked for (--count / run_cap); the local runner "
                         f"starts at most {MAX_RUNS:,} (one process each); split the sweep, or run it with "
                         "`wandb agent`")
    if method == "random":
        if not limits:
            raise ValueError(f"{path}: method 'random' draws without end: give --count N "
                             "(or run_cap in the file)")
        combos = search.random_points(parameters, min(limits), seed)
        const = {k for k, v in parameters.items() if search.distribution(k, v) == "constant"}
        show = [k for k in parameters if k not in const]
        return [(run_id(p, show, prefix=f"{i:03d}_"), p) for i, p in enumerate(combos)]
    size = search.grid_size(parameters)
    if size > MAX_GRID:
        raise ValueError(f"{path}: the grid has {size:,} points; the local runner expands at most "
                         f"{MAX_GRID:,}; give fewer values, or run it with `wandb agent`")
    if min([size, *limits]) > MAX_RUNS:
        raise ValueError(f"{path}: the grid has {size:,} points; the local runner starts at most "
                         f"{MAX_RUNS:,} runs (one process each); give fewer values, take the first N with "
                         "--count N, or run it with `wandb agent`")
    combos = search.expand_grid(parameters)[: min(limits, default=None)]
    varying = [k for k in combos[0] if any(c[k] != combos[0][k] for c in combos)]
    return [(run_id(p, show=varying), p) for p in combos]


def build_command(template: list[Any], params: dict[str, Any], args_json_file: Path,
                  program: str | None = None) -> list[str]:
    """A sweep ``command`` with its macros substituted by wandb's own functions, as ``wandb agent`` does
    (``${interpreter}`` is this Python, so the runs use this environment; unknown macros vanish)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args  # ~0.5 s

    macros: dict[str, Any] = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    macros |= {"interpreter": [sys.executable], "program": [program] if program else [],
               "args_json_file": [str(args_json_file)]}
    if platform.system() != "Windows":
        macros["env"] = ["/usr/bin/env"]
    out: list[str] = []
    for item in create_sweep_command([str(c) for c in template]):  # a copy: it substitutes in place
        text = str(item)
        out += (macros.get(text[2:-1]) or []) if text.startswith("${") and text.endswith("}") else [text]
    return out


def args_json(params: dict[str, Any]) -> str:
    """The ``${args_json_file}`` content: wandb's ``args_json`` (a flat JSON of the dotted keys)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    return str(macros["args_json"][0])


# ---------------------------------------------------------------------------- the check before launch


ARGS_MACROS = ("${args}", "${args_no_hyphens}", "${args_no_boolean_flags}", "${args_json}",
               "${args_json_file}")  # wandb's macros that pass a run's parameters to its command
CLI_SUBCOMMANDS = ("fit", "validate", "test")


def _cli_argv(command: list[str]) -> list[str] | None:
    """The ``fit ...`` part of a built command that runs ``lightning-mem`` (the console script, or ``python
    -m lightning_mem``); None for any other program."""
    for i, token in enumerate(command):
        runs_cli = Path(token).name == "lightning-mem" or (
            token == "-m" and i + 1 < len(command) and command[i + 1] == "lightning_mem")
        if runs_cli:
            rest = command[i + (2 if token == "-m" else 1):]
            return rest if rest and rest[0] in CLI_SUBCOMMANDS else None
    return None


def check_runs(spec: dict[str, Any], path: Path, params: dict[str, dict[str, Any]]) -> None:
    """Before any run starts: every run's command line must parse as the CLI parses it, so a parameter
    the CLI does not know (``model.lrr``) or a value it refuses stops the sweep (ValueError naming the
    sweep file, the run and the parameter) instead of failing in every run.

    Only commands of ``lightning-mem fit|validate|test`` are checked (other programs: nothing to check
    against). Their parameters must reach them: a command without any of :data:`ARGS_MACROS` gets none.
    They are parsed in this process by
    :func:`lightning_mem.cli.check_args` (torch and Lightning imported once, no process started; nothing
    built or written); other programs are not checked. Values that only fail when the classes are built
    or the data read (a dataset folder that does not exist) still fail in their run (exit 2, recorded
    as ``failed`` with the CLI's message).
    """
    template = [str(c) for c in spec["command"]]
    if _cli_argv(template) is None:
        return  # not our CLI: nothing to check against
    if any(params.values()) and not any(macro in template for macro in ARGS_MACROS):
        keys = ", ".join(sorted({k for p in params.values() for k in p}))
        raise ValueError(f"{path}: the sweep's parameters ({keys}) never reach the runs: its `command:` has "
                         f"none of {', '.join(ARGS_MACROS)}; add `${{args_json_file}}` after `--config`, or "
                         "`${args}`")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lightning-mem-sweep-check-") as tmp:
        args_file = Path(tmp) / rundir.ARGS_JSON
        for rid, values in params.items():
            argv = _cli_argv(build_command(spec["command"], values, args_file, spec.get("program")))
            assert argv is not None
            from lightning_mem.cli import check_args  # torch and Lightning: imported once, only here

            args_file.write_text(args_json(values))
            problem = check_args([*argv, "--run.name", "check", "--run.id", "check"])
            if problem:
                problem = problem.replace(str(args_file), "the sweep's parameters")
                shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
                raise ValueError(f"{path}: run {rid} ({shown}) would fail before training: {problem}; "
                                 "no run was started")


# ---------------------------------------------------------------------------- runs


def run_status(run_dir: Path, returncode: int, metrics: dict[str, float | None]) -> tuple[str, str | None]:
    """(status, reason): ``diverged`` if the run's ``status.json`` says so (the CLI's ``RunStatus``) or
    its last train loss is not finite; else finished / failed by exit code."""
    record = rundir.read_status(run_dir) or {}
    reason = record.get("reason")
    if record.get("status") == "diverged":
        return "diverged", reason
    if returncode == 0 and "train/loss" in metrics and metrics["train/loss"] is None:
        return "diverged", "last train/loss is not finite"
    return ("finished", None) if returncode == 0 else ("failed", reason)


def member_status(
    run_dir: Path, output_log: Path, interrupted: bool
) -> tuple[str, str | None, dict[str, float | None]]:
    """(status, reason, final metrics) of a pack's member: its ``status.json`` (the ensemble writes each
    member's end there); ``failed`` when the pack's process ended without recording it."""
    try:
        metrics, broken = rundir.final_metrics(run_dir), None
    except RunDirError as err:  # a metrics.csv that is not one
        metrics, broken = {}, str(err)
    record = rundir.read_status(run_dir) or {}
    status, reason = str(record.get("status", "failed")), record.get("reason")
    if interrupted:
        status = "interrupted"
    elif status not in DONE:
        status, reason = "failed", reason or error_line(output_log)
    if broken and status == "finished":
        status, reason = "failed", broken
    return status, reason, metrics


def error_line(output_log: Path, limit: int = 300) -> str | None:
    """The last ``error:`` line of a run's output (the CLI's message), else its last line."""
    if not output_log.is_file():
        return None
    lines = [line.strip() for line in output_log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith(("error:", "error "))]
    found = errors[-1] if errors else lines[-1] if lines else None
    return None if found is None else found[:limit]


# ---------------------------------------------------------------------------- the local runner


@dataclass
class Job:
    """What one slot runs: one run, or (``pack``) the runs ``rids`` of one ensemble process, which
    ``resume`` continues from the pack's checkpoint (its other members ended before)."""

    rids: list[str]
    pack: str | None = None
    resume: bool = False

    @property
    def key(self) -> str:
        return self.pack or self.rids[0]


class LocalSweep:
    """The runs of one sweep file and its manifest under ``root/<name>``; :meth:`load` reads the manifest
    (hold :attr:`lock` around :meth:`load` and :meth:`run`)."""

    def __init__(self, path: Path, root: Path, wandb_mode: str = "offline", kill_timeout: float = 15.0,
                 count: int | None = None, seed: int = 0, pack: bool = False,
                 pack_size: int | None = None) -> None:
        self.path, self.wandb_mode, self.kill_timeout, self.seed = path, wandb_mode, kill_timeout, seed
        self.pack, self.pack_size = pack, pack_size  # --pack, --pack-size (see "packs" below)
        self.spec = load_spec(path)
        self.method = self.spec.get("method", "grid")
        self.name = _UNSAFE.sub("_", str(self.spec.get("name") or path.stem))
        self.root = root.resolve()
        self.dir = self.root / self.name
        self.manifest = self.dir / rundir.MANIFEST
        self.lock = FolderLock(self.dir, f"sweep folder {self.dir}")
        self.params = dict(points(self.spec, path, count, seed))
        self.grid = list(self.params)  # run ids of this invocation, in order
        self.runs: dict[str, dict[str, Any]] = {}
        self._t0: dict[str, float] = {}  # start times of the running runs

    def load(self) -> None:
        """The manifest's runs (RunDirError naming it if it is not one), then this file's commands."""
        self.runs = dict(rundir.read_manifest(self.manifest)["runs"]) if self.manifest.is_file() else {}
        for entry in self.runs.values():  # a runner killed with its runs left them "running"
            if entry["status"] == "running" and rundir.lock_holder(Path(str(entry.get("run_dir")))) is None:
                entry.update(status=rundir.KILLED, reason="its process is gone (killed with its runner)")
        for rid, params in self.params.items():
            run_dir = self.dir / rid
            command = build_command(self.spec["command"], params, run_dir / rundir.ARGS_JSON,
                                    self.spec.get("program"))
            command += ["--run.root", str(self.root), "--run.name", self.name, "--run.id", rid]
            entry = self.runs.setdefault(rid, {"status": "pending", "attempts": 0})
            entry.update(params=params, run_dir=str(run_dir), command=command)

    def save(self) -> None:
        extra = {"seed": self.seed} if self.method == "random" else {}
        rundir.write_manifest(self.manifest, {
            "sweep": self.name, "file": str(self.path.resolve()), "method": self.method, **extra,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs": self.runs})

    @staticmethod
    def _fresh_folder(folder: Path, what: str) -> None:
        """An empty ``folder``: an earlier attempt's is removed, unless a process still owns it."""
        if folder.exists():
            with FolderLock(folder, f"{what} {folder}"):
                pass
            shutil.rmtree(folder)
        folder.mkdir(parents=True)

    def _start(self, rid: str, gpu: str | None) -> subprocess.Popen[bytes]:
        entry = self.runs[rid]
        run_dir = Path(entry["run_dir"])
        self._fresh_folder(run_dir, "run folder")
        (run_dir / rundir.ARGS_JSON).write_text(args_json(entry["params"]))
        env = child_env(gpu, WANDB_MODE=self.wandb_mode, LIGHTNING_MEM_RUN_ID=rid)
        for key in ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH"):
            env.pop(key, None)  # the run id is ours, not an agent's
        with (run_dir / rundir.OUTPUT_LOG).open("wb") as out:
            # Own session: a terminal's Ctrl-C reaches the runner only, which stops the children in order.
            proc = subprocess.Popen(entry["command"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        entry.update(status="running", attempts=entry.get("attempts", 0) + 1, returncode=None, gpu=gpu,
                     pid=proc.pid, started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), duration_s=None, metrics={})
        self._t0[rid] = time.monotonic()
        log.info("start %s (gpu %s): %s", rid, gpu if gpu is not None else "-", shlex.join(entry["command"]))
        return proc

    def _finish(self, rid: str, returncode: int, interrupted: bool = False) -> None:
        entry = self.runs[rid]
        run_dir = Path(entry["run_dir"])
        try:
            metrics, broken = rundir.final_metrics(run_dir), None
        except RunDirError as err:  # the run left a metrics.csv that is not one
            metrics, broken = {}, str(err)
        status, reason = ("interrupted", None) if interrupted else run_status(run_dir, returncode, metrics)
        if broken and status == "finished":
            status, reason = "failed", broken
        if status == "failed" and reason is None:
            reason = error_line(run_dir / rundir.OUTPUT_LOG)
        entry.update(status=status, reason=reason, returncode=returncode, metrics=metrics,
                     duration_s=round(time.monotonic() - self._t0.pop(rid), 2))
        entry.pop("pid", None)
        level = logging.INFO if status in DONE else logging.WARNING
        log.log(level, "%s %s (exit %s, %.1f s); log: %s", status, rid, returncode, entry["duration_s"],
                run_dir / rundir.OUTPUT_LOG)

    def run(self, slots: list[str | None], poll: float = 0.2) -> int:
        """Run every run not done, one per slot; 0 if all are done, 1 if any failed, 128+signal if stopped."""
        todo_runs = [rid for rid in self.grid if self.runs[rid]["status"] not in DONE]
        todo = self.jobs(todo_runs, len(slots))
        log.info("sweep %s: %d runs, %d to run%s; manifest %s", self.name, len(self.grid), len(todo_runs),
                 f" in {len(todo)} processes" if self.pack else "", self.manifest)
        self.save()
        running: dict[str, tuple[subprocess.Popen[bytes], int, Job]] = {}  # job -> (process, slot, job)
        with Signals() as signals:
            while (todo or running) and signals.received is None:
                busy = {slot for _, slot, _ in running.values()}
                for slot in [i for i in range(len(slots)) if i not in busy][: len(todo)]:
                    job = todo.pop(0)
                    try:
                        running[job.key] = (self._start_job(job, slots[slot]), slot, job)
                    except (OSError, RunDirError) as err:  # not installed; a fit still owns the folder
                        reason = f"could not start: {err}"
                        for rid in job.rids:
                            self.runs[rid].update(status="failed", reason=reason, returncode=None)
                        log.warning("failed %s: %s", job.key, reason)
                    self.save()
                for key, (proc, _, job) in list(running.items()):
                    if proc.poll() is not None:
                        del running[key]
                        todo += self._finish_job(job, proc.returncode)
                        self.save()
                signals.wait(poll)
            if signals.received is not None:
                self._stop(running)
        statuses = [self.runs[rid]["status"] for rid in self.grid]
        if signals.received is not None:
            return 128 + signals.received
        return 0 if all(s in DONE for s in statuses) else 1

    def _stop(self, running: dict[str, tuple[subprocess.Popen[bytes], int, Job]]) -> None:
        """SIGTERM every child's process group (DDP ranks included), SIGKILL after ``kill_timeout``."""
        for key, (proc, _, job) in list(running.items()):
            if proc.poll() is not None:  # ended on its own before the signal: record it as it ended
                del running[key]
                self._finish_job(job, proc.returncode)
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.kill_timeout
        for proc, _, job in running.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            self._finish_job(job, proc.returncode, interrupted=True)
            self.save()

    # ------------------------------------------------------------------ packs (--pack)

    def jobs(self, todo: list[str], slots: int) -> list[Job]:
        """The processes that run ``todo``: one per run, or with ``--pack`` packs of runs that differ only in
        packable keys (:mod:`lightning_mem.ensemble_plan`), a killed pack resumed as it was."""
        if not self.pack:
            return [Job([rid]) for rid in todo]
        jobs = self._resumable_packs(todo)
        taken = {rid for job in jobs for rid in job.rids}
        groups: dict[str, list[str]] = {}
        for rid in todo:
            if rid in taken:
                continue
            entry = self.runs[rid]
            reason = ensemble_plan.unpackable_reason(entry["command"], entry["params"])
            if reason:
                log.info("%s runs alone: %s", rid, reason)
                jobs.append(Job([rid]))
            else:
                groups.setdefault(ensemble_plan.group_key(entry["params"]), []).append(rid)
        packs = ensemble_plan.plan_packs(list(groups.values()), max(slots - len(jobs), 1), self.pack_size)
        for rids in packs:
            jobs.append(Job(rids, ensemble_plan.pack_id(rids)) if len(rids) > 1 else Job(rids))
        return sorted(jobs, key=lambda job: self.grid.index(job.rids[0]))

    def _resumable_packs(self, todo: list[str]) -> list[Job]:
        """Packs of an earlier attempt with a checkpoint, all of whose members are still in this sweep."""
        jobs, seen = [], set()
        for rid in todo:
            pack = self.runs[rid].get("pack")
            if not pack or pack in seen:
                continue
            seen.add(pack)
            try:
                members = [m["run_id"] for m in ensemble_plan.read_pack(self.dir / pack)]
            except RunDirError:
                continue
            if (rundir.last_checkpoint(self.dir / pack).is_file() and set(members) <= set(self.params)
                    and ensemble_plan.pack_id(members) == pack):
                pending = [m for m in members if self.runs[m]["status"] not in DONE]
                jobs.append(Job(pending, pack, resume=True))
        return jobs

    def pack_command(self, job: Job) -> list[str]:
        """The ensemble process of a pack (``lightning-mem ensemble fit --pack DIR``)."""
        resume = ["--ckpt_path", "last"] if job.resume else []
        pack_dir = str(self.dir / str(job.pack))
        return [sys.executable, "-m", "lightning_mem", "ensemble", "fit", "--pack", pack_dir, *resume]

    def _start_job(self, job: Job, gpu: str | None) -> subprocess.Popen[bytes]:
        if job.pack is None:
            self.runs[job.rids[0]].pop("pack", None)
            return self._start(job.rids[0], gpu)
        pack_dir = self.dir / job.pack
        if not job.resume:
            self._fresh_folder(pack_dir, "ensemble folder")
            members = []
            for rid in job.rids:
                entry = self.runs[rid]
                self._fresh_folder(Path(entry["run_dir"]), "run folder")
                (Path(entry["run_dir"]) / rundir.ARGS_JSON).write_text(args_json(entry["params"]))
                members.append({"run_id": rid, "argv": ensemble_plan.fit_args(entry["command"])})
            ensemble_plan.write_pack(pack_dir, members)
        env = child_env(gpu, WANDB_MODE=self.wandb_mode)
        for key in ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "LIGHTNING_MEM_RUN_ID"):
            env.pop(key, None)  # each member's run id is in its own arguments
        command = self.pack_command(job)
        with (pack_dir / rundir.OUTPUT_LOG).open("ab" if job.resume else "wb") as out:
            proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for rid in job.rids:
            entry = self.runs[rid]
            entry.update(status="running", attempts=entry.get("attempts", 0) + 1, returncode=None, gpu=gpu,
                         pid=proc.pid, started=started, duration_s=None, metrics={}, pack=job.pack)
            self._t0[rid] = time.monotonic()
        log.info("start %s (%d runs%s, gpu %s): %s", job.pack, len(job.rids),
                 ", resumed" if job.resume else "", gpu if gpu is not None else "-", shlex.join(command))
        return proc

    def _finish_job(self, job: Job, returncode: int, interrupted: bool = False) -> list[Job]:
        """Record how the job's runs ended; the runs of a pack the ensemble refused (exit 2, nothing
        written) come back as single runs to start next."""
        if job.pack is None:
            self._finish(job.rids[0], returncode, interrupted)
            return []
        output = self.dir / job.pack / rundir.OUTPUT_LOG
        if returncode == 2 and not interrupted:
            refusal = error_line(output) or "the ensemble refused these runs"
            log.warning("%s refused its %d runs (%s); they run alone", job.pack, len(job.rids), refusal)
            for rid in job.rids:  # not an attempt: nothing ran
                entry = self.runs[rid]
                entry.update(status="pending", pack=None, reason=refusal, attempts=entry["attempts"] - 1)
                entry.pop("pid", None)
                self._t0.pop(rid, None)
            return [Job([rid]) for rid in job.rids]
        for rid in job.rids:
            entry = self.runs[rid]
            status, reason, metrics = member_status(Path(entry["run_dir"]), output, interrupted)
            entry.update(status=status, reason=reason, returncode=returncode, metrics=metrics,
                         duration_s=round(time.monotonic() - self._t0.pop(rid), 2))
            entry.pop("pid", None)
        counts = Counter(self.runs[rid]["status"] for rid in job.rids)
        log.info("%s: %s (exit %s); log: %s", job.pack, ", ".join(f"{n} {st}" for st, n in counts.items()),
                 returncode, output)
        return []

    def summary(self) -> str:
        lines = [f"sweep {self.name}: {self.manifest}"]
        for rid in self.grid:
            e = self.runs[rid]
            m = e.get("metrics") or {}
            accs = "  ".join(f"{k}={m[k]:.4f}" for k in ("train/acc", "val/acc") if m.get(k) is not None)
            dur = f"{e['duration_s']:.1f}s" if e.get("duration_s") is not None else "-"
            why = f"  ({e['reason']})" if e.get("reason") and e["status"] != "finished" else ""
            lines.append(f"  {e['status']:<11} {dur:>8}  {rid}  {accs}{why}")
        counts = Counter(self.runs[rid]["status"] for rid in self.grid)
        lines.append("  " + ", ".join(f"{n} {status}" for status, n in counts.items()))
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- commands


def _dry_run_packs(sweep: LocalSweep, slots: list[str | None]) -> int:
    """``--dry-run --pack``: each process the sweep would start, a pack with its runs listed."""
    for rid in sweep.grid:
        entry = sweep.runs[rid]
        if entry["status"] in DONE:
            sys.stdout.write(f"# {entry['status']}, skipped: {shlex.join(entry['command'])}\n")
    todo = [rid for rid in sweep.grid if sweep.runs[rid]["status"] not in DONE]
    for job in sweep.jobs(todo, len(slots)):
        if job.pack is None:
            sys.stdout.write(f"{shlex.join(sweep.runs[job.rids[0]]['command'])}\n")
        else:
            verb = "resume" if job.resume else "pack"
            sys.stdout.write(f"# {verb} {job.pack}: {len(job.rids)} runs in one process: "
                             f"{' '.join(job.rids)}\n{shlex.join(sweep.pack_command(job))}\n")
    return 0


def cmd_local(args: argparse.Namespace) -> int:
    sweep = LocalSweep(Path(args.sweep), Path(args.root), wandb_mode=args.wandb_mode,
                       kill_timeout=args.kill_timeout, count=args.count, seed=args.seed, pack=args.pack,
                       pack_size=args.pack_size)
    check_runs(sweep.spec, sweep.path, sweep.params)  # before --dry-run prints or anything is written
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
            skip = f"# {entry['status']}, skipped: " if entry["status"] in DONE else ""
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
    loc.add_argument("sweep", type=path_arg, help="W&B sweep YAML (sweeps/*.yaml)")
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
    loc.add_argument("--pack", action="store_true",
                     help="train runs that differ only in σ, seed, lr, loss scale or label seed (a ScaledMLP "
                     "`lightning-mem fit`) as one ensemble per process; each keeps its own run folder and "
                     "manifest entry (README, 'Many runs in one process')")
    loc.add_argument("--pack-size", type=_positive, default=None,
                     help="members per ensemble at most (default: as many as fit, split so that every "
                     "--max-parallel slot gets one)")
    loc.set_defaults(func=cmd_local)
    ag = sub.add_parser("agents", help="One `wandb agent SWEEP_ID` per GPU slot.")
    ag.add_argument("sweep_id", help="entity/project/sweep_id as printed by `wandb sweep`")
    ag.add_argument("--gpus", required=True, help=gpu_help.replace("slot", "agent"))
    ag.add_argument("--gpus-per-run", type=_positive, default=1, help=per_run_help)
    ag.add_argument("--count", type=_positive, default=None,
                    help="runs per agent (default: until the sweep ends)")
    ag.add_argument("--stagger", type=_seconds, default=10.0,
                    help="seconds between agent starts (default: 10)")
    ag.set_defaults(func=cmd_agents)
    return p


def run(argv: list[str] | None = None) -> int:
    """Parse and run; bad input is logged and returns 2 (argparse itself exits 2 on a bad option)."""
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as err:  # RunDirError and SearchError are ValueErrors
        log.error("%s", err)
        return 2


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``lightning-mem sweep ...``; exits with the sweep's status."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code = run(sys.argv[1:] if argv is None else argv)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
