"""The package's exceptions and exit codes, in one place (torch-free).

Every command exits with one of :data:`EXIT_CODES`. Bad input raises a subclass of ``ValueError`` whose
message names the file, key or value and what is allowed; the commands turn it into exit 2.
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1  # an unexpected error (a traceback): a bug to report
EXIT_BAD_INPUT = 2  # bad config, option or file, found before anything was changed; the message names it
EXIT_DIVERGED = 3  # a non-finite loss or weight stopped the fit; status.json says diverged
EXIT_SIGTERM = 143  # 128 + SIGTERM, as a shell reports it; status.json says interrupted
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout closed it early (`| head`)
EXIT_CODES = {
    EXIT_OK: "done", EXIT_ERROR: "unexpected error", EXIT_BAD_INPUT: "bad input (named; nothing changed)",
    EXIT_DIVERGED: "a run diverged", EXIT_SIGTERM: "stopped by SIGTERM (resume with --ckpt_path last)",
    EXIT_BROKEN_PIPE: "the reader closed stdout early",
}


class RunDirError(ValueError):
    """Bad input about the run folder: a corrupt file, a bad name, a folder in use."""


class LockedError(RunDirError):
    """The folder is owned by another live process."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, not Lightning's, or of another model."""


class PackError(ValueError):
    """Members that cannot be trained as one ensemble; the message names the key and the fix."""


class UsageError(ValueError):
    """Bad options of a tool's command line (exit 2)."""


class SearchError(ValueError):
    """A parameter of a sweep file that this search cannot use; the message names it."""


class DivergedError(RuntimeError):
    """Training produced a non-finite loss or weight.

    Attributes:
        step: The optimizer step (``global_step`` before it) whose loss was first non-finite, or the
            step at which a non-finite weight was found.
        epoch: The epoch of that step.
        reason: What was non-finite, e.g. ``"the training loss is nan"``.
    """

    def __init__(self, message: str, step: int, epoch: int, reason: str) -> None:
        super().__init__(message)
        self.step, self.epoch, self.reason = step, epoch, reason


class StopAfterParsing(Exception):
    """Raised from a LightningCLI hook to stop the CLI once it has parsed (and checked, or instantiated)
    what was asked for, before a Trainer is built; ``cli`` is the CLI, for the caller to read."""

    def __init__(self, cli: Any = None) -> None:
        super().__init__()
        self.cli = cli
