"""Running the fit CLI: :func:`build_cli` (the CLI with this package's defaults), :func:`check_args` (a
command line checked without building anything, for sweeps) and :func:`run` (``lightning-mem
fit|validate|test``: exit codes, SIGTERM before and after Lightning takes over)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from jsonargparse import Namespace, set_parsing_settings
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_mem import safeyaml
from lightning_mem.cli import argchecks, packaged
from lightning_mem.cli.fit import CONFIG_ERRORS, ConfigToRun, MemCLI, _error_text
from lightning_mem.cli.runfolder import RUN_ID_ENV
from lightning_mem.data.datamodule import ImageClassificationData
from lightning_mem.errors import EXIT_DIVERGED, EXIT_SIGTERM, StopAfterParsing
from lightning_mem.training.guard import DivergedError
from lightning_mem.training.module import MemorizationModule


def build_cli(
    args: list[str] | None = None, run: bool = True, cli_class: type[MemCLI] | None = None
) -> MemCLI:
    """The configured CLI; ``run=False`` only parses and instantiates (for notebooks and tests);
    ``cli_class``: a subclass of :class:`MemCLI` built with the same settings (the ensemble's members)."""
    # omegaconf+ resolves ${...} on the whole config, whose root holds the subcommand (fit.model.lr); this
    # makes ${model.lr} in a config file mean the key of the file's own tree, as users write it.
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    safeyaml.install_jsonargparse_loader("omegaconf+")  # YAML values on the command line are bounded too
    args = _packaged_configs(args)
    return (cli_class or MemCLI)(
        MemorizationModule,
        ImageClassificationData,
        seed_everything_default=0,
        save_config_callback=ConfigToRun,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"devices": 1},  # one device unless asked: `auto` would take every GPU and DDP
        parser_kwargs={"parser_mode": "omegaconf+"},  # ${key} resolved once, after every --config is merged
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def _packaged_configs(args: list[str] | None) -> list[str] | None:
    """``--config NAME`` of a packaged config (``quickstart``, ``paper/base``) as that file's path when no
    such path exists (:mod:`lightning_mem.cli.packaged`); with ``args`` None, ``sys.argv`` is rewritten in
    place (LightningCLI reads it itself)."""
    if args is not None:
        return packaged.resolve_config_args(args)
    resolved = packaged.resolve_config_args(sys.argv[1:])
    if resolved != sys.argv[1:]:
        sys.argv[1:] = resolved
    return None


class _ParseOnlyCLI(MemCLI):
    """The CLI up to its checks of the parsed config (values, the net's size): nothing is built or written."""

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        parsed = self.config.get("subcommand")
        config = self.config[parsed] if parsed else self.config
        net = config.model.get("net") if config.get("model") else None
        too_big = argchecks.model_size_error(net.as_dict()) if isinstance(net, Namespace) else None
        if too_big:
            self.parser.error(too_big)
        # The classes' own checks: model (its net on the meta device: no memory), data (no data read) and
        # callbacks; loggers are left out (some create folders when built), the Trainer is not built.
        import torch

        trial = self.config.clone()
        (trial[parsed] if parsed else trial).trainer.logger = None
        try:
            with torch.device("meta"):
                self.parser.instantiate_classes(trial)
        except CONFIG_ERRORS as err:
            self.parser.error(_error_text(err))
        raise StopAfterParsing


def check_args(argv: Sequence[str]) -> str | None:
    """Whether ``argv`` (``["fit", "--config", ...]``) is a command line the CLI accepts: None if so, else the
    error message it would print (a key it does not know, a value of the wrong type or out of range, a
    config file that is not a mapping, a net too large for this machine).

    Only parses: nothing is instantiated, no data is read, nothing is written. Values that only a class's
    own ``__init__`` or the data refuse (an unknown dataset folder, a batch larger than the split) are not
    seen here; the run itself reports them (exit 2). Used by ``lightning-mem sweep local`` before launch.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            build_cli(list(argv), cli_class=_ParseOnlyCLI)
        except StopAfterParsing:
            return None
        except SystemExit as exc:
            if exc.code in (0, None):
                return None
    text = err.getvalue()
    at = text.rfind("error:")
    return (text[at + len("error:"):] if at >= 0 else text).strip() or "the command line does not parse"


def _log_to_stderr() -> None:
    """Our INFO lines (the fit summary) on stderr when nothing else configured logging."""
    ours = logging.getLogger("lightning_mem")
    if not logging.getLogger().handlers and not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)


def _sigterm_before_lightning(signum: int, frame: Any) -> None:
    """SIGTERM while Lightning's own handler is not installed (parsing, building, setup and ``on_fit_start``
    hooks, after the fit): stop here as Lightning would, with :class:`SIGTERMException` (exit 143, status
    ``interrupted``). Once Lightning installs its handler it calls this one too, which then leaves the stop to
    Lightning's flag (checked after the current batch)."""
    if signal.getsignal(signal.SIGTERM) is _sigterm_before_lightning:
        raise SIGTERMException()


@contextlib.contextmanager
def _sigterm_handled() -> Iterator[None]:
    """:func:`_sigterm_before_lightning` for the length of a command (main thread only), then the old one."""
    try:
        previous = signal.signal(signal.SIGTERM, _sigterm_before_lightning)
    except ValueError:  # not the main thread (a notebook's worker): Python's default stays
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: Sequence[str] | None) -> None:
    """``lightning-mem fit|validate|test ...``; exits 3 when diverged, 143 on SIGTERM (at any moment)."""
    _log_to_stderr()
    own_id = RUN_ID_ENV not in os.environ  # exported for DDP children during this call only
    try:
        with _sigterm_handled():
            build_cli(None if args is None else list(args))
    except DivergedError:  # logged with the run's summary line
        raise SystemExit(EXIT_DIVERGED) from None
    except SIGTERMException:
        raise SystemExit(EXIT_SIGTERM) from None
    finally:
        if own_id:  # a second run in this process (a notebook) starts a new run
            os.environ.pop(RUN_ID_ENV, None)
