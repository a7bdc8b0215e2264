"""Finished runs as data: load run folders and sweep manifests, group them by the swept keys,
and reduce each run to its final numbers. Used by :mod:`lightning_mem.report` and
:mod:`lightning_mem.figures`; see the report module for the definitions of the numbers.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

log = logging.getLogger(__name__)

SIGMA_SUFFIX = "init_std"  # the swept scale: model.net.init_args.init_std
SEED_KEYS = ("seed_everything", "data.seed")
# Config keys that differ between runs without being an experimental factor.
IGNORED_PREFIXES = (
    "config", "run.id", "run.root", "ckpt_path", "data.seed", "data.data_dir", "trainer.logger",
    "trainer.callbacks", "trainer.default_root_dir", "data.download",
)
# Manifest statuses whose runs are reported; a diverged run is a result (its metrics up to then).
FINISHED = {"finished", "diverged"}


# ---------------------------------------------------------------------------- loading


@dataclass
class Run:
    """One finished run: flat config, and each metric as (step, epoch, value) rows in log order."""

    path: Path
    params: dict[str, Any]
    metrics: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)
    status: str = "finished"  # or "diverged" (the divergence guard's status.json, or the manifest)

    def values(self, key: str) -> np.ndarray:
        return np.array([v for _, _, v in self.metrics.get(key, [])], dtype=np.float64)

    def steps(self, key: str) -> np.ndarray:
        return np.array([s for s, _, _ in self.metrics.get(key, [])], dtype=np.float64)

    def epochs(self, key: str) -> np.ndarray:
        return np.array([e for _, e, _ in self.metrics.get(key, [])], dtype=np.float64)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {dotted key: leaf}; lists are kept as leaves (made hashable as tuples)."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(tree, list):
        return {prefix: tuple(json.dumps(x, sort_keys=True, default=str) for x in tree)}
    return {prefix: tree}


def read_metrics(path: Path) -> dict[str, list[tuple[int, float, float]]]:
    """Lightning's CSV: one row per log call with blanks for keys not logged there."""
    out: dict[str, list[tuple[int, float, float]]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row.get("step") or 0))
            epoch = float(row["epoch"]) if row.get("epoch") else math.nan
            for key, text in row.items():
                if key in ("step", "epoch") or text in (None, ""):
                    continue
                try:
                    out.setdefault(key, []).append((step, epoch, float(text)))
                except ValueError:
                    continue
    return out


def load_run(path: Path, params: dict[str, Any] | None = None) -> Run | None:
    metrics_file = path / "metrics.csv"
    if not metrics_file.is_file():
        log.warning("skipping %s: no metrics.csv", path)
        return None
    flat: dict[str, Any] = {}
    config_file = path / "config.yaml"
    if config_file.is_file():
        flat = flatten(yaml.safe_load(config_file.read_text()) or {})
    for key, value in (params or {}).items():
        # Manifest params use CLI keys (model.net.init_std); config.yaml holds .init_args. forms.
        if not any(k == key or k.replace(".init_args", "") == key for k in flat):
            flat[key] = value
    status = "finished"
    marker = path / "status.json"
    if marker.is_file():
        with contextlib.suppress(ValueError, AttributeError):
            status = str(json.loads(marker.read_text()).get("status", status))
    return Run(path, flat, read_metrics(metrics_file), status)


def _manifest_entries(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, dict):
        runs = data.get("runs", data)  # sweep.py: {"runs": {run_id: {status, params, run_dir, ...}}}
        data = list(runs.values()) if isinstance(runs, dict) else runs
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []


def load_manifest(path: Path) -> list[Run]:
    """Runs listed in a sweep manifest (``run_dir`` relative to the manifest or absolute)."""
    runs = []
    for entry in _manifest_entries(json.loads(path.read_text())):
        status = str(entry.get("status", "finished")).lower()
        where = entry.get("run_dir") or entry.get("dir") or entry.get("path")
        if status not in FINISHED:
            log.warning("skipping manifest entry %s: status %r", where, status)
            continue
        if not where:
            log.warning("skipping manifest entry without a run directory: %s", entry)
            continue
        run_dir = Path(where)
        if not run_dir.is_absolute() and not run_dir.exists():
            run_dir = path.parent / run_dir
        params = entry.get("params") or entry.get("parameters") or {}
        run = load_run(run_dir, params if isinstance(params, dict) else {})
        if run is not None:
            run.status = "diverged" if status == "diverged" else run.status
            runs.append(run)
    return runs


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Runs from run folders, folders of runs (searched recursively) and manifests; no duplicates."""
    runs: list[Run] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        if p.is_file() and p.suffix == ".json":
            found = load_manifest(p)
        elif (p / "manifest.json").is_file():
            found = load_manifest(p / "manifest.json")
        elif (p / "metrics.csv").is_file():
            found = [r for r in [load_run(p)] if r is not None]
        elif p.is_dir():
            found = [r for d in sorted(p.rglob("metrics.csv")) if (r := load_run(d.parent)) is not None]
        else:
            raise FileNotFoundError(f"{p}: not a run folder, a folder of runs or a manifest.json")
        for run in found:
            if run.path.resolve() not in seen:
                seen.add(run.path.resolve())
                runs.append(run)
    return runs


# ---------------------------------------------------------------------------- grouping


def swept_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys whose values differ across runs (bookkeeping keys excluded), sorted."""
    keys = sorted({k for r in runs for k in r.params})
    out = []
    for k in keys:
        if any(k == p or k.startswith(p + ".") for p in IGNORED_PREFIXES):
            continue
        if len({_hashable(r.params.get(k)) for r in runs}) > 1:
            out.append(k)
    return out


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else v


def short(key: str) -> str:
    """``model.net.init_args.activation`` -> ``activation``; ``seed_everything`` -> ``seed``."""
    if key == "seed_everything":
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
        swept = swept_keys(runs)
        if group_by:
            group_keys = [_resolve_key(runs, k) for k in group_by]
        else:
            group_keys = [k for k in swept if k not in SEED_KEYS]
        sigma = next((k for k in group_keys if k.endswith(SIGMA_SUFFIX)), None)
        return cls(group_keys, sigma, [k for k in group_keys if k != sigma])

    def group(self, run: Run) -> tuple[Any, ...]:
        return tuple(run.params.get(k) for k in self.group_keys)

    def panel(self, run: Run) -> tuple[Any, ...]:
        return tuple(run.params.get(k) for k in self.panel_keys)

    def sigma_tuple(self, run: Run) -> tuple[float | None]:
        return (self.sigma(run),)

    def sigma(self, run: Run) -> float | None:
        v = run.params.get(self.sigma_key) if self.sigma_key else None
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _resolve_key(runs: Sequence[Run], key: str) -> str:
    """Accept CLI spellings (model.net.init_std) and short names (init_std) for --group-by."""
    keys = {k for r in runs for k in r.params}
    if key in keys:
        return key
    matches = sorted(k for k in keys if k.replace(".init_args", "") == key or k.endswith("." + key))
    if len(matches) == 1:
        return matches[0]
    why = "ambiguous: " + ", ".join(matches) if matches else "no such key"
    raise ValueError(f"--group-by {key!r}: {why}")


def _sort_key(values: tuple[Any, ...]) -> tuple[Any, ...]:
    # Numbers first, in order; then None and strings by their text.
    return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in values)


def grouped(runs: Sequence[Run], key_fn: Any) -> dict[tuple[Any, ...], list[Run]]:
    groups: dict[tuple[Any, ...], list[Run]] = {}
    for r in runs:
        groups.setdefault(key_fn(r), []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: _sort_key(kv[0])))


# ---------------------------------------------------------------------------- per-run numbers


def first_key(run_or_runs: Run | Sequence[Run], prefix: str, prefer: Sequence[str] = ()) -> str | None:
    """The metric key to use under ``prefix``: a preferred suffix if present, else the first found.

    Per-class keys (``.../class_<c>``) and logit gradients are never chosen.
    """
    runs = [run_or_runs] if isinstance(run_or_runs, Run) else list(run_or_runs)
    keys = sorted({
        k for r in runs for k in r.metrics
        if k.startswith(prefix) and "/class_" not in k and not k.endswith("/logits")
    })
    for p in prefer:
        if prefix + p in keys:
            return prefix + p
    return keys[0] if keys else None


W1_NAMES = ("hidden.weight", "conv1.weight", "backbone.conv1.weight")


@dataclass
class Keys:
    """The metric keys a report uses, chosen once for all runs."""

    grad: str | None
    rep: str | None
    val_rep: str | None
    norm: str | None

    @classmethod
    def of(cls, runs: Sequence[Run]) -> Keys:
        return cls(
            first_key(runs, "align/grad/", W1_NAMES),
            first_key(runs, "align/rep/", ("act", "features")),
            first_key(runs, "val/align/rep/", ("act", "features")),
            first_key(runs, "norm/grad_over_weight/", W1_NAMES),
        )

    def resolve(self, run: Run) -> Keys:
        """These keys where ``run`` logged them, else the run's own choice (e.g. a ConvNet's
        ``conv1.weight`` in a report that also holds MLPs with ``hidden.weight``)."""
        own = Keys.of([run])
        pairs = zip(astuple(self), astuple(own), strict=True)
        return Keys(*(mine if mine and mine in run.metrics else theirs for mine, theirs in pairs))


COLUMNS = {  # name -> (table header, how it is computed)
    "train_acc": "final train acc",
    "val_acc_best": "best held-out acc",
    "val_acc": "final held-out acc",
    "align_grad": "grad alignment (W1)",
    "align_rep": "rep alignment (train)",
    "val_align_rep": "rep alignment (held-out)",
    "grad_over_weight": "‖∇W1‖/‖W1‖ (mean)",
}


def run_numbers(run: Run, keys: Keys, tail: int = 5) -> dict[str, float]:
    """Final numbers of one run (NaN where the metric is absent); see the module docstring."""
    if run.status == "diverged":  # no final numbers: what it logged before diverging is not an outcome
        return dict.fromkeys(COLUMNS, math.nan)
    keys = keys.resolve(run)

    def last(key: str | None) -> float:
        v = run.values(key) if key else np.empty(0)
        return float(v[-1]) if v.size else math.nan

    def tail_mean(key: str | None) -> float:
        v = run.values(key) if key else np.empty(0)
        return float(v[-tail:].mean()) if v.size else math.nan

    val = run.values("val/acc")
    norm = run.values(keys.norm) if keys.norm else np.empty(0)
    return {
        "train_acc": last("train/acc"),
        "val_acc_best": float(val.max()) if val.size else math.nan,
        "val_acc": last("val/acc"),
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
