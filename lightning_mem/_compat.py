"""Every private name of another library that the package touches, in one place.

Each entry is a small function (or constant) named for what it does, with the library, the name and why no
public hook does the job. ``tests/test_compat.py`` checks every name in :data:`PRIVATE_NAMES` against the
installed releases and fails naming the one that moved; ``tests/test_layout.py`` fails if a private name of
another library appears anywhere else in the package. Lightning is pinned to 2.6.x in pyproject.toml for
the two Lightning attributes below.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning as L
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
    from lightning.pytorch.plugins.io import CheckpointIO

# (library, owner, name): checked by tests/test_compat.py on the installed releases
PRIVATE_NAMES = (
    ("lightning", "lightning.pytorch.loops.training_epoch_loop._TrainingEpochLoop", "_batches_that_stepped"),
    ("lightning", "lightning.pytorch.strategies.Strategy", "_checkpoint_io"),
    ("lightning", "lightning.pytorch.loggers.csv_logs.ExperimentWriter", "_rewrite_with_new_header"),
    ("lightning", "lightning.pytorch.cli.LightningCLI", "_parser"),
    ("lightning", "lightning.pytorch.callbacks.ModelCheckpoint", "_every_n_train_steps"),
    ("jsonargparse", "hyper_parameters keys saved by LightningCLI", "_instantiator"),
    ("jsonargparse", "hyper_parameters keys saved by LightningCLI", "_class_path"),
    ("wandb-workspaces", "wandb_workspaces.workspaces.Workspace", "_spec"),
    ("torch", "torch.amp.GradScaler", "_get_scale_async"),
    ("torchmetrics", "torchmetrics.utilities.imports", "_TORCHVISION_AVAILABLE"),
)

# Keys LightningCLI adds to ``hyper_parameters`` beside the parsed config (the instantiator and class
# path of the model it instantiated): not part of a run's config; no public constant names them.
CLI_INTERNAL_HPARAMS = ("_instantiator", "_class_path")


def batches_that_stepped(trainer: L.Trainer) -> int:
    """Lightning's logging step: ``fit_loop.epoch_loop._batches_that_stepped``, the step at which
    ``LightningModule.log`` rows land (``trainer.global_step`` counts optimizer steps, which differ from it
    under manual or fused optimization). No public reader exists in Lightning 2.6."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def advance_batches_that_stepped(trainer: L.Trainer, steps: int) -> None:
    """Add ``steps`` to Lightning's logging step (the fused step runs several SGD steps per Lightning
    batch; its epoch-end rows must carry the same step as an ordinary run's). No public writer exists."""
    trainer.fit_loop.epoch_loop._batches_that_stepped += steps


def configured_checkpoint_io(trainer: L.Trainer) -> CheckpointIO | None:
    """The checkpoint IO configured on the trainer's strategy, or None if none was: the public
    ``strategy.checkpoint_io`` property creates a default one when it is unset, so it cannot tell."""
    return getattr(trainer.strategy, "_checkpoint_io", None)


REWRITE_WITH_NEW_HEADER = "_rewrite_with_new_header"  # ExperimentWriter's rewrite of metrics.csv


def cli_parser(cli: LightningCLI, subcommand: str | None) -> LightningArgumentParser:
    """The parser LightningCLI hands ``SaveConfigCallback`` (``LightningCLI._parser``): the one that
    writes ``config.yaml`` exactly as a single run's CLI does."""
    return cli._parser(subcommand)


def every_n_train_steps(callback: Any) -> int | None:
    """``ModelCheckpoint(every_n_train_steps=...)``: kept only as ``_every_n_train_steps``."""
    value = getattr(callback, "_every_n_train_steps", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def amp_scale_tensor(scaler: Any) -> Any:
    """A ``GradScaler``'s current scale as its device tensor (``_get_scale_async``), or None where the
    release lacks it: the public ``get_scale()`` returns a float and so syncs the host with the device."""
    read = getattr(scaler, "_get_scale_async", None)
    return read() if read is not None else None


def workspace_spec(workspace: Any) -> dict[str, Any]:
    """The JSON a ``wandb_workspaces`` Workspace saves (``Workspace._spec``): printed by ``dashboard wandb
    --print`` without a server; the library has no public serializer of the saved view."""
    spec: dict[str, Any] = workspace._spec
    return spec


def route_header_rewrite(writer_cls: type) -> type:
    """Class decorator: Lightning's ``ExperimentWriter`` rewrites ``metrics.csv`` in place through its
    private ``_rewrite_with_new_header`` when a row brings a new key; route that call to the class's
    public ``rewrite_with_new_header`` (atomic there). No public hook exists for the rewrite."""

    def rewrite(self: Any, fieldnames: list[str]) -> None:
        self.rewrite_with_new_header(fieldnames)

    setattr(writer_cls, REWRITE_WITH_NEW_HEADER, rewrite)
    return writer_cls


TORCHMETRICS_IMPORTS = "torchmetrics.utilities.imports"  # the module of torchmetrics' availability flags


def torchmetrics_without_torchvision() -> None:
    """Let torchmetrics import without torchvision (a ``lightning-mem`` command's start, ~1-4 s less).

    ``import torchmetrics`` (which Lightning does) imports every metric module, and those behind
    torchvision (ARNIQA, DISTS, LPIPS, box IoUs, mAP) import it whenever it is installed, as decided by the
    flag ``_TORCHVISION_AVAILABLE`` of :data:`TORCHMETRICS_IMPORTS`. That module is loaded here first, from
    its file (no public hook exists: importing it runs torchmetrics' ``__init__``), with the flag off; the
    package never uses those metrics. torchvision still imports as usual where a dataset or a net of the
    package asks for it. A no-op once torchmetrics is imported, or when it is not installed.
    """
    if "torchmetrics" in sys.modules or TORCHMETRICS_IMPORTS in sys.modules:
        return
    spec = importlib.util.find_spec("torchmetrics")  # a top-level spec: nothing is executed
    if spec is None or not spec.submodule_search_locations:
        return
    path = Path(next(iter(spec.submodule_search_locations)), "utilities", "imports.py")
    flags_spec = importlib.util.spec_from_file_location(TORCHMETRICS_IMPORTS, path)
    if flags_spec is None or flags_spec.loader is None:
        return
    module = importlib.util.module_from_spec(flags_spec)
    sys.modules[TORCHMETRICS_IMPORTS] = module
    try:
        flags_spec.loader.exec_module(module)
    except Exception:  # another release's layout: torchmetrics imports as it would
        del sys.modules[TORCHMETRICS_IMPORTS]
        return
    flag = getattr(module, "_TORCHVISION_AVAILABLE", None)
    if flag is not None:
        flag.available = False  # lightning_utilities' RequirementCache: read once, then cached here
        flag.message = "torchvision is not imported by torchmetrics under lightning-mem (start-up time)"
