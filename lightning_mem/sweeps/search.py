"""The search space of a W&B sweep file: its grid, and seeded random draws with W&B's distributions.

W&B's own sweep engine (``sweeps`` on PyPI, 0.3.0) would be the natural implementation, but it does
not install beside our dependencies: its metadata requires ``numpy<2,>=1.15`` (read with ``pip
download --no-deps sweeps``), while torch 2.14 and pandas 3 need numpy 2. So ``grid`` and ``random``
are implemented here with W&B's semantics, and ``bayes`` (a model fitted to earlier results, which
W&B keeps on its server) is left to ``wandb agent`` against a W&B server.

**Grid** (:func:`expand_grid`), as W&B's ``grid_search_next_runs``: ``values`` lists, single
``value``s, ``int_uniform`` (every integer from min to max), ``q_uniform`` (``numpy.arange(min, max,
q)``: max excluded, as W&B does) and nested ``parameters`` (their combinations become dict values);
anything else cannot be gridded. Combinations are in YAML order, the last parameter varying fastest.

**Random** (:func:`random_points`): point ``i`` of seed ``s`` draws one ``u ~ U[0, 1)`` per parameter,
in YAML order, from Python's ``random.Random(f"lightning-mem:{s}:{i}")`` (a string seed: the same
sequence on every Python version and platform), and maps it through the distribution's quantile
function, the function W&B's engine applies to its own uniform draw (``HyperParameter.ppf``). Point
``i`` does not depend on how many points are asked for, so a larger ``--count`` extends a sweep.
Distributions, with W&B's defaults (``mu`` 0, ``sigma`` 1, ``q`` 1.0; a quantized value is an int
when ``q`` is an int, and rounds half to even like ``numpy.round``):

====================================  ==========================================================
``values`` (``categorical``)          one of the values, each equally likely
``values`` + ``probabilities``        value k with probability p_k (p_k ≥ 0, Σ p_k = 1)
``value`` (``constant``)              the value
``min``, ``max`` (``int_uniform``)    an integer in [min, max] (the default when both are ints)
``uniform``                           U(min, max) (the default when either bound is a float)
``q_uniform``                         round(U(min, max) / q) · q
``log_uniform_values``                exp(U(log min, log max)), min > 0
``q_log_uniform_values``              round(exp(U(log min, log max)) / q) · q
``inv_log_uniform_values``            as ``log_uniform_values`` (W&B's quantile reduces to it)
``log_uniform`` (deprecated by W&B)   exp(U(min, max)): the bounds are logs
``q_log_uniform`` (deprecated)        round(exp(U(min, max)) / q) · q
``inv_log_uniform`` (deprecated)      exp(−U(min, max))
``normal`` / ``q_normal``             N(mu, sigma²), quantized by q
``log_normal`` / ``q_log_normal``     exp(N(mu, sigma²)), quantized by q
====================================  ==========================================================

``beta``/``q_beta`` are refused (no quantile function in the standard library); so is any key a
distribution does not define. Errors raise :class:`SearchError` naming the parameter.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Callable
from statistics import NormalDist
from typing import Any

from lightning_mem.errors import SearchError

GRID_HINT = "give it `values: [...]` or `value: x`"
_NUMBER = (int, float)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, _NUMBER) and not isinstance(x, bool) and math.isfinite(x)


def distribution(key: str, spec: Any) -> str:
    """The W&B distribution of one ``parameters`` entry (``"parameters"`` for a nested block)."""
    if not isinstance(spec, dict):
        raise SearchError(f"parameter {key!r}: expected a mapping such as {{values: [...]}}, got {spec!r}")
    if "parameters" in spec:
        return "parameters"
    if "distribution" in spec:
        return str(spec["distribution"])
    if "values" in spec:
        return "categorical_w_probabilities" if "probabilities" in spec else "categorical"
    if "value" in spec:
        return "constant"
    if "min" in spec and "max" in spec:
        return "int_uniform" if _is_int(spec["min"]) and _is_int(spec["max"]) else "uniform"
    raise SearchError(f"parameter {key!r}: {spec!r} has no values, value, min/max or distribution")


# distribution -> (required keys, optional keys with W&B's defaults)
_KEYS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "constant": (("value",), {}),
    "categorical": (("values",), {}),
    "categorical_w_probabilities": (("values", "probabilities"), {}),
    "int_uniform": (("min", "max"), {}),
    "uniform": (("min", "max"), {}),
    "q_uniform": (("min", "max"), {"q": 1.0}),
    "log_uniform_values": (("min", "max"), {}),
    "q_log_uniform_values": (("min", "max"), {"q": 1.0}),
    "inv_log_uniform_values": (("min", "max"), {}),
    "log_uniform": (("min", "max"), {}),
    "q_log_uniform": (("min", "max"), {"q": 1.0}),
    "inv_log_uniform": (("min", "max"), {}),
    "normal": ((), {"mu": 0.0, "sigma": 1.0}),
    "q_normal": ((), {"mu": 0.0, "sigma": 1.0, "q": 1.0}),
    "log_normal": ((), {"mu": 0.0, "sigma": 1.0}),
    "q_log_normal": ((), {"mu": 0.0, "sigma": 1.0, "q": 1.0}),
}


def checked(key: str, spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(distribution, spec with W&B's defaults filled in), or :class:`SearchError` naming ``key``."""
    dist = distribution(key, spec)
    if dist not in _KEYS:
        raise SearchError(f"parameter {key!r}: distribution {dist!r} is not supported here; "
                          f"supported: {', '.join(_KEYS)} (and nested `parameters`)")
    required, defaults = _KEYS[dist]
    extra = set(spec) - {"distribution", *required, *defaults}
    missing = [k for k in required if k not in spec]
    if extra or missing:
        raise SearchError(f"parameter {key!r}: distribution {dist!r} takes {', '.join(required) or '-'}"
                          + (f" and optionally {', '.join(defaults)}" if defaults else "")
                          + f"; got {', '.join(sorted(spec))}")
    spec = {**defaults, **spec}
    if "values" in spec and (not isinstance(spec["values"], list) or not spec["values"]):
        raise SearchError(f"parameter {key!r}: values must be a non-empty list")
    numeric = [k for k in ("min", "max", "mu", "sigma", "q") if k in spec]
    bad = [k for k in numeric if not _is_number(spec[k])]
    if bad:
        raise SearchError(f"parameter {key!r}: {bad[0]}={spec[bad[0]]!r} must be a finite number")
    if dist == "int_uniform" and not (_is_int(spec["min"]) and _is_int(spec["max"])):
        raise SearchError(f"parameter {key!r}: int_uniform needs integer min and max")
    if "min" in spec and spec["min"] >= spec["max"]:
        raise SearchError(f"parameter {key!r}: min {spec['min']} is not less than max {spec['max']}")
    if dist.endswith("_values") and spec["min"] <= 0:
        raise SearchError(f"parameter {key!r}: {dist} needs min > 0 (it is a log scale), got {spec['min']}")
    if spec.get("q", 1) <= 0 or spec.get("sigma", 1) < 0:
        raise SearchError(f"parameter {key!r}: q must be > 0 and sigma >= 0")
    if dist == "categorical_w_probabilities":
        p = spec["probabilities"]
        ok = isinstance(p, list) and len(p) == len(spec["values"])
        ok = ok and all(_is_number(x) and x >= 0 for x in p)
        if not ok or not math.isclose(sum(p), 1.0, rel_tol=0, abs_tol=1e-8):
            raise SearchError(f"parameter {key!r}: probabilities must be one number >= 0 per value, "
                              f"summing to 1; got {p!r} for {len(spec['values'])} values")
    return dist, spec


# ---------------------------------------------------------------------------- grid


def _axis(key: str, spec: Any) -> list[Any]:
    dist = distribution(key, spec)
    if dist == "parameters":
        return expand_grid(spec["parameters"], prefix=f"{key}.")
    if dist not in ("constant", "categorical", "int_uniform", "q_uniform"):
        raise SearchError(f"parameter {key!r}: the local runner cannot grid {spec!r} "
                          f"(distribution {dist!r}); {GRID_HINT}, or use `method: random` with --count")
    dist, spec = checked(key, spec)
    if dist == "constant":
        return [spec["value"]]
    if dist == "categorical":
        return list(spec["values"])
    if dist == "int_uniform":
        return list(range(spec["min"], spec["max"] + 1))
    lo, hi, q = spec["min"], spec["max"], spec["q"]  # numpy.arange(min, max, q), without numpy
    return [lo + i * q for i in range(max(math.ceil((hi - lo) / q), 0))]


def grid_size(parameters: Any, prefix: str = "") -> int:
    """How many points :func:`expand_grid` would return, counted without building any (a grid of 10**12
    points, or an ``int_uniform`` axis of 10**12 values, is refused by the caller before it is expanded)."""
    if not isinstance(parameters, dict) or not parameters:
        raise SearchError(f"parameters{' of ' + prefix[:-1] if prefix else ''}: expected a non-empty mapping")
    size = 1
    for name, spec in parameters.items():
        key = f"{prefix}{name}"
        if distribution(key, spec) in ("int_uniform", "q_uniform"):
            dist, spec = checked(key, spec)
            lo, hi = spec["min"], spec["max"]
            size *= hi - lo + 1 if dist == "int_uniform" else max(math.ceil((hi - lo) / spec["q"]), 0)
        elif distribution(key, spec) == "parameters":
            size *= grid_size(spec["parameters"], prefix=f"{key}.")
        else:
            size *= len(_axis(key, spec))
    return size


def expand_grid(parameters: Any, prefix: str = "") -> list[dict[str, Any]]:
    """All combinations of a W&B ``parameters`` block, in YAML order (see the module docstring)."""
    if not isinstance(parameters, dict) or not parameters:
        raise SearchError(f"parameters{' of ' + prefix[:-1] if prefix else ''}: expected a non-empty mapping")
    axes = [_axis(f"{prefix}{name}", spec) for name, spec in parameters.items()]
    names = list(parameters)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes)]


# ---------------------------------------------------------------------------- random


def _quantize(x: float, q: float | int) -> float | int:
    value = round(x / q) * q  # round half to even, as numpy.round
    return int(value) if _is_int(q) else float(value)


def _uniform(lo: float, hi: float) -> Callable[[float], float]:
    return lambda u: lo + u * (hi - lo)


def quantile(dist: str, spec: dict[str, Any]) -> Callable[[float], Any]:
    """The quantile function (u in [0, 1) -> value) of a checked ``spec`` (see :func:`checked`)."""
    if dist == "constant":
        return lambda u: spec["value"]
    if dist == "categorical":
        values = spec["values"]
        return lambda u: values[min(int(u * len(values)), len(values) - 1)]
    if dist == "categorical_w_probabilities":
        values, cdf = spec["values"], list(itertools.accumulate(spec["probabilities"]))
        return lambda u: values[min(bisect.bisect_right(cdf, u), len(values) - 1)]
    if dist == "int_uniform":
        lo, n = spec["min"], spec["max"] - spec["min"] + 1
        return lambda u: lo + min(int(u * n), n - 1)
    q = spec.get("q")
    if dist in ("uniform", "q_uniform"):
        base = _uniform(spec["min"], spec["max"])
    elif dist in ("log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values"):
        inner = _uniform(math.log(spec["min"]), math.log(spec["max"]))
        base = lambda u: math.exp(inner(u))  # noqa: E731
    elif dist in ("log_uniform", "q_log_uniform"):
        inner = _uniform(spec["min"], spec["max"])
        base = lambda u: math.exp(inner(u))  # noqa: E731
    elif dist == "inv_log_uniform":
        inner = _uniform(spec["min"], spec["max"])
        base = lambda u: math.exp(-inner(1 - u))  # noqa: E731
    else:  # normal, q_normal, log_normal, q_log_normal
        normal = NormalDist(spec["mu"], spec["sigma"])
        logs = dist.endswith("log_normal")

        def base(u: float) -> float:
            x = normal.inv_cdf(min(max(u, 1e-300), 1 - 2**-53)) if spec["sigma"] > 0 else spec["mu"]
            return math.exp(x) if logs else x

    return base if q is None else (lambda u: _quantize(base(u), q))


def sample(parameters: dict[str, Any], rng: random.Random, prefix: str = "") -> dict[str, Any]:
    """One point: a value per parameter, in YAML order; nested ``parameters`` become dict values."""
    point: dict[str, Any] = {}
    for name, spec in parameters.items():
        key = f"{prefix}{name}"
        if distribution(key, spec) == "parameters":
            point[name] = sample(spec["parameters"], rng, prefix=f"{key}.")
        else:
            point[name] = quantile(*checked(key, spec))(rng.random())
    return point


def random_points(parameters: Any, count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` points of a ``method: random`` sweep; point ``i`` depends on ``seed`` and ``i`` only."""
    if not isinstance(parameters, dict) or not parameters:
        raise SearchError("parameters: expected a non-empty mapping")
    return [sample(parameters, random.Random(f"lightning-mem:{seed}:{i}")) for i in range(count)]
