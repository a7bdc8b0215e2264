"""A W&B sweep file as runs: their parameters, ids and command lines, checked before any run starts.

:func:`points` gives the sweep's runs (:mod:`lightning_mem.sweeps.search`): ``method: grid`` every
combination;
``method: random`` ``--count N`` seeded draws with W&B's distributions; ``run_cap`` in the file caps
either. ``method: bayes`` is refused: it needs W&B's server. W&B's open-source engine (``sweeps`` on
PyPI) is not used because it requires ``numpy<2``, and we need numpy 2 (torch 2.14, pandas 3).

:func:`build_command` builds each run's command from the sweep's ``command`` with wandb's own functions
(``create_sweep_command``, ``create_sweep_command_args``), substituted as ``wandb agent`` does
(``${env}``, ``${interpreter}`` = this Python, ``${program}``, ``${args}``, ``${args_json_file}``, ...).
:func:`check_runs` parses every run's command line as the CLI would, before the first one starts.
Torch-free until :func:`check_runs` (which imports the CLI once).
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from lightning_mem import rundir, safeyaml
from lightning_mem.cli.argv import cli_args
from lightning_mem.sweeps import search

METHODS = ("grid", "random")
BAYES = ("method 'bayes' fits a model to earlier results, which W&B keeps on its server: run `wandb sweep "
         "FILE` and then `wandb agent SWEEP_ID` (or `lightning-mem sweep agents SWEEP_ID --gpus ...`); "
         "locally, use `method: random` with --count N, or `method: grid` (W&B's engine, `sweeps` on PyPI, "
         "requires numpy<2 and does not install beside our numpy 2)")
UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")  # run ids and folder names: keep to these


# ---------------------------------------------------------------------------- the sweep file


def load_spec(path: Path) -> dict[str, Any]:
    """The sweep file as a mapping with ``parameters`` and a ``command`` list; ValueError naming it."""
    try:
        loaded = safeyaml.load(path.read_text(), f"{path}")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read the sweep file ({err})") from err
    except safeyaml.YAMLLimitError as err:
        raise ValueError(str(err)) from err
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(loaded, dict) or not isinstance(loaded.get("parameters", {}), dict):
        raise ValueError(f"{path}: a sweep is a mapping with `parameters:` (a mapping), `command:`")
    if not isinstance(loaded.get("command"), list):
        raise ValueError(f"{path}: the sweep needs a `command:` list (lightning-mem fit ...)")
    return loaded


def run_id(params: dict[str, Any], show: list[str] | None = None, prefix: str = "") -> str:
    """A readable id, the same on every rerun: ``<prefix><key><value>_...-<hash of all params>``.

    The readable part names the ``show`` keys (default: all) by their last dotted part, dotted string
    values (class paths) by theirs, and floats with 4 significant digits: ``init_std0.01_seed1-3f2a9c1e``.
    """
    digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
    parts = []
    for key in params if show is None else show:
        value = params[key]
        if isinstance(value, str):
            value = value.rsplit(".", 1)[-1]
        elif isinstance(value, float) and prefix:  # random draws: 0.0123 rather than 0.012345678901
            value = f"{value:.4g}"
        if not isinstance(value, dict):
            parts.append(f"{key.rsplit('.', 1)[-1]}{value}")
    return f"{prefix}{UNSAFE.sub('', '_'.join(parts))[:48] or 'run'}-{digest}"


MAX_RUNS = 10_000  # runs of one local sweep: each is a process (and is checked before launch)
MAX_GRID = 1_000_000  # grid points expanded (then cut to --count / run_cap)


def points(
    spec: dict[str, Any], path: Path, count: int | None, seed: int
) -> list[tuple[str, dict[str, Any]]]:
    """(run id, parameters) of every run of the sweep, in order (see the module docstring)."""
    method = spec.get("method", "grid")
    if method == "bayes":
        raise ValueError(f"{path}: {BAYES}")
    if method not in METHODS:
        raise ValueError(f"{path}: method {method!r}; the local runner runs {', '.join(METHODS)} (and bayes "
                         "through `wandb agent`)")
    cap = spec.get("run_cap")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise ValueError(f"{path}: run_cap={cap!r} must be an integer >= 1")
    limits = [n for n in (count, cap) if n is not None]
    parameters = spec.get("parameters") or {}
    if limits and min(limits) > MAX_RUNS:
        raise ValueError(f"{path}: {min(limits)} runs asked for (--count / run_cap); the local runner "
                         f"starts at most {MAX_RUNS:,} (one process each); split the sweep, or run it with "
                         "`wandb agent`")
    if method == "random":
        if not limits:
            raise ValueError(f"{path}: method 'random' draws without end: give --count N "
                             "(or run_cap in the file)")
        combos = search.random_points(parameters, min(limits), seed)
        const = {k for k, v in parameters.items() if search.distribution(k, v) == "constant"}
        show = [k for k in parameters if k not in const]
        return [(run_id(p, show, prefix=f"{i:03d}_"), p) for i, p in enumerate(combos)]
    size = search.grid_size(parameters)
    if size > MAX_GRID:
        raise ValueError(f"{path}: the grid has {size:,} points; the local runner expands at most "
                         f"{MAX_GRID:,}; give fewer values, or run it with `wandb agent`")
    if min([size, *limits]) > MAX_RUNS:
        raise ValueError(f"{path}: the grid has {size:,} points; the local runner starts at most "
                         f"{MAX_RUNS:,} runs (one process each); give fewer values, take the first N with "
                         "--count N, or run it with `wandb agent`")
    combos = search.expand_grid(parameters)[: min(limits, default=None)]
    varying = [k for k in combos[0] if any(c[k] != combos[0][k] for c in combos)]
    return [(run_id(p, show=varying), p) for p in combos]


def build_command(template: list[Any], params: dict[str, Any], args_json_file: Path,
                  program: str | None = None) -> list[str]:
    """A sweep ``command`` with its macros substituted by wandb's own functions, as ``wandb agent`` does
    (``${interpreter}`` is this Python, so the runs use this environment; unknown macros vanish)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args  # ~0.5 s

    macros: dict[str, Any] = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    macros |= {"interpreter": [sys.executable], "program": [program] if program else [],
               "args_json_file": [str(args_json_file)]}
    if platform.system() != "Windows":
        macros["env"] = ["/usr/bin/env"]
    out: list[str] = []
    for item in create_sweep_command([str(c) for c in template]):  # a copy: it substitutes in place
        text = str(item)
        out += (macros.get(text[2:-1]) or []) if text.startswith("${") and text.endswith("}") else [text]
    return out


def args_json(params: dict[str, Any]) -> str:
    """The ``${args_json_file}`` content: wandb's ``args_json`` (a flat JSON of the dotted keys)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    return str(macros["args_json"][0])


# ---------------------------------------------------------------------------- the check before launch


ARGS_MACROS = ("${args}", "${args_no_hyphens}", "${args_no_boolean_flags}", "${args_json}",
               "${args_json_file}")  # wandb's macros that pass a run's parameters to its command
CLI_SUBCOMMANDS = ("fit", "validate", "test")


def _cli_argv(command: list[str]) -> list[str] | None:
    """The ``fit ...`` part of a built command that runs ``lightning-mem`` (the console script, or ``python
    -m lightning_mem``); None for any other program."""
    rest = cli_args(command)
    return rest if rest and rest[0] in CLI_SUBCOMMANDS else None


def check_runs(spec: dict[str, Any], path: Path, params: dict[str, dict[str, Any]],
               report: Callable[[int, int], None] | None = None) -> None:
    """Before any run starts: every run's command line must parse as the CLI parses it, so a parameter
    the CLI does not know (``model.lrr``) or a value it refuses stops the sweep (ValueError naming the
    sweep file, the run and the parameter) instead of failing in every run.

    Only commands of ``lightning-mem fit|validate|test`` are checked (other programs: nothing to check
    against). Their parameters must reach them: a command without any of :data:`ARGS_MACROS` gets none.
    They are parsed in this process by
    :func:`lightning_mem.cli.run.check_args` (torch and Lightning imported once, no process started; nothing
    built or written); other programs are not checked. Values that only fail when the classes are built
    or the data read (a dataset folder that does not exist) still fail in their run (exit 2, recorded
    as ``failed`` with the CLI's message). ``report(k, n)`` is called before the first run (k = 0) and
    after each (a check takes seconds: torch is imported first, each parse takes a fraction of one).
    """
    template = [str(c) for c in spec["command"]]
    if _cli_argv(template) is None:
        return  # not our CLI: nothing to check against
    if any(params.values()) and not any(macro in template for macro in ARGS_MACROS):
        keys = ", ".join(sorted({k for p in params.values() for k in p}))
        raise ValueError(f"{path}: the sweep's parameters ({keys}) never reach the runs: its `command:` has "
                         f"none of {', '.join(ARGS_MACROS)}; add `${{args_json_file}}` after `--config`, or "
                         "`${args}`")
    import tempfile

    if report is not None:
        report(0, len(params))
    with tempfile.TemporaryDirectory(prefix="lightning-mem-sweep-check-") as tmp:
        args_file = Path(tmp) / rundir.ARGS_JSON
        for done, (rid, values) in enumerate(params.items(), 1):
            argv = _cli_argv(build_command(spec["command"], values, args_file, spec.get("program")))
            assert argv is not None
            from lightning_mem.cli.run import check_args  # torch and Lightning: imported once, only here

            args_file.write_text(args_json(values))
            problem = check_args([*argv, "--run.name", "check", "--run.id", "check"])
            if problem:
                problem = problem.replace(str(args_file), "the sweep's parameters")
                shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
                where = ""
                if "no such file" in problem:  # the command's relative paths: from the current folder
                    where = (" (paths in the sweep's command are relative to the folder the runner starts "
                             f"in, {Path.cwd()}; a config the package ships is named by its name, e.g. "
                             "`--config quickstart` or `configs/quickstart.yaml`)")
                raise ValueError(f"{path}: run {rid} ({shown}) would fail before training: {problem}{where}; "
                                 "no run was started")
            if report is not None:
                report(done, len(params))
