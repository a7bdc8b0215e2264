"""W&B logging from the CLI, offline: two real fits started at once in one working directory, one by hand
(``--model.net.init_std``) and one through the sweep command path (``--config <args.json>`` of flat dotted
keys, as ``wandb agent`` runs a sweep file's command).

Each must write its offline W&B run inside its own run folder, with the full nested CLI config and the
canonical ``hp`` block (the same as the run folder's ``hp.json``) in the W&B run config, the step metric
and summaries declared, next to the CSV log. The offline ``.wandb`` file is read with the record format
wandb writes (a LevelDB-style log of protobuf ``Record``s), since wandb ships no reader.
"""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lightning_mem.rundir import HP_KEYS

REPO = Path(__file__).resolve().parents[2]
WANDB_YAML = REPO / "configs" / "logger" / "wandb.yaml"
SIGMAS = (0.01, 1.0)  # one per run, to tell their configs apart


def read_wandb_records(path: Path) -> list[Any]:
    """Every protobuf Record of an offline ``run-<id>.wandb`` file.

    Layout: a 7-byte file header (b":W&B", magic 0xBEE1, version), then 32 KiB blocks of chunks,
    each a 7-byte header (crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last) and its
    bytes; a block's tail shorter than a chunk header is zero padding.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    raw = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", raw[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1)
    block, pos, buf, records = 32768, 7, b"", []
    while pos + 7 <= len(raw):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if kind == 0:
            break
        buf += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def wandb_config(records: list[Any]) -> dict[str, Any]:
    """The run config as W&B holds it: the run record's config, then every config update."""
    config: dict[str, Any] = {}
    for record in records:
        kind = record.WhichOneof("record_type")
        items = {"run": record.run.config.update, "config": record.config.update}.get(kind, [])
        for item in items:
            config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return config


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[subprocess.CompletedProcess[str]]]:
    work = tmp_path_factory.mktemp("wandb_runs")
    logger_yaml = WANDB_YAML
    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith("WANDB_") and k != "LIGHTNING_MEM_RUN_ID"}
    base_env |= {"WANDB_DIR": str(work / "wandb_dir"), "WANDB_CACHE_DIR": str(work / "cache"),
                 "WANDB_CONFIG_DIR": str(work / "config"), "WANDB_DATA_DIR": str(work / "data"),
                 "WANDB_SILENT": "true"}
    procs = []
    args_json = work / "args.json"  # what wandb writes for ${args_json_file}: flat dotted keys
    args_json.write_text(json.dumps({"model.net.init_std": SIGMAS[1], "trainer.max_epochs": 2}))
    for sigma in SIGMAS:
        env = dict(base_env)
        base = [sys.executable, "-m", "lightning_mem", "fit",
                "--config", str(REPO / "configs/quickstart.yaml"), "--config", str(logger_yaml)]
        if sigma == SIGMAS[0]:  # by hand
            env["WANDB_MODE"] = "offline"
            cmd = [*base, "--model.net.init_std", str(sigma), "--trainer.max_epochs", "2"]
        else:  # the sweep command path; no WANDB_MODE nor API key: the CLI makes it offline itself
            cmd = [*base, "--config", str(args_json), "--run.name", "quickstart"]
        cmd += ["--data.dataset", "digits", "--model.net.width", "16",
                "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false"]
        procs.append(subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    done = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out))
    return work, done


def _run_dirs(work: Path) -> list[Path]:
    return sorted(p for p in (work / "runs" / "quickstart").iterdir() if p.is_dir())


@pytest.mark.slow  # two fits with W&B offline at once: ~45 s on 2 busy cores
def test_two_concurrent_runs_get_their_own_folders(two_runs: tuple[Path, list[Any]]) -> None:
    work, results = two_runs
    for result in results:
        assert result.returncode == 0, result.stdout[-3000:]
    dirs = _run_dirs(work)
    assert len(dirs) == 2
    sigmas = set()
    for run_dir in dirs:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["run"]["id"] == run_dir.name
        sigmas.add(config["model"]["net"]["init_args"]["init_std"])
        header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
        assert {"train/acc", "train/loss", "val/acc", "val/loss"} <= set(header)  # CSV stays on
    assert sigmas == set(SIGMAS)
    assert not (work / "wandb").exists()  # nothing W&B lands in the working directory


@pytest.mark.slow
def test_offline_wandb_run_in_the_run_folder_has_the_nested_config(two_runs: tuple[Path, list[Any]]) -> None:
    work, _ = two_runs
    for run_dir in _run_dirs(work):
        offline = list((run_dir / "wandb").glob("offline-run-*"))
        assert len(offline) == 1, list((run_dir / "wandb").iterdir())
        files = list(offline[0].glob("run-*.wandb"))
        assert [f.name for f in files] == [f"run-{run_dir.name}.wandb"]  # W&B run id = run.id
        records = read_wandb_records(files[0])
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        assert (run.run_id, run.run_group, run.project) == (run_dir.name, "quickstart", "lightning-mem")
        config = wandb_config(records)
        local = yaml.safe_load((run_dir / "config.yaml").read_text())
        net = config["model"]["net"]
        assert net["class_path"] == "lightning_mem.nets.ScaledMLP"
        assert local["model"]["net"]["init_args"].items() <= net["init_args"].items()
        # ... and the values the CLI links from the dataset, which config.yaml leaves out.
        assert net["init_args"]["num_classes"] == 10 and net["init_args"]["input_shape"] == [1, 8, 8]
        assert net["init_args"]["width"] == 16 and config["model"]["loss"] == "cross_entropy"
        assert config["data"]["dataset"] == "digits" and config["seed_everything"] == 0
        assert config["run"]["id"] == run_dir.name
        assert config["trainer"]["max_epochs"] == 2


@pytest.mark.slow
def test_every_run_carries_the_canonical_hp_block(two_runs: tuple[Path, list[Any]]) -> None:
    """By hand or through the sweep command path, σ is at ``hp.init_std`` in the W&B config (a nested dict:
    the backend path ``hp.value.init_std`` that wandb-workspaces' ``Config("hp.init_std")`` and a grouping
    on ``config.hp.init_std`` resolve to), equal to the run folder's hp.json; Lightning's flat copies of the
    hyperparameters (``lr``, ``net``, ``dataset`` at the top level) are not there to compete with it."""
    from wandb_workspaces import expr

    work, _ = two_runs
    sigmas = []
    for run_dir in _run_dirs(work):
        (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
        config = wandb_config(read_wandb_records(path))
        hp = json.loads((run_dir / "hp.json").read_text())
        assert config["hp"] == hp and list(hp) == list(HP_KEYS)
        assert (hp["width"], hp["dataset"], hp["run_name"], hp["seed"], hp["max_epochs"]) == (
            16, "digits", "quickstart", 0, 2)
        sigmas.append(hp["init_std"])
        assert not {"lr", "net", "dataset", "loss", "_instantiator"} & set(config)
        assert hp["init_std"] == config["model"]["net"]["init_args"]["init_std"]
    assert sorted(sigmas) == sorted(SIGMAS)
    assert expr.groupby_str_to_key("config.hp.init_std").name == "hp.value.init_std"


def _history(records: list[Any]) -> list[dict[str, Any]]:
    return [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]


@pytest.mark.slow
def test_metrics_are_declared_and_agree_with_the_csv(two_runs: tuple[Path, list[Any]]) -> None:
    """Every key is drawn against trainer/global_step; val/acc keeps its best and last value, train/* and
    alignment their last; each W&B row of val/acc has the epoch and step of the same row in metrics.csv."""
    work, _ = two_runs
    for run_dir in _run_dirs(work):
        (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
        records = read_wandb_records(path)
        defined = {}
        for r in records:
            if r.WhichOneof("record_type") == "metric":
                m = r.metric
                defined[m.name or m.glob_name] = (m.step_metric, {k for k in ("max", "min", "last")
                                                                  if getattr(m.summary, k)})
        assert defined["val/acc"] == ("trainer/global_step", {"max", "last"})
        assert defined["val/loss"] == ("trainer/global_step", {"min", "last"})
        for glob in ("train/*", "align/*", "val/align/*", "norm/*", "epoch"):
            assert defined[glob] == ("trainer/global_step", {"last"}), glob
        with (run_dir / "metrics.csv").open(newline="") as fh:
            csv_val = [(int(float(c["epoch"])), int(c["step"]), float(c["val/acc"]))
                       for c in csv.DictReader(fh) if c["val/acc"]]
        wandb_val = [(h["epoch"], h["trainer/global_step"], h["val/acc"])
                     for h in _history(records) if "val/acc" in h]
        assert wandb_val == csv_val and len(csv_val) == 2
        summary = [json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "summary"
                   for i in r.summary.update if (i.key or "/".join(i.nested_key)) == "val/acc"][-1]
        assert summary == {"max": max(v for *_, v in csv_val), "last": csv_val[-1][2]}


def test_wandb_logger_config_parses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from lightning_mem.cli import run as cli
    from lightning_mem.training.loggers import RunCSVLogger, RunWandbLogger

    # Parsed, validated and instantiated (--print_config would skip the validation of init_args).
    monkeypatch.setattr(sys, "argv", ["lightning-mem"])
    built = cli.build_cli(["--config", str(REPO / "configs/quickstart.yaml"), "--config", str(WANDB_YAML),
                           "--run.root", str(tmp_path)], run=False)
    assert [type(lg) for lg in built.trainer.loggers] == [RunCSVLogger, RunWandbLogger]
    assert built.trainer.loggers[0].log_dir == str(built.run_dir)


def test_every_logged_kind_of_key_has_a_wandb_summary() -> None:
    # One key of each kind the callbacks log: W&B gets a summary (and the step axis) for each.
    from fnmatch import fnmatchcase

    from lightning_mem import metric_keys as mk
    from lightning_mem.training.loggers import SUMMARIES

    keys = [mk.TRAIN_ACC, mk.TRAIN_ACC_NOISY, mk.VAL_ACC, mk.VAL_LOSS, mk.GRAD_LOGITS,
            mk.metric_key("alignment", "hidden.weight"), mk.metric_key("alignment", "rep:act", prefix="val/"),
            mk.metric_key("diversity", "hidden.weight"), mk.metric_key("stiffness", "logits", 3),
            mk.metric_key("confusion", "logits", 3), mk.GRAD_OVER_WEIGHT + "hidden.weight",
            mk.KERNEL_TARGET_ALIGNMENT, mk.KERNEL_DISTANCE, "kernel/velocity",
            mk.WEIGHT_DISTANCE + "hidden.weight", "act/pattern_change", mk.STIFFNESS_MATRIX + "0_1",
            mk.WEIGHT_NORM, mk.GROK_FIT_STEP, mk.GROK_VAL_STEP]
    missing = [k for k in keys if not any(fnmatchcase(k, glob) for glob, _ in SUMMARIES)]
    assert not missing, missing
