"""Command line: ``lightning-mem fit|validate|test --config ...`` plus ``sweep`` and ``report``.

Only this module reads the command line and the environment. Every run writes into its own
directory ``<run.root>/<run.name>/<run.id>/``: ``metrics.csv`` and ``hparams.yaml`` (CSV logger),
``config.yaml`` (the full nested config), ``checkpoints/`` (every epoch and ``last.ckpt``) and
``wandb/`` when the W&B logger is configured, and ``status.json`` (how the fit ended, see
:class:`lightning_mem.guard.RunStatus`). Two runs never share a directory: the id is made of the
start time, the process id and a random suffix unless given, and a folder that already holds a run
is only reused to resume it (``fit --ckpt_path last`` or a path under its ``checkpoints/``).

Exit codes: 0 finished; 1 unexpected error; 2 bad config or input (before training);
3 diverged (:data:`EXIT_DIVERGED`; last good checkpoint kept); 143 stopped by SIGTERM
(:data:`EXIT_SIGTERM`; resume with ``--ckpt_path last``).
"""

from __future__ import annotations

import csv
import importlib
import logging
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from lightning_mem.data import DATASETS, ImageClassificationData
from lightning_mem.guard import DivergedError, DivergenceGuard, RunStatus
from lightning_mem.module import MemorizationModule

log = logging.getLogger(__name__)

RUN_ID_ENV = "LIGHTNING_MEM_RUN_ID"
EXIT_DIVERGED = 3  # a non-finite loss or weight stopped the fit; status.json says "diverged"
EXIT_SIGTERM = 143  # 128 + SIGTERM, as a shell reports it; status.json says "interrupted"
METRICS_FILE = "metrics.csv"
# Subcommands that are not Lightning's: name -> module with ``main(argv)``.
TOOLS = {"sweep": "lightning_mem.sweep", "report": "lightning_mem.report", "theorem1": "lightning_mem.theory"}
LOGGER_CLASSES = {
    "CSVLogger": "lightning.pytorch.loggers.CSVLogger",
    "WandbLogger": "lightning.pytorch.loggers.WandbLogger",
    "TensorBoardLogger": "lightning.pytorch.loggers.TensorBoardLogger",
}


def new_run_id() -> str:
    """A run id unique across processes: start time, pid and a random suffix."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(2)}"


def _num_classes(dataset: str) -> int:
    return DATASETS[dataset].num_classes if dataset in DATASETS else 10


def _input_shape(dataset: str) -> tuple[int, ...]:
    return tuple(DATASETS[dataset].input_shape) if dataset in DATASETS else (3, 32, 32)


def _global_rank() -> int:
    """This process's global rank as Lightning reads it from the environment (0 without DDP)."""
    return int(getattr(rank_zero_only, "rank", 0))


def _data_seed(seed: Any) -> int:
    # seed_everything may be a bool in a user's config; the data then uses seed 0.
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else 0


class ConfigToRun(SaveConfigCallback):
    """Saves the full nested config as ``config.yaml`` in the run directory and pushes it into
    the config of every W&B run, so dashboards can filter on ``model.*`` and ``data.*``."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        config = self.config.clone()
        config.pop("run_dir", None)
        flat = {k: v for k, v in config.as_dict().items() if k not in ("config", "trainer")}
        flat["trainer"] = {k: v for k, v in config.as_dict().get("trainer", {}).items() if k != "callbacks"}
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(flat, allow_val_change=True)


class MemCLI(LightningCLI):
    """LightningCLI with the data→model links and the per-run directory layout."""

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
        # Shared by data and model: stated once, by the dataset's row in the table.
        parser.link_arguments("data.dataset", "model.net.init_args.num_classes", compute_fn=_num_classes)
        parser.link_arguments("data.dataset", "model.net.init_args.input_shape", compute_fn=_input_shape)
        parser.link_arguments("seed_everything", "data.seed", compute_fn=_data_seed)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        try:
            run_dir = self._resolve_run_dir(config)
            if self.subcommand is not None:  # run=False (notebooks) writes nothing
                self._check_run_dir(config, run_dir)
        except ValueError as err:
            self._parser(self.subcommand).error(str(err))
        self._configure_loggers(config, run_dir)
        self.run_dir = run_dir

    def _resolve_run_dir(self, config: Namespace) -> Path:
        run = config.run
        if not run.name:
            configs = config.get("config") or []
            run.name = Path(str(configs[-1])).stem if configs else "default"
        ckpt = config.get("ckpt_path")
        if self.subcommand == "fit" and ckpt and not run.id:
            if ckpt == "last":
                candidates = sorted(
                    Path(run.root, run.name).glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime
                )
                if not candidates:
                    raise ValueError(
                        f"--ckpt_path last: no last.ckpt under {Path(run.root, run.name).resolve()}"
                        "/*/checkpoints; give --run.id of the run to resume or a checkpoint path"
                    )
                run.id = candidates[-1].parent.parent.name
            elif Path(ckpt).parent.name == "checkpoints":
                run_dir = Path(ckpt).parent.parent
                run.root, run.name, run.id = str(run_dir.parent.parent), run_dir.parent.name, run_dir.name
        if not run.id:
            # DDP re-launches this command once per rank: the first process chooses the id.
            run.id = os.environ.get("WANDB_RUN_ID") or os.environ.get(RUN_ID_ENV) or new_run_id()
        os.environ[RUN_ID_ENV] = run.id
        run_dir = Path(run.root, run.name, run.id)
        self.resume_ckpt: Path | None = None  # the checkpoint a fit resumes into run_dir from
        if self.subcommand == "fit" and ckpt:
            last = run_dir / "checkpoints" / "last.ckpt"
            path = last if ckpt == "last" else Path(ckpt)
            if not path.is_file():
                what = f"no {last}" if ckpt == "last" else "no such checkpoint file"
                raise ValueError(f"ckpt_path={ckpt!r}: {what}; give an existing .ckpt, or 'last' for a run "
                                 "that finished at least one epoch")
            if path.resolve().parent == (run_dir / "checkpoints").resolve():
                self.resume_ckpt = path
        return run_dir

    def _check_run_dir(self, config: Namespace, run_dir: Path) -> None:
        """Fail before training if the run folder cannot be written or already holds another run."""
        run = config.run
        ancestor = run_dir
        while not ancestor.exists() and ancestor != ancestor.parent:  # file/x does not exist: walk up
            ancestor = ancestor.parent
        where = f"the run folder {run_dir} (run.root={run.root!r}, run.name={run.name!r}, run.id={run.id!r})"
        if not ancestor.is_dir():
            raise ValueError(f"{where} cannot be created: {ancestor} is a file, not a directory; "
                             "set --run.root to a writable directory")
        try:
            with tempfile.TemporaryFile(dir=ancestor):
                pass
        except OSError as err:
            raise ValueError(f"{where} cannot be written: {ancestor}: {err.strerror or err}; "
                             "set --run.root to a writable directory") from err
        taken = [p.name for p in (run_dir / METRICS_FILE, run_dir / "checkpoints") if p.exists()]
        # A DDP rank > 0 re-runs this command to join the run that rank 0 started: no check there.
        if taken and self.resume_ckpt is None and _global_rank() == 0:
            raise ValueError(
                f"run.id={run.id!r}: {run_dir} already holds a run ({', '.join(taken)}); resume it with "
                "`fit --ckpt_path last` (or a checkpoint path under its checkpoints/), or leave --run.id "
                "unset for a new run"
            )

    def _configure_loggers(self, config: Namespace, run_dir: Path) -> None:
        """CSV logging always; every configured logger writes into ``run_dir``."""
        trainer = config.trainer
        loggers = trainer.logger
        if loggers is False:
            return
        if loggers is None or loggers is True:
            loggers = []
        elif not isinstance(loggers, list):
            loggers = [loggers]
        names = [str(lg.class_path).rsplit(".", 1)[-1] for lg in loggers]
        if "CSVLogger" not in names:
            loggers.insert(0, Namespace(class_path=LOGGER_CLASSES["CSVLogger"], init_args=Namespace()))
            names.insert(0, "CSVLogger")
        run = config.run
        for lg, name in zip(loggers, names, strict=True):
            args = lg.init_args if lg.get("init_args") is not None else Namespace()
            lg.init_args = args
            if name in ("CSVLogger", "TensorBoardLogger"):
                args.save_dir, args.name, args.version = run.root, run.name, run.id
            elif name == "WandbLogger":
                args.save_dir = str(run_dir)
                args.name = args.get("name") or f"{run.name}/{run.id}"
                args.group = args.get("group") or run.name
                args.id = args.get("id") or run.id
                args.resume = "allow"  # a resumed fit continues the same W&B run
                if not os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_MODE") is None:
                    args.offline = True  # no credentials: an offline run that `wandb sync` uploads later
                run_dir.mkdir(parents=True, exist_ok=True)
        # CSV first, so trainer.log_dir (config.yaml) and the checkpoints land in run_dir.
        order = sorted(range(len(loggers)), key=lambda i: names[i] != "CSVLogger")
        trainer.logger = [loggers[i] for i in order]

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, FileNotFoundError, MisconfigurationException) as err:
            # Bad values found by the classes' (and the Trainer's) own checks: a message, not a traceback.
            self._parser(self.subcommand).error(str(err))

    def _check_data(self) -> None:
        """Load the data before training, so missing or corrupt files fail with a message."""
        try:
            self.datamodule.prepare_data()
            self.datamodule.setup("fit")
        except (ValueError, FileNotFoundError, RuntimeError) as err:
            self._parser(self.subcommand).error(str(err))

    def before_fit(self) -> None:
        self._check_data()
        if self.resume_ckpt is not None:
            self._keep_metrics_on_resume(self.resume_ckpt)

    def _keep_metrics_on_resume(self, ckpt: Path) -> None:
        """Carry the rows up to the checkpoint's step into the resumed run's ``metrics.csv``.

        Lightning's CSV logger deletes an existing ``metrics.csv`` when it opens its folder. The file
        is first moved aside (an atomic rename), the logger opened, the rows up to the checkpoint's
        ``global_step`` written back, and only then the copy removed: a kill at any point leaves the
        rows in one of the two files, and the next resume takes them from there. Rows logged after
        the checkpoint are dropped; the resumed run logs those steps again.
        """
        loggers = [lg for lg in self.trainer.loggers if isinstance(lg, CSVLogger)]
        current = Path(self.run_dir, METRICS_FILE)
        kept = current.with_name("metrics.resume.csv")
        if not loggers or _global_rank() != 0:
            return
        if current.is_file():
            os.replace(current, kept)
        if not kept.is_file():
            return
        step = int(torch.load(ckpt, map_location="cpu", weights_only=False).get("global_step", 0))
        with kept.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= step]
        writer = loggers[0].experiment  # opening it would delete a metrics.csv; there is none now
        writer.metrics = rows + writer.metrics
        writer.save()
        kept.unlink()

    def before_validate(self) -> None:
        self._check_data()

    def before_test(self) -> None:
        self._check_data()

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        extra = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        callbacks = trainer_config.get("callbacks") or []
        # A non-finite loss or weight stops the fit before a checkpoint of it is written; every
        # fit records how it ended in status.json (both can be configured explicitly instead).
        if not any(isinstance(c, DivergenceGuard) for c in callbacks):
            extra.append(DivergenceGuard())
        if not any(isinstance(c, RunStatus) for c in callbacks):
            extra.append(RunStatus(dirpath=str(self.run_dir)))
        if trainer_config.get("enable_checkpointing") is not False and not any(
            isinstance(c, ModelCheckpoint) for c in callbacks
        ):
            # A checkpoint at every epoch end (the newest kept) and last.ckpt, in the run folder.
            extra.append(
                ModelCheckpoint(dirpath=self.run_dir / "checkpoints", filename="epoch{epoch}",
                                auto_insert_metric_name=False, save_last=True, every_n_epochs=1)
            )
        return self._instantiate_trainer(trainer_config, extra)


def build_cli(args: list[str] | None = None, run: bool = True) -> MemCLI:
    """The configured CLI; ``run=False`` only parses and instantiates (for notebooks and tests)."""
    return MemCLI(
        MemorizationModule,
        ImageClassificationData,
        seed_everything_default=0,
        save_config_callback=ConfigToRun,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "omegaconf"},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of ``lightning-mem`` and ``python -m lightning_mem``."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in TOOLS:
        importlib.import_module(TOOLS[argv[0]]).main(argv[1:])
        return
    own_id = RUN_ID_ENV not in os.environ  # exported for DDP children during this call only
    try:
        build_cli(args)
    except DivergedError as err:
        log.error("%s", err)  # status.json in the run folder says "diverged"
        raise SystemExit(EXIT_DIVERGED) from None
    except SIGTERMException:
        log.error("Stopped by SIGTERM; resume with `lightning-mem fit ... --ckpt_path last`")
        raise SystemExit(EXIT_SIGTERM) from None
    finally:
        if own_id:  # a second main() in this process (a notebook) starts a new run
            os.environ.pop(RUN_ID_ENV, None)

