"""Sets of runs: which keys vary, how runs group, and the numbers each run contributes to a report or
a dashboard. Runs come from :mod:`lightning_mem.results.runs`.

Grouping prefers the canonical hyperparameters (``hp.<key>`` of :data:`rundir.HP_KEYS`, the same
in every run however it was launched); a swept config key that no canonical key covers (e.g.
``model.momentum``) groups under its dotted name. Final numbers: last train and held-out accuracy,
best held-out accuracy, mean of the last ``tail`` alignments of training batches (each is measured
on one batch and is noisy), the last held-out alignment, and ‖∇W1‖/‖W1‖ averaged over training.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lightning_mem import metric_keys, rundir
from lightning_mem.rundir import HP_KEYS

if TYPE_CHECKING:
    from lightning_mem.results.runs import Run

SIGMA_SUFFIX = "init_std"  # the swept scale: hp.init_std (model.net.init_args.init_std)
SEED_KEYS = ("seed_everything", "data.seed", "hp.seed")
# Config keys that differ between runs without being an experimental factor.
IGNORED_PREFIXES = (
    "config", "run.id", "run.root", "ckpt_path", "data.seed", "data.data_dir", "trainer.logger",
    "trainer.callbacks", "trainer.default_root_dir", "data.download",
)
# The canonical keys that are experimental factors. Not run_name, max_epochs (settings) nor the seed
# (what a group averages over).
NOT_FACTORS = ("run_name", "max_epochs", "seed")  # a name, a setting, and what a group averages over
FACTOR_HP = tuple(k for k in HP_KEYS if k not in NOT_FACTORS)  # the canonical keys that are factors
# Swept config keys that are settings, never factors: trainer/logging/progress options, paths, names.
SETTING_PREFIXES = ("trainer", "run", "ckpt_path", "config", "data.data_dir", "data.download",
                    "data.num_workers", "data.pin_memory", "data.seed", "seed_everything")
SETTING_SUFFIXES = ("_dir", "_path", "_root", "logger", "callbacks", "verbose", "progress_bar")
# Config keys named otherwise than their canonical key.
ALIASES = {"seed_everything": "seed", "run.name": "run_name", "model.net.class_path": "net"}

# ---------------------------------------------------------------------------- grouping


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else v


def _varies(runs: Sequence[Run], key: str) -> bool:
    return len({_hashable(r.params.get(key)) for r in runs}) > 1


def swept_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys whose values differ across runs (bookkeeping and ``hp.`` keys excluded), sorted."""
    keys = sorted({k for r in runs for k in r.params if not k.startswith("hp.")})
    return [k for k in keys if not any(k == p or k.startswith(p + ".") for p in IGNORED_PREFIXES)
            and _varies(runs, k)]


def canonical_key(runs: Sequence[Run], key: str) -> str | None:
    """``hp.<name>`` when config key ``key`` is a canonical key under another name (its last part, or
    :data:`ALIASES`) and holds the same value in every run; else None."""
    if key.startswith("hp."):
        return key
    name = ALIASES.get(key) or key.replace(".init_args", "").split(".")[-1]
    hp = f"hp.{name}"

    def as_hp(value: Any) -> Any:  # hp.net is the class name of model.net.class_path
        return value.rsplit(".", 1)[-1] if name == "net" and isinstance(value, str) else _hashable(value)

    same = all(as_hp(r.params.get(key)) == _hashable(r.params.get(hp)) for r in runs)
    return hp if name in HP_KEYS and same else None


def varied_keys(runs: Sequence[Run]) -> list[str]:
    """The keys that differ across runs: canonical ``hp.<key>`` in :data:`HP_KEYS` order, then swept
    config keys that no canonical key covers (e.g. ``model.momentum``)."""
    hp = [f"hp.{k}" for k in HP_KEYS if _varies(runs, f"hp.{k}")]
    return hp + [k for k in swept_keys(runs) if canonical_key(runs, k) is None]


def is_setting(key: str) -> bool:
    """A config key that is a setting (trainer, run, paths, logging, progress), never a factor."""
    return (any(key == p or key.startswith(p + ".") for p in SETTING_PREFIXES)
            or key.endswith(SETTING_SUFFIXES))


def factor_keys(runs: Sequence[Run]) -> list[str]:
    """The one grouping rule of report, dashboard html and dashboard wandb: the experimental factors
    that vary. Canonical ``hp.<key>`` of :data:`FACTOR_HP` in that order, then swept config keys that
    no canonical key covers and that are not settings (:func:`is_setting`). Never the run name, the
    trainer's options or paths; the seed is what a group averages over."""
    hp = [f"hp.{k}" for k in FACTOR_HP if _varies(runs, f"hp.{k}")]
    return hp + [k for k in swept_keys(runs) if canonical_key(runs, k) is None and not is_setting(k)]


def short(key: str) -> str:
    """``hp.activation`` or ``model.net.init_args.activation`` -> ``activation``; σ; ``seed``."""
    if key in ("seed_everything", "hp.seed"):
        return "seed"
    if key.endswith(SIGMA_SUFFIX):
        return "σ"
    parts = key.replace(".init_args", "").split(".")
    return parts[-1] if parts[-1] != "class_path" else parts[-2]


def fmt_value(v: Any) -> str:
    if isinstance(v, str) and "." in v and v.split(".")[0].isidentifier():
        return v.rsplit(".", 1)[-1]  # class paths -> class name
    if v is None:
        return "default"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def label(keys: Sequence[str], values: Sequence[Any]) -> str:
    return ", ".join(f"{short(k)}={fmt_value(v)}" for k, v in zip(keys, values, strict=True)) or "all runs"


@dataclass
class Layout:
    """How runs split: ``group_keys`` (a row of the table), ``sigma_key`` (x axis), ``panel_keys``."""

    group_keys: list[str]
    sigma_key: str | None
    panel_keys: list[str]

    @classmethod
    def of(cls, runs: Sequence[Run], group_by: Sequence[str] | None = None) -> Layout:
        group_keys = [resolve_key(runs, k) for k in group_by] if group_by else factor_keys(runs)
        sigma = next((k for k in group_keys if k.endswith(SIGMA_SUFFIX)), None)
        return cls(group_keys, sigma, [k for k in group_keys if k != sigma])

    def group(self, run: Run) -> tuple[Any, ...]:
        return tuple(run.get(k) for k in self.group_keys)

    def panel(self, run: Run) -> tuple[Any, ...]:
        return tuple(run.get(k) for k in self.panel_keys)

    def sigma_tuple(self, run: Run) -> tuple[float | None]:
        return (self.sigma(run),)

    def sigma(self, run: Run) -> float | None:
        v = run.get(self.sigma_key) if self.sigma_key else None
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def resolve_key(runs: Sequence[Run], key: str) -> str:
    """A ``--group-by`` key as a run key: canonical names (``init_std``, ``hp.init_std``), config keys
    (``model.net.init_args.init_std``), CLI spellings (``model.net.init_std``) and last parts; a config
    key that a canonical key covers resolves to the canonical key."""
    keys = {k for r in runs for k in r.params}
    if key in HP_KEYS:
        return f"hp.{key}"
    if key not in keys:
        matches = sorted(k for k in keys if not k.startswith("hp.")
                         and (k.replace(".init_args", "") == key or k.endswith("." + key)))
        if len(matches) != 1:
            why = "ambiguous: " + ", ".join(matches) if matches else "no such key"
            raise ValueError(f"--group-by {key!r}: {why}; canonical keys: {', '.join(HP_KEYS)}")
        key = matches[0]
    return canonical_key(runs, key) or key


def _sort_key(values: tuple[Any, ...]) -> tuple[Any, ...]:
    # Numbers first, in order; then None and strings by their text.
    return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in values)


def grouped(runs: Sequence[Run], key_fn: Any) -> dict[tuple[Any, ...], list[Run]]:
    groups: dict[tuple[Any, ...], list[Run]] = {}
    for r in runs:
        groups.setdefault(key_fn(r), []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: _sort_key(kv[0])))


# ---------------------------------------------------------------------------- per-run numbers


def pick_key(keys: Iterable[str], prefix: str, prefer: Sequence[str] = ()) -> str | None:
    """The metric key under ``prefix``: a preferred suffix if present, else the first in sorted order.
    Per-class keys (``.../class_<c>``) and logit gradients are never chosen."""
    found = sorted({k for k in keys if k.startswith(prefix) and "/class_" not in k
                    and not k.endswith("/logits")})
    return next((prefix + p for p in prefer if prefix + p in found), found[0] if found else None)


def first_key(run_or_runs: Run | Sequence[Run], prefix: str, prefer: Sequence[str] = ()) -> str | None:
    """:func:`pick_key` over the metric keys of one run or of several."""
    runs = list(run_or_runs) if isinstance(run_or_runs, Sequence) else [run_or_runs]
    return pick_key((k for r in runs for k in r.metrics), prefix, prefer)


W1_NAMES = ("hidden.weight", "conv1.weight", "backbone.conv1.weight")
REP_NAMES = ("act", "features")


@dataclass
class Keys:
    """The metric keys a report uses, chosen once for all runs."""

    grad: str | None
    rep: str | None
    val_rep: str | None
    norm: str | None

    @classmethod
    def of(cls, runs: Sequence[Run]) -> Keys:
        return cls.of_keys({k for r in runs for k in r.metrics})

    @classmethod
    def of_keys(cls, keys: Iterable[str]) -> Keys:
        """The same choice from a set of metric names (e.g. a W&B run's history keys)."""
        keys = set(keys)
        return cls(
            pick_key(keys, metric_keys.ALIGN_GRAD, W1_NAMES),
            pick_key(keys, metric_keys.ALIGN_REP, REP_NAMES),
            pick_key(keys, metric_keys.VAL_ALIGN_REP, REP_NAMES),
            pick_key(keys, metric_keys.GRAD_OVER_WEIGHT, W1_NAMES),
        )

    def resolve(self, run: Run) -> Keys:
        """These keys where ``run`` logged them, else the run's own choice (e.g. a ConvNet's
        ``conv1.weight`` in a report that also holds MLPs with ``hidden.weight``)."""
        own = Keys.of([run])
        pairs = zip(astuple(self), astuple(own), strict=True)
        return Keys(*(mine if mine and mine in run.metrics else theirs for mine, theirs in pairs))


COLUMNS = {  # name -> table header
    "train_acc": "final train acc",
    "val_acc_best": "best held-out acc",
    "val_acc": "final held-out acc",
    "align_grad": "grad alignment (W1)",
    "align_rep": "rep alignment (train)",
    "val_align_rep": "rep alignment (held-out)",
    "grad_over_weight": "‖∇W1‖/‖W1‖ (mean)",
}


def run_numbers(run: Run, keys: Keys, tail: int = 5) -> dict[str, float]:
    """Final numbers of one run (NaN where the metric is absent): last train and held-out accuracy,
    best held-out accuracy, mean of the last ``tail`` alignments of training batches, last held-out
    alignment, mean ‖∇W1‖/‖W1‖ over training. A diverged run has none (all NaN)."""
    if run.status == rundir.DIVERGED:  # what it logged before diverging is not an outcome
        return dict.fromkeys(COLUMNS, math.nan)
    keys = keys.resolve(run)

    def last(key: str | None) -> float:
        v = run.values(key) if key else np.empty(0)
        return float(v[-1]) if v.size else math.nan

    def tail_mean(key: str | None) -> float:
        v = run.values(key) if key else np.empty(0)
        return float(v[-tail:].mean()) if v.size else math.nan

    val = run.values(metric_keys.VAL_ACC)
    norm = run.values(keys.norm) if keys.norm else np.empty(0)
    return {
        "train_acc": last(metric_keys.TRAIN_ACC),
        "val_acc_best": float(val.max()) if val.size else math.nan,
        "val_acc": last(metric_keys.VAL_ACC),
        "align_grad": tail_mean(keys.grad),
        "align_rep": tail_mean(keys.rep),
        "val_align_rep": last(keys.val_rep),
        "grad_over_weight": float(norm.mean()) if norm.size else math.nan,
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof 1; 0 for one value) of the finite values; NaN when none."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    if not v.size:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def fmt_mean_std(m: float, s: float) -> str:
    return "–" if not math.isfinite(m) else f"{m:.4f} ± {s:.4f}"
