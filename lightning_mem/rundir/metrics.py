"""``metrics.csv``: the one reader (a torn last row is left out), atomic header rewrites, and the carry-over
of a resumed run's rows."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_mem import metric_keys
from lightning_mem.errors import RunDirError
from lightning_mem.rundir.files import atomic_write_text
from lightning_mem.rundir.layout import METRICS, METRICS_RESUME, read_run_file
from lightning_mem.rundir.status import DIVERGED, read_status

log = logging.getLogger(__name__)


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
    whole = read_run_file(path)
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
    text = _complete_lines(read_run_file(path)).decode("utf-8", errors="replace")
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
    val = [float(v) for v in table.series(metric_keys.VAL_ACC)[2] if math.isfinite(v)]

    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    where = f"epoch {status.get('epoch', '?')}, step {status.get('global_step', '?')}"
    if status["status"] == DIVERGED:
        where = f"step {status.get('diverged_step', '?')} (epoch {status.get('epoch', '?')})"
    best = fmt(max(val) if val else None)
    return (f"{status['status']} at {where}: train/acc {fmt(last.get('train/acc'))}, "
            f"val/acc {fmt(last.get('val/acc'))} (best {best}); run folder {run_dir}")


# ---------------------------------------------------------------------------- hp.json
