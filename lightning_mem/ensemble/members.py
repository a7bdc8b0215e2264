"""The members of an ensemble as the fit CLI sees them: each one's config parsed by ``lightning-mem fit``'s
own parser, checked to differ from the others only in packable keys, and turned into the ensemble's parts.

A member is given as the arguments its single run would take after ``fit`` (``--config ...
--model.net.init_std 10 --seed_everything 1 --run.id ...``). :func:`parse_member` runs the fit CLI
(:class:`MemberCLI`, a :class:`~lightning_mem.cli.fit.MemCLI` built by ``build_cli``) on them up to the point
where a single run would build its Trainer: parsing with every ``--config`` merged and interpolated, the
run folder resolved (name, id, root), the precision policy, the loggers configured into the run folder,
the model and data instantiated (their checks, and the hyperparameters a checkpoint records). So a
member's ``config.yaml`` is the file ``lightning-mem fit`` writes for that point, byte for byte.

:func:`pack_settings` checks that the members differ only in :data:`PACKABLE_CONFIG` keys (and their run
folders) and that the ensemble can train what they ask for — a ``ScaledMLP``, plain SGD, one device,
FP32, the callbacks and loggers it knows — and returns what the ensemble is built from. Anything else is a
:class:`PackError` naming the key and the fix.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_mem import _compat, rundir
from lightning_mem.alignment.kernel_monitor import KernelMonitor
from lightning_mem.alignment.monitor import AlignmentMonitor
from lightning_mem.cli.fit import MemCLI
from lightning_mem.cli.run import build_cli
from lightning_mem.cli.runfolder import RUN_ID_ENV
from lightning_mem.data.datamodule import ImageClassificationData
from lightning_mem.dotted import flatten
from lightning_mem.ensemble.plan import PACKABLE, PACKABLE_CONFIG
from lightning_mem.ensemble.stacked import MemberSpec
from lightning_mem.errors import PackError, StopAfterParsing
from lightning_mem.nets import ScaledMLP
from lightning_mem.training.grokking import GrokkingMonitor
from lightning_mem.training.guard import DivergenceGuard, RunStatus
from lightning_mem.training.loggers import RunCSVLogger, RunWandbLogger, wandb_run_config
from lightning_mem.training.module import MemorizationModule

# Callbacks of a single run's config that the ensemble replaces with its own per-member form (by class
# identity: a subclass may add behaviour the per-member form would drop).
ENSEMBLE_CALLBACKS: dict[type, str] = {
    AlignmentMonitor: "EnsembleAlignmentMonitor (per member)",
    KernelMonitor: "EnsembleKernelMonitor (per member)",
    DivergenceGuard: "the ensemble's guard (per member, exact step)",
    RunStatus: "a status.json per member",
    GrokkingMonitor: "EnsembleGrokkingMonitor (per member)",
}
LOGGERS: tuple[type, ...] = (RunCSVLogger, RunWandbLogger)  # one of each per member
_OWN = ("net", "init_std", "input_shape", "num_classes", "lr", "loss_scale", "label_seed", "seed",
        "init_scale", "weight_decay", "momentum", "betas")


class MemberCLI(MemCLI):
    """``lightning-mem fit`` up to its Trainer: parse, resolve the run folder, check, configure the loggers,
    instantiate the model and data (with the CLI's own errors, exit 2), then stop
    (:class:`~lightning_mem.errors.StopAfterParsing`)."""

    def instantiate_classes(self) -> None:
        try:
            self.config_init = self.parser.instantiate_classes(self.config)
        except (ValueError, FileNotFoundError, MisconfigurationException) as err:
            self.parser.error(str(err))
        self.datamodule = self.config_init[self.subcommand].data
        self.model = self.config_init[self.subcommand].model

    def after_instantiate_classes(self) -> None:
        raise StopAfterParsing(self)

    def save_config(self, path: Path) -> None:
        """The run's ``config.yaml`` as ``SaveConfigCallback`` writes it: the parser LightningCLI gives that
        callback (:func:`lightning_mem._compat.cli_parser`; the tests compare the file with a single run's
        byte for byte) and the same arguments."""
        parser = _compat.cli_parser(self, self.subcommand)
        parser.save(self.config[self.subcommand], str(path), skip_none=False, overwrite=True, multifile=False)


@dataclass
class Member:
    """One member: its ``fit`` arguments and the CLI that parsed them."""

    run_id: str
    argv: list[str]
    cli: MemberCLI
    loggers: list[Any] = field(default_factory=list)

    @property
    def config(self) -> Namespace:
        return self.cli.config["fit"]

    @property
    def run_dir(self) -> Path:
        assert self.cli.run_dir is not None
        return self.cli.run_dir

    @property
    def spec(self) -> MemberSpec:
        c = self.config
        net = c.model.net.init_args
        return MemberSpec(c.seed_everything, net.init_std, lr=c.model.lr, loss_scale=c.model.loss_scale,
                          label_seed=c.data.label_seed, init_scale=net.get("init_scale", 1.0),
                          weight_decay=c.model.weight_decay, momentum=c.model.momentum,
                          betas=tuple(c.model.betas))

    def hparams(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The module's and the data's hyperparameters, as the single run's checkpoint holds them."""
        return dict(self.cli.model.hparams_initial), dict(self.cli.datamodule.hparams_initial)

    def write_files(self) -> None:
        """``config.yaml`` and ``hp.json``, as a single run writes them when it starts."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cli.save_config(self.run_dir / rundir.CONFIG)
        rundir.write_hp(self.run_dir, rundir.canonical_hp(self.config.as_dict()))

    def wandb_config(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(nested config, hp) for the member's W&B run, as ``ConfigToRun`` gives them to a single run."""
        config = self.config.as_dict()
        return wandb_run_config(config), rundir.canonical_hp(config)


@contextlib.contextmanager
def _quiet_seed() -> Iterator[None]:
    """The CLI seeds once per member ("Seed set to ..."): keep those K lines out of the log."""
    seed_log = logging.getLogger("lightning.fabric.utilities.seed")
    level = seed_log.level
    seed_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        seed_log.setLevel(level)


def parse_member(run_id: str, argv: Sequence[str]) -> Member:
    """Member ``run_id`` from its ``fit`` arguments (which must give ``--run.id run_id``); a bad config
    exits 2 with the CLI's own message, as ``lightning-mem fit`` would."""
    exported = os.environ.get(RUN_ID_ENV)
    try:
        with _quiet_seed(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # in-process, as meant
            build_cli(["fit", *argv], cli_class=MemberCLI)
    except StopAfterParsing as done:
        member = Member(run_id, list(argv), done.cli)
    finally:  # the CLI exports the run id for DDP children: not for the next member
        if exported is None:
            os.environ.pop(RUN_ID_ENV, None)
        else:
            os.environ[RUN_ID_ENV] = exported
    if member.config.run.id != run_id:
        raise PackError(f"member {run_id}: its arguments give --run.id {member.config.run.id}")
    return member


# ---------------------------------------------------------------------------- one ensemble of them


def _own_paths(member: Member) -> dict[str, Any]:
    """The member's flat config with its packable keys dropped and its run id and folder as placeholders."""
    run_id, run_dir = member.run_id, str(member.run_dir)

    def generic(value: Any) -> Any:
        if value == run_dir:
            return "<run folder>"
        if isinstance(value, str) and (value == run_id or value.endswith(f"/{run_id}")):
            return value[: len(value) - len(run_id)] + "<run id>"
        return value

    config = member.config.as_dict()
    config.pop("config", None)  # the --config files: each member may have its own (a sweep's args.json)
    flat = flatten(config)
    for key in list(flat):  # data.seed: linked from seed_everything; a list (betas) flattens to key.0, key.1
        if key == "data.seed" or key in PACKABLE_CONFIG or key.rpartition(".")[0] in PACKABLE_CONFIG:
            flat.pop(key)
    return {key: generic(value) for key, value in flat.items()}


def _defaults(cls: type) -> dict[str, Any]:
    return {n: p.default for n, p in inspect.signature(cls).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _class_path(entry: Any) -> str:
    return str(entry.get("class_path") if isinstance(entry, dict) else type(entry).__module__)


def _logger_class(entry: Any) -> type | None:
    """The class a ``trainer.logger`` entry names (a config's ``class_path``), or None if it names none."""
    if not isinstance(entry, dict):
        return type(entry)
    module, _, name = _class_path(entry).rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
    return found if isinstance(found, type) else None


@dataclass
class PackSettings:
    """What every member shares: the ensemble's net, loss, data and Trainer arguments, its monitor."""

    net: dict[str, Any]
    loss: dict[str, Any]
    data: dict[str, Any]
    trainer: dict[str, Any]
    monitor: Any  # the configured AlignmentMonitor, the default one, or None (turned off)
    checkpoints: bool
    tf32: bool
    kernel_monitor: Any = None  # the configured KernelMonitor, or None
    grokking_monitor: Any = None  # the configured GrokkingMonitor, or None


def _unsupported(
    section: str, values: dict[str, Any], defaults: dict[str, Any], known: Sequence[str]
) -> None:
    for key, value in values.items():
        if key not in known and key not in _OWN and key in defaults and value != defaults[key]:
            raise PackError(f"{section}.{key}={value!r}: the ensemble does not support it (only "
                            f"{defaults[key]!r}); run these points with `lightning-mem fit`")


def _check_distinct(members: Sequence[Member]) -> None:
    """Two members with the same packable values (``--ensemble.seed 0,0``, ``0.1,0.10``) would be one run
    trained twice into two folders: :class:`PackError` naming both and their values."""
    seen: dict[tuple[str, ...], str] = {}
    for m in members:
        spec = asdict(m.spec)  # its fields are PACKABLE's, read from the parsed config
        values = tuple(repr(spec[name]) for name in PACKABLE)
        if values in seen:
            pairs = zip(PACKABLE, values, strict=True)
            shown = ", ".join(f"{PACKABLE[name][1]}={value}" for name, value in pairs)
            raise PackError(f"members {seen[values]} and {m.run_id} are the same run ({shown}): give each "
                            "value once (every member of an ensemble must differ from the others)")
        seen[values] = m.run_id


def default_monitor(run: dict[str, Any]) -> AlignmentMonitor | None:
    """The alignment monitor a member's single run gets when its config names none, as ``lightning-mem
    fit`` adds it: on unless ``run.alignment_monitor`` is false, every ``run.alignment_every_n_steps`` steps
    (else :class:`AlignmentMonitor`'s own default). The ensemble's per-member divergence guard needs no
    such default: it is part of :class:`~lightning_mem.ensemble.module.EnsembleModule`, always on."""
    if run.get("alignment_monitor", True) is False:
        return None
    every = run.get("alignment_every_n_steps")
    return AlignmentMonitor(every_n_steps=every) if every else AlignmentMonitor()


def pack_settings(members: Sequence[Member]) -> PackSettings:
    """The shared settings of ``members``; :class:`PackError` if they cannot be one ensemble."""
    if not members:
        raise PackError("an ensemble needs at least one member (K = 0)")
    first = _own_paths(members[0])
    for m in members[1:]:
        other = _own_paths(m)
        for key in sorted(first.keys() | other.keys()):
            if first.get(key) != other.get(key):
                raise PackError(
                    f"members {members[0].run_id} and {m.run_id} differ in {key} ({first.get(key)!r} vs "
                    f"{other.get(key)!r}); only {', '.join(PACKABLE_CONFIG)} may differ within an ensemble")
    _check_distinct(members)
    config = members[0].config.as_dict()
    net = config["model"]["net"]
    if type(members[0].cli.model.net) is not ScaledMLP:
        raise PackError(f"model.net is {net.get('class_path')}: an ensemble stacks "
                        "lightning_mem.nets.ScaledMLP only (the ConvNet and torchvision nets are not "
                        "stacked); run it with `lightning-mem fit`")
    if not all(isinstance(m.config.seed_everything, int) and not isinstance(m.config.seed_everything, bool)
               for m in members):
        raise PackError("seed_everything must be an integer seed for every member of an ensemble")
    net_args, model, data = net.get("init_args") or {}, config["model"], config["data"]
    shared_net = ("width", "activation", "depth", "bias", "init_rule")
    _unsupported("model.net.init_args", net_args, _defaults(ScaledMLP), shared_net)
    if model.get("steps_per_call", 1) != 1:
        raise PackError(f"model.steps_per_call={model['steps_per_call']!r}: an ensemble has no fused step "
                        "(it runs one stacked step per batch for all members); set steps_per_call 1")
    _unsupported("model", model, _defaults(MemorizationModule), ("loss", "loss_scale_with_init", "optimizer"))
    from lightning_mem.ensemble.data import EnsembleData

    data_keys = [k for k in inspect.signature(EnsembleData).parameters if k != "members"]
    _unsupported("data", data, _defaults(ImageClassificationData), (*data_keys, "preload_to_device"))
    trainer = dict(config["trainer"])
    checks = {"devices": (1, "1", None), "num_nodes": (1,), "strategy": ("auto", None),
              "precision": (None, 32, "32", "32-true"), "accumulate_grad_batches": (1, None),
              "gradient_clip_val": (None, 0, 0.0)}
    for key, allowed in checks.items():
        if trainer.get(key) not in allowed:
            raise PackError(f"trainer.{key}={trainer[key]!r}: an ensemble trains on one device in FP32 with "
                            f"one batch per step (allowed: {', '.join(map(repr, allowed))}); run one "
                            "ensemble per device instead (`sweep local --pack --gpus ...`)")
    monitor = kernel_monitor = grokking_monitor = None
    callbacks = members[0].cli.config_init["fit"]["trainer"].get("callbacks") or []
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        if type(callback) not in ENSEMBLE_CALLBACKS:
            path = f"{type(callback).__module__}.{type(callback).__name__}"
            takes = ", ".join(f"lightning_mem.callbacks.{c.__name__}" for c in ENSEMBLE_CALLBACKS)
            raise PackError(f"trainer.callbacks: {path} would see the K members as one model; an ensemble "
                            f"takes {takes} only; run these with `lightning-mem fit`")
        if type(callback) is AlignmentMonitor:
            monitor = callback
        if type(callback) is KernelMonitor:
            kernel_monitor = callback
        if type(callback) is GrokkingMonitor:
            grokking_monitor = callback
    if monitor is None:
        monitor = default_monitor(config.get("run") or {})
    loggers = trainer.get("logger")
    for entry in loggers if isinstance(loggers, list) else []:
        if _logger_class(entry) not in LOGGERS:
            raise PackError(f"trainer.logger: {_class_path(entry)} is not supported in an ensemble (CSV and "
                            "W&B are: one per member)")
    checkpoints = trainer.get("enable_checkpointing") is not False
    for key in ("logger", "callbacks", "default_root_dir", "enable_checkpointing"):
        trainer.pop(key, None)
    ensemble_data = {k: v for k, v in data.items() if k in data_keys}
    return PackSettings(
        net={"width": net_args.get("width", 1024), "activation": net_args.get("activation", "sin"),
             "depth": net_args.get("depth", 1), "bias": net_args.get("bias", False),
             "init_rule": net_args.get("init_rule", "glorot")},
        loss={"loss": model["loss"], "loss_scale_with_init": model["loss_scale_with_init"],
              "optimizer": model.get("optimizer", "sgd")},
        data=ensemble_data, trainer=trainer, monitor=monitor, checkpoints=checkpoints,
        tf32=bool(config["precision"]["tf32"]), kernel_monitor=kernel_monitor,
        grokking_monitor=grokking_monitor)
