"""The run folder: its layout, atomic writes, ``status.json``, ``metrics.csv``, ``hp.json``, the sweep
manifest, and the locks that give a run folder or a sweep one owner at a time.

This is the only module of the package that reads or writes those files (Lightning's CSV logger
writes the rows of ``metrics.csv`` itself). It imports neither torch nor Lightning, so ``sweep``,
``report`` and ``dashboard`` start without them. Layout::

    <root>/<name>/<id>/            one run (--run.root, --run.name, --run.id)
        metrics.csv                every logged row: step, epoch and the metric keys (CSV logger)
        metrics.resume.csv         only while a resume carries the rows over (see restore_metrics)
        config.yaml                the full nested config (LightningCLI)
        hp.json                    the canonical hyperparameters (:data:`HP_KEYS`), flat
        hparams.yaml               the module's hyperparameters (CSV logger)
        status.json                running | finished | diverged | interrupted | failed (as written;
                                   readers use effective_status: a dead "running" run is "killed")
        checkpoints/               epoch<k>.ckpt and last.ckpt
        .lock                      held (flock) by the process that owns the run
        output.log, args.json      written by the local sweep runner
        wandb/                     the W&B run, when that logger is configured
    <root>/<sweep>/manifest.json   a local sweep's state, and its .lock

Errors a user can cause (a corrupt file, a bad name, a folder in use) raise :class:`RunDirError`, a
``ValueError`` whose message names the file or value and the fix.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import math
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

METRICS = "metrics.csv"
METRICS_RESUME = "metrics.resume.csv"  # metrics.csv set aside while a resume carries its rows over
CONFIG = "config.yaml"
HP = "hp.json"
STATUS = "status.json"
CHECKPOINTS = "checkpoints"
LAST_CKPT = "last.ckpt"
MANIFEST = "manifest.json"
LOCK = ".lock"
OUTPUT_LOG = "output.log"
ARGS_JSON = "args.json"

STATUSES = ("running", "finished", "diverged", "interrupted", "failed")  # what status.json holds
KILLED = "killed"  # a "running" record whose process is gone (SIGKILL, OOM killer): see effective_status
EFFECTIVE_STATUSES = (*STATUSES, KILLED)
# One folder name: no separator, not "." or "..", no leading dot or dash (hidden files, options).
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=+-]{0,127}")


class RunDirError(ValueError):
    """Bad input about the run folder: a corrupt file, a bad name, a folder in use."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ---------------------------------------------------------------------------- layout


def check_name(key: str, value: str) -> str:
    """``value`` if it is one safe folder name, else :class:`RunDirError` naming ``key``."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or value in (".", ".."):
        raise RunDirError(
            f"{key}={value!r} must be one folder name: 1-128 letters, digits and . _ = + -, starting with a "
            "letter, digit or _ (no '/', not '.' or '..')"
        )
    return value


def run_path(root: str | Path, name: str, run_id: str) -> Path:
    """``<root>/<name>/<run_id>``, after checking that both parts are single safe folder names and that the
    root is not an empty string (an unset shell variable, which would put the runs in the current folder)."""
    if not str(root).strip():
        raise RunDirError(f"run.root={str(root)!r} is empty; give a folder for the runs (default: runs; "
                          "'.' for the current folder)")
    return Path(root) / check_name("run.name", name) / check_name("run.id", run_id)


def holds_run(run_dir: Path) -> list[str]:
    """The files that make ``run_dir`` an existing run (``metrics.csv``, ``checkpoints``), if any."""
    return [p for p in (METRICS, CHECKPOINTS) if (run_dir / p).exists()]


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS / LAST_CKPT


def newest_run_with_checkpoint(root: str | Path, name: str) -> Path | None:
    """The run folder under ``<root>/<name>`` whose ``last.ckpt`` is newest (``--ckpt_path last``)."""
    found = sorted(Path(root, name).glob(f"*/{CHECKPOINTS}/{LAST_CKPT}"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent.parent if found else None


def find_run_dirs(path: Path) -> list[Path]:
    """Run folders (with a ``metrics.csv``) at any depth under ``path``, sorted; W&B folders skipped."""
    return sorted(p.parent for p in path.rglob(METRICS) if "wandb" not in p.relative_to(path).parts[:-1])


def check_writable(run_dir: Path, where: str) -> None:
    """:class:`RunDirError` unless ``run_dir`` exists as a folder or can be created and written; nothing is
    created (a temporary file in the nearest existing ancestor is written and removed). ``where`` names
    the folder and the options that chose it in the message."""
    ancestor = run_dir
    while not ancestor.exists() and ancestor != ancestor.parent:  # file/x does not exist: walk up
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunDirError(f"{where} cannot be created: {ancestor} is a file, not a directory; "
                          "set --run.root to a writable directory")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as err:
        raise RunDirError(f"{where} cannot be written: {ancestor}: {err.strerror or err}; "
                          "set --run.root to a writable directory") from err


# ---------------------------------------------------------------------------- atomic writes


def atomic_write_text(path: Path, text: str) -> None:
    """``text`` to a temporary file in the same folder, fsync, then ``os.replace``: a reader sees the old
    file or the new one, never half of one, whatever kills the writer."""
    atomic_write_bytes(path, text.encode())


def file_mode() -> int:
    """The permissions ``open`` gives a new file here: 0o666 less the process umask."""
    return 0o666 & ~_umask()


def fsync_dir(folder: Path) -> None:
    """Make the renames into ``folder`` durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    """The process umask, read from /proc where it can be (os.umask sets it too: racy with threads)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """:func:`atomic_write_text` for bytes. The file gets the permissions a plain ``open`` would give
    (0666 less the umask; ``mkstemp`` alone would make it 0600, unreadable to a shared group)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), file_mode())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    """JSON (non-finite floats as null) written with :func:`atomic_write_text`."""
    atomic_write_text(path, json.dumps(_finite(data), indent=1, default=str, allow_nan=False) + "\n")


def _finite(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, Mapping):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def read_json(path: Path, what: str, fix: str) -> Any:
    """The JSON in ``path``; :class:`RunDirError` naming the file, ``what`` it should be and ``fix``."""
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as err:
        raise RunDirError(f"{path}: not a valid {what} ({err}); {fix}") from err


# ---------------------------------------------------------------------------- status.json


def write_status(run_dir: Path, status: str, **fields: Any) -> None:
    """``{"status": status, **fields, "time": now}`` to ``<run_dir>/status.json``, atomically."""
    if status not in STATUSES:
        raise ValueError(f"status={status!r}; allowed: {', '.join(STATUSES)}")
    atomic_write_json(run_dir / STATUS, {"status": status, **fields, "time": _now()})


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The record of :func:`write_status`; None when missing, unreadable or not such a record (logged)."""
    path = run_dir / STATUS
    if not path.is_file():
        return None
    try:
        record = read_json(path, "status record", "it is rewritten by the next fit of this run")
    except (OSError, RunDirError) as err:
        log.warning("%s", err)
        return None
    if not isinstance(record, dict) or record.get("status") not in STATUSES:
        log.warning("%s: not a status record (expected {\"status\": one of %s})", path, ", ".join(STATUSES))
        return None
    return record


def effective_status(run_dir: Path, record: Mapping[str, Any] | None = None) -> str | None:
    """How a run stands now: its ``status.json`` status, except that ``running`` holds only while a process
    holds the run folder's lock; a ``running`` record whose folder is free is :data:`KILLED` (the process
    died without writing its end: SIGKILL, the OOM killer, a lost node). None without a record.

    ``record`` is the already read ``status.json`` (read here when None). The lock is read-only checked
    (:func:`lock_holder`); the kernel drops an flock when its holder dies, so no pid is guessed.
    """
    record = read_status(run_dir) if record is None else record
    if record is None:
        return None
    status = str(record.get("status"))
    if status == "running" and lock_holder(run_dir) is None:
        return KILLED
    return status


# ---------------------------------------------------------------------------- metrics.csv


@dataclass(frozen=True)
class MetricsTable:
    """A run's ``metrics.csv`` as written by Lightning's CSV logger: one row per log call.

    ``values`` is a float64 DataFrame (``step``, ``epoch`` and every metric key as columns; NaN where a
    row did not log the key); ``logged`` is the bool DataFrame of the cells that hold a value, so a
    logged NaN/inf can be told from a blank cell.
    """

    path: Path
    values: Any  # pandas.DataFrame
    logged: Any  # pandas.DataFrame

    @property
    def keys(self) -> list[str]:
        """Metric columns (``step`` and ``epoch`` excluded), in file order."""
        return [k for k in self.values.columns if k not in ("step", "epoch")]

    def series(self, key: str) -> tuple[Any, Any, Any]:
        """(steps, epochs, values) numpy arrays of the rows that logged ``key`` (epoch NaN if absent)."""
        if key not in self.values.columns:
            empty = self.values.iloc[:0]
            return empty["step"].to_numpy(), empty["epoch"].to_numpy(), empty["step"].to_numpy(float)
        rows = self.values[self.logged[key]]
        return rows["step"].to_numpy(), rows["epoch"].to_numpy(), rows[key].to_numpy()

    def last(self) -> dict[str, float | None]:
        """The last logged value of every column (``epoch`` and ``step`` included); NaN/inf -> None."""
        out: dict[str, float | None] = {}
        for key in self.values.columns:
            logged = self.values[key][self.logged[key]]
            if len(logged):
                value = float(logged.iloc[-1])
                out[key] = value if math.isfinite(value) else None
        return out


def read_metrics(path: Path) -> MetricsTable:
    """Parse ``metrics.csv`` (or the one in a run folder) into a :class:`MetricsTable`.

    Schema: a header row; a ``step`` column of integers in every row; an optional ``epoch`` column;
    every other cell empty or a number (``nan``/``inf`` allowed). A missing or empty file is an empty
    table; anything else raises :class:`RunDirError` naming the file. A last line without its line end
    is a row still being written (or torn by a kill) and is left out.
    """
    import pandas as pd  # lazy: ~0.3 s, and `sweep --help` does not need it

    path = path / METRICS if path.is_dir() else path
    empty = pd.DataFrame({"step": pd.Series(dtype="int64"), "epoch": pd.Series(dtype="float64")})
    if not path.is_file() or path.stat().st_size == 0:
        return MetricsTable(path, empty, empty.astype(bool))
    fix = "it is written by Lightning's CSV logger; move the file away or delete the run folder"
    whole = path.read_bytes()
    try:
        whole.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RunDirError(f"{path}: not a metrics.csv (UnicodeDecodeError: {err}); {fix}") from err
    data = _complete_lines(whole)
    if not data:  # a header still being written
        return MetricsTable(path, empty, empty.astype(bool))
    text = data.lower()
    if b"nan" not in text and b"inf" not in text:  # fast path: no logged NaN/inf, so NaN = a blank cell
        with contextlib.suppress(UnicodeDecodeError, pd.errors.ParserError, ValueError):
            values = pd.read_csv(io.BytesIO(data), dtype="float64", keep_default_na=False, na_values=[""],
                                 encoding="utf-8")
            if "step" in values.columns and values["step"].notna().all() and (values["step"] % 1 == 0).all():
                logged = values.notna()
                values["step"] = values["step"].astype("int64")
                if "epoch" not in values.columns:
                    values["epoch"], logged["epoch"] = math.nan, False
                return MetricsTable(path, values, logged)
    try:
        raw = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_filter=False,
                          encoding="utf-8")
    except (UnicodeDecodeError, pd.errors.ParserError, ValueError) as err:
        raise RunDirError(f"{path}: not a metrics.csv ({type(err).__name__}: {err}); {fix}") from err
    if "step" not in raw.columns:
        columns = list(raw.columns)
        raise RunDirError(f"{path}: not a metrics.csv (no 'step' column; columns: {columns}); {fix}")
    logged = raw.ne("")
    try:
        values = raw.replace("", "nan").astype("float64")
    except ValueError as err:
        raise RunDirError(f"{path}: not a metrics.csv (a cell is not a number: {err}); {fix}") from err
    if not logged["step"].all() or not (values["step"] % 1 == 0).all():
        raise RunDirError(f"{path}: not a metrics.csv (every row needs an integer step); {fix}")
    values["step"] = values["step"].astype("int64")
    if "epoch" not in values.columns:
        values["epoch"], logged["epoch"] = math.nan, False
    return MetricsTable(path, values, logged)


def final_metrics(run_dir: Path) -> dict[str, float | None]:
    """Last logged value of every column of the run's ``metrics.csv`` (see :meth:`MetricsTable.last`)."""
    return read_metrics(run_dir / METRICS).last()


def _complete_lines(data: bytes) -> bytes:
    """``data`` up to its last line end: Lightning's CSV writer appends whole rows, so text after the last
    newline is a row a killed writer left half written."""
    return data[: data.rfind(b"\n") + 1]


def read_metrics_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of ``metrics.csv`` as the exact text of each cell (no float round trip), for code
    that rewrites the file and must keep it byte-identical; ([], []) when it is missing or empty. An
    unterminated last line (a row torn by a kill) is left out."""
    import csv

    if not path.is_file():
        return [], []
    text = _complete_lines(path.read_bytes()).decode("utf-8", errors="replace")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def write_metrics_rows(path: Path, header: list[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """``metrics.csv`` from a header and rows, atomically (:func:`atomic_write_text`), in the dialect of
    Lightning's CSV writer (``csv.DictWriter``'s excel dialect, ``\\r\\n`` line ends): used when the
    header grows and when a resume carries rows over, so a kill never leaves a half-rewritten file."""
    import csv

    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _row_before(row: Mapping[str, str], step: int, epoch: int) -> bool:
    """Whether a ``metrics.csv`` row was logged before a resume from a checkpoint at (``step``, ``epoch``).

    A checkpoint at the end of epoch e holds ``global_step`` s: rows at steps < s came before it. Rows at
    step s belong to epoch e's end (its validation) when their ``epoch`` is ≤ e, or to epoch e + 1's first
    batch, which the resumed run logs again; a row at step s without an epoch is kept (older logs).
    """
    row_step = int(row["step"]) if row.get("step", "").isdigit() else None
    if row_step is None or row_step > step:
        return False
    if row_step < step:
        return True
    row_epoch = row.get("epoch", "")
    try:
        return not row_epoch or float(row_epoch) <= epoch
    except ValueError:
        return False


def set_metrics_aside(run_dir: Path) -> None:
    """First half of carrying ``metrics.csv`` over a resume: move it to ``metrics.resume.csv`` (an atomic
    rename), so that Lightning's CSV logger, which deletes a ``metrics.csv`` it finds, finds none.

    A kill at any point of the two halves leaves every row in one of the two files; the next resume
    takes them from there (see :func:`restore_metrics`).
    """
    current, aside = run_dir / METRICS, run_dir / METRICS_RESUME
    if current.is_file():
        os.replace(current, aside)


def restore_metrics(run_dir: Path, step: int, epoch: int) -> list[str]:
    """Second half: write the rows logged before the checkpoint at (``step``, ``epoch``) back to
    ``metrics.csv`` (atomically, each cell's exact text and the CSV logger's own line ends), remove
    ``metrics.resume.csv`` and return the header, which the resumed logger continues. ``[]`` when there
    was no earlier file. Rows after the checkpoint are dropped: the resumed run logs them again, so the
    file ends byte-identical to an uninterrupted run's."""
    aside = run_dir / METRICS_RESUME
    if not aside.is_file():
        return []
    header, rows = read_metrics_rows(aside)
    write_metrics_rows(run_dir / METRICS, header, (r for r in rows if _row_before(r, step, epoch)))
    aside.unlink()
    return header


def summary_line(run_dir: Path) -> str:
    """One line about a run: how it ended (``status.json``), where (epoch and step, or the first bad step),
    its last ``train/acc`` and ``val/acc``, its best ``val/acc``, and its folder."""
    status = read_status(run_dir) or {"status": "unknown"}
    try:
        table = read_metrics(run_dir)
    except RunDirError as err:
        return f"{status['status']}; {err}; run folder {run_dir}"
    last = table.last()
    val = [float(v) for v in table.series("val/acc")[2] if math.isfinite(v)]

    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    where = f"epoch {status.get('epoch', '?')}, step {status.get('global_step', '?')}"
    if status["status"] == "diverged":
        where = f"step {status.get('diverged_step', '?')} (epoch {status.get('epoch', '?')})"
    best = fmt(max(val) if val else None)
    return (f"{status['status']} at {where}: train/acc {fmt(last.get('train/acc'))}, "
            f"val/acc {fmt(last.get('val/acc'))} (best {best}); run folder {run_dir}")


# ---------------------------------------------------------------------------- hp.json


HP_KEYS = (
    "run_name", "net", "init_std", "width", "activation", "loss", "loss_scale", "loss_scale_with_init", "lr",
    "dataset", "label_noise", "label_noise_mode", "train_subset", "batch_size", "max_epochs", "seed",
    "depth", "bias", "init_scale", "init_rule", "optimizer", "momentum", "weight_decay",
)
"""The canonical hyperparameters every run carries, however it was launched: ``hp.json`` in the run
folder and the ``hp`` block of its W&B config. Dashboards and reports group on these."""


def _get(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def canonical_hp(config: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`HP_KEYS` of a run from its full nested config (``config.yaml``'s content).

    ``net`` is the class name of ``model.net``; ``init_std`` None means Glorot init; ``seed`` is
    ``seed_everything``. Keys the config lacks are None.
    """
    net = _get(config, "model.net")
    net_args = net.get("init_args", {}) if isinstance(net, Mapping) else {}
    class_path = net.get("class_path") if isinstance(net, Mapping) else None
    seed = config.get("seed_everything")
    return {
        "run_name": _get(config, "run.name"),
        "net": str(class_path).rsplit(".", 1)[-1] if class_path else None,
        "init_std": net_args.get("init_std"),
        "width": net_args.get("width"),
        "activation": net_args.get("activation"),
        "loss": _get(config, "model.loss"),
        "loss_scale": _get(config, "model.loss_scale"),
        "loss_scale_with_init": _get(config, "model.loss_scale_with_init"),
        "lr": _get(config, "model.lr"),
        "dataset": _get(config, "data.dataset"),
        "label_noise": _get(config, "data.label_noise"),
        "label_noise_mode": _get(config, "data.label_noise_mode"),
        "train_subset": _get(config, "data.train_subset"),
        "batch_size": _get(config, "data.batch_size"),
        "max_epochs": _get(config, "trainer.max_epochs"),
        "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        "depth": net_args.get("depth"),
        "bias": net_args.get("bias"),
        "init_scale": net_args.get("init_scale"),
        "init_rule": net_args.get("init_rule"),
        "optimizer": _get(config, "model.optimizer"),
        "momentum": _get(config, "model.momentum"),
        "weight_decay": _get(config, "model.weight_decay"),
    }


def write_hp(run_dir: Path, hp: Mapping[str, Any]) -> None:
    atomic_write_json(run_dir / HP, dict(hp))


def read_hp(run_dir: Path) -> dict[str, Any] | None:
    """``hp.json`` of a run; None when absent (runs of older versions), :class:`RunDirError` if corrupt."""
    path = run_dir / HP
    if not path.is_file():
        return None
    hp = read_json(path, "hp.json", "delete it: the next fit of this run rewrites it")
    if not isinstance(hp, dict):
        raise RunDirError(f"{path}: expected a JSON object of hyperparameters, got {type(hp).__name__}")
    return hp


# ---------------------------------------------------------------------------- manifest.json


def write_manifest(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_json(path, data)


def read_manifest(path: Path) -> dict[str, Any]:
    """A local sweep's manifest ``{"runs": {run_id: {"status": ..., ...}}, ...}``, checked.

    :class:`RunDirError` naming the file when it is not JSON, not that shape, or an entry has no
    valid ``status``.
    """
    fix = "move it away to start the sweep afresh"
    data = read_json(path, "sweep manifest", fix)
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, dict):
        raise RunDirError(f"{path}: not a sweep manifest (expected an object with a 'runs' object); {fix}")
    for run_id, entry in runs.items():
        if not isinstance(entry, dict) or entry.get("status") not in (*EFFECTIVE_STATUSES, "pending"):
            raise RunDirError(f"{path}: run {run_id!r} has no valid status (allowed: pending, "
                              f"{', '.join(EFFECTIVE_STATUSES)}); {fix}")
    return data


# ---------------------------------------------------------------------------- locks


class LockedError(RunDirError):
    """The folder is owned by another live process."""


class FolderLock:
    """An exclusive lock on a folder, held by this process until :meth:`release` (or its death).

    ``fcntl.flock`` on ``<folder>/.lock``: the kernel drops the lock when the holder dies, however it
    dies, so a stale lock of a killed process is taken over by the next process without any guess
    about pids. The file (never deleted: deleting would race with the next locker) records the holder's
    pid, host, start time and command line, which :class:`LockedError` quotes.

    Args:
        folder: The run or sweep folder (created if missing).
        what: How the message names the folder, e.g. ``"run folder runs/q/abc"``.
    """

    def __init__(self, folder: Path, what: str) -> None:
        self.path = folder / LOCK
        self.what = what
        self._fh: IO[str] | None = None

    def acquire(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            raise LockedError(in_use_message(self.what, self._describe(holder))) from None
        fh.seek(0)
        fh.truncate()
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now(), "argv": sys.argv}
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        self._fh = fh
        return self

    @staticmethod
    def _describe(holder: str) -> str:
        with contextlib.suppress(ValueError, TypeError):
            rec = json.loads(holder)
            return f"pid {rec['pid']} on {rec['host']} since {rec['since']}: {' '.join(rec.get('argv', []))}"
        return "holder unknown"

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def in_use_message(what: str, holder: str) -> str:
    """The message of :class:`LockedError`: ``what`` is held by ``holder`` (see :func:`lock_holder`)."""
    return (f"the {what} is in use by another process ({holder}); wait for it to finish or stop it, "
            "then run this again")


def lock_holder(folder: Path) -> str | None:
    """Who holds the :class:`FolderLock` of ``folder`` ("pid ... on ... since ...: argv"), or None when it
    is free; reads only (no lock file is created, none is changed)."""
    path = folder / LOCK
    try:
        fh = path.open("r")
    except OSError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return FolderLock._describe(fh.read().strip())
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


@contextlib.contextmanager
def locked(folder: Path, what: str) -> Iterator[FolderLock]:
    """``with locked(run_dir, "run folder ..."):`` hold :class:`FolderLock` for the block."""
    with FolderLock(folder, what) as lock:
        yield lock
