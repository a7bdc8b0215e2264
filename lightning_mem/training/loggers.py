"""The loggers of a run: a CSV logger that continues a resumed run's ``metrics.csv``, and the W&B run's
metric definitions and canonical config.

Logging contract (README, "Where the results land"): every row carries ``epoch`` and the global step;
CSV and W&B hold the same rows. In W&B every key is drawn against ``trainer/global_step`` (declared with
``define_metric``, as Lightning's ``WandbLogger`` does for ``*``), and the summaries are declared:
``val/acc`` keeps its best and last value, ``val/loss`` its lowest and last, everything else its last.
The W&B config holds the full nested CLI config (``model``, ``data``, ``trainer``, ``run``, ...) and the
canonical hyperparameters ``hp`` (:data:`lightning_mem.rundir.HP_KEYS`, also in the run folder's
``hp.json``), the one key per concept that dashboards group on however the run was launched.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only

from lightning_mem import _compat, metric_keys, network, rundir

log = logging.getLogger(__name__)

LOGGER_CLASSES = {  # a logger named in a config -> the class the CLI instantiates
    "CSVLogger": "lightning_mem.loggers.RunCSVLogger",  # Lightning's CSVLogger, continuing on resume
    "RunCSVLogger": "lightning_mem.loggers.RunCSVLogger",
    "WandbLogger": "lightning_mem.loggers.RunWandbLogger",  # its run config: the CLI's nested config + hp
    "RunWandbLogger": "lightning_mem.loggers.RunWandbLogger",
    "TensorBoardLogger": "lightning.pytorch.loggers.TensorBoardLogger",
}
STEP_METRIC = "trainer/global_step"  # what Lightning's WandbLogger logs with every row
# W&B summaries, by key or key prefix (glob): best and last for the held-out accuracy the paper reports.
SUMMARIES = (
    (metric_keys.VAL_ACC, "max,last"),
    (metric_keys.VAL_LOSS, "min,last"),
    ("val/align/*", "last"),
    ("train/*", "last"),
    ("align/*", "last"),
    ("norm/*", "last"),
    ("kernel/*", "last"),  # KernelMonitor (lightning_mem.alignment.kernel_monitor)
    ("weights/*", "last"),
    ("act/*", "last"),
    ("stiffness/*", "last"),
    ("diversity/*", "last"),
    ("confusion/*", "last"),
    (metric_keys.WEIGHT_NORM, "min,last"),  # GrokkingMonitor
    ("grok/*", "last"),
    ("test/*", "last"),
    ("epoch", "last"),
)


@_compat.route_header_rewrite
class RunMetricsWriter(ExperimentWriter):
    """Lightning's CSV writer, with the rewrite it does when a new key appears made atomic.

    Lightning rewrites the whole ``metrics.csv`` in place (truncate, then write) when a row brings a key
    the header lacks; a kill in that moment would lose every earlier row. Here the new file is written
    beside it and renamed over it (:func:`lightning_mem.rundir.write_metrics_rows`): a reader, or a
    resume, sees the old file or the new one. Appends stay appends; a row torn by a kill is an
    unterminated last line, which every reader leaves out (:func:`lightning_mem.rundir.read_metrics_rows`).
    """

    def rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        path = Path(self.metrics_file_path)
        _, rows = rundir.read_metrics_rows(path)
        rundir.write_metrics_rows(path, fieldnames, rows)


class RunCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` that, when a fit resumes, continues the run's ``metrics.csv``.

    Lightning's CSV writer deletes a ``metrics.csv`` it finds when it opens. Given ``resume_step``, the
    file is first set aside (:func:`lightning_mem.rundir.set_metrics_aside`), the writer opened, the
    rows logged before the checkpoint written back (:func:`~lightning_mem.rundir.restore_metrics`) and
    the writer continues that header: the finished file is byte-identical to an uninterrupted run's.
    The writer is a :class:`RunMetricsWriter` (header rewrites are atomic).

    Args:
        save_dir, name, version, prefix, flush_logs_every_n_steps: As ``CSVLogger``.
        resume_step: ``global_step`` of the checkpoint the fit resumes from (None: a new run).
        resume_epoch: ``epoch`` of that checkpoint.
    """

    def __init__(
        self,
        save_dir: str,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
        resume_step: int | None = None,
        resume_epoch: int | None = None,
    ) -> None:
        super().__init__(save_dir, name=name, version=version, prefix=prefix,
                         flush_logs_every_n_steps=flush_logs_every_n_steps)
        self.resume = None if resume_step is None else (int(resume_step), int(resume_epoch or 0))

    @property
    def experiment(self) -> Any:
        if self._experiment is None and getattr(rank_zero_only, "rank", 0) == 0:
            run_dir = Path(self.log_dir)
            if self.resume is not None:
                rundir.set_metrics_aside(run_dir)  # the writer deletes a metrics.csv it finds: none now
            with warnings.catch_warnings():
                # The run folder is ours and not empty (its lock, config.yaml). A metrics.csv found here
                # belongs to this run's earlier attempt, which is started over (a resume set it aside).
                warnings.filterwarnings("ignore", message="Experiment logs directory .* is not empty")
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = RunMetricsWriter(log_dir=self.log_dir)
            if self.resume is not None:
                self._experiment.metrics_keys = rundir.restore_metrics(run_dir, *self.resume)
        return super().experiment


class RunWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` whose run config is the CLI's alone: the nested config and ``hp``
    (:func:`setup_wandb_run`). Lightning's flat copy of the module's and datamodule's hyperparameters
    (``lr``, ``dataset``, ``net``, ...) is not added: it would be a second key for the same concept."""

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        return None


def wandb_run_config(config: dict[str, Any]) -> dict[str, Any]:
    """The nested config a run's W&B config holds: the parsed config less the ``config`` files' list and
    the Trainer's callbacks (objects, not settings), for single runs and ensemble members alike."""
    nested = {k: v for k, v in config.items() if k not in ("config", "trainer")}
    nested["trainer"] = {k: v for k, v in config.get("trainer", {}).items() if k != "callbacks"}
    return nested


def setup_wandb_run(run: Any, config: dict[str, Any], hp: dict[str, Any]) -> None:
    """Declare the step metric and summaries of every key, and put the nested ``config`` and the
    canonical ``hp`` block into the W&B run config."""
    run.define_metric(STEP_METRIC)
    for name, summary in SUMMARIES:
        run.define_metric(name, step_metric=STEP_METRIC, summary=summary)
    run.config.update({**config, "hp": hp}, allow_val_change=True)


def _offline_without_server(args: Namespace, run_dir: Path) -> None:
    """An online W&B run whose server gives no answer within a few seconds (no network, a stalled
    proxy) goes offline at once, as a run without a key does, instead of waiting out ``wandb.init``'s
    90 s and failing with a ``CommError`` (:func:`lightning_mem.network.wandb_reachable`)."""
    reachable, tried = network.wandb_reachable(os.environ.get("WANDB_BASE_URL"))
    if not reachable:
        args.offline = True
        log.warning("W&B: %s; logging offline into %s/wandb (upload later with `wandb sync`)", tried, run_dir)


def configure_loggers(
    trainer: Namespace, run: Namespace, run_dir: Path, resume: tuple[int, int] | None
) -> None:
    """Edit the parsed ``trainer`` config so every logger writes into ``run_dir``: CSV logging always
    (first, so ``trainer.log_dir`` is ``run_dir``), Lightning's CSV and W&B loggers swapped for the ones
    above, the W&B run named, grouped and identified by the run, offline without credentials; ``resume``
    is the (global_step, epoch) of the checkpoint a fit resumes into ``run_dir`` from."""
    if trainer.get("default_root_dir") is None:
        trainer.default_root_dir = str(run_dir)  # config.yaml lands there even without loggers
    loggers = trainer.logger
    if loggers is False:
        return
    if loggers is None or loggers is True:
        loggers = []
    elif not isinstance(loggers, list):
        loggers = [loggers]
    names = [str(lg.class_path).rsplit(".", 1)[-1] for lg in loggers]
    csv_names = ("CSVLogger", "RunCSVLogger")
    if not set(csv_names) & set(names):
        loggers.insert(0, Namespace(class_path=LOGGER_CLASSES["CSVLogger"], init_args=Namespace()))
        names.insert(0, "CSVLogger")
    for lg, name in zip(loggers, names, strict=True):
        args = lg.init_args if lg.get("init_args") is not None else Namespace()
        lg.init_args = args
        lg.class_path = LOGGER_CLASSES.get(name, lg.class_path)
        if name in (*csv_names, "TensorBoardLogger"):
            args.save_dir, args.name, args.version = run.root, run.name, run.id
        if name in csv_names and resume is not None:
            args.resume_step, args.resume_epoch = resume
        elif name in ("WandbLogger", "RunWandbLogger"):
            args.save_dir = str(run_dir)
            args.name = args.get("name") or f"{run.name}/{run.id}"
            args.group = args.get("group") or run.name
            args.id = args.get("id") or run.id
            args.resume = "allow"  # a resumed fit continues the same W&B run
            if not os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_MODE") is None:
                args.offline = True  # no credentials: an offline run that `wandb sync` uploads later
            elif not args.get("offline") and os.environ.get("WANDB_MODE") is None:
                _offline_without_server(args, run_dir)
    order = sorted(range(len(loggers)), key=lambda i: names[i] not in csv_names)
    trainer.logger = [loggers[i] for i in order]
