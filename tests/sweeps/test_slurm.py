"""``sweep slurm`` / ``sweep status`` against a real one-node SLURM cluster (``tools/slurm/start.sh``).

Skipped when no cluster answers ``sinfo``, unless ``LM_REQUIRE_SLURM=1`` (CI sets it after starting the
cluster), where a missing cluster fails. Each test submits real arrays of tiny fits on the 8x8 digits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from lightning_mem import rundir
from lightning_mem.ensemble import plan as ensemble_plan
from lightning_mem.sweeps import command as sweep

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONF = Path(os.environ.get("LM_SLURM_DIR", "/tmp/lm-slurm")) / "slurm.conf"


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    if "SLURM_CONF" not in os.environ and DEFAULT_CONF.is_file():
        os.environ["SLURM_CONF"] = str(DEFAULT_CONF)
    ok = shutil.which("sinfo") is not None and subprocess.run(
        ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30).returncode == 0
    if not ok:
        if os.environ.get("LM_REQUIRE_SLURM") == "1":
            pytest.fail("LM_REQUIRE_SLURM=1 but no SLURM cluster answers `sinfo` (run tools/slurm/start.sh)")
        pytest.skip("no SLURM cluster (tools/slurm/start.sh starts one; LM_REQUIRE_SLURM=1 makes this fail)")


def _sweep_file(tmp_path: Path, params: dict[str, Any], name: str = "tiny",
                extra: tuple[str, ...] = ()) -> Path:
    base = {"data.dataset": {"value": "digits"}, "model.net.width": {"value": 16},
            "trainer.enable_progress_bar": {"value": False}}
    spec = {"name": name, "method": "grid", "parameters": {**base, **params},
            "command": ["${env}", sys.executable, "-m", "lightning_mem", "fit", "--config",
                        str(REPO / "configs/quickstart.yaml"), "--config", "${args_json_file}", *extra]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _arrays(sweep_dir: Path) -> list[dict[str, Any]]:
    return list(json.loads((sweep_dir / "slurm.json").read_text())["submissions"])


def _wait(array: str, limit: float = 400) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout
        if not any(j.split("_")[0] == array for j in out.split()):
            return
        time.sleep(1)
    pytest.fail(f"array {array} still queued after {limit} s")


def _queue() -> list[str]:
    return subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout.split()


@pytest.mark.slow  # imports the CLI and asks sbatch: ~20 s
@pytest.mark.parametrize(("flags", "message"), [
    (["--partition", "no-such-partition"], "invalid partition specified: no-such-partition"),
    (["--time", "10:xx"], "Invalid --time specification"),
])
def test_bad_option_exits_2_with_slurms_message_and_queues_nothing(
        tmp_path: Path, flags: list[str], message: str, caplog: pytest.LogCaptureFixture) -> None:
    path = _sweep_file(tmp_path, {"model.net.init_std": {"values": [0.01, 1.0]}})
    before = _queue()
    assert sweep.run(["slurm", str(path), "--root", str(tmp_path / "runs"), *flags]) == 2
    assert message in caplog.text
    assert _queue() == before
    assert not (tmp_path / "runs" / "tiny" / "slurm.json").exists()


@pytest.mark.slow  # four real fits as array tasks, then one again: ~2-3 min on 2 shared cores
def test_grid_finishes_and_a_resubmission_runs_only_what_was_left(tmp_path: Path) -> None:
    path = _sweep_file(tmp_path, {"model.net.init_std": {"values": [0.01, 1.0]},
                                  "seed_everything": {"values": [0, 1]}, "trainer.max_epochs": {"value": 1}})
    root = tmp_path / "runs"
    argv = ["slurm", str(path), "--root", str(root), "--time", "10", "--wandb-mode", "disabled"]
    assert sweep.run(argv) == 0
    sweep_dir = root.resolve() / "tiny"
    (first,) = _arrays(sweep_dir)
    assert len(first["runs"]) == 4
    _wait(first["job"])
    assert sweep.run(["status", str(sweep_dir)]) == 0
    runs = rundir.read_manifest(sweep_dir / "manifest.json")["runs"]
    assert sorted(r["status"] for r in runs.values()) == ["finished"] * 4
    for rid, r in runs.items():
        assert Path(r["run_dir"]) == sweep_dir / rid
        assert 0.0 <= r["metrics"]["train/acc"] <= 1.0 and r["metrics"]["epoch"] == 0.0
        assert rundir.read_status(sweep_dir / rid)["status"] == "finished"  # type: ignore[index]
        assert (sweep_dir / "claims" / rid / "job").read_text().startswith(first["job"] + "_")
    # One run lost its folder: the resubmission's array has that run alone.
    gone = sorted(runs)[2]
    shutil.rmtree(sweep_dir / gone)
    assert sweep.run(argv) == 0
    second = _arrays(sweep_dir)[1]
    assert list(second["runs"].values()) == [gone]
    _wait(second["job"])
    assert sweep.run(["status", str(sweep_dir)]) == 0
    runs = rundir.read_manifest(sweep_dir / "manifest.json")["runs"]
    assert sorted(r["status"] for r in runs.values()) == ["finished"] * 4
    # Nothing left: a third submission queues nothing.
    assert sweep.run(argv) == 0
    assert len(_arrays(sweep_dir)) == 2


@pytest.mark.slow  # one fit held, preempted, requeued (30 s) and resumed; its reference meanwhile: ~2 min
def test_preempted_task_requeues_and_resumes_to_a_byte_identical_metrics_csv(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = {"model.net.init_std": {"value": 1.0}, "trainer.max_epochs": {"value": 3},
              "data.batch_size": {"value": 64}}
    path = _sweep_file(tmp_path, params, extra=("--trainer.callbacks+=tests.helpers.holdpoints.HoldAt",))
    root = tmp_path / "runs"
    hold = tmp_path / "held"
    # sbatch passes the submitter's environment to the task, and the task to its fit: the fit holds at the
    # first batch of epoch 1 (epoch 0's last.ckpt published) until the preemption's SIGTERM reaches it.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("LIGHTNING_MEM_TEST_HOLD", "1")
    monkeypatch.setenv("LIGHTNING_MEM_TEST_HOLD_FILE", str(hold))
    argv = ["slurm", str(path), "--root", str(root), "--time", "10", "--wandb-mode", "disabled"]
    assert sweep.run(argv) == 0
    # The same run, uninterrupted and never held, in its own root, meanwhile on this machine's other core.
    ref_root = tmp_path / "ref"
    env = {k: v for k, v in os.environ.items() if k != "LIGHTNING_MEM_TEST_HOLD"}
    ref_log = tmp_path / "reference.log"
    with ref_log.open("w") as out:
        reference = subprocess.Popen([sys.executable, "-m", "lightning_mem", "sweep", "local", str(path),
                                      "--root", str(ref_root), "--wandb-mode", "disabled"], env=env,
                                     stdout=out, stderr=subprocess.STDOUT)
    sweep_dir = root.resolve() / "tiny"
    (sub,) = _arrays(sweep_dir)
    rid = sub["runs"]["0"]
    run_dir = sweep_dir / rid
    deadline = time.monotonic() + 300
    while not (hold.is_file() and rundir.last_checkpoint(run_dir).is_file()):
        assert time.monotonic() < deadline, "the fit was not held after its first checkpoint within 300 s"
        time.sleep(0.5)
    task = sub["tasks"]["0"]  # a one-task array is submitted as a plain job: "16", not "16_0"
    subprocess.run(["scancel", "--signal=USR2", task], check=True)
    _wait(sub["job"], 400)
    out = (sweep_dir / "slurm" / task).glob("*_log.out")
    log_text = "".join(p.read_text() for p in out)
    assert "Requeued job" in log_text, log_text[-2000:]
    assert rundir.read_status(run_dir)["status"] == "finished"  # type: ignore[index]
    # Stopped while held, then resumed in the same folder (a fresh start would have removed its output).
    output = (run_dir / "output.log").read_text()
    assert "Stopped by SIGTERM" in output, output
    assert output.count("Restoring states from the checkpoint") == 1, output
    assert reference.wait(timeout=300) == 0, ref_log.read_text()[-3000:]
    ref = ref_root / "tiny" / rid / "metrics.csv"
    assert (run_dir / "metrics.csv").read_bytes() == ref.read_bytes()


@pytest.mark.slow  # two packs of two 1-epoch fits, one ensemble process each: ~1 min
def test_packed_sweep_runs_one_task_per_pack_and_finishes_with_a_correct_manifest(tmp_path: Path) -> None:
    path = _sweep_file(tmp_path, {"model.net.init_std": {"values": [0.01, 1.0]},
                                  "seed_everything": {"values": [0, 1]}, "trainer.max_epochs": {"value": 1}})
    root = tmp_path / "runs"
    argv = ["slurm", str(path), "--root", str(root), "--time", "10", "--wandb-mode", "disabled", "--pack",
            "--pack-size", "2"]
    assert sweep.run(argv) == 0
    sweep_dir = root.resolve() / "tiny"
    (sub,) = _arrays(sweep_dir)
    packs = list(sub["runs"].values())
    assert [len(p) for p in packs] == [2, 2] and len({r for p in packs for r in p}) == 4, packs
    _wait(sub["job"])
    assert sweep.run(["status", str(sweep_dir)]) == 0
    runs = rundir.read_manifest(sweep_dir / "manifest.json")["runs"]
    assert sorted(runs) == sorted(r for p in packs for r in p)
    assert sorted(r["status"] for r in runs.values()) == ["finished"] * 4
    for members in packs:
        pack_dir = sweep_dir / ensemble_plan.pack_id(members)
        assert [m["run_id"] for m in ensemble_plan.read_pack(pack_dir)] == members
        assert rundir.last_checkpoint(pack_dir).is_file()  # trained as one ensemble, not run by run
        for rid in members:
            assert runs[rid]["metrics"]["epoch"] == 0.0 and 0.0 <= runs[rid]["metrics"]["train/acc"] <= 1.0
            assert (sweep_dir / "claims" / rid / "job").read_text().startswith(sub["job"] + "_")
            assert json.loads((sweep_dir / rid / "args.json").read_text()) == {
                "data.dataset": "digits", "model.net.width": 16, "trainer.enable_progress_bar": False,
                "trainer.max_epochs": 1, **runs[rid]["params"]}
    # The members' seeds differ within a pack: their metrics do too.
    assert len({runs[rid]["metrics"]["train/loss"] for rid in runs}) == 4


@pytest.mark.slow  # one 1-epoch fit, then a cancel of the task queued behind it: ~40 s
def test_status_cancel_leaves_finished_runs_untouched(tmp_path: Path) -> None:
    path = _sweep_file(tmp_path, {"model.net.init_std": {"values": [0.01, 1.0]},
                                  "trainer.max_epochs": {"value": 1}})
    root = tmp_path / "runs"
    # One task at a time, and the second held (never eligible) so that it is queued when cancelled.
    argv = ["slurm", str(path), "--root", str(root), "--time", "10", "--wandb-mode", "disabled",
            "--array-parallelism", "1"]
    assert sweep.run(argv) == 0
    sweep_dir = root.resolve() / "tiny"
    (sub,) = _arrays(sweep_dir)
    first, second = sub["runs"]["0"], sub["runs"]["1"]
    subprocess.run(["scontrol", "hold", sub["tasks"]["1"]], check=True, capture_output=True)
    deadline = time.monotonic() + 300
    while (rundir.read_status(sweep_dir / first) or {}).get("status") != "finished":
        assert time.monotonic() < deadline, "the first run did not finish within 300 s"
        time.sleep(0.5)
    before = {p.name: p.read_bytes() for p in (sweep_dir / first).iterdir() if p.is_file()}
    assert sub["tasks"]["1"] in _queue()
    assert sweep.run(["status", str(sweep_dir), "--cancel"]) == 0
    assert not any(j.split("_")[0] == sub["job"] for j in _queue())
    after = {p.name: p.read_bytes() for p in (sweep_dir / first).iterdir() if p.is_file()}
    assert after == before  # status.json, metrics.csv, output.log: byte for byte
    runs = rundir.read_manifest(sweep_dir / "manifest.json")["runs"]
    assert (runs[first]["status"], runs[second]["status"]) == ("finished", "pending")
    assert not (sweep_dir / second).exists()


@pytest.mark.slow  # a held array of 8 (never runs) and 8 processes racing for one claim: ~10 s
def test_two_submissions_cannot_claim_one_run_and_a_dead_tasks_claim_is_taken_over(tmp_path: Path) -> None:
    out = subprocess.run(["sbatch", "--parsable", "--hold", "--array=0-7", "--time=1", "--wrap", "true"],
                         capture_output=True, text=True, check=True)
    array = out.stdout.strip().split(";")[0]
    ids = [f"{array}_{i}" for i in range(8)]
    try:
        deadline = time.monotonic() + 60
        while not set(ids) <= set(_queue()):
            assert time.monotonic() < deadline, f"array {array} not in squeue"
            time.sleep(0.5)
        sweep_dir = tmp_path / "sweep"
        sweep_dir.mkdir()
        # Eight tasks of "two submissions" claim the same run at once, each in its own process.
        code = ("import sys; from pathlib import Path; from lightning_mem.sweeps.slurmtask import claim; "
                "sys.stdout.write(repr(claim(Path(sys.argv[1]), 'run-x', sys.argv[2])))")
        procs = [subprocess.Popen([sys.executable, "-c", code, str(sweep_dir), me], stdout=subprocess.PIPE,
                                  text=True) for me in ids]
        answers = [p.communicate(timeout=120)[0] for p in procs]
        winners = [me for me, a in zip(ids, answers, strict=True) if a == "None"]
        assert len(winners) == 1, answers
        (winner,) = winners
        assert sorted(answers) == sorted(["None"] + [repr(winner)] * 7)
        assert (sweep_dir / "claims" / "run-x" / "job").read_text() == winner + "\n"
        # Its task is gone (cancelled): the claim is stale; one other task takes it over, the rest see it.
        subprocess.run(["scancel", winner], check=True)
        deadline = time.monotonic() + 60
        while winner in _queue():
            assert time.monotonic() < deadline, f"{winner} still queued after scancel"
            time.sleep(0.5)
        others = [me for me in ids if me != winner]
        procs = [subprocess.Popen([sys.executable, "-c", code, str(sweep_dir), me], stdout=subprocess.PIPE,
                                  text=True) for me in others]
        answers = [p.communicate(timeout=120)[0] for p in procs]
        (heir,) = [me for me, a in zip(others, answers, strict=True) if a == "None"]
        assert sorted(answers) == sorted(["None"] + [repr(heir)] * 6)
        assert (sweep_dir / "claims" / "run-x" / "job").read_text() == heir + "\n"
        stale, live = sorted(p.name for p in (sweep_dir / "claims").iterdir())  # no temporary folder left
        assert stale.startswith(f".stale-run-x-{winner}-") and live == "run-x", (stale, live)
    finally:
        subprocess.run(["scancel", array], check=False)


@pytest.mark.slow  # the CLI parsed twice and an array of two agents that fail at once: ~20 s
def test_agents_on_slurm_dry_run_and_a_real_array_whose_agents_fail_without_a_wandb_server(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    agent = f"{sys.executable} -m wandb agent --count 3 me/proj/abc123"
    assert sweep.run(["agents", "me/proj/abc123", "--slurm", "--agents", "2", "--gpus-per-task", "1",
                      "--partition", "gpu", "--count", "3", "--dry-run"]) == 0
    assert capsys.readouterr().out == (
        "# array of 2 tasks, one wandb agent each: sbatch --partition=gpu --gpus-per-task=1\n"
        f"# task 0\n{agent}\n# task 1\n{agent}\n")
    # No W&B server and no API key on the node (sbatch hands the task this environment): each agent stops.
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for key in ("HOME", "WANDB_CONFIG_DIR", "WANDB_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    logs = tmp_path / "agents"
    assert sweep.run(["agents", "me/proj/abc123", "--slurm", "--agents", "2", "--time", "5", "--count", "3",
                      "--logs", str(logs)]) == 0
    array = capsys.readouterr().out.split("job array ")[1].split(",")[0]
    _wait(array, 120)
    for i in range(2):
        text = (logs / f"{array}_{i}" / f"{array}_{i}_0_log.err").read_text()
        assert f"wandb agent task {array}_{i}: {agent}" in text, text[-2000:]
        assert "No API key configured" in text and f"wandb agent exited 1: {agent}" in text, text[-2000:]
