"""The local sweep runner: a sweep's runs as child processes, a slot each, recorded in its manifest.

:class:`LocalSweep` holds the runs of one sweep file (:mod:`lightning_mem.sweeps.spec`) and their
manifest ``<root>/<sweep name>/manifest.json`` (:mod:`lightning_mem.rundir`), rewritten atomically after
every change. Every run's folder is ``<root>/<sweep name>/<run id>/`` (``--run.root/--run.name/--run.id``
added to its command). A rerun skips finished (and diverged) runs and retries the others (a run the
manifest says is ``running`` while no process holds its folder's lock is ``killed``). A failing run never
stops the sweep; SIGINT/SIGTERM stop the running children and mark them ``interrupted``. With ``pack``,
runs that differ only in packable keys train as one ensemble process (:mod:`lightning_mem.ensemble.plan`),
each keeping its own manifest entry.
"""

from __future__ import annotations

import contextlib
import logging
import os
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

from lightning_mem import metric_keys, rundir
from lightning_mem.ensemble import plan as ensemble_plan
from lightning_mem.rundir import FolderLock, RunDirError
from lightning_mem.sweeps import orphans
from lightning_mem.sweeps.launch import Signals, child_env
from lightning_mem.sweeps.outcomes import error_line, member_status, run_status
from lightning_mem.sweeps.progress import DEFAULT_EVERY, SweepProgress
from lightning_mem.sweeps.spec import UNSAFE, args_json, build_command, load_spec, points

log = logging.getLogger(__name__)



# ---------------------------------------------------------------------------- runs


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
                 pack_size: int | None = None, progress_every: float = DEFAULT_EVERY) -> None:
        self.path, self.wandb_mode, self.kill_timeout, self.seed = path, wandb_mode, kill_timeout, seed
        self.progress_every = progress_every  # seconds between two summary lines when nothing changes
        self.pack, self.pack_size = pack, pack_size  # --pack, --pack-size (see "packs" below)
        self.spec = load_spec(path)
        self.method = self.spec.get("method", "grid")
        # The sweep's folder under --root: one safe folder name (`name: ..` would write into root's parent).
        name = UNSAFE.sub("_", str(self.spec.get("name") or path.stem))
        self.name = rundir.check_name(f"{path}: name", name)
        self.root = root.resolve()
        self.dir = self.root / self.name
        self.manifest = self.dir / rundir.MANIFEST
        self.lock = FolderLock(self.dir, f"sweep folder {self.dir}")
        self.params = dict(points(self.spec, path, count, seed))
        self.grid = list(self.params)  # run ids of this invocation, in order
        self.runs: dict[str, dict[str, Any]] = {}
        self._t0: dict[str, float] = {}  # start times of the running runs
        self._checked: set[str] = set()  # jobs already looked at for a holder left by an earlier runner

    def load(self) -> None:
        """The manifest's runs (RunDirError naming it if it is not one), then this file's commands."""
        self.runs = dict(rundir.read_manifest(self.manifest)["runs"]) if self.manifest.is_file() else {}
        for entry in self.runs.values():  # a runner killed with its runs left them "running"
            run_dir = Path(str(entry.get("run_dir")))
            if entry["status"] == rundir.RUNNING and rundir.lock_holder(run_dir) is None:
                entry.update(status=rundir.KILLED, reason="its process is gone (killed with its runner)")
        for rid, params in self.params.items():
            run_dir = self.dir / rid
            command = build_command(self.spec["command"], params, run_dir / rundir.ARGS_JSON,
                                    self.spec.get("program"))
            command += ["--run.root", str(self.root), "--run.name", self.name, "--run.id", rid]
            entry = self.runs.setdefault(rid, {"status": rundir.PENDING, "attempts": 0})
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
        entry.update(status=rundir.RUNNING, attempts=entry.get("attempts", 0) + 1, returncode=None, gpu=gpu,
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
        if interrupted:
            status, reason = rundir.INTERRUPTED, None
        else:
            status, reason = run_status(run_dir, returncode, metrics)
        if broken and status == rundir.FINISHED:
            status, reason = rundir.FAILED, broken
        if status == rundir.FAILED and reason is None:
            reason = error_line(run_dir / rundir.OUTPUT_LOG)
        entry.update(status=status, reason=reason, returncode=returncode, metrics=metrics,
                     duration_s=round(time.monotonic() - self._t0.pop(rid), 2))
        entry.pop("pid", None)
        level = logging.INFO if status in rundir.DONE else logging.WARNING
        log.log(level, "%s %s (exit %s, %.1f s); log: %s", status, rid, returncode, entry["duration_s"],
                run_dir / rundir.OUTPUT_LOG)

    def run(self, slots: list[str | None], poll: float = 0.2) -> int:
        """Run every run not done, one per slot; 0 if all are done, 1 if any failed, 128+signal if stopped."""
        todo_runs = [rid for rid in self.grid if self.runs[rid]["status"] not in rundir.DONE]
        todo = self.jobs(todo_runs, len(slots))
        log.info("sweep %s: %d runs, %d to run%s; manifest %s", self.name, len(self.grid), len(todo_runs),
                 f" in {len(todo)} processes" if self.pack else "", self.manifest)
        self.save()
        running: dict[str, tuple[subprocess.Popen[bytes], int, Job]] = {}  # job -> (process, slot, job)
        waiting: dict[str, tuple[orphans.HeldRun, Job]] = {}  # jobs an earlier runner's child still runs
        progress = SweepProgress(self.name, len(slots), self.progress_every)
        with Signals() as signals:
            while (todo or running or waiting) and signals.received is None:
                before = (len(todo), len(running), len(waiting))
                todo = self._wait_for_held(todo, waiting)
                busy = {slot for _, slot, _ in running.values()}
                for slot in [i for i in range(len(slots)) if i not in busy][: len(todo)]:
                    job = todo.pop(0)
                    try:
                        running[job.key] = (self._start_job(job, slots[slot]), slot, job)
                    except (OSError, RunDirError) as err:  # not installed; a fit still owns the folder
                        reason = f"could not start: {err}"
                        for rid in job.rids:
                            self.runs[rid].update(status=rundir.FAILED, reason=reason, returncode=None)
                        log.warning("failed %s: %s", job.key, reason)
                    self.save()
                for key, (proc, _, job) in list(running.items()):
                    if proc.poll() is not None:
                        del running[key]
                        todo += self._finish_job(job, proc.returncode)
                        self.save()
                        if any(self.runs[rid]["status"] in rundir.DONE for rid in job.rids):
                            progress.ended(float(self.runs[job.rids[0]].get("duration_s") or 0.0))
                jobs = [job for _, _, job in running.values()] + [job for _, job in waiting.values()]
                progress.update(self.runs, self.grid, [(j.rids, self._t0.get(j.rids[0], 0.0)) for j in jobs],
                                len(todo), changed=before != (len(todo), len(running), len(waiting)))
                signals.wait(poll)
            if signals.received is not None:
                self._stop(running)
        progress.final(self.runs, self.grid)
        statuses = [self.runs[rid]["status"] for rid in self.grid]
        if signals.received is not None:
            return 128 + signals.received
        return 0 if all(s in rundir.DONE for s in statuses) else 1

    def _wait_for_held(self, todo: list[Job], waiting: dict[str, tuple[orphans.HeldRun, Job]]) -> list[Job]:
        """Move the jobs whose folders a live process of an earlier runner holds from ``todo`` to
        ``waiting`` (recorded ``running``, never started again nor marked failed); record the waited
        jobs whose holder has ended. The jobs still to start."""
        for job in list(todo):
            if job.key in self._checked:
                continue
            self._checked.add(job.key)  # once: no other runner starts this sweep's runs meanwhile
            folders = [Path(self.runs[rid]["run_dir"]) for rid in job.rids]
            folders += [self.dir / job.pack] if job.pack else []
            held = orphans.held_elsewhere(folders, folders[0])
            if held is not None:
                todo.remove(job)
                waiting[job.key] = (held, job)
                for rid in job.rids:
                    self.runs[rid].update(status=rundir.RUNNING, reason=f"still run by {held.holder}")
                    self._t0[rid] = time.monotonic()
                log.warning("%s is still run by %s (started by an earlier runner): waiting for it", job.key,
                            held.holder)
                self.save()
        for key, (held, job) in list(waiting.items()):
            code = held.poll()
            if code is not None or held.killed:
                del waiting[key]
                for rid in job.rids:
                    self.runs[rid].pop("reason", None)
                if code is None:  # killed: its process died without recording an end; run it again
                    log.warning("%s: its process ended without recording an end; starting it again", key)
                    todo.append(job)
                else:
                    todo += self._finish_job(job, code)
                self.save()
        return todo

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
        packable keys (:mod:`lightning_mem.ensemble.plan`), a killed pack resumed as it was."""
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
                pending = [m for m in members if self.runs[m]["status"] not in rundir.DONE]
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
            entry.update(status=rundir.RUNNING, attempts=entry.get("attempts", 0) + 1, returncode=None,
                         gpu=gpu, pid=proc.pid, started=started, duration_s=None, metrics={}, pack=job.pack)
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
                entry.update(status=rundir.PENDING, pack=None, reason=refusal, attempts=entry["attempts"] - 1)
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
            accs = "  ".join(f"{k}={m[k]:.4f}" for k in (metric_keys.TRAIN_ACC, metric_keys.VAL_ACC)
                             if m.get(k) is not None)
            dur = f"{e['duration_s']:.1f}s" if e.get("duration_s") is not None else "-"
            why = f"  ({e['reason']})" if e.get("reason") and e["status"] != rundir.FINISHED else ""
            lines.append(f"  {e['status']:<11} {dur:>8}  {rid}  {accs}{why}")
        counts = Counter(self.runs[rid]["status"] for rid in self.grid)
        lines.append("  " + ", ".join(f"{n} {status}" for status, n in counts.items()))
        return "\n".join(lines) + "\n"
