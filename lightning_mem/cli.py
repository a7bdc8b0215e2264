"""Command line: ``lightning-mem fit|validate|test --config ...`` plus ``sweep`` and ``report``.

Only this module reads the command line and the environment. Every run writes into its own
directory ``<run.root>/<run.name>/<run.id>/``: ``metrics.csv`` and ``hparams.yaml`` (CSV logger),
``config.yaml`` (the full nested config), ``checkpoints/`` (every epoch and ``last.ckpt``) and
``wandb/`` when the W&B logger is configured. Two runs never share a directory: the id is made of
the start time, the process id and a random suffix unless given.
"""

from __future__ import annotations

import importlib
import logging
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from lightning_mem.data import DATASETS, ImageClassificationData
from lightning_mem.module import MemorizationModule

log = logging.getLogger(__name__)

RUN_ID_ENV = "LIGHTNING_MEM_RUN_ID"
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
        run_dir = self._resolve_run_dir(config)
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
        return Path(run.root, run.name, run.id)

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
        except (ValueError, FileNotFoundError) as err:
            # Bad values found by the classes' own checks: a message, not a traceback.
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

    def before_validate(self) -> None:
        self._check_data()

    def before_test(self) -> None:
        self._check_data()

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        extra = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        callbacks = trainer_config.get("callbacks") or []
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
    build_cli(args)
