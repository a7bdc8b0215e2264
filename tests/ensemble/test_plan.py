"""``lightning-mem sweep local --pack``: which runs share a process; packed sweeps are ordinary sweeps.

Tier 1 (torch-free): fit commands recognized, the net read from config files and parameters, grouping,
pack sizes, pack files. Tier 2: the runner's plan of a sweep (no process started), ``--dry-run``, bad
options. Slow tier: real packed and unpacked sweeps of the digits, run by run (every metrics.csv within the
ensemble's tolerance; config.yaml, hp.json identical; ``report`` the same), a killed packed sweep resumed
by its rerun ending byte-identical to an uninterrupted one, and a pack the ensemble refuses run alone.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from lightning_mem import rundir
from lightning_mem.cli import commands
from lightning_mem.ensemble import plan as ensemble_plan
from lightning_mem.ensemble.plan import fit_args, group_key, net_class, pack_id, plan_packs, unpackable_reason
from lightning_mem.sweeps import command as sweep
from lightning_mem.sweeps import runner as sweep_runner

REPO = Path(__file__).resolve().parents[2]
RTOL, ATOL = 1e-4, 1e-6  # the ensemble's tolerance (tests/ensemble/test_train.py)
QUICKSTART = str(REPO / "configs/quickstart.yaml")
CONVNET = str(REPO / "configs/repro/convnet.yaml")


# ---------------------------------------------------------------- tier 1: planning


def test_fit_commands_are_recognized() -> None:
    assert fit_args(["/usr/bin/env", "lightning-mem", "fit", "--config", "a.yaml"]) == ["--config", "a.yaml"]
    assert fit_args([sys.executable, "-m", "lightning_mem", "fit", "--x=1"]) == ["--x=1"]
    assert fit_args(["/venv/bin/lightning-mem", "fit"]) == []
    assert fit_args(["lightning-mem", "validate", "--ckpt_path", "x"]) is None
    assert fit_args(["python", "train.py", "fit"]) is None
    assert fit_args([sys.executable, "-m", "lightning_mem", "sweep", "fit"]) is None


def test_the_net_is_read_as_the_cli_merges_it(tmp_path: Path) -> None:
    mlp = ["--config", QUICKSTART]
    assert net_class(mlp, {}) == "lightning_mem.nets.ScaledMLP"
    assert net_class([*mlp, "--config", CONVNET], {}) == "lightning_mem.nets.ConvNet"  # the last file wins
    assert net_class([*mlp, f"--config={CONVNET}"], {}) == "lightning_mem.nets.ConvNet"
    convnet = "lightning_mem.nets.ConvNet"
    assert net_class(mlp, {"model.net.class_path": convnet}) == convnet
    assert net_class([*mlp, "--model.net", "ConvNet"], {}) == "ConvNet"
    assert net_class([*mlp, "--config", str(tmp_path / "args.json")], {}) == "lightning_mem.nets.ScaledMLP"
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    assert net_class([*mlp, "--config", str(tmp_path / "bad.yaml")], {}) is None
    command = ["lightning-mem", "fit", *mlp]
    assert unpackable_reason(command, {}) is None
    assert unpackable_reason(command, {"model.net.class_path": "lightning_mem.nets.ConvNet"}) == \
        "its net is ConvNet; an ensemble stacks ScaledMLP only"
    assert unpackable_reason(["python", "train.py"], {}) == "its command is not `lightning-mem fit`"


def test_runs_group_by_the_keys_that_are_not_packable() -> None:
    a = {"model.net.init_std": 0.1, "seed_everything": 0, "model.lr": 0.1, "data.label_seed": 3,
         "model.loss_scale": 2.0, "model.net.width": 32}
    b = {**a, "model.net.init_std": 10.0, "seed_everything": 5, "model.lr": 0.3, "data.label_seed": None,
         "model.loss_scale": 1.0}
    assert group_key(a) == group_key(b)
    assert group_key(a) != group_key({**a, "model.net.width": 64})
    assert group_key(a) != group_key({**a, "model.loss": "hinge"})
    assert set(ensemble_plan.PACKABLE_PARAMS) == {
        "seed_everything", "model.net.init_std", "model.net.init_args.init_std", "model.lr",
        "model.loss_scale", "data.label_seed", "model.net.init_scale", "model.net.init_args.init_scale",
        "model.weight_decay", "model.momentum", "model.betas"}


@pytest.mark.parametrize(("sizes", "slots", "pack_size", "expected"), [
    ([20], 2, None, [10, 10]),  # every slot gets a pack
    ([20], 1, None, [20]),
    ([20], 2, 4, [4, 4, 4, 4, 4]),
    ([15], 2, None, [8, 7]),
    ([15], 4, 6, [4, 4, 4, 3]),  # 3 packs of at most 6 would leave a slot idle
    ([5, 5, 5], 2, None, [5, 5, 5]),  # three groups already fill two slots
    ([10, 2], 4, None, [4, 3, 3, 2]),  # the largest packs are split first
    ([1, 1], 4, None, [1, 1]),  # nothing left to split
], ids=["20-2", "20-1", "size-4", "15-2", "15-4-6", "groups", "largest-first", "singles"])
def test_pack_sizes(sizes: list[int], slots: int, pack_size: int | None, expected: list[int]) -> None:
    groups = [[f"g{g}r{i}" for i in range(n)] for g, n in enumerate(sizes)]
    packs = plan_packs(groups, slots, pack_size)
    assert [len(p) for p in packs] == expected
    assert [r for p in packs for r in p] == [r for g in groups for r in g]  # sweep order, each run once
    assert all(len({r[:2] for r in p}) == 1 for p in packs)  # never across groups


def test_pack_files(tmp_path: Path) -> None:
    assert pack_id(["a", "b"]) == pack_id(["a", "b"]) != pack_id(["b", "a"])
    assert pack_id(["a", "b"]).startswith("pack-") and len(pack_id(["a"])) == 15
    members = [{"run_id": "a", "argv": ["--config", "x.yaml", "--run.id", "a"]}]
    ensemble_plan.write_pack(tmp_path, members)
    assert ensemble_plan.read_pack(tmp_path) == members
    for bad in ('{"members": []}', '{"members": [{"run_id": "a"}]}', "[1]", "{"):
        (tmp_path / "pack.json").write_text(bad)
        with pytest.raises(rundir.RunDirError, match=r"pack.json: not a (pack file|valid pack file)"):
            ensemble_plan.read_pack(tmp_path)


# ---------------------------------------------------------------- tier 2: the runner's plan


def _sweep_file(path: Path, parameters: dict[str, Any], config: str = QUICKSTART, **extra: Any) -> Path:
    command = ["${env}", "lightning-mem", "fit", "--config", config, "--config", "${args_json_file}"]
    spec = {"name": path.stem, "method": "grid", "parameters": parameters, "command": command, **extra}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


DIGITS = {"data.dataset": {"value": "digits"}, "model.net.width": {"value": 16},
          "trainer.max_epochs": {"value": 3}, "trainer.enable_progress_bar": {"value": False}}


def test_the_runner_packs_what_it_can_and_runs_the_rest_alone(tmp_path: Path) -> None:
    path = _sweep_file(tmp_path / "mix.yaml", {
        "model.net.init_std": {"values": [0.01, 1.0, 10.0]},
        "seed_everything": {"values": [0, 1]},
        "model.net.class_path": {"values": ["lightning_mem.nets.ScaledMLP", "lightning_mem.nets.ConvNet"]},
        **DIGITS})
    local = sweep_runner.LocalSweep(path, tmp_path / "runs", pack=True)
    local.load()
    jobs = local.jobs(local.grid, 2)
    packs = [j for j in jobs if j.pack]
    singles = [j for j in jobs if not j.pack]
    assert [len(j.rids) for j in packs] == [6]  # the 6 ConvNet runs keep the other slot busy
    assert all("ScaledMLP" in local.runs[r]["params"]["model.net.class_path"] for j in packs for r in j.rids)
    assert len(singles) == 6 and all("ConvNet" in local.runs[j.rids[0]]["params"]["model.net.class_path"]
                                     for j in singles)
    assert [j.pack for j in packs] == [pack_id(j.rids) for j in packs]
    assert local.pack_command(packs[0])[-3:] == ["fit", "--pack", str(local.dir / packs[0].pack)]
    grid = {"model.net.init_std": {"values": [0.01, 1.0, 10.0]}, "seed_everything": {"values": [0, 1]},
            **DIGITS}
    mlp = sweep_runner.LocalSweep(_sweep_file(tmp_path / "mlp.yaml", grid), tmp_path / "runs", pack=True)
    mlp.load()
    assert [len(j.rids) for j in mlp.jobs(mlp.grid, 2)] == [3, 3]  # split over the 2 slots
    assert [len(j.rids) for j in mlp.jobs(mlp.grid, 7)] == [1] * 6  # as many slots as runs: no pack
    plain = sweep_runner.LocalSweep(path, tmp_path / "runs")
    plain.load()
    assert [j.rids for j in plain.jobs(plain.grid, 2)] == [[r] for r in plain.grid]


def test_dry_run_lists_each_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _sweep_file(tmp_path / "dry.yaml", {"model.net.init_std": {"values": [0.01, 10.0]},
                                               "seed_everything": {"values": [0, 1]}, **DIGITS})
    argv = ["local", str(path), "--root", str(tmp_path / "runs"), "--pack", "--pack-size", "3", "--dry-run"]
    assert sweep.run(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# pack pack-") and lines[0].count("_seed_everything") == 2
    assert lines[1].endswith(f"ensemble fit --pack {tmp_path / 'runs' / 'dry' / lines[0].split()[2][:-1]}")
    assert len(lines) == 4  # 4 runs in packs of at most 3: two packs of 2
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_bad_pack_size_is_a_usage_error(value: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        sweep.run(["local", str(tmp_path / "s.yaml"), "--pack", "--pack-size", value])
    assert exit_.value.code == 2
    assert f"argument --pack-size: {value!r} is not an integer >= 1" in capsys.readouterr().err


# ---------------------------------------------------------------- slow tier: real sweeps


def _metrics_close(packed: Path, single: Path) -> None:
    a, b = pd.read_csv(packed), pd.read_csv(single)
    assert list(a.columns) == list(b.columns) and a[["step", "epoch"]].equals(b[["step", "epoch"]])
    assert a.notna().equals(b.notna())
    for key in a.columns:
        for x, y in zip(a[key].dropna(), b[key].dropna(), strict=True):
            assert math.isclose(x, y, rel_tol=RTOL, abs_tol=ATOL), (packed, key, x, y)


def _run_sweep(path: Path, root: Path, *extra: str) -> dict[str, Any]:
    argv = ["local", str(path), "--root", str(root), "--max-parallel", "2", "--wandb-mode", "disabled",
            *extra]
    assert sweep.run(argv) == 0
    return json.loads((root / path.stem / "manifest.json").read_text())["runs"]


@pytest.mark.slow  # 8 single fits and one pack on 2 cores: ~1 min
def test_packed_and_unpacked_sweeps_give_the_same_runs(tmp_path: Path) -> None:
    """2 σ × 2 seeds × 2 widths on the digits: two packs (one per width), against 8 single fits."""
    path = _sweep_file(tmp_path / "eq.yaml", {"model.net.init_std": {"values": [0.01, 10.0]},
                                              "seed_everything": {"values": [0, 1]},
                                              **DIGITS, "model.net.width": {"values": [16, 32]},
                                              "data.label_noise": {"value": 0.2}})
    plain = _run_sweep(path, tmp_path / "plain")
    packed = _run_sweep(path, tmp_path / "packed", "--pack")
    assert packed.keys() == plain.keys() and len(packed) == 8
    assert len({r["pack"] for r in packed.values()}) == 2 and all(r["pack"] for r in packed.values())
    for rid, entry in packed.items():
        ref = plain[rid]
        assert entry["status"] == ref["status"] == "finished" and entry["attempts"] == 1
        roots = (str(tmp_path / "packed"), str(tmp_path / "plain"))
        assert entry["command"] == [c.replace(*roots[::-1]) for c in ref["command"]]  # its own fit command
        assert entry["metrics"].keys() == ref["metrics"].keys()
        for key, value in entry["metrics"].items():  # final train/held-out accuracy, alignment, ...
            assert math.isclose(value, ref["metrics"][key], rel_tol=RTOL, abs_tol=ATOL), (rid, key)
        a, b = Path(entry["run_dir"]), Path(ref["run_dir"])
        _metrics_close(a / "metrics.csv", b / "metrics.csv")
        for name in ("config.yaml", "hp.json", "hparams.yaml", "args.json"):
            assert (a / name).read_text() == (b / name).read_text().replace(*roots[::-1]), (rid, name)
        assert (rundir.read_status(a) or {}).get("status") == "finished"
    reports = {}
    for name in ("plain", "packed"):
        out = tmp_path / f"report_{name}"
        commands.main(["report", str(tmp_path / name / "eq" / "manifest.json"), "--out", str(out)])
        reports[name] = out
    assert (reports["plain"] / "summary.md").read_text() == (reports["packed"] / "summary.md").read_text()
    files = [sorted(p.name for p in reports[n].iterdir()) for n in ("plain", "packed")]
    assert files[0] == files[1] and "alignment_vs_sigma.png" in files[0]
    runs = [pd.read_csv(reports[n] / "runs.csv") for n in ("plain", "packed")]
    for frame in runs:
        frame["run_dir"] = frame["run_dir"].map(lambda d: Path(d).name)
    pd.testing.assert_frame_equal(runs[0], runs[1], rtol=RTOL, atol=ATOL)


def _pids(manifest: Path) -> set[int]:
    runs = json.loads(manifest.read_text())["runs"] if manifest.is_file() else {}
    return {r["pid"] for r in runs.values() if r.get("pid")}


@pytest.mark.slow  # three packed sweeps of 4 runs, 12 epochs: ~1 min
def test_a_killed_packed_sweep_resumes_each_run_exactly(tmp_path: Path) -> None:
    path = _sweep_file(tmp_path / "kill.yaml", {"model.net.init_std": {"values": [0.01, 10.0]},
                                                "seed_everything": {"values": [0, 1]},
                                                **DIGITS, "model.net.width": {"value": 256},
                                                "trainer.max_epochs": {"value": 12}})
    straight = _run_sweep(path, tmp_path / "straight", "--pack", "--max-parallel", "1")
    root = tmp_path / "killed"
    argv = [*sweep_main(), "local", str(path), "--root", str(root), "--pack", "--max-parallel", "1",
            "--wandb-mode", "disabled"]
    runner = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = root / "kill" / "manifest.json"
    end = time.monotonic() + 180
    while not any(p.is_file() for p in root.glob("kill/pack-*/checkpoints/epoch[3-9].ckpt")):
        assert runner.poll() is None and time.monotonic() < end, "the pack ended before it could be killed"
        time.sleep(0.05)
    (pack_pid,) = _pids(manifest)
    runner.kill()  # SIGKILL: the runner and the pack die without a word
    os.kill(pack_pid, signal.SIGKILL)
    runner.wait()
    _wait_dead(pack_pid)
    runs = json.loads(manifest.read_text())["runs"]
    assert {r["status"] for r in runs.values()} == {"running"}
    resumed = _run_sweep(path, root, "--pack", "--max-parallel", "1")  # the rerun resumes the pack
    log = next(root.glob("kill/pack-*/output.log")).read_text()
    assert "Restoring states from the checkpoint path" in log
    for rid, entry in resumed.items():
        assert entry["status"] == "finished" and entry["attempts"] == 2
        assert entry["pack"] == straight[rid]["pack"]
        a, b = Path(entry["run_dir"]), Path(straight[rid]["run_dir"])
        assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes(), rid
        assert entry["metrics"] == straight[rid]["metrics"]
    assert not list(root.rglob("metrics.resume.csv"))


def sweep_main() -> list[str]:
    return [sys.executable, "-c",
            "import sys; from lightning_mem.sweeps.command import main; main(sys.argv[1:])"]


def _wait_dead(pid: int) -> None:
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


@pytest.mark.slow  # one refused pack and two single fits: ~30 s
def test_a_pack_the_ensemble_refuses_runs_alone(tmp_path: Path) -> None:
    """The fused step (steps_per_call > 1) passes the runner's plan (a config value) but not the ensemble:
    its runs go on alone."""
    path = _sweep_file(tmp_path / "mom.yaml", {"model.net.init_std": {"values": [0.01, 10.0]}, **DIGITS,
                                               "model.steps_per_call": {"value": 2},
                                               "trainer.max_epochs": {"value": 1}})
    runs = _run_sweep(path, tmp_path / "runs", "--pack", "--max-parallel", "1")
    assert [r["status"] for r in runs.values()] == ["finished", "finished"]
    assert all(not r.get("pack") and r["attempts"] == 1 for r in runs.values())
    (log,) = (tmp_path / "runs" / "mom").glob("pack-*/output.log")
    assert "model.steps_per_call=2: an ensemble has no fused step" in log.read_text()


@pytest.mark.slow  # 4 single fits and one pack: ~30 s
def test_a_diverging_run_of_a_pack_is_diverged_and_the_others_finish(tmp_path: Path) -> None:
    """ReLU + squared loss, σ ∈ {0.1, 10} × lr ∈ {0.01, 1}: σ = 10 at lr 1 diverges in its first epoch, in
    the pack as alone; the manifest records the same status, reason and first bad step either way."""
    path = _sweep_file(tmp_path / "wild.yaml", {"model.net.init_std": {"values": [0.1, 10.0]},
                                                "model.lr": {"values": [0.01, 1.0]}, **DIGITS,
                                                "model.net.activation": {"value": "relu"},
                                                "model.loss": {"value": "squared"}})
    plain = _run_sweep(path, tmp_path / "plain")
    packed = _run_sweep(path, tmp_path / "packed", "--pack", "--max-parallel", "1")
    assert len({r["pack"] for r in packed.values()}) == 1
    for rid, entry in packed.items():
        expected = "diverged" if (entry["params"]["model.net.init_std"], entry["params"]["model.lr"]) == (
            10.0, 1.0) else "finished"
        assert entry["status"] == plain[rid]["status"] == expected, rid
        assert entry["reason"] == plain[rid]["reason"]
        steps = [rundir.read_status(Path(e["run_dir"])).get("diverged_step")  # type: ignore[union-attr]
                 for e in (entry, plain[rid])]
        assert steps[0] == steps[1]


def test_the_stacked_net_paths_name_the_scaled_mlp() -> None:
    """The planner reads class paths before anything is parsed (torch-free): each one it accepts must be the
    class the ensemble stacks, so a move of ScaledMLP fails here instead of silently running packs alone."""
    import importlib

    from lightning_mem.nets import ScaledMLP

    for path in ensemble_plan.STACKED_NET_PATHS:
        module, _, name = path.rpartition(".")
        found = getattr(importlib.import_module(module), name) if module else getattr(
            importlib.import_module("lightning_mem.nets"), name)
        assert found is ScaledMLP, path
