"""``lightning-mem fit --help`` for people: the main options, one line each with default and allowed values,
printed without importing torch; ``fit --help-all`` is LightningCLI's full jsonargparse help.

The rows of :data:`OPTIONS` are the table: (option, default, allowed values, what it does); a new option is
one row. The defaults and allowed values repeat the classes' signatures and ``Literal`` types (kept torch-free
here); ``tests/cli/test_fit_help.py`` compares them with the classes, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence

HELP_ALL = "--help-all"

# (option, default, allowed values or type, what it does)
OPTIONS: list[tuple[str, str, str, str]] = [
    ("--config", "-", "a file or a packaged name", "config file(s), merged in order"),
    ("--model.net", "-", "a class path: lightning_mem.nets.ScaledMLP, ConvNet, ...", "the network"),
    ("--model.net.init_std", "null", "float > 0 or null (Glorot)", "σ: W1 ~ N(0, σ²), the studied scale"),
    ("--model.net.width", "1024", "int ≥ 1", "hidden width (ScaledMLP)"),
    ("--model.net.activation", "sin", "sin|relu|sigmoid|tanh|linear|gelu", "φ (ScaledMLP)"),
    ("--model.loss", "cross_entropy", "cross_entropy|hinge|squared", "the training loss"),
    ("--model.loss_scale", "1.0", "float > 0", "softmax temperature, hinge margin or target scale"),
    ("--model.optimizer", "sgd", "sgd|adam|adamw", "torch's optimizer (the paper: plain SGD)"),
    ("--model.lr", "0.01", "float > 0", "learning rate (the paper: 0.01)"),
    ("--data.dataset", "mnist5k", "mnist5k|digits|mnist|fashion_mnist|cifar10|cifar100|svhn", "dataset"),
    ("--data.label_noise", "0.0", "0 ≤ float ≤ 1", "fraction of training labels replaced at random"),
    ("--data.batch_size", "256", "int ≥ 1", "training batch size"),
    ("--trainer.max_epochs", "1000", "int ≥ 1", "epochs to train (Lightning's default)"),
    ("--seed_everything", "0", "int", "seed of the weights, the batch order and the label noise"),
    ("--run.alignment_every_n_steps", "10", "int ≥ 1", "steps between the alignment measurements"),
    ("--run.alignment_monitor", "true", "true|false", "measure alignment (AlignmentMonitor)"),
    ("--run.divergence_guard", "true", "true|false", "stop at the first NaN/inf (DivergenceGuard)"),
    ("--run.progress_every_s", "30", "seconds ≥ 0", "a progress line where the bar is off"),
    ("--run.name", "config's name", "a folder name", "experiment name (and W&B group)"),
    ("--run.root", "runs", "a folder", "root of all run folders"),
    ("--run.id", "a new id", "a folder name", "this run's folder under <root>/<name>/"),
    ("--config logger/wandb", "off", "WANDB_MODE=offline|online", "also log to W&B (a packaged config)"),
    ("--ckpt_path", "-", "last or a .ckpt path", "resume a run (last: the newest of run.name)"),
]


def short_help() -> str:
    """The text of ``lightning-mem fit --help``."""
    width, dflt = (max(len(row[i]) for row in OPTIONS) for i in range(2))
    lines = [
        "usage: lightning-mem fit [--config NAME|FILE ...] [--KEY VALUE ...]",
        "",
        "Train one run; it writes <run.root>/<run.name>/<run.id>/ (metrics.csv, status.json, checkpoints/).",
        "",
        "main options:",
        f"  {'option':<{width}}  {'default':<{dflt}}  what it does [allowed values]",
    ]
    lines += [f"  {o:<{width}}  {d:<{dflt}}  {t} [{a}]" for o, d, a, t in OPTIONS]
    lines += [
        "",
        "examples:",
        "  lightning-mem fit --config quickstart --model.net.init_std 10       # memorizes (σ = 10)",
        "  lightning-mem fit --model.net lightning_mem.nets.ScaledMLP --data.dataset digits",
        "  lightning-mem configs list                                           # the packaged configs",
        "",
        f"every option: `lightning-mem fit {HELP_ALL}`",
        "a net's options: `lightning-mem fit --model.net.help lightning_mem.nets.ScaledMLP`",
    ]
    return "\n".join(lines) + "\n"


def wants_short_help(args: Sequence[str]) -> bool:
    """``fit --help`` / ``fit -h`` (anywhere after ``fit``): the short table."""
    return len(args) >= 1 and args[0] == "fit" and any(a in ("-h", "--help") for a in args[1:])


def full_help_args(args: Sequence[str]) -> list[str]:
    """``fit ... --help-all`` as LightningCLI's own ``fit ... --help``."""
    return [("--help" if a == HELP_ALL else a) for a in args]
