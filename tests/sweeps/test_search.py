"""The search space of a sweep file: the grid as W&B enumerates it, and the random draws of every W&B
distribution against scipy.stats as the independent reference (a KS test, or exact bin probabilities
for discrete and quantized laws; seeded, so the outcome is fixed)."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import numpy as np
import pytest
from scipy import stats

from lightning_mem.sweeps import search
from lightning_mem.sweeps.search import SearchError

PINNED_0 = {"a": 0.6220477394807132, "b": 4}  # seed 0, point 0 (b: the second draw of the stream)
PINNED_1 = {"a": 0.37637117568106115, "b": 1}
N = 3000  # draws per law; with a fixed seed, a wrong law fails by many orders of magnitude of p


def _draws(spec: dict[str, Any], n: int = N, seed: int = 0) -> list[Any]:
    return [p["x"] for p in search.random_points({"x": spec}, n, seed)]


# ---------------------------------------------------------------- grid


def test_grid_values_value_and_nested_in_yaml_order() -> None:
    grid = search.expand_grid({
        "a": {"values": [1, 2]},
        "b": {"value": "x"},
        "c": {"parameters": {"d": {"values": [True, False]}}},
    })
    assert grid == [
        {"a": 1, "b": "x", "c": {"d": True}}, {"a": 1, "b": "x", "c": {"d": False}},
        {"a": 2, "b": "x", "c": {"d": True}}, {"a": 2, "b": "x", "c": {"d": False}},
    ]


def test_grid_enumerates_int_uniform_and_q_uniform_as_w_and_b_does() -> None:
    # W&B's grid_search_next_runs: range(min, max + 1) and numpy.arange(min, max, q).
    assert [p["n"] for p in search.expand_grid({"n": {"min": 2, "max": 5}})] == [2, 3, 4, 5]
    got = [p["q"] for p in search.expand_grid({"q": {"distribution": "q_uniform", "min": 0.1, "max": 1.0,
                                                     "q": 0.3}})]
    assert got == pytest.approx(np.arange(0.1, 1.0, 0.3).tolist(), abs=1e-12) and len(got) == 3


@pytest.mark.parametrize("spec", [
    {"distribution": "uniform", "min": 0.0, "max": 1.0},
    {"min": 0.1, "max": 3},
    {"distribution": "log_uniform_values", "min": 0.001, "max": 10.0},
    {"values": [1, 2], "probabilities": [0.5, 0.5]},
])
def test_grid_names_the_parameter_it_cannot_grid(spec: dict[str, Any]) -> None:
    pattern = r"parameter 'model\.net\.init_std'.*cannot grid.*values: \[\.\.\.\]"
    with pytest.raises(SearchError, match=pattern):
        search.expand_grid({"seed_everything": {"values": [0, 1]}, "model.net.init_std": spec})


# ---------------------------------------------------------------- random: each law against scipy


CONTINUOUS = [
    ({"min": 0.5, "max": 2.5}, stats.uniform(0.5, 2.0)),
    ({"distribution": "uniform", "min": -1, "max": 1}, stats.uniform(-1, 2)),
    ({"distribution": "log_uniform_values", "min": 1e-4, "max": 1.0}, stats.loguniform(1e-4, 1.0)),
    ({"distribution": "inv_log_uniform_values", "min": 1e-4, "max": 1.0}, stats.loguniform(1e-4, 1.0)),
    ({"distribution": "log_uniform", "min": -3, "max": 1}, stats.loguniform(math.exp(-3), math.exp(1))),
    ({"distribution": "inv_log_uniform", "min": -1, "max": 2}, stats.loguniform(math.exp(-2), math.exp(1))),
    ({"distribution": "normal"}, stats.norm(0, 1)),
    ({"distribution": "normal", "mu": 3.0, "sigma": 0.5}, stats.norm(3.0, 0.5)),
    ({"distribution": "log_normal", "mu": -1.0, "sigma": 0.7}, stats.lognorm(s=0.7, scale=math.exp(-1.0))),
]


@pytest.mark.parametrize(("spec", "law"), CONTINUOUS, ids=[str(s) for s, _ in CONTINUOUS])
def test_continuous_laws_match_scipy(spec: dict[str, Any], law: Any) -> None:
    x = np.array(_draws(spec), dtype=np.float64)
    assert stats.kstest(x, law.cdf).pvalue > 1e-3
    assert law.support()[0] <= x.min() and x.max() <= law.support()[1]


def _bins(values: list[Any]) -> dict[Any, float]:
    return {k: v / len(values) for k, v in Counter(values).items()}


def _close(freq: dict[Any, float], probs: dict[Any, float]) -> None:
    assert set(freq) <= set(probs)
    for k, p in probs.items():  # 5 binomial standard errors
        assert abs(freq.get(k, 0.0) - p) <= 5 * math.sqrt(p * (1 - p) / N) + 1e-12, (k, freq.get(k), p)


def test_discrete_laws() -> None:
    _close(_bins(_draws({"values": ["a", "b", "c"]})), {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    _close(_bins(_draws({"values": ["a", "b", "c"], "probabilities": [0.7, 0.0, 0.3]})), {"a": 0.7, "c": 0.3})
    ints = _draws({"distribution": "int_uniform", "min": -2, "max": 3})
    assert all(type(v) is int for v in ints)
    _close(_bins(ints), {k: float(stats.randint(-2, 4).pmf(k)) for k in range(-2, 4)})
    assert set(_draws({"value": 7}, n=5)) == {7}


@pytest.mark.parametrize(("spec", "law", "kind"), [
    ({"distribution": "q_uniform", "min": 0, "max": 10, "q": 2}, stats.uniform(0, 10), int),
    ({"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25}, stats.uniform(0, 1), float),
    ({"distribution": "q_normal", "mu": 0.0, "sigma": 2.0}, stats.norm(0, 2), float),  # default q = 1.0
    ({"distribution": "q_log_normal", "mu": 1.0, "sigma": 0.5, "q": 1}, stats.lognorm(0.5, scale=math.e),
     int),
    ({"distribution": "q_log_uniform_values", "min": 1, "max": 100, "q": 10}, stats.loguniform(1, 100), int),
    ({"distribution": "q_log_uniform", "min": 0, "max": 3, "q": 5}, stats.loguniform(1, math.exp(3)), int),
])
def test_quantized_laws_round_to_multiples_of_q(spec: dict[str, Any], law: Any, kind: type) -> None:
    q = spec.get("q", 1.0)
    values = _draws(spec)
    assert all(type(v) is kind for v in values)  # an int q gives ints, as W&B's engine
    assert all(abs(v / q - round(v / q)) < 1e-9 for v in values)
    # P(round(X / q) q = k q) = F((k + ½) q) − F((k − ½) q)
    probs = {k * q: float(law.cdf((k + 0.5) * q) - law.cdf((k - 0.5) * q))
             for k in {round(v / q) for v in values}}
    _close(_bins(values), probs)


def test_nested_parameters_are_sampled_into_a_dict() -> None:
    point = search.random_points({"opt": {"parameters": {"lr": {"min": 0.0, "max": 1.0},
                                                         "name": {"value": "sgd"}}}}, 1, 0)[0]
    assert set(point) == {"opt"} and point["opt"]["name"] == "sgd" and 0 <= point["opt"]["lr"] <= 1


# ---------------------------------------------------------------- random: seeds and reproducibility


def test_points_depend_on_seed_and_index_only_and_are_pinned() -> None:
    space = {"a": {"min": 0.0, "max": 1.0}, "b": {"values": [1, 2, 3, 4]}}
    five = search.random_points(space, 5, seed=3)
    assert search.random_points(space, 2, seed=3) == five[:2]  # a larger --count extends the sweep
    assert search.random_points(space, 5, seed=3) == five
    assert search.random_points(space, 5, seed=4) != five
    # The stream is Python's Mersenne Twister seeded with a string, stable across versions and
    # platforms: these numbers must never change (they name the runs of existing sweeps).
    assert random.Random("lightning-mem:0:0").random() == 0.6220477394807132
    assert search.random_points(space, 2, seed=0) == [PINNED_0, PINNED_1]


@pytest.mark.parametrize(("spec", "message"), [
    ({"distribution": "beta"}, "distribution 'beta' is not supported"),
    ({"distribution": "uniform", "min": 1.0}, "takes min, max; got distribution, min"),
    ({"distribution": "normal", "mu": 0, "sd": 1}, "optionally mu, sigma"),
    ({"min": 2.0, "max": 1.0}, "min 2.0 is not less than max 1.0"),
    ({"distribution": "log_uniform_values", "min": 0.0, "max": 1.0}, "needs min > 0"),
    ({"distribution": "q_uniform", "min": 0, "max": 1, "q": 0}, "q must be > 0"),
    ({"distribution": "int_uniform", "min": 0, "max": 1.5}, "integer min and max"),
    ({"distribution": "uniform", "min": 0, "max": float("nan")}, "max=nan must be a finite number"),
    ({"values": [1, 2], "probabilities": [0.5, 0.6]}, "summing to 1"),
    ({"values": [1, 2], "probabilities": [1.0]}, "one number >= 0 per value"),
    ({"values": []}, "values must be a non-empty list"),
    (0.1, "expected a mapping such as {values: [...]}, got 0.1"),
    ({"max": 1}, "has no values, value, min/max or distribution"),
])
def test_bad_specs_name_the_parameter(spec: Any, message: str) -> None:
    with pytest.raises(SearchError) as err:
        search.random_points({"model.lr": spec}, 1, 0)
    assert str(err.value).startswith("parameter 'model.lr': ") and message in str(err.value), str(err.value)
