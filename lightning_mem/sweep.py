"""``lightning-mem sweep local|agents``: run W&B sweep YAML as a local grid, or one ``wandb agent`` per GPU.

``local SWEEP.yaml`` expands the sweep's ``parameters`` (``values`` lists, single ``value``s, nested
``parameters``) as a grid and builds each run's command from the sweep's ``command`` exactly as
``wandb agent`` does (the ``${env}``, ``${interpreter}``, ``${program}``, ``${args}``,
``${args_json_file}`` ... macros), plus ``--run.root/--run.name/--run.id`` so every run's folder is
known: ``<root>/<sweep name>/<run id>/``. Its state lives in ``<root>/<sweep name>/manifest.json``,
rewritten atomically after every change: rerunning skips finished (and diverged) runs and retries
the others. A failing run never stops the sweep; SIGINT/SIGTERM stop the running children and mark
them ``interrupted``.

``agents SWEEP_ID --gpus 0,1`` starts one ``wandb agent`` per GPU, each pinned with
``CUDA_VISIBLE_DEVICES``, forwards SIGINT/SIGTERM to them and exits non-zero if any agent failed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

DONE = ("finished", "diverged")  # statuses a rerun skips; every other status is run again
_ENVVAR = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")  # wandb's ${envvar:NAME} macro
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")  # W&B run ids and folder names: keep to these


def expand_grid(parameters: dict[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    """All combinations of a W&B ``parameters`` block, in YAML order.

    ``{values: [...]}`` and ``{value: x}`` are axes; ``{parameters: {...}}`` nests (its combinations
    become dict values, as W&B passes them). Anything else (``min``/``max``, a distribution) cannot
    be gridded and raises a ValueError naming the parameter.
    """
    axes: list[list[Any]] = []
    for name, spec in parameters.items():
        key = f"{prefix}{name}"
        if not isinstance(spec, dict):
            raise ValueError(f"parameter {key!r}: expected a mapping such as {{values: [...]}}, got {spec!r}")
        dist = spec.get("distribution", "categorical" if "values" in spec else "constant")
        if "parameters" in spec:
            axes.append(expand_grid(spec["parameters"], prefix=f"{key}."))
        elif "values" in spec and dist == "categorical":
            if not isinstance(spec["values"], list) or not spec["values"]:
                raise ValueError(f"parameter {key!r}: values must be a non-empty list")
            axes.append(list(spec["values"]))
        elif "value" in spec and dist == "constant":
            axes.append([spec["value"]])
        else:
            raise ValueError(
                f"parameter {key!r}: the local runner cannot grid {spec!r} (distribution {dist!r}); "
                "give it `values: [...]` or `value: x`"
            )
    names = list(parameters)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes)]


def command_args(params: dict[str, Any]) -> dict[str, list[str]]:
    """The argument macros of ``wandb agent`` (its ``sweeps.utils.create_sweep_command_args``)."""
    flags = [f"--{k}={v}" for k, v in params.items()]
    return {
        "args": flags,
        "args_no_equals": [s for k, v in params.items() for s in (f"--{k}", str(v))],
        "args_no_hyphens": [f[2:] for f in flags],
        "args_no_boolean_flags": [f"--{k}" if v is True else f"--{k}={v}"
                                  for k, v in params.items() if v is not False],
        "args_json": [json.dumps(params)],
        "args_append_hydra": [f"+{f[2:]}" for f in flags],
        "args_override_hydra": [f"++{f[2:]}" for f in flags],
    }


def build_command(
    template: list[Any], params: dict[str, Any], args_json_file: Path, program: str | None = None
) -> list[str]:
    """Substitute a sweep ``command``'s macros as ``wandb agent`` does (``${interpreter}``: this Python)."""
    macros = command_args(params) | {
        "env": ["/usr/bin/env"] if Path("/usr/bin/env").exists() else [],
        "interpreter": [sys.executable],
        "program": [program] if program else [],
        "args_json_file": [str(args_json_file)],
    }
    out: list[str] = []
    for item in template:
        text = _ENVVAR.sub(lambda m: os.environ.get(m.group(1), m.group(1)), str(item))
        if text.startswith("${") and text.endswith("}"):
            out += macros.get(text[2:-1], [])
        else:
            out.append(text)
    return out


def run_id(params: dict[str, Any], show: list[str] | None = None) -> str:
    """A readable id, the same on every rerun: ``<key><value>_...-<hash of all params>``.

    The readable part names the ``show`` keys (default: all) by their last dotted part, and dotted
    string values (class paths) by theirs: ``init_std0.01_seed_everything1-3f2a9c1e``.
    """
    digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
    parts = []
    for key in params if show is None else show:
        value = params[key]
        if isinstance(value, str):
            value = value.rsplit(".", 1)[-1]
        if not isinstance(value, dict):
            parts.append(f"{key.rsplit('.', 1)[-1]}{value}")
    return f"{_UNSAFE.sub('', '_'.join(parts))[:48] or 'run'}-{digest}"


def final_metrics(metrics_csv: Path) -> dict[str, float | None]:
    """Last logged value of every column of a Lightning ``metrics.csv`` (rows are sparse); NaN/inf -> None."""
    last: dict[str, float | None] = {}
    if not metrics_csv.is_file():
        return last
    with metrics_csv.open(newline="") as fh:
        for row in csv.DictReader(fh):
            for key, value in row.items():
                with contextlib.suppress(TypeError, ValueError):  # empty cells of sparse rows
                    number = float(value)
                    last[key] = number if math.isfinite(number) else None
    return last


def run_status(run_dir: Path, returncode: int, metrics: dict[str, float | None]) -> tuple[str, str | None]:
    """(status, reason): ``diverged`` if the run's ``status.json`` says so (written by the CLI's
    ``RunStatus`` callback) or its last train loss is not finite; else finished / failed by exit code."""
    marker = run_dir / "status.json"
    record: dict[str, Any] = {}
    if marker.is_file():
        with contextlib.suppress(ValueError):
            loaded = json.loads(marker.read_text())
            record = loaded if isinstance(loaded, dict) else {}
    reason = record.get("reason")
    if record.get("status") == "diverged":
        return "diverged", reason
    if returncode == 0 and "train/loss" in metrics and metrics["train/loss"] is None:
        return "diverged", "last train/loss is not finite"
    return ("finished", None) if returncode == 0 else ("failed", reason)


def error_line(output_log: Path, limit: int = 300) -> str | None:
    """The last ``error:`` line of a run's output (the CLI's message), else its last line."""
    if not output_log.is_file():
        return None
    lines = [line.strip() for line in output_log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith(("error:", "error "))]
    found = errors[-1] if errors else lines[-1] if lines else None
    return None if found is None else found[:limit]


def write_json_atomic(path: Path, data: Any) -> None:
    """JSON to a temporary file in the same folder, then ``os.replace``: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def child_env(gpu: str | None, **extra: str) -> dict[str, str]:
    """This process's environment, this Python's bin folder first on PATH, pinned to ``gpu`` when given."""
    env = dict(os.environ, **extra)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


class Signals:
    """Records SIGINT/SIGTERM (and calls ``on_signal``) instead of raising; restores the old handlers."""

    def __init__(self, on_signal: Any = None) -> None:
        self.received: int | None = None
        self.on_signal = on_signal
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        log.warning("received %s", signal.Signals(signum).name)
        if self.on_signal is not None:
            self.on_signal(signum)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if a signal arrived meanwhile."""
        end = time.monotonic() + seconds
        while self.received is None and time.monotonic() < end:
            time.sleep(min(0.1, max(end - time.monotonic(), 0)))
        return self.received is not None


@dataclass
class LocalSweep:
    """The grid of one sweep file and its manifest under ``root/<name>``."""

    path: Path
    root: Path
    wandb_mode: str = "offline"
    kill_timeout: float = 15.0
    config: dict[str, Any] = field(init=False)
    name: str = field(init=False)
    runs: dict[str, dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        try:
            loaded = yaml.safe_load(self.path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{self.path}: not valid YAML: {err}") from err
        if not isinstance(loaded, dict) or not isinstance(loaded.get("parameters", {}), dict):
            raise ValueError(f"{self.path}: a sweep is a mapping with `parameters:` (a mapping), `command:`")
        self.config = loaded
        if not isinstance(self.config.get("command"), list):
            raise ValueError(f"{self.path}: the sweep needs a `command:` list (lightning-mem fit ...)")
        method = self.config.get("method", "grid")
        if method != "grid":
            log.warning("%s: method %r; the local runner runs the full grid of its values", self.path, method)
        self.name = _UNSAFE.sub("_", str(self.config.get("name") or self.path.stem))
        self.root = self.root.resolve()
        self.dir = self.root / self.name
        self.manifest = self.dir / "manifest.json"
        old = {}
        if self.manifest.is_file():
            try:
                old = json.loads(self.manifest.read_text())["runs"]
            except (ValueError, KeyError) as err:
                raise ValueError(f"{self.manifest} is unreadable ({err}); move it away to restart") from err
        self.runs = dict(old)
        self.grid: list[str] = []  # run ids of this file's grid, in order
        self._t0: dict[str, float] = {}  # start times of the running runs
        combos = expand_grid(self.config.get("parameters") or {})
        varying = [k for k in (combos[0] if combos else {}) if any(c[k] != combos[0][k] for c in combos)]
        for params in combos:
            rid = run_id(params, show=varying)
            self.grid.append(rid)
            run_dir = self.dir / rid
            command = build_command(self.config["command"], params, run_dir / "args.json",
                                    self.config.get("program"))
            command += ["--run.root", str(self.root), "--run.name", self.name, "--run.id", rid]
            entry = self.runs.setdefault(rid, {"status": "pending", "attempts": 0})
            entry.update(params=params, run_dir=str(run_dir.resolve()), command=command)

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.manifest, {"sweep": self.name, "file": str(self.path.resolve()),
                                          "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs": self.runs})

    def _start(self, rid: str, gpu: str | None) -> subprocess.Popen[bytes]:
        entry = self.runs[rid]
        run_dir = Path(entry["run_dir"])
        if run_dir.exists():  # a failed or interrupted attempt: start clean
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        (run_dir / "args.json").write_text(command_args(entry["params"])["args_json"][0])
        env = child_env(gpu, WANDB_MODE=self.wandb_mode, LIGHTNING_MEM_RUN_ID=rid)
        for key in ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH"):
            env.pop(key, None)  # the run id is ours, not an agent's
        with (run_dir / "output.log").open("wb") as out:
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
        metrics = final_metrics(run_dir / "metrics.csv")
        status, reason = ("interrupted", None) if interrupted else run_status(run_dir, returncode, metrics)
        if status == "failed" and reason is None:
            reason = error_line(run_dir / "output.log")
        entry.update(status=status, reason=reason, returncode=returncode, metrics=metrics,
                     duration_s=round(time.monotonic() - self._t0.pop(rid), 2))
        entry.pop("pid", None)
        level = logging.INFO if status in DONE else logging.WARNING
        log.log(level, "%s %s (exit %s, %.1f s); log: %s", status, rid, returncode, entry["duration_s"],
                run_dir / "output.log")

    def run(self, slots: list[str | None], poll: float = 0.2) -> int:
        """Run every run not done, one per slot; 0 if all are done, 1 if any failed, 128+signal if stopped."""
        todo = [rid for rid in self.grid if self.runs[rid]["status"] not in DONE]
        log.info("sweep %s: %d runs, %d to run; manifest %s", self.name, len(self.grid), len(todo),
                 self.manifest)
        self.save()
        running: dict[str, tuple[subprocess.Popen[bytes], int]] = {}  # run id -> (process, slot)
        with Signals() as signals:
            while (todo or running) and signals.received is None:
                busy = {slot for _, slot in running.values()}
                for slot in [i for i in range(len(slots)) if i not in busy][: len(todo)]:
                    rid = todo.pop(0)
                    try:
                        running[rid] = (self._start(rid, slots[slot]), slot)
                    except OSError as err:  # e.g. the command's program is not installed
                        reason = f"could not start: {err}"
                        self.runs[rid].update(status="failed", reason=reason, returncode=None)
                        log.warning("failed %s: %s", rid, reason)
                    self.save()
                for rid, (proc, _) in list(running.items()):
                    if proc.poll() is not None:
                        del running[rid]
                        self._finish(rid, proc.returncode)
                        self.save()
                signals.wait(poll)
            if signals.received is not None:
                self._stop(running)
        statuses = [self.runs[rid]["status"] for rid in self.grid]
        if signals.received is not None:
            return 128 + signals.received
        return 0 if all(s in DONE for s in statuses) else 1

    def _stop(self, running: dict[str, tuple[subprocess.Popen[bytes], int]]) -> None:
        """SIGTERM every child's process group (DDP ranks included), SIGKILL after ``kill_timeout``."""
        for rid, (proc, _) in list(running.items()):
            if proc.poll() is not None:  # ended on its own before the signal: record it as it ended
                del running[rid]
                self._finish(rid, proc.returncode)
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.kill_timeout
        for rid, (proc, _) in running.items():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            self._finish(rid, proc.returncode, interrupted=True)
            self.save()

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


def _gpus(text: str | None) -> list[str]:
    return [g.strip() for g in text.split(",") if g.strip()] if text else []


def cmd_local(args: argparse.Namespace) -> int:
    sweep = LocalSweep(Path(args.sweep), Path(args.root), wandb_mode=args.wandb_mode,
                       kill_timeout=args.kill_timeout)
    gpus = _gpus(args.gpus)
    n = args.max_parallel or len(gpus) or 1
    slots: list[str | None] = [gpus[i % len(gpus)] for i in range(n)] if gpus else [None] * n
    if args.dry_run:
        for i, rid in enumerate(sweep.grid):
            entry = sweep.runs[rid]
            gpu = slots[i % len(slots)]
            prefix = f"CUDA_VISIBLE_DEVICES={gpu} " if gpu is not None else ""
            skip = f"# {entry['status']}, skipped: " if entry["status"] in DONE else ""
            sys.stdout.write(f"{skip}{prefix}{shlex.join(entry['command'])}\n")
        return 0
    code = sweep.run(slots)
    sys.stdout.write(sweep.summary())
    return code


def cmd_agents(args: argparse.Namespace) -> int:
    gpus = _gpus(args.gpus)
    if not gpus:
        raise SystemExit("--gpus: give at least one GPU id, e.g. --gpus 0,1")
    exe = shutil.which("wandb") or str(Path(sys.executable).with_name("wandb"))
    count = ["--count", str(args.count)] if args.count else []
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def forward(signum: int) -> None:  # an agent waits for its run at a first signal, stops it at a second
        for _, proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    with Signals(on_signal=forward) as signals:
        for i, gpu in enumerate(gpus):
            if i and signals.wait(args.stagger):
                break
            cmd = [exe, "agent", *count, args.sweep_id]
            log.info("agent on GPU %s: %s", gpu, shlex.join(cmd))
            procs.append((gpu, subprocess.Popen(cmd, env=child_env(gpu), start_new_session=True)))
        while any(proc.poll() is None for _, proc in procs):
            time.sleep(0.2)
    for gpu, proc in procs:
        sys.stdout.write(f"agent GPU {gpu}: exit {proc.returncode}\n")
    failed = [gpu for gpu, proc in procs if proc.returncode != 0]
    if failed:
        log.error("agents on GPUs %s failed", ",".join(failed))
    return 1 if failed or len(procs) < len(gpus) else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lightning-mem sweep", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    loc = sub.add_parser("local", help="Run a sweep YAML as a grid on this machine, with a manifest.")
    loc.add_argument("sweep", help="W&B sweep YAML (sweeps/*.yaml)")
    loc.add_argument("--gpus", help="comma-separated GPU ids, one slot each (default: no pinning)")
    loc.add_argument("--max-parallel", type=int, default=None,
                     help="runs at once (default: number of GPUs or 1)")
    loc.add_argument("--root", default="runs", help="runs go to ROOT/<sweep name>/<run id>/ (default: runs)")
    loc.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    loc.add_argument("--wandb-mode", default="offline", choices=["offline", "disabled", "online"],
                     help="WANDB_MODE of the runs (default: offline; `wandb sync` uploads them later)")
    loc.add_argument("--kill-timeout", type=float, default=15.0, help="seconds between SIGTERM and SIGKILL")
    loc.set_defaults(func=cmd_local)
    ag = sub.add_parser("agents", help="One `wandb agent SWEEP_ID` per GPU.")
    ag.add_argument("sweep_id", help="entity/project/sweep_id as printed by `wandb sweep`")
    ag.add_argument("--gpus", required=True, help="comma-separated GPU ids, one agent each")
    ag.add_argument("--count", type=int, default=None, help="runs per agent (default: until the sweep ends)")
    ag.add_argument("--stagger", type=float, default=10.0, help="seconds between agent starts (default: 10)")
    ag.set_defaults(func=cmd_agents)
    return p


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "local" and args.max_parallel is not None and args.max_parallel < 1:
        raise SystemExit("--max-parallel must be >= 1")
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``lightning-mem sweep ...``; exits with the sweep's status."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code = run(sys.argv[1:] if argv is None else argv)
    if code:
        raise SystemExit(code)


