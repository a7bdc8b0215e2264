"""runlog: runs loaded through rundir (folders, folders of runs, manifests), the epoch of rows of older
versions, and a corrupt file named in the error (grouping and numbers: test_runsets.py).

Every ``metrics.csv`` here is written by Lightning's own CSVLogger (the real writer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightning.pytorch.loggers import CSVLogger

from lightning_mem import rundir
from lightning_mem.results.runs import load_runs
from lightning_mem.rundir import RunDirError


def config(sigma: float | None = 0.01, seed: int = 0, activation: str = "sin", momentum: float = 0.0,
           name: str = "exp") -> dict[str, Any]:
    """A nested config.yaml as LightningCLI writes it (the parts canonical_hp reads)."""
    return {"seed_everything": seed, "run": {"name": name},
            "trainer": {"max_epochs": 3},
            "model": {"net": {"class_path": "lightning_mem.nets.ScaledMLP",
                              "init_args": {"width": 16, "activation": activation, "init_std": sigma}},
                      "loss": "cross_entropy", "lr": 0.1, "momentum": momentum},
            "data": {"dataset": "digits", "batch_size": 256, "label_noise": 0.0, "data_dir": f"d{seed}"}}


Rows = list[tuple[int, dict[str, float]]]


def write_run(root: Path, run_id: str, rows: Rows, cfg: dict[str, Any] | None = None,
              status: str | None = None, hp: dict[str, Any] | None = None) -> Path:
    """A run folder: ``rows`` (step, {key: value}) through CSVLogger, config.yaml, hp.json, status.json."""
    logger = CSVLogger(root, name="", version=run_id)
    for step, metrics in rows:
        logger.log_metrics(metrics, step=step)
    logger.save()
    run_dir = Path(logger.log_dir)
    if cfg is not None:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    if hp is not None:
        rundir.write_hp(run_dir, hp)
    if status is not None:
        rundir.write_status(run_dir, status)
    return run_dir


def epoch_rows(train: list[float], val: list[float], steps_per_epoch: int = 6) -> Rows:
    """Rows as a fit logs them at each epoch end: val/* then train/*, at the epoch's last step."""
    rows = []
    for e, (t, v) in enumerate(zip(train, val, strict=True)):
        end = (e + 1) * steps_per_epoch - 1
        rows += [(end, {"val/acc": v, "epoch": e}), (end, {"train/acc": t, "epoch": e})]
    return rows


# ---------------------------------------------------------------- loading


def test_run_folder_hp_status_and_metrics(tmp_path: Path) -> None:
    rows = epoch_rows([0.5, 0.75], [0.6, 0.9])
    a = write_run(tmp_path, "a", rows, config(sigma=10.0), status="diverged")
    own_hp = {**rundir.canonical_hp(config(sigma=10.0)), "init_std": 3.0}  # hp.json wins over config.yaml
    b = write_run(tmp_path, "b", rows, config(sigma=10.0), hp=own_hp)
    run_a, run_b = load_runs([a, b], statuses=None)
    assert run_a.status == "diverged" and run_a.record["status"] == "diverged"
    assert run_b.status == "finished" and run_b.record == {}  # no status.json: a run of an older version
    assert run_a.hp == rundir.canonical_hp(config(sigma=10.0)) and run_a.hp["init_std"] == 10.0
    assert run_b.hp["init_std"] == 3.0 and run_b.get("hp.init_std") == 3.0
    assert run_a.get("model.net.init_args.init_std") == 10.0 and run_a.get("hp.seed") == 0
    assert list(run_a.values("val/acc")) == [0.6, 0.9] and list(run_a.epochs("train/acc")) == [0, 1]
    assert list(run_a.steps("train/acc")) == [5, 11] and run_a.values("absent").size == 0
    # The report's default: finished and diverged only.
    rundir.write_status(b, "failed", reason="RuntimeError: boom")
    assert [r.path.name for r in load_runs([tmp_path])] == ["a"]
    everything = load_runs([tmp_path], None)
    assert [(r.path.name, r.status) for r in everything] == [("a", "diverged"), ("b", "failed")]


def test_rows_without_epoch_get_the_epoch_of_their_step(tmp_path: Path) -> None:
    # Older versions: alignment every 4 steps without epoch; held-out alignment one step after val/acc.
    rows = epoch_rows([0.5, 0.75, 0.875], [0.6, 0.9, 0.8])  # epoch ends at steps 5, 11, 17
    rows += [(s, {"align/rep/act": 0.1 * s}) for s in (0, 4, 5, 6, 8, 12, 16, 18, 23, 24)]
    rows += [(s, {"val/align/rep/act": 0.5}) for s in (6, 12, 18)]
    rows += [(11, {"val/align/rep/h": 0.5})]  # at the step of its epoch's val/acc (no epoch column)
    rows += [(6, {"val/align/rep/features": 0.4, "epoch": 1})]  # a row's own epoch is kept
    run = load_runs([write_run(tmp_path, "old", rows, config())])[0]
    # Epoch e covers steps 6e..6e+5; past the last epoch end (17) at 6 steps per epoch: 18..23 -> 3, 24 -> 4.
    assert list(run.steps("align/rep/act")) == [0, 4, 5, 6, 8, 12, 16, 18, 23, 24]
    assert list(run.epochs("align/rep/act")) == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4]
    assert list(run.epochs("val/align/rep/act")) == [0, 1, 2] and list(run.epochs("val/align/rep/h")) == [1]
    assert list(run.epochs("val/align/rep/features")) == [1]


def test_folders_of_runs_and_manifests(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    rows = epoch_rows([0.5], [0.6])
    for rid in ("r0", "r1", "r2", "r3"):
        write_run(sweep, rid, rows, config(seed=int(rid[1])), status="running")
    entries = {  # the manifest's final status wins over a status.json left at "running"
        "r0": {"status": "finished", "run_dir": "r0", "params": {"model.net.init_std": 0.5}},  # relative
        "r1": {"status": "diverged", "run_dir": str(sweep / "r1")},
        "r2": {"status": "failed", "run_dir": str(sweep / "r2")},
        "r3": {"status": "running", "run_dir": str(sweep / "r3")},
        "r4": {"status": "pending", "run_dir": str(sweep / "r4")},  # never started: no folder
        "r5": {"status": "failed", "run_dir": str(sweep / "r5")},  # failed before logging a row
        "r6": {"status": "finished", "run_dir": str(sweep / "r6")},  # no folder: skipped
    }
    (sweep / "manifest.json").write_text(json.dumps({"sweep": "s", "runs": entries}))
    reported = load_runs([sweep / "manifest.json"])
    assert [(r.path.name, r.status) for r in reported] == [("r0", "finished"), ("r1", "diverged")]
    # config.yaml has the nested key, so the manifest's CLI spelling adds nothing.
    assert reported[0].get("hp.init_std") == 0.01 and "model.net.init_std" not in reported[0].params
    # A folder with a manifest is read through it; each run once.
    # r3's status.json says running: it is, while a process holds its folder's lock; then it was killed.
    with rundir.FolderLock(sweep / "r3", "run folder"):
        everything = load_runs([sweep, sweep / "manifest.json", sweep / "r0"], statuses=None)
    assert [(r.path.name, r.status) for r in everything] == [
        ("r0", "finished"), ("r1", "diverged"), ("r2", "failed"), ("r3", "running"), ("r5", "failed")]
    assert [r.status for r in load_runs([sweep / "r3"], statuses=None)] == ["killed"]
    assert everything[-1].metrics == {} and everything[-1].hp["init_std"] is None
    nested = load_runs([tmp_path / "sweep" / "r2", tmp_path], statuses=None)  # folder of folders, once each
    assert sorted(r.path.name for r in nested) == ["r0", "r1", "r2", "r3"]


@pytest.mark.parametrize(("name", "content", "message"), [
    ("metrics.csv", "step,val/acc\n0,abc\n", "metrics.csv: not a metrics.csv"),
    ("hp.json", "{not json", "hp.json: not a valid hp.json"),
    ("config.yaml", "a: [1,\n", "config.yaml: not a valid config.yaml"),
    ("config.yaml", "- 1\n", "config.yaml: expected a mapping of config keys, got list"),
    ("status.json", '{"status": "weird"}', "status.json: not a status record"),
])
def test_a_corrupt_file_raises_naming_it(tmp_path: Path, name: str, content: str, message: str) -> None:
    run_dir = write_run(tmp_path, "r", epoch_rows([0.5], [0.6]), config())
    (run_dir / name).write_text(content)
    with pytest.raises(RunDirError, match=message) as err:
        load_runs([run_dir], statuses=None)
    assert str(run_dir / name) in str(err.value)


def test_a_bad_manifest_or_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"runs": {"a": {"status": "done"}}}')
    with pytest.raises(RunDirError, match=r"manifest.json: run 'a' has no valid status"):
        load_runs([tmp_path])
    with pytest.raises(FileNotFoundError, match=r"not a run folder, a folder of runs or a manifest\.json"):
        load_runs([tmp_path / "missing"])
