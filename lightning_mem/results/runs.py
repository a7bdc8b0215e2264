"""Runs as data: load run folders and sweep manifests through :mod:`lightning_mem.rundir`. Used by
``report`` (only finished and diverged runs) and ``dashboard`` (every status, partial curves
included; a sweep's failed or interrupted run without any logged row too). A run's status is
:func:`rundir.effective_status`: ``running`` only while a process holds its folder's lock, else
``killed``.

Each :class:`Run` carries its canonical hyperparameters ``hp`` (``hp.json``, or
:func:`rundir.canonical_hp` of ``config.yaml`` for runs of older versions), its flat config
``params`` (dotted keys, plus ``hp.<key>`` for each canonical key: the names the W&B config uses),
its status, and each metric as (steps, epochs, values) arrays. Grouping prefers the canonical keys.

Rows of older versions log alignment without ``epoch``; such a row gets the epoch of its step from
the rows that have both: a training-batch row at step s belongs to the first epoch whose last logged
step is ≥ s (steps past the last epoch are extrapolated at the run's steps per epoch), a held-out
(``val/``) row to the last epoch logged at a step ≤ s (older versions logged it one step late).
A row's own ``epoch`` is always used when present.

Grouping and the per-run numbers live in :mod:`lightning_mem.results.grouping`; their names are importable
from here too (``report`` and ``figures`` use them from this module).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml

from lightning_mem import metric_keys, rundir, safeyaml
from lightning_mem.dotted import flat_items
from lightning_mem.rundir import HP_KEYS, RunDirError

log = logging.getLogger(__name__)



# ---------------------------------------------------------------------------- loading


class Series(NamedTuple):
    """One metric of one run: float64 arrays of equal length, in log order."""

    steps: np.ndarray
    epochs: np.ndarray
    values: np.ndarray


@dataclass
class Run:
    """One run: flat config (``params``), canonical hyperparameters (``hp``), metrics and status."""

    path: Path
    params: dict[str, Any]
    metrics: dict[str, Series] = field(default_factory=dict)
    status: str = rundir.FINISHED  # one of rundir.EFFECTIVE_STATUSES (killed: running, its process gone)
    hp: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)  # status.json (step, epoch, reason, ...)

    def values(self, key: str) -> np.ndarray:
        return self.metrics[key].values if key in self.metrics else np.empty(0)

    def steps(self, key: str) -> np.ndarray:
        return self.metrics[key].steps if key in self.metrics else np.empty(0)

    def epochs(self, key: str) -> np.ndarray:
        return self.metrics[key].epochs if key in self.metrics else np.empty(0)

    def get(self, key: str) -> Any:
        """A group key's value: ``hp.<key>`` (canonical) or a dotted config key."""
        return self.params.get(key)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {dotted key: leaf} (:func:`lightning_mem.dotted.flat_items`); lists are kept as
    leaves, made hashable as tuples, so runs group on them."""
    out: dict[str, Any] = {}
    for key, value in flat_items(tree, prefix, lists="leaf"):
        if isinstance(value, list):
            out[key] = tuple(json.dumps(x, sort_keys=True, default=str) for x in value)
        elif not (isinstance(value, dict) and not value):  # an empty section sets nothing
            out[key] = value
    return out


def series(table: rundir.MetricsTable) -> dict[str, Series]:
    """Every metric of ``table`` with a logged row, rows with a missing epoch filled from the step ->
    epoch relation of the rows that have both (module docstring)."""
    steps = table.values["step"].to_numpy(np.float64)
    epochs = table.values["epoch"].to_numpy(np.float64)
    known = ~np.isnan(epochs)
    ends_epochs, at = np.unique(epochs[known], return_inverse=True)  # (E,) sorted epochs
    ends = np.full(len(ends_epochs), -np.inf)
    np.maximum.at(ends, at, steps[known])  # each epoch's last logged step
    ends = np.maximum.accumulate(ends)  # sorted for searchsorted, whatever was logged
    out = {}
    for key in table.keys:
        rows = table.logged[key].to_numpy(bool)
        if not rows.any():
            continue
        s, e = steps[rows], epochs[rows].copy()
        missing = np.isnan(e)
        if missing.any() and len(ends):
            held_out = key.startswith(metric_keys.VAL_PREFIX)
            e[missing] = _epoch_of(s[missing], ends, ends_epochs, held_out=held_out)
        out[key] = Series(s, e, table.values[key].to_numpy(np.float64)[rows])
    return out


def _epoch_of(s: np.ndarray, ends: np.ndarray, ends_epochs: np.ndarray, held_out: bool) -> np.ndarray:
    if held_out:  # the last epoch logged at a step <= s
        i = np.searchsorted(ends, s, side="right") - 1
        return np.where(i >= 0, ends_epochs[np.maximum(i, 0)], np.nan)
    # The first epoch whose last step is >= s; past the end, at the run's steps per epoch.
    i = np.searchsorted(ends, s, side="left")
    beyond = ends_epochs[-1] + np.ceil((s - ends[-1]) / ((ends[-1] + 1) / (ends_epochs[-1] + 1)))
    return np.where(i < len(ends), ends_epochs[np.minimum(i, len(ends) - 1)], beyond)


def _read_config(path: Path) -> dict[str, Any]:
    config_file = path / rundir.CONFIG
    if not config_file.is_file():
        return {}
    try:
        config = safeyaml.load(rundir.read_run_file(config_file).decode("utf-8"), str(config_file))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise RunDirError(f"{config_file}: not a valid config.yaml ({err}); it is written by the CLI at "
                          "the start of a fit; move the run folder away") from err
    if not isinstance(config, dict):
        raise RunDirError(f"{config_file}: expected a mapping of config keys, got {type(config).__name__}")
    return config


def load_run(path: Path, params: dict[str, Any] | None = None, status: str | None = None) -> Run | None:
    """One run folder; ``params`` (a manifest's CLI keys) fill keys ``config.yaml`` lacks; ``status``
    (a manifest's final status) overrides ``status.json``. None (logged) without ``metrics.csv``,
    unless the manifest says the run failed, was interrupted or killed (a run without rows)."""
    no_rows = (rundir.FAILED, rundir.INTERRUPTED, rundir.KILLED)
    if not (path / rundir.METRICS).is_file() and status not in no_rows:
        log.warning("skipping %s: no metrics.csv", path)
        return None
    config = _read_config(path)
    flat = flatten(config)
    for key, value in (params or {}).items():
        # Manifest params use CLI keys (model.net.init_std); config.yaml holds .init_args. forms.
        if not any(k == key or k.replace(".init_args", "") == key for k in flat):
            flat[key] = value
    hp = rundir.read_hp(path) or rundir.canonical_hp(config)
    flat.update({f"hp.{k}": hp.get(k) for k in HP_KEYS})
    record = rundir.read_status(path)
    if record is None and (path / rundir.STATUS).is_file():
        raise RunDirError(f"{path / rundir.STATUS}: not a status record (expected {{\"status\": one of "
                          f"{', '.join(rundir.STATUSES)}}}); move it away (the run then counts as finished)")
    metrics = series(rundir.read_metrics(path))
    # A "running" record counts only while its process holds the run folder's lock, else "killed".
    now = rundir.effective_status(path, record) if record is not None else None
    final = status or now or rundir.FINISHED  # no status.json: an older version
    return Run(path, flat, metrics, final, hp, record or {})


def load_manifest(path: Path, statuses: Iterable[str] | None = rundir.DONE) -> list[Run]:
    """Runs of a sweep manifest (``run_dir`` relative to the manifest or absolute) whose status is in
    ``statuses`` (all with a run folder when None)."""
    runs = []
    wanted = None if statuses is None else set(statuses)
    for run_id, entry in rundir.read_manifest(path)["runs"].items():
        status, where = entry["status"], entry.get("run_dir")
        if (wanted is not None and status not in wanted) or status == rundir.PENDING:
            log.info("skipping run %s of %s: status %r", run_id, path, status)
            continue
        if not where:
            log.warning("skipping run %s of %s: no run_dir", run_id, path)
            continue
        run_dir = Path(where)
        if not run_dir.is_absolute() and not run_dir.exists():
            run_dir = path.parent / run_dir
        params = entry.get("params")
        terminal = status if status != rundir.RUNNING else None  # a live run's status.json is newer
        if status == rundir.RUNNING and rundir.read_status(run_dir) is None \
                and rundir.lock_holder(run_dir) is None:
            terminal = rundir.KILLED  # the runner recorded a start; no process owns the run now
        run = load_run(run_dir, params if isinstance(params, dict) else {}, terminal)
        if run is not None:
            runs.append(run)
    return runs


def load_runs(paths: Iterable[str | Path], statuses: Iterable[str] | None = rundir.DONE) -> list[Run]:
    """Runs from run folders, folders of runs (searched recursively) and manifests; no duplicates.

    Only runs whose status is in ``statuses`` (default: finished and diverged, what ``report`` shows;
    None: every run). A corrupt file raises :class:`rundir.RunDirError` naming it.
    """
    wanted = None if statuses is None else set(statuses)
    runs: list[Run] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        if p.is_file() and p.suffix == ".json":
            found = load_manifest(p, wanted)
        elif (p / rundir.MANIFEST).is_file():
            found = load_manifest(p / rundir.MANIFEST, wanted)
        elif p.is_dir():
            found = [r for d in rundir.find_run_dirs(p) if (r := load_run(d)) is not None]
        else:
            raise FileNotFoundError(f"{p}: not a run folder, a folder of runs or a manifest.json")
        for run in found:
            if wanted is not None and run.status not in wanted:
                log.info("skipping %s: status %r", run.path, run.status)
            elif run.path.resolve() not in seen:
                seen.add(run.path.resolve())
                runs.append(run)
    return runs
