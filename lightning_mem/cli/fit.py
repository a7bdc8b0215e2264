"""Command line: ``lightning-mem fit|validate|test --config ...``, a LightningCLI on its public hooks.

Only this module reads the command line and the environment. Every run writes into its own folder
``<run.root>/<run.name>/<run.id>/`` (layout: :mod:`lightning_mem.rundir`), which the run claims with an
exclusive lock for its whole length; a folder that already holds a run is only reused to resume it
(``fit --ckpt_path last`` or a path under its ``checkpoints/``). The id is made of the start time, the
process id and a random suffix unless given.

Exit codes: 0 finished; 1 unexpected error; 2 bad config or input (before training, nothing changed);
3 diverged (:data:`EXIT_DIVERGED`; last good checkpoint kept); 143 stopped by SIGTERM
(:data:`EXIT_SIGTERM`; resume with ``--ckpt_path last``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from omegaconf.errors import OmegaConfBaseException

from lightning_mem import rundir
from lightning_mem.cli import argchecks, defaults
from lightning_mem.cli import faults as machinefaults
from lightning_mem.cli.argv import option_values
from lightning_mem.cli.runfolder import RunFolder, global_rank
from lightning_mem.data.datasets import DATASETS
from lightning_mem.errors import EXIT_BAD_INPUT
from lightning_mem.training.checkpoints import (
    CheckpointError,
    CheckpointPublisher,
    default_overrides,
    install_checkpoint_io,
    load_checkpoint,
    state_differences,
)
from lightning_mem.training.guard import DivergedError, RunStatus
from lightning_mem.training.loggers import configure_loggers, setup_wandb_run, wandb_run_config
from lightning_mem.training.precision import precision_risk, reduced_precision, tf32_policy

log = logging.getLogger(__name__)


INTERPOLATION_HELP = (
    "supported: ${key} refers to a key of the config after every --config file is merged, written in a "
    "config file as ${model.lr} and on the command line with the subcommand, e.g. "
    "--model.loss_scale '${fit.model.lr}'"
)


# Errors of building the configured classes that a config causes (not bugs): exit 2 with their message.
CONFIG_ERRORS = (ValueError, TypeError, OverflowError, ZeroDivisionError, FileNotFoundError, MemoryError,
                 MisconfigurationException)


def _error_text(err: BaseException) -> str:
    """An exception as one message: allocation failures say how much was asked for."""
    text = str(err).strip() or type(err).__name__
    asked = re.search(r"tried to allocate (\d+) bytes", text)
    if asked:
        return (f"out of memory: {argchecks.format_bytes(int(asked.group(1)))} asked for at once ("
                f"{text.splitlines()[0][:200]}); lower --model.net.width or --data.batch_size")
    if isinstance(err, (TypeError, OverflowError, ZeroDivisionError)):
        return f"{type(err).__name__}: {text}"
    return text


def _num_classes(dataset: str) -> int:
    return DATASETS[dataset].num_classes if dataset in DATASETS else 10


def _input_shape(dataset: str) -> tuple[int, ...]:
    return tuple(DATASETS[dataset].input_shape) if dataset in DATASETS else (3, 32, 32)


def _data_seed(seed: Any) -> int:
    # seed_everything may be a bool in a user's config; the data then uses seed 0.
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else 0


def _scan(argv: Sequence[str]) -> tuple[str | None, str | None]:
    """(subcommand, --ckpt_path value) from a raw argument list, before parsing."""
    sub = next((a for a in argv if a in MemCLI.subcommands()), None)
    found = [value for _, value in option_values(argv, ("--ckpt_path",))]
    return sub, found[-1] if found else None  # the last one counts, as for the parser


class ConfigToRun(SaveConfigCallback):
    """Saves the full nested config as ``config.yaml`` and the canonical hyperparameters as ``hp.json``
    in the run folder, and gives both to every W&B run (with its metric definitions)."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        config = self.config.as_dict()
        hp = rundir.canonical_hp(config)
        run = config["run"]  # resolved by the CLI; not trainer.log_dir, a collective call (rank 0 only here)
        rundir.write_hp(rundir.run_path(run["root"], run["name"], run["id"]), hp)
        nested = wandb_run_config(config)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                setup_wandb_run(logger.experiment, nested, hp)


class MemCLI(RunFolder, LightningCLI):
    """LightningCLI with the data→model links, the run folder, checkpoint checks and the precision policy.

    Public hooks only: extra arguments in :meth:`add_arguments_to_parser`, the checkpoint's config as
    parser defaults in :meth:`parse_arguments`, the run folder in :meth:`before_instantiate_classes`, the
    default callbacks through :meth:`instantiate_trainer`'s ``callbacks`` argument, and the run folder
    claimed in ``before_fit``/``before_validate``/``before_test``. Errors go through ``self.parser.error``
    (exit 2).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.subcommand: str | None = None
        self.run_dir: Path | None = None
        self.checkpoint: dict[str, Any] | None = None  # the --ckpt_path checkpoint, loaded and checked
        self.resume_ckpt: Path | None = None  # set when a fit resumes into its own run folder
        self.start_over = False  # `--ckpt_path last` of a run stopped before its first checkpoint
        self._argv: list[str] = []
        self.run_lock: rundir.FolderLock | None = None
        self._started = False
        self._held = contextlib.ExitStack()  # the run folder's lock and the precision settings
        try:
            super().__init__(*args, **kwargs)
        except DivergedError as err:
            log.error("%s", err)  # status.json in the run folder says "diverged"
            raise
        except SIGTERMException:
            log.error("Stopped by SIGTERM; resume with `lightning-mem fit ... --ckpt_path last`")
            raise
        except BaseException as err:
            if self._machine_fault(err):
                raise SystemExit(2) from None
            if not self._is_usage_error(err):
                raise
            sys.stderr.write(f"error: {_error_text(err)}\n")
            raise SystemExit(EXIT_BAD_INPUT) from None
        finally:
            with contextlib.suppress(OSError):  # a run folder removed under the fit
                self._held.close()
            if self._started and self.subcommand == "fit" and self.run_dir and global_rank() == 0 \
                    and self.run_dir.is_dir():
                log.info("fit %s", rundir.summary_line(self.run_dir))

    def _machine_fault(self, err: BaseException) -> bool:
        """A full disk, the file-size limit or the run folder removed under the fit: the message of
        :func:`lightning_mem.cli.faults.message` on stderr (then exit 2)."""
        run_dir = getattr(self, "run_dir", None)
        cause = err if isinstance(err, OSError) else err.__cause__ or err.__context__
        if not machinefaults.is_fault(cause or err, run_dir) or not isinstance(cause, OSError):
            return False
        sys.stderr.write(f"error: {machinefaults.message(cause, run_dir)}\n")
        return True

    def _is_usage_error(self, err: BaseException) -> bool:
        """An error a config or the machine's size caused, raised by the fit before its first training batch
        (Lightning checks some trainer options only there), or running out of memory at any point."""
        import torch

        if isinstance(err, torch.OutOfMemoryError) or (isinstance(err, (RuntimeError, MemoryError))
                                                       and "allocate" in str(err)):
            return True
        trainer = getattr(self, "trainer", None)
        status = next((c for c in getattr(trainer, "callbacks", []) if isinstance(c, RunStatus)), None)
        return isinstance(err, CONFIG_ERRORS) and status is not None and status.batches_started == 0

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit, validate and test (``predict`` is not offered: the module has no prediction output)."""
        return {k: v for k, v in LightningCLI.subcommands().items() if k != "predict"}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run.root", type=str, default="runs", help="Root folder of all runs.")
        parser.add_argument(
            "--run.name", type=str | None, default=None,
            help="Experiment name: a folder under run.root and the W&B group "
            "(default: the last config's file name).",
        )
        parser.add_argument(
            "--run.id", type=str | None, default=None,
            help="Run folder under run.root/run.name (default: a new unique id; "
            "taken from --ckpt_path on resume).",
        )
        parser.add_argument(
            "--precision.tf32", type=bool, default=False,
            help="Allow TF32 for float32 matmuls and cuDNN convolutions on CUDA (default: full FP32, as the "
            "paper; TF32 changes sin/sigmoid/tanh(W1·x) by O(1) at σ ≥ 1).",
        )
        parser.add_argument(
            "--precision.accept_large_sigma_error", type=bool, default=False,
            help="Run a sin/sigmoid/tanh net at init_std ≥ 1 under TF32 or 16-bit precision anyway "
            "(refused otherwise; see README 'Precision').",
        )
        defaults.add_switches(parser)
        # Shared by data and model: stated once, by the dataset's row in the table.
        parser.link_arguments("data.dataset", "model.net.init_args.num_classes", compute_fn=_num_classes)
        parser.link_arguments("data.dataset", "model.net.init_args.input_shape", compute_fn=_input_shape)
        parser.link_arguments("seed_everything", "data.seed", compute_fn=_data_seed)

    # ------------------------------------------------------------------ parsing and the checkpoint

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, with a ``--ckpt_path`` checkpoint loaded first: for ``validate``/``test`` its model and
        data config become the defaults (``--ckpt_path`` alone rebuilds the network); a config whose model
        differs from the checkpoint's is refused, naming what differs."""
        argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, (dict, Namespace)) else []
        self._argv = argv
        try:
            argchecks.check_config_files(argv)
        except ValueError as err:
            parser.error(str(err))
        sub, ckpt = _scan(argv)
        if ckpt is not None and not ckpt.strip():
            parser.error(f"--ckpt_path {ckpt!r}: an empty path; give a .ckpt file written by `lightning-mem "
                         "fit`, or `last` to resume the newest run of this run.name")
        if sub is not None and ckpt not in (None, "last"):
            try:
                self.checkpoint = load_checkpoint(Path(str(ckpt)), allowed=argchecks.class_paths(argv))
            except CheckpointError as err:
                parser.error(str(err))
            if sub != "fit":  # a fit keeps its own config: it must match, not follow, the checkpoint
                parser.set_defaults(default_overrides(self.checkpoint, sub))
        elif sub in ("validate", "test") and ckpt == "last":
            parser.error("--ckpt_path last resumes a fit; validate and test take a checkpoint file, e.g. "
                         "--ckpt_path runs/<name>/<id>/checkpoints/last.ckpt")
        try:
            super().parse_arguments(parser, args)
        except OmegaConfBaseException as err:
            parser.error(f"{type(err).__name__}: {str(err).splitlines()[0]}; {INTERPOLATION_HELP}")
        parsed = self.config.get("subcommand")
        config = self.config[parsed] if parsed is not None else self.config
        problems = argchecks.check_values(config.as_dict())
        if problems:
            parser.error("; ".join(problems))
        if self.checkpoint is not None and parsed is not None:
            self._check_model_config(self.config[parsed], str(ckpt))

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """Lightning's parser (one per subcommand too), whose messages add what jsonargparse's leave out: the
        config file that holds a refused key, and that nan/inf are refused where a finite number is wanted."""
        parser = super().init_parser(**kwargs)
        original = parser.error

        def error(message: str, *args: Any, **kwargs: Any) -> Any:
            argv = self._argv
            refused = re.search(r"does not accept option '([^']+)'", message)
            if refused:
                files = argchecks.problem_files(argv, refused.group(1))
                where = f" (set in {', '.join(files)})" if files else ""
                message += f"{where}; `lightning-mem {_scan(argv)[0] or 'fit'} --help` lists the options"
            if re.search(r"Got value: [-+]?(nan|inf)\b", message, re.IGNORECASE):
                message += "\n  nan and inf are refused: give a finite number"
            return original(message, *args, **kwargs)

        parser.error = error  # type: ignore[method-assign]
        return parser

    # ------------------------------------------------------------------ the run folder

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        try:
            run_dir = self._resolve_run_dir(config)
            if self.subcommand is not None:  # run=False (notebooks) writes nothing
                rundir.check_writable(run_dir, f"the run folder {run_dir} (run.root={config.run.root!r}, "
                                      f"run.name={config.run.name!r}, run.id={config.run.id!r})")
                self._check_precision(config)
            net = config.model.get("net") if config.get("model") else None
            too_big = argchecks.model_size_error(net.as_dict()) if isinstance(net, Namespace) else None
            if too_big:
                raise ValueError(too_big)
        except (ValueError, CheckpointError) as err:
            self.parser.error(str(err))
        resume = None
        if self.resume_ckpt is not None and self.checkpoint is not None:
            resume = (int(self.checkpoint["global_step"]), int(self.checkpoint.get("epoch", 0)))
        configure_loggers(config.trainer, config.run, run_dir, resume)
        self.run_dir = run_dir
        if self.subcommand is not None:
            self._held.enter_context(tf32_policy(bool(config.precision.tf32)))

    @staticmethod
    def _check_precision(config: Namespace) -> None:
        """Refuse TF32/16-bit precision for a sin/sigmoid/tanh net at σ ≥ 1 unless accepted (then warn)."""
        reduced = reduced_precision(bool(config.precision.tf32), config.trainer.get("precision"))
        net_args = config.model.net.get("init_args") or Namespace()
        risk = precision_risk(reduced, net_args.get("activation"), net_args.get("init_std"))
        if risk and not config.precision.accept_large_sigma_error:
            raise ValueError(f"{risk}. Train in FP32 (the default: drop the option), or pass "
                             "--precision.accept_large_sigma_error true to run it anyway")
        if risk:
            log.warning("PRECISION WARNING: %s. Running anyway (--precision.accept_large_sigma_error).", risk)

    # ------------------------------------------------------------------ instantiation

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except CONFIG_ERRORS as err:
            # Bad values found by the classes' (and the Trainer's) own checks: a message, not a traceback.
            self.parser.error(self._with_trainer_value(_error_text(err)))

    def _with_trainer_value(self, text: str) -> str:
        """Lightning's messages name a Trainer option in backticks (`devices`) but not always its value:
        prefix ``trainer.<option>=<value>: `` when the option is one and its value is not in the text."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.get("trainer")
        for name in re.findall(r"`(?:Trainer\()?(\w+)", text):
            if isinstance(trainer, Namespace) and name in trainer and str(trainer[name]) not in text:
                return f"trainer.{name}={trainer[name]!r}: {text}"
        return text

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The configured Trainer plus our default callbacks (unless configured explicitly): those of
        :mod:`lightning_mem.cli.defaults`, a :class:`RunStatus` writing ``status.json`` and a
        ``ModelCheckpoint`` at every epoch end (newest kept) and ``last.ckpt``, both in the run folder."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer_config = config.get("trainer") or {}
        configured = trainer_config.get("callbacks") or []
        callbacks = list(configured) if isinstance(configured, list) else [configured]
        run = (self.config[self.subcommand] if self.subcommand else self.config).get("run")
        callbacks = defaults.with_defaults(callbacks, run, self.subcommand,  # monitor, guard, progress
                                           trainer_config.get("enable_progress_bar") is not False)
        if not any(isinstance(c, RunStatus) for c in callbacks):
            callbacks.append(RunStatus(dirpath=str(self.run_dir)))
        if not any(isinstance(c, CheckpointPublisher) for c in callbacks):
            callbacks.append(CheckpointPublisher())
        if trainer_config.get("enable_checkpointing") is not False and not any(
            isinstance(c, ModelCheckpoint) for c in callbacks
        ):
            callbacks.append(
                ModelCheckpoint(dirpath=Path(str(self.run_dir), rundir.CHECKPOINTS), filename="epoch{epoch}",
                                auto_insert_metric_name=False, save_last=True, every_n_epochs=1)
            )
        trainer = super().instantiate_trainer(**{**kwargs, "callbacks": callbacks})
        install_checkpoint_io(trainer)  # whole checkpoint files only (see lightning_mem.training.checkpoints)
        return trainer

    # ------------------------------------------------------------------ before each subcommand

    def _before_run(self, stage: str) -> None:
        """Checks that need the instantiated classes, then the claim of the run folder; nothing is
        written before these pass."""
        try:
            self.datamodule.prepare_data()
            self.datamodule.setup(stage)
        except (*CONFIG_ERRORS, RuntimeError) as err:
            self.parser.error(_error_text(err))
        if stage == "fit":
            self._check_val_interval()
        check_trainer = getattr(self.model, "check_trainer", None)  # MemorizationModule(steps_per_call > 1)
        if stage == "fit" and callable(check_trainer):
            try:
                check_trainer(self.trainer)
            except ValueError as err:
                self.parser.error(str(err))
        if self.checkpoint is not None:
            differences = state_differences(self.checkpoint, self.model)
            if differences:
                self.parser.error(f"--ckpt_path does not fit the model the config builds: "
                                  f"{'; '.join(differences[:3])}")
        self._claim_run_dir()
        self._started = True

    def _check_val_interval(self) -> None:
        """An integer ``val_check_interval`` beyond the epoch's batches: Lightning refuses it only inside the
        fit, after the run folder is written."""
        trainer, data = self.trainer, self.datamodule
        interval = trainer.val_check_interval
        if not isinstance(interval, int) or trainer.check_val_every_n_epoch is None \
                or not hasattr(data, "train_x") or not isinstance(getattr(data, "batch_size", None), int):
            return
        n = argchecks.batches_per_epoch(len(data.train_x), data.batch_size, trainer.world_size,
                                        trainer.limit_train_batches)
        if interval > n:
            config = self.config[self.subcommand] if self.subcommand else self.config
            given = config.trainer.val_check_interval
            self.parser.error(f"trainer.val_check_interval={given} is more than the {n} training batches "
                              "of an epoch; give at most that, a fraction of an epoch such as 0.5, or "
                              "--trainer.check_val_every_n_epoch null to validate every so many batches")

    def before_fit(self) -> None:
        self._before_run("fit")

    def before_validate(self) -> None:
        self._before_run("validate")

    def before_test(self) -> None:
        self._before_run("test")
