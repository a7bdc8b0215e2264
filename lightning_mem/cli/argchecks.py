"""Checks of a ``fit``/``validate``/``test`` command line that the config classes cannot make themselves.

Run by :class:`lightning_mem.cli.fit.MemCLI` before anything is built or written, each raising
``ValueError`` with a message that names the file, key or value and what is allowed:

- :func:`check_config_files`: every ``--config`` (and ``--model``/``--data``/``--trainer``) file exists, is a
  file, is UTF-8 text, parses as YAML and holds a mapping (jsonargparse's own message for an empty or
  list-shaped file is "Unexpected config:", naming no file);
- :func:`check_values`: values every class accepts but that crash later or mean nothing: seeds outside
  numpy's range 0..2**32-1, integers too large for a C ``long``, model floats beyond float32's range
  (an ``lr`` of 1e300 overflows in the optimizer step), ``accumulate_grad_batches`` < 1,
  ``check_val_every_n_epoch`` < 1, ``val_check_interval`` 0, ``gradient_clip_val`` < 0;
- :func:`model_size_error`: the parameters of ``model.net`` (or of an ensemble of K of them) counted on
  PyTorch's ``meta`` device (no memory taken) against this machine's memory, so a width of 10**9 (or 5,000
  members of width 10**5) is refused with the size it asks for instead of an allocator traceback or the
  kernel's OOM killer.

:func:`problem_files` also finds which config file holds a key the parser refused.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard

import yaml

from lightning_mem import safeyaml
from lightning_mem.cli import packaged
from lightning_mem.cli.argv import option_values
from lightning_mem.cli.packaged import CONFIG_OPTIONS  # options whose value is a config file
from lightning_mem.dotted import flat_items

SEED_MAX = 2**32 - 1  # numpy's seed range, which Lightning's seed_everything enforces
INT_MAX = 2**63 - 1  # a C long: torch, numpy and Lightning convert integers to it
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max: lr, init_std, ... meet float32 tensors
MAPPING_EXAMPLE = "e.g. `model: {lr: 0.1}`"


def config_paths(argv: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(option, value) of every config-file option in a raw argument list."""
    return option_values(argv, CONFIG_OPTIONS)


def _looks_inline(value: str) -> bool:
    """jsonargparse also takes a config as YAML text (``--config '{trainer: {max_epochs: 1}}'``)."""
    return "\n" in value or value.lstrip().startswith(("{", "[")) or ": " in value


def load_config_file(option: str, value: str) -> Mapping[str, Any] | None:
    """The mapping in the config file ``value`` of ``option``; None for inline YAML text (left to
    jsonargparse); ``ValueError`` naming the file for anything that is not a mapping of keys."""
    if not value.strip():  # an unset shell variable: not the current folder
        raise ValueError(f"{option} {value!r}: an empty path; give the path of a YAML config file "
                         "(configs/*.yaml)")
    path = Path(value)
    try:
        exists = path.exists()
    except OSError:  # a name too long for a path (ENAMETOOLONG): inline text or nothing
        exists = False
    if not exists:
        if _looks_inline(value):
            safeyaml.check(value, f"{option} (YAML text)")
            return None
        raise ValueError(f"{option} {value}: no such file and no packaged config of that name; give the path "
                         f"of a YAML config file or one of {packaged.listing('config')} (`lightning-mem "
                         "configs list`)")
    if path.is_dir():
        raise ValueError(f"{option} {value}: is a directory, not a config file; give a YAML file in it")
    if not path.is_file():  # /dev/null, a pipe (which would block the read), a socket
        raise ValueError(f"{option} {value}: not a regular file (a device, pipe or socket); give the path of "
                         "a YAML config file (configs/*.yaml)")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise ValueError(f"{option} {value}: cannot be read ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{option} {value}: not a text file (byte {err.start} is not UTF-8); a config "
                         f"file is YAML text, {MAPPING_EXAMPLE}") from err
    try:
        loaded = safeyaml.load(text, f"{option} {value}")
    except safeyaml.YAMLLimitError:
        raise
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{option} {value}: not valid YAML{at}: {problem}") from err
    if loaded is None:
        raise ValueError(f"{option} {value}: the file is empty; a config file must be a mapping of keys, "
                         f"{MAPPING_EXAMPLE}")
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{option} {value}: a config file must be a mapping of keys, {MAPPING_EXAMPLE}; "
                         f"this one holds a {type(loaded).__name__}")
    return loaded


def check_config_files(argv: Sequence[str]) -> None:
    """:func:`load_config_file` of every config file on the command line, and
    :func:`check_yaml_values` of the other values."""
    for option, value in config_paths(argv):
        load_config_file(option, value)
    check_yaml_values(argv)


_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def class_paths(argv: Sequence[str]) -> set[str]:
    """Every dotted name (``mypkg.nets.MyNet``) the command line or its config files name: classes the user
    asked for, which a checkpoint's stored config may then name too
    (:func:`lightning_mem.training.checkpoints.load_checkpoint`'s ``allowed``)."""
    found = {m.group(0) for arg in argv for m in _DOTTED.finditer(arg)}
    for option, value in config_paths(argv):
        try:
            loaded = load_config_file(option, value)
        except ValueError:
            continue
        found |= {v for _, v in flat_items(loaded or {}) if isinstance(v, str) and _DOTTED.fullmatch(v)}
    return found


def check_yaml_values(argv: Sequence[str]) -> None:
    """jsonargparse reads every option's value as YAML (``--model.lr '[&a [x, x], *a]'`` is a list): each
    value is checked by :func:`lightning_mem.safeyaml.check` first, so a billion-laughs value is refused
    before it is expanded (a value that is not valid YAML is left to the parser)."""
    option = "a command-line value"
    for arg in argv:
        if arg.startswith("--"):
            option, eq, value = arg.partition("=")
            if not eq:
                continue
        else:
            value = arg
        if any(c in value for c in "&*[{") or "\n" in value:
            try:
                safeyaml.check(value, option)
            except safeyaml.YAMLLimitError:
                raise
            except yaml.YAMLError:
                pass


def problem_files(argv: Sequence[str], key: str) -> list[str]:
    """The config files on the command line that set the dotted ``key`` (``model.lrr``), for a message
    about a key the parser refused."""
    found = []
    for option, value in config_paths(argv):
        try:
            loaded = load_config_file(option, value)
        except ValueError:
            continue
        prefix = "" if option == "--config" else option[2:]
        keys = {k.replace(".init_args", "") for k, _ in flat_items(loaded or {}, prefix)}
        if any(k == key or k.startswith(key + ".") for k in keys):
            found.append(value)
    return found


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def check_values(config: Mapping[str, Any]) -> list[str]:
    """Messages about the values of one subcommand's parsed config (a plain nested dict); [] if fine."""
    linked = {"data.seed"}  # the CLI links it from seed_everything: one message is enough
    problems = [f"{key}={value} is too large: integers here go to a C long (at most 2**63-1)"
                for key, value in flat_items(config)
                if _is_int(value) and abs(value) > INT_MAX and key not in linked]
    problems += [f"{key}={value:g} is beyond float32's range (±{FLOAT32_MAX:.1e}): the net and its optimizer "
                 "compute in float32"
                 for key, value in flat_items({"model": config.get("model") or {}})
                 if isinstance(value, float) and math.isfinite(value) and abs(value) > FLOAT32_MAX
                 and str((config.get("trainer") or {}).get("precision")) not in ("64", "64-true")]
    if problems:
        return problems
    seed = config.get("seed_everything")
    if _is_int(seed) and not 0 <= seed <= SEED_MAX:
        problems.append(f"seed_everything={seed} is outside numpy's seed range 0..2**32-1 ({SEED_MAX}); "
                        "give a seed in that range")
    data = config.get("data") or {}
    label_seed = data.get("label_seed") if isinstance(data, Mapping) else None
    if _is_int(label_seed) and not 0 <= label_seed <= SEED_MAX:
        problems.append(f"data.label_seed={label_seed} is outside the seed range 0..2**32-1 ({SEED_MAX})")
    trainer = config.get("trainer") or {}
    if not isinstance(trainer, Mapping):
        return problems
    accumulate = trainer.get("accumulate_grad_batches")
    if _is_int(accumulate) and accumulate < 1:
        problems.append(f"trainer.accumulate_grad_batches={accumulate} must be an integer >= 1 "
                        "(1: no accumulation)")
    every = trainer.get("check_val_every_n_epoch")
    if _is_int(every) and every < 1:
        problems.append(f"trainer.check_val_every_n_epoch={every} must be an integer >= 1, or null to "
                        "validate every val_check_interval steps")
    interval = trainer.get("val_check_interval")
    if isinstance(interval, (int, float)) and not isinstance(interval, bool) and interval <= 0:
        problems.append(f"trainer.val_check_interval={interval} must be a fraction of an epoch in (0, 1] "
                        "or a number of training batches >= 1")
    devices = trainer.get("devices")
    if devices is not None and not _devices_ok(devices):
        problems.append(f"trainer.devices={devices!r}: give a number of devices such as 1, -1 or 'auto' for "
                        "all of them, or a list of device indices such as [0, 1] (or '0,1')")
    clip = trainer.get("gradient_clip_val")
    if isinstance(clip, (int, float)) and not isinstance(clip, bool) and clip < 0:
        problems.append(f"trainer.gradient_clip_val={clip} must be >= 0 (0 or null: no clipping)")
    return problems


MAX_DEVICES = 2**16  # more devices (or a higher index) than any machine has: a typo


def _devices_ok(devices: Any) -> bool:
    """Lightning's ``devices``: a count (-1: all), ``"auto"``, a list of indices, or the same as a string."""
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto":
            return True
        parts = [p for p in text.split(",") if p.strip()]
        if not parts or not all(p.strip().lstrip("-").isdigit() for p in parts):
            return False
        devices = int(parts[0]) if len(parts) == 1 and "," not in text else [int(p) for p in parts]
    if _is_int(devices):
        return devices == -1 or 0 <= devices <= MAX_DEVICES
    if isinstance(devices, (list, tuple)):
        return bool(devices) and all(_is_int(d) and 0 <= d < MAX_DEVICES for d in devices)
    return False


def format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB", "EB"):
        if n < 1000 or unit == "EB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} EB"


def physical_memory() -> int | None:
    """Bytes of memory of this machine (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def model_size_error(net: Mapping[str, Any], key: str = "model.net", members: int = 1) -> str | None:
    """A message when the parameters of the net configured by ``net`` (``class_path`` and ``init_args``)
    and their gradients do not fit in this machine's memory; None when they do or cannot be counted.

    ``members`` > 1: an ensemble of that many copies stacked on a member axis, which also keeps each
    member's own net as its config built it (three copies of the parameters in all, with the gradients).
    The net is built on PyTorch's ``meta`` device: shapes only, no memory, no time.
    """
    import importlib

    import torch

    class_path, init_args = net.get("class_path"), dict(net.get("init_args") or {})
    if not isinstance(class_path, str) or "." not in class_path:
        return None
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return None  # the parser reports an unknown class
    ints = ", ".join(f"{k}={v}" for k, v in init_args.items() if _is_int(v))
    described = f"{key}: {name}({ints})" if ints else f"{key}: {name}"
    try:
        with torch.device("meta"):
            module = cls(**init_args)
    except (RuntimeError, OverflowError, MemoryError) as err:
        return f"{described} cannot be built: {str(err).splitlines()[0][:200]}; lower its sizes"
    except Exception:  # the real instantiation reports the class's own errors
        return None
    if not isinstance(module, torch.nn.Module):
        return None
    params = [(n, tuple(p.shape), p.numel() * p.element_size()) for n, p in module.named_parameters()]
    if not params:
        return None
    total = members * sum(size for _, _, size in params)
    copies = 2 if members == 1 else 3
    memory = physical_memory()
    if memory is None or copies * total <= memory:
        return None
    largest = max(params, key=lambda p: p[2])
    if members == 1:
        return (f"{described} needs {format_bytes(total)} for its parameters ({largest[0]} of shape "
                f"{largest[1]}: {format_bytes(largest[2])}) and as much again for their gradients; this "
                f"machine has {format_bytes(memory)} of memory; lower the sizes")
    return (f"an ensemble of {members} members of {described} needs {format_bytes(total)} for its stacked "
            f"parameters ({members} x {largest[0]} of shape {largest[1]}: "
            f"{format_bytes(members * largest[2])}) and twice as much again for their gradients and the "
            f"members' own nets, "
            f"{format_bytes(copies * total)} in all; this machine has {format_bytes(memory)} of memory; give "
            "fewer values to --ensemble.* (or a smaller --pack-size), or lower the sizes")


def batches_per_epoch(examples: int, batch_size: int, world_size: int, limit: Any) -> int:
    """Training batches per epoch and rank, after ``limit_train_batches`` (as Lightning counts them)."""
    n = math.ceil(math.ceil(examples / max(world_size, 1)) / batch_size)
    if _is_int(limit):
        return min(n, limit)
    if isinstance(limit, float):
        return int(n * limit)
    return n
