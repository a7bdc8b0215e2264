"""runsets: grouping on the canonical keys, ``--group-by`` spellings, sort order, and the per-run
numbers against hand-computed values. Run folders are written by Lightning's CSVLogger (test_runlog).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lightning_mem.results.grouping import (
    Keys,
    Layout,
    factor_keys,
    fmt_mean_std,
    grouped,
    is_setting,
    label,
    mean_std,
    resolve_key,
    run_numbers,
    varied_keys,
)
from lightning_mem.results.runs import load_runs
from tests.results.test_runs import Rows, config, epoch_rows, write_run

# ---------------------------------------------------------------- grouping


@pytest.fixture
def grid(tmp_path: Path) -> list[Any]:
    """σ ∈ {0.01, 10} × activation {sin, relu} × seed {0, 1}; momentum varies with the activation."""
    rows = epoch_rows([0.5], [0.6])
    for sigma in (10.0, 0.01):
        for act, mom in (("sin", 0.0), ("relu", 0.9)):
            for seed in (0, 1):
                write_run(tmp_path, f"{act}-{sigma}-{seed}", rows, config(sigma, seed, act, mom))
    return load_runs([tmp_path])


def test_grouping_prefers_the_canonical_keys(grid: list[Any]) -> None:
    # data.data_dir differs too but is bookkeeping; momentum is canonical (hp.momentum) since issue 25.
    assert varied_keys(grid) == ["hp.init_std", "hp.activation", "hp.seed", "hp.momentum"]
    layout = Layout.of(grid)
    assert layout.group_keys == ["hp.init_std", "hp.activation", "hp.momentum"]
    assert (layout.sigma_key, layout.panel_keys) == ("hp.init_std", ["hp.activation", "hp.momentum"])
    groups = grouped(grid, layout.group)
    assert list(groups) == [(0.01, "relu", 0.9), (0.01, "sin", 0.0), (10.0, "relu", 0.9), (10.0, "sin", 0.0)]
    assert all(len(g) == 2 for g in groups.values())
    assert label(layout.group_keys, (0.01, "relu", 0.9)) == "σ=0.01, activation=relu, momentum=0.9"


def test_a_varied_net_class_is_one_canonical_key(tmp_path: Path) -> None:
    # config.yaml holds the class path, hp.json the class name: one key, not two "net" columns.
    rows = epoch_rows([0.5], [0.6])
    for net in ("lightning_mem.nets.ScaledMLP", "lightning_mem.nets.ConvNet"):
        cfg = config()
        cfg["model"]["net"]["class_path"] = net
        write_run(tmp_path, net.rsplit(".", 1)[-1], rows, cfg)
    runs = load_runs([tmp_path])
    assert varied_keys(runs) == ["hp.net"]
    assert Layout.of(runs).group_keys == ["hp.net"]


def test_default_groups_are_only_the_factors_that_vary(tmp_path: Path) -> None:
    # Run name, epochs and the progress bar vary too (three studies in one folder), as do seeds:
    # none of them is a factor. Issue 19's 84-run study grouped on all of them (27 groups).
    rows = epoch_rows([0.5], [0.6])
    for i, (sigma, act, seed) in enumerate([(0.01, "sin", 0), (0.01, "sin", 1), (10.0, "relu", 0),
                                            (10.0, "relu", 1), (0.01, "relu", 2)]):
        cfg = config(sigma, seed, act, name=f"study{i % 2}")
        cfg["trainer"] = {"max_epochs": 3 + i % 2, "enable_progress_bar": bool(i % 2)}
        cfg["model"]["weight_decay"] = 0.0 if i < 4 else 0.1  # a factor without a canonical key
        write_run(tmp_path, f"r{i}", rows, cfg)
    runs = load_runs([tmp_path])
    assert "hp.run_name" in varied_keys(runs) and "trainer.enable_progress_bar" in varied_keys(runs)
    assert factor_keys(runs) == ["hp.init_std", "hp.activation", "hp.weight_decay"]
    assert Layout.of(runs).group_keys == factor_keys(runs)
    groups = grouped(runs, Layout.of(runs).group)
    assert {k: len(g) for k, g in groups.items()} == {  # seeds averaged: two runs in each full group
        (0.01, "relu", 0.1): 1, (0.01, "sin", 0.0): 2, (10.0, "relu", 0.0): 2}
    assert Layout.of(runs, ["run_name"]).group_keys == ["hp.run_name"]  # asked for, it still groups
    assert [k for k in ("trainer.max_epochs", "run.name", "data.data_dir", "model.lr", "data.label_noise")
            if is_setting(k)] == ["trainer.max_epochs", "run.name", "data.data_dir"]


@pytest.mark.parametrize(("spelling", "key"), [
    ("init_std", "hp.init_std"), ("hp.init_std", "hp.init_std"), ("model.net.init_std", "hp.init_std"),
    ("model.net.init_args.init_std", "hp.init_std"), ("seed_everything", "hp.seed"),
    ("activation", "hp.activation"),
    ("momentum", "hp.momentum"), ("model.momentum", "hp.momentum"), ("run.name", "hp.run_name"),
])
def test_group_by_spellings_resolve_to_one_key(grid: list[Any], spelling: str, key: str) -> None:
    assert resolve_key(grid, spelling) == key


def test_unknown_group_by_names_the_key_and_the_canonical_keys(grid: list[Any]) -> None:
    with pytest.raises(ValueError, match=r"--group-by 'colour': no such key; canonical keys: run_name, net,"):
        Layout.of(grid, ["colour"])


def test_sort_order_numbers_first_then_text(grid: list[Any]) -> None:
    for run, value in zip(grid, ["b", None, 2.0, "a", 1, 3, "c", None], strict=True):
        run.params["mixed"] = value
    order = list(grouped(grid, lambda r: (r.get("mixed"),)))
    assert order == [(1,), (2.0,), (3,), (None,), ("a",), ("b",), ("c",)]  # None by its text, "None"


# ---------------------------------------------------------------- numbers


def test_run_numbers_against_hand_computed_values(tmp_path: Path) -> None:
    rows = epoch_rows([0.5, 0.75, 0.875], [0.6, 0.9, 0.8])
    align = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    rows += [(2 * i, {"align/grad/hidden.weight": a, "align/grad/logits": 1.0, "align/rep/act": 0.25,
                      "norm/grad_over_weight/hidden.weight": 2.0 ** -i, "epoch": i // 3})
             for i, a in enumerate(align)]
    rows += [(5, {"val/align/rep/act": 0.3, "epoch": 0}), (11, {"val/align/rep/act": 0.2, "epoch": 1})]
    run = load_runs([write_run(tmp_path, "r", rows, config())])[0]
    keys = Keys.of([run])
    assert keys == Keys("align/grad/hidden.weight", "align/rep/act", "val/align/rep/act",
                        "norm/grad_over_weight/hidden.weight")
    numbers = run_numbers(run, keys, tail=5)
    assert numbers == {
        "train_acc": 0.875, "val_acc_best": 0.9, "val_acc": 0.8,
        "align_grad": pytest.approx((0.7 + 0.6 + 0.5 + 0.4 + 0.3) / 5),  # the last 5 of 7
        "align_rep": 0.25, "val_align_rep": 0.2,
        "grad_over_weight": pytest.approx(sum(2.0 ** -i for i in range(7)) / 7),
    }
    run.status = "diverged"
    assert all(math.isnan(v) for v in run_numbers(run, keys).values())


def test_keys_resolve_to_a_runs_own_first_layer(tmp_path: Path) -> None:
    mlp = write_run(tmp_path, "mlp", [(0, {"align/grad/hidden.weight": 0.5, "align/rep/act": 0.1})], config())
    conv_rows: Rows = [(0, {"align/grad/conv1.weight": 0.25, "align/rep/features": 0.2})]
    conv = write_run(tmp_path, "conv", conv_rows, config())
    runs = load_runs([mlp, conv])
    keys = Keys.of(runs)
    assert (keys.grad, keys.rep) == ("align/grad/hidden.weight", "align/rep/act")
    conv_run = next(r for r in runs if r.path.name == "conv")
    numbers = run_numbers(conv_run, keys)
    assert numbers["align_grad"] == 0.25 and numbers["align_rep"] == 0.2


def test_mean_std_is_the_sample_std_of_finite_values() -> None:
    assert mean_std([1.0, 2.0, 3.0, math.nan]) == (2.0, 1.0)
    assert mean_std([0.5]) == (0.5, 0.0)
    assert all(math.isnan(v) for v in mean_std([math.nan]))
    assert fmt_mean_std(*mean_std([1.0, 2.0, 3.0])) == "2.0000 ± 1.0000" and fmt_mean_std(math.nan, 0) == "–"
    assert float(np.std([1.0, 2.0, 3.0], ddof=1)) == 1.0
