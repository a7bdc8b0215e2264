"""W&B logging from the CLI, offline: two real fits started at once in one working directory.

Each must write its offline W&B run inside its own run folder, with the full nested CLI config in
the W&B run config, next to the CSV log. The offline ``.wandb`` file is read with the record
format wandb writes (a LevelDB-style log of protobuf ``Record``s), since wandb ships no reader.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
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
    for sigma in SIGMAS:
        env = dict(base_env)
        if sigma == SIGMAS[0]:
            env["WANDB_MODE"] = "offline"
        # The other run has neither WANDB_MODE nor an API key: the CLI must make it offline itself.
        cmd = [sys.executable, "-m", "lightning_mem", "fit",
               "--config", str(REPO / "configs/quickstart.yaml"), "--config", str(logger_yaml),
               "--data.dataset", "digits", "--model.net.width", "16", "--model.net.init_std", str(sigma),
               "--trainer.max_epochs", "1",
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
        assert config["trainer"]["max_epochs"] == 1


def test_wandb_logger_config_parses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from lightning_mem import cli

    # Parsed, validated and instantiated (--print_config would skip the validation of init_args).
    monkeypatch.setattr(sys, "argv", ["lightning-mem"])
    built = cli.build_cli(["--config", str(REPO / "configs/quickstart.yaml"), "--config", str(WANDB_YAML),
                           "--run.root", str(tmp_path)], run=False)
    assert [type(lg).__name__ for lg in built.trainer.loggers] == ["CSVLogger", "WandbLogger"]
    assert built.trainer.loggers[0].log_dir == str(built.run_dir)
