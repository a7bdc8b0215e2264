"""How a sweep's run ended, read from its run folder, exit code and output: finished, diverged, failed or
interrupted, with the reason (the manifest records it)."""

from __future__ import annotations

from pathlib import Path

from lightning_mem import metric_keys, rundir
from lightning_mem.rundir import RunDirError


def run_status(run_dir: Path, returncode: int, metrics: dict[str, float | None]) -> tuple[str, str | None]:
    """(status, reason): ``diverged`` if the run's ``status.json`` says so (the CLI's ``RunStatus``) or
    its last train loss is not finite; else finished / failed by exit code."""
    record = rundir.read_status(run_dir) or {}
    reason = record.get("reason")
    if record.get("status") == rundir.DIVERGED:
        return rundir.DIVERGED, reason
    if returncode == 0 and metric_keys.TRAIN_LOSS in metrics and metrics[metric_keys.TRAIN_LOSS] is None:
        return rundir.DIVERGED, "last train/loss is not finite"
    return (rundir.FINISHED, None) if returncode == 0 else (rundir.FAILED, reason)


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
    status, reason = str(record.get("status", rundir.FAILED)), record.get("reason")
    if interrupted:
        status = rundir.INTERRUPTED
    elif status not in rundir.DONE:
        status, reason = rundir.FAILED, reason or error_line(output_log)
    if broken and status == rundir.FINISHED:
        status, reason = rundir.FAILED, broken
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
