"""Child processes of the sweep tools: GPU slots, the children's environment, signals, and
``lightning-mem sweep agents`` (one ``wandb agent`` per GPU slot).

GPU ids are indices into this process's own ``CUDA_VISIBLE_DEVICES`` when it is set: a runner that was
given GPUs 4 and 5 (``CUDA_VISIBLE_DEVICES=4,5``) hands its children 4 and 5 for ``--gpus 0,1``, as a
CUDA program would number them. ``--gpus-per-run K`` groups them K at a time, one slot per group, so a
DDP run (``--trainer.devices K``) can be swept: ``--gpus 0,1,2,3 --gpus-per-run 2`` gives the slots
``CUDA_VISIBLE_DEVICES=0,1`` and ``2,3``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def gpu_slots(gpus: str | None, per_run: int = 1, visible: str | None = None) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` of each slot: ``gpus`` (comma-separated indices) in groups of ``per_run``.

    With ``visible`` (this process's own ``CUDA_VISIBLE_DEVICES``) the indices point into it, so a
    runner given GPUs 4,5 hands its children 4 and 5 for ``--gpus 0,1``. ValueError names a bad id.
    """
    if per_run < 1:
        raise ValueError(f"--gpus-per-run={per_run} must be >= 1")
    ids = [g.strip() for g in (gpus or "").split(",") if g.strip()]
    if not ids:
        if per_run > 1:
            raise ValueError("--gpus-per-run needs --gpus, e.g. --gpus 0,1 --gpus-per-run 2")
        return []
    bad = [g for g in ids if not g.isdigit()]
    if bad or len(set(ids)) != len(ids):
        raise ValueError(f"--gpus {gpus}: give distinct GPU indices (0, 1, ...) separated by commas")
    if visible is not None:
        seen = [v.strip() for v in visible.split(",") if v.strip()]
        out = [g for g in ids if int(g) >= len(seen)]
        if out:
            allowed = f"indices 0-{len(seen) - 1}" if seen else "no GPU"
            raise ValueError(f"--gpus {gpus}: index {out[0]} is out of range: this process sees "
                             f"CUDA_VISIBLE_DEVICES={visible} ({allowed})")
        ids = [seen[int(g)] for g in ids]
    if len(ids) % per_run:
        raise ValueError(f"--gpus {gpus}: {len(ids)} GPUs do not split into slots of "
                         f"--gpus-per-run {per_run}")
    return [",".join(ids[i : i + per_run]) for i in range(0, len(ids), per_run)]


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


def slots_of(args: argparse.Namespace) -> list[str]:
    """The GPU slots of ``--gpus``/``--gpus-per-run``, through this process's ``CUDA_VISIBLE_DEVICES``."""
    return gpu_slots(args.gpus, args.gpus_per_run, os.environ.get("CUDA_VISIBLE_DEVICES"))


def cmd_agents(args: argparse.Namespace) -> int:
    """One ``wandb agent [--count N] SWEEP_ID`` per GPU slot, ``--stagger`` seconds apart; 1 if any failed."""
    gpus = slots_of(args)
    if not gpus:
        raise ValueError("--gpus: give at least one GPU index, e.g. --gpus 0,1")
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
        log.error("agents on GPUs %s failed", " ".join(failed))
    return 1 if failed or len(procs) < len(gpus) else 0
