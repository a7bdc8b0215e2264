"""A local sweep's live summary: one log line on how many of its runs ended and how, how many run, the
time spent and the time left; written at every change and at least every ``every`` seconds.

    sweep tiny: 1 of 4 finished, 1 diverged, 1 failed, 1 running (epoch 12/30), 0 pending; 1m05s elapsed,
    ~40s left

A run counts once whatever process trains it: the members of a pack (one ensemble process) are read from
their own run folders (``status.json``: a member that diverged says so while the others train on, and the
epoch it is at; ``hp.json``: its ``max_epochs``), so a pack of K members counts K runs.

Time left: each running process's remaining share (its elapsed time over the fraction of epochs its runs
have done), plus, for each process still to start, the mean duration of the processes of this sweep that
ended or report their progress, divided among the slots. ``unknown`` until one does.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_mem import rundir
from lightning_mem.rundir import RunDirError

log = logging.getLogger(__name__)

# The counts of the line, in order (a status outside them counts as pending: it is run again).
SHOWN = (rundir.FINISHED, rundir.DIVERGED, rundir.FAILED, rundir.INTERRUPTED, rundir.RUNNING, rundir.PENDING)
DEFAULT_EVERY = 30.0  # seconds between two lines when nothing changes (--progress-every)
_READ_EVERY = 1.0  # seconds between two reads of the running members' status.json (at most)


def duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h10m``."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class SweepProgress:
    """The live summary of one invocation of a sweep (see the module docstring).

    Args:
        name: The sweep's name (the line's first word after ``sweep``).
        slots: Processes at once (``--max-parallel``).
        every: Seconds between two lines when nothing changed; 0: only on a change.
    """

    def __init__(self, name: str, slots: int, every: float = DEFAULT_EVERY) -> None:
        self.name, self.slots, self.every = name, max(slots, 1), every
        self.t0 = time.monotonic()
        self._logged: tuple[Any, ...] | None = None
        self._logged_at = -float("inf")
        self._read_at = -float("inf")
        self._read_every = min(every, _READ_EVERY) if every else _READ_EVERY
        self._members: dict[str, dict[str, Any]] = {}  # rid -> its status.json while its process runs
        self._max_epochs: dict[str, int | None] = {}  # rid -> hp.json's max_epochs
        self._durations: list[float] = []  # seconds of the processes that ended with a result

    def ended(self, seconds: float) -> None:
        """A process of this sweep ended with a result after ``seconds`` (a duration for the estimate)."""
        self._durations.append(seconds)

    def counts(self, runs: Mapping[str, Mapping[str, Any]], grid: Sequence[str]) -> Counter[str]:
        """How many runs of ``grid`` stand how: the manifest's status, a running run's own ``status.json``
        when it says it ended (a pack's member that diverged while the pack trains on)."""
        out: Counter[str] = Counter()
        for rid in grid:
            status = str(runs[rid]["status"])
            if status == rundir.RUNNING:
                status = str(self._members.get(rid, {}).get("status", rundir.RUNNING))
                status = status if status in (rundir.RUNNING, *rundir.DONE) else rundir.RUNNING
            out[status if status in SHOWN else rundir.PENDING] += 1
        return out

    def _read_members(self, runs: Mapping[str, Mapping[str, Any]], running: Sequence[Sequence[str]]) -> None:
        self._members = {}
        for rids in running:
            for rid in rids:
                run_dir = Path(str(runs[rid].get("run_dir")))
                record = rundir.read_status(run_dir) if (run_dir / rundir.STATUS).is_file() else None
                if record is not None:
                    self._members[rid] = record
                if rid not in self._max_epochs and (run_dir / rundir.HP).is_file():
                    try:
                        hp = rundir.read_hp(run_dir) or {}
                    except RunDirError:  # not a JSON object: no progress shown for it
                        hp = {}
                    epochs = hp.get("max_epochs")
                    self._max_epochs[rid] = epochs if isinstance(epochs, int) and epochs > 0 else None

    def _fraction(self, rids: Sequence[str]) -> float | None:
        """The fraction of their epochs that the runs of one process have done (those still training; 1
        when every run says it ended: the process is winding down)."""
        parts = []
        if rids and all(self._members.get(rid, {}).get("status") in rundir.DONE for rid in rids):
            return 1.0
        for rid in rids:
            record, epochs = self._members.get(rid, {}), self._max_epochs.get(rid)
            if record.get("status") != rundir.RUNNING:
                continue
            epoch = record.get("epoch")
            if epochs and isinstance(epoch, int) and epoch > 0:
                parts.append(min(epoch / epochs, 1.0))
        return sum(parts) / len(parts) if parts else None

    def left(self, running: Sequence[tuple[Sequence[str], float]], pending: int, now: float) -> float | None:
        """Seconds left (see the module docstring), or None when nothing tells yet."""
        shares = []  # (elapsed, estimated total) of each running process
        for rids, started in running:
            fraction = self._fraction(rids)
            elapsed = now - started
            shares.append((elapsed, elapsed / fraction if fraction else None))
        known = self._durations + [total for _, total in shares if total is not None]
        if not known and (pending or any(total is None for _, total in shares)):
            return None
        mean = sum(known) / len(known) if known else 0.0
        remaining = [max((mean if total is None else total) - elapsed, 0.0) for elapsed, total in shares]
        work = sum(remaining) + pending * mean
        return max(work / self.slots, max(remaining, default=0.0))

    def line(self, counts: Counter[str], running: Sequence[tuple[Sequence[str], float]], pending: int,
             now: float, final: bool = False) -> str:
        total = sum(counts.values())
        parts = [f"{counts[rundir.FINISHED]} of {total} finished", f"{counts[rundir.DIVERGED]} diverged",
                 f"{counts[rundir.FAILED]} failed"]
        parts += [f"{counts[rundir.INTERRUPTED]} interrupted"] if counts[rundir.INTERRUPTED] else []
        elapsed = duration(now - self.t0)
        if final:
            return f"sweep {self.name} ended: {', '.join(parts)}; took {elapsed}"
        epochs = [self._epoch_text(rids) for rids, _ in running]
        shown = [e for e in epochs if e][:4]
        more = " ..." if len([e for e in epochs if e]) > 4 else ""
        parts.append(f"{counts[rundir.RUNNING]} running" + (f" ({', '.join(shown)}{more})" if shown else ""))
        parts.append(f"{counts[rundir.PENDING]} pending")
        left = self.left(running, pending, now)
        eta = "time left unknown" if left is None else f"~{duration(left)} left"
        return f"sweep {self.name}: {', '.join(parts)}; {elapsed} elapsed, {eta}"

    def _epoch_text(self, rids: Sequence[str]) -> str:
        """``epoch 12/30`` of one process (its least advanced run still training), or ''."""
        pairs = []
        for rid in rids:
            record, epochs = self._members.get(rid, {}), self._max_epochs.get(rid)
            if record.get("status") == rundir.RUNNING and epochs and isinstance(record.get("epoch"), int):
                pairs.append((record["epoch"], epochs))
        return f"epoch {min(pairs)[0]}/{min(pairs)[1]}" if pairs else ""

    def update(self, runs: Mapping[str, Mapping[str, Any]], grid: Sequence[str],
               running: Sequence[tuple[Sequence[str], float]], pending: int, changed: bool = False) -> None:
        """Log the line if the counts changed (``changed``: the runner started or ended a process) or
        ``every`` seconds passed. ``running``: (run ids, start time) of each running process; ``pending``:
        the processes still to start."""
        now = time.monotonic()
        if not changed and now - self._read_at < self._read_every:
            return
        self._read_at = now
        self._read_members(runs, [rids for rids, _ in running])
        counts = self.counts(runs, grid)
        key = tuple(counts[s] for s in SHOWN)
        if key != self._logged or (self.every and now - self._logged_at >= self.every):
            self._logged, self._logged_at = key, now
            log.info("%s", self.line(counts, running, pending, now))

    def final(self, runs: Mapping[str, Mapping[str, Any]], grid: Sequence[str]) -> None:
        """The last line: how every run of the sweep ended, and the time the invocation took."""
        self._members = {}
        log.info("%s", self.line(self.counts(runs, grid), [], 0, time.monotonic(), final=True))
