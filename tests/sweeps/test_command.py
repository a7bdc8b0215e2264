"""The sweep files and ``lightning-mem sweep local``.

Tier 1: commands built as ``wandb agent`` builds them, run ids, run status. Tier 2: the runner on a
fake child (a Python one-liner that records its environment and writes ``status.json`` through
rundir, as the CLI does) for slots, GPU pinning, divergence, reruns, random sweeps, locks (real
second processes, one killed with SIGKILL) and signals; bad inputs (sweep files, manifests, --root)
exit 2 without a traceback; one real 2×2 grid of fits on the 8×8 digits. Tier 3: every sweep file,
expanded, is accepted by the CLI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from lightning_mem import rundir
from lightning_mem.sweeps import command as sweep
from lightning_mem.sweeps import outcomes, search
from lightning_mem.sweeps import spec as sweep_file

REPO = Path(__file__).resolve().parents[2]
SWEEP_FILES = sorted((REPO / "sweeps").rglob("*.yaml"))
# `lightning-mem sweep` without importing torch (the CLI module does): the runner's own start-up cost.
SWEEP_MAIN = [sys.executable, "-c",
              "import sys; from lightning_mem.sweeps.command import main; main(sys.argv[1:])"]


def _write_sweep(path: Path, parameters: dict[str, Any], command: list[str], **extra: Any) -> Path:
    path.write_text(yaml.safe_dump({"name": path.stem, "method": "grid", "parameters": parameters,
                                    "command": command, **extra}, sort_keys=False))
    return path


# A child that records what it was given and how it was started, sleeps (RECORDER_SLEEP overrides
# the sweep's `sleep`), writes status.json as the CLI would and exits as told.
RECORDER = textwrap.dedent("""
    import json, os, signal, sys, time
    from pathlib import Path
    from lightning_mem.rundir import write_status
    args = json.load(open(sys.argv[1]))
    if args.get("ignore_term"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    run_dir = os.path.dirname(sys.argv[1])
    t0 = time.time()
    time.sleep(float(os.environ.get("RECORDER_SLEEP", args.get("sleep", 0))))
    diverged = args.get("diverge")
    open(run_dir + "/metrics.csv", "w").write("epoch,step,train/acc,val/acc\\n0,1,0.5,\\n0,1,,0.25\\n")
    json.dump({"argv": sys.argv[1:], "t0": t0, "t1": time.time(), "pid": os.getpid(),
               "env": {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "WANDB_MODE",
                                                       "LIGHTNING_MEM_RUN_ID")}},
              open(run_dir + "/record.json", "w"))
    code = args.get("exit", 0)
    if diverged:
        write_status(Path(run_dir), "diverged", reason="training loss is nan")
    else:
        write_status(Path(run_dir), "finished" if code == 0 else "failed")
    sys.exit(code)
""")


def _recorder_sweep(tmp_path: Path, parameters: dict[str, Any], name: str = "rec", **extra: Any) -> Path:
    command = ["${interpreter}", "-c", RECORDER, "${args_json_file}"]
    return _write_sweep(tmp_path / f"{name}.yaml", parameters, command, **extra)


def _manifest(root: Path, name: str) -> dict[str, Any]:
    return json.loads((root / name / "manifest.json").read_text())


def _wait_for(predicate: Any, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("condition not met")
        time.sleep(0.1)


def _running(manifest: Path, n: int) -> Any:
    def check() -> bool:
        runs = json.loads(manifest.read_text())["runs"] if manifest.exists() else {}
        return sum(r["status"] == "running" for r in runs.values()) >= n
    return check


# ---------------------------------------------------------------- tier 1: commands, ids, status


def test_build_command_substitutes_macros_like_the_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_CONFIG", "base.yaml")
    template = ["${env}", "${interpreter}", "${program}", "--config", "x${envvar:MY_CONFIG}",
                "--config", "${args_json_file}", "${args}", "${no_such_macro}", 7]
    cmd = sweep_file.build_command(template, {"a.b": 1, "c": "x"}, Path("/tmp/r/args.json"),
                                   program="train.py")
    assert cmd == ["/usr/bin/env", sys.executable, "train.py", "--config", "xbase.yaml",
                   "--config", "/tmp/r/args.json", "--a.b=1", "--c=x", "7"]
    assert template[4] == "x${envvar:MY_CONFIG}"  # wandb substitutes in place: the runner passes a copy


@pytest.mark.parametrize(("macro", "expected"), [
    ("${args_no_boolean_flags}", ["--lr=0.1", "--flag"]),  # a False flag is dropped, a True one is bare
    ("${args_no_equals}", ["--lr", "0.1", "--flag", "True", "--off", "False"]),
    ("${args_no_hyphens}", ["lr=0.1", "flag=True", "off=False"]),
    ("${args_override_hydra}", ["++lr=0.1", "++flag=True", "++off=False"]),
    ("${args_json}", ['{"lr": 0.1, "flag": true, "off": false}']),
])
def test_every_argument_macro_of_wandb_agent(macro: str, expected: list[str]) -> None:
    params = {"lr": 0.1, "flag": True, "off": False}
    assert sweep_file.build_command(["prog", macro], params, Path("a.json")) == ["prog", *expected]
    assert json.loads(sweep_file.args_json(params)) == params


def test_run_ids_are_stable_unique_and_safe() -> None:
    key = "model.net.class_path"
    a = sweep_file.run_id({key: "lightning_mem.nets.ConvNet", "x": 0.1}, show=[key])
    assert a.startswith("class_pathConvNet-")
    assert a == sweep_file.run_id({key: "lightning_mem.nets.ConvNet", "x": 0.1}, show=[key])
    assert a != sweep_file.run_id({key: "lightning_mem.nets.ConvNet", "x": 0.2}, show=[key])  # hash of all
    weird = sweep_file.run_id({"p": "a/b c:d;e,#?'"})
    assert all(ch.isalnum() or ch in "._-" for ch in weird) and len(weird) <= 64
    assert sweep_file.run_id({"lr": 0.0123456789}, prefix="007_").startswith("007_lr0.01235-")


def test_run_status_reads_status_json_and_non_finite_loss(tmp_path: Path) -> None:
    assert outcomes.run_status(tmp_path, 0, {"train/loss": 0.1}) == ("finished", None)
    assert outcomes.run_status(tmp_path, 1, {}) == ("failed", None)
    assert outcomes.run_status(tmp_path, 0, {"train/loss": None})[0] == "diverged"
    rundir.write_status(tmp_path, "diverged", reason="training loss is inf")
    assert outcomes.run_status(tmp_path, 3, {}) == ("diverged", "training loss is inf")
    (tmp_path / "status.json").write_text("not json")
    assert outcomes.run_status(tmp_path, 2, {}) == ("failed", None)


# ---------------------------------------------------------------- tier 2: the runner


def test_local_pins_one_gpu_per_slot_and_writes_args_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    path = _recorder_sweep(tmp_path, {"i": {"values": [0, 1, 2, 3]}, "sleep": {"value": 0.5}})
    root = tmp_path / "out"
    assert sweep.run(["local", str(path), "--gpus", "3,5", "--root", str(root)]) == 0
    manifest = _manifest(root, "rec")
    assert manifest["method"] == "grid" and manifest["sweep"] == "rec"
    runs = manifest["runs"]
    records = [json.loads(Path(r["run_dir"], "record.json").read_text()) for r in runs.values()]
    assert sorted(r["params"]["i"] for r in runs.values()) == [0, 1, 2, 3]
    assert {rec["env"]["CUDA_VISIBLE_DEVICES"] for rec in records} == {"3", "5"}
    assert {rec["env"]["WANDB_MODE"] for rec in records} == {"offline"}
    for rid, r in runs.items():
        assert r["status"] == "finished" and r["returncode"] == 0 and r["attempts"] == 1
        assert json.loads(Path(r["run_dir"], "args.json").read_text()) == r["params"]
        rec = json.loads(Path(r["run_dir"], "record.json").read_text())
        assert rec["env"]["LIGHTNING_MEM_RUN_ID"] == rid
        assert rec["argv"][-6:] == ["--run.root", str(root.resolve()), "--run.name", "rec", "--run.id", rid]
        assert r["metrics"] == {"epoch": 0.0, "step": 1.0, "train/acc": 0.5, "val/acc": 0.25}
    # Two slots: never more than two runs at once, and the four runs took two rounds.
    events = sorted([(rec["t0"], 1) for rec in records] + [(rec["t1"], -1) for rec in records])
    running = [sum(e for _, e in events[: i + 1]) for i in range(len(events))]
    assert max(running) == 2


@pytest.mark.parametrize(("gpus", "per_run", "expected"), [
    ("0,1", "1", {"4", "5"}),  # indices into the runner's own CUDA_VISIBLE_DEVICES
    ("1,0", "2", {"5,4"}),  # one slot of two GPUs: a DDP run
])
def test_local_translates_gpu_indices_through_the_visible_devices(
    gpus: str, per_run: str, expected: set[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    path = _recorder_sweep(tmp_path, {"i": {"values": [0, 1, 2, 3]}})
    root = tmp_path / "out"
    argv = ["local", str(path), "--gpus", gpus, "--gpus-per-run", per_run, "--root", str(root)]
    assert sweep.run(argv) == 0
    runs = _manifest(root, "rec")["runs"].values()
    records = [json.loads(Path(r["run_dir"], "record.json").read_text()) for r in runs]
    seen = {rec["env"]["CUDA_VISIBLE_DEVICES"] for rec in records}
    assert seen == expected == {r["gpu"] for r in runs}


def test_local_refuses_a_gpu_index_out_of_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    path = _recorder_sweep(tmp_path, {"i": {"values": [0]}})
    assert sweep.run(["local", str(path), "--gpus", "0,2", "--root", str(tmp_path / "out")]) == 2
    assert "--gpus 0,2: index 2 is out of range: this process sees CUDA_VISIBLE_DEVICES=4,5" in caplog.text
    assert not (tmp_path / "out").exists()


def test_local_records_diverged_and_failed_and_reruns_only_failed(tmp_path: Path) -> None:
    # "nan" writes status.json {"status": "diverged"} (as the CLI's RunStatus) and exits 3; "bad" exits 1.
    recorder = RECORDER.replace(
        "args = json.load(open(sys.argv[1]))",
        'args = json.load(open(sys.argv[1])); '
        'args.update({"nan": {"diverge": 1, "exit": 3}, "bad": {"exit": 1}}.get(args["case"], {}))')
    path = _write_sweep(tmp_path / "rec.yaml", {"case": {"values": ["ok", "nan", "bad"]}},
                        ["${interpreter}", "-c", recorder, "${args_json_file}"])
    root = tmp_path / "out"
    assert sweep.run(["local", str(path), "--root", str(root), "--max-parallel", "3"]) == 1
    runs = {r["params"]["case"]: r for r in _manifest(root, "rec")["runs"].values()}
    assert {k: r["status"] for k, r in runs.items()} == {"ok": "finished", "nan": "diverged", "bad": "failed"}
    assert runs["nan"]["reason"] == "training loss is nan" and runs["bad"]["returncode"] == 1
    started = {k: r["started"] for k, r in runs.items()}
    time.sleep(1.1)  # the start stamps have one-second resolution
    assert sweep.run(["local", str(path), "--root", str(root)]) == 1
    again = {r["params"]["case"]: r for r in _manifest(root, "rec")["runs"].values()}
    assert {k: r["attempts"] for k, r in again.items()} == {"ok": 1, "nan": 1, "bad": 2}
    assert again["ok"]["started"] == started["ok"] and again["bad"]["started"] != started["bad"]


def test_random_sweep_draws_seeded_points_reruns_them_and_extends_with_count(tmp_path: Path) -> None:
    space = {"lr": {"distribution": "log_uniform_values", "min": 1e-3, "max": 1.0},
             "width": {"min": 8, "max": 64}, "act": {"values": ["relu", "sin"]}, "fixed": {"value": 1}}
    path = _recorder_sweep(tmp_path, space, method="random")
    root = tmp_path / "out"
    argv = ["local", str(path), "--root", str(root), "--seed", "7", "--max-parallel", "2"]
    assert sweep.run([*argv, "--count", "3"]) == 0
    manifest = _manifest(root, "rec")
    assert manifest["method"] == "random" and manifest["seed"] == 7
    runs = manifest["runs"]
    expected = search.random_points(space, 3, seed=7)
    assert [rid[:4] for rid in sorted(runs)] == ["000_", "001_", "002_"]
    assert [runs[rid]["params"] for rid in sorted(runs)] == expected
    for rid in runs:
        assert "fixed" not in rid.split("-")[0] and "lr" in rid  # constants are not in the readable part
        assert json.loads(Path(runs[rid]["run_dir"], "args.json").read_text()) == runs[rid]["params"]
    # The same seed and count: the same points, all finished, nothing run again.
    assert sweep.run([*argv, "--count", "3"]) == 0
    assert {rid: r["attempts"] for rid, r in _manifest(root, "rec")["runs"].items()} == dict.fromkeys(runs, 1)
    # A larger count keeps the first three and adds two.
    assert sweep.run([*argv, "--count", "5"]) == 0
    more = _manifest(root, "rec")["runs"]
    assert set(runs) < set(more) and len(more) == 5
    assert [more[rid]["attempts"] for rid in sorted(more)] == [1, 1, 1, 1, 1]
    assert [more[rid]["params"] for rid in sorted(more)] == search.random_points(space, 5, seed=7)


def test_run_cap_caps_random_and_grid(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rand = _recorder_sweep(tmp_path, {"x": {"min": 0.0, "max": 1.0}}, method="random", run_cap=2)
    grid = _recorder_sweep(tmp_path, {"x": {"values": [1, 2, 3, 4]}}, name="g", run_cap=3)
    counts = []
    for path, argv in ((rand, []), (rand, ["--count", "9"]), (rand, ["--count", "1"]), (grid, []),
                       (grid, ["--count", "1"])):
        assert sweep.run(["local", str(path), "--root", str(tmp_path / "o"), "--dry-run", *argv]) == 0
        counts.append(capsys.readouterr().out.count(" --run.id "))
    assert counts == [2, 2, 1, 3, 1]  # the smaller of run_cap and --count


@pytest.mark.parametrize(("extra", "argv", "message"), [
    ({"method": "bayes"}, [], "method 'bayes' fits a model to earlier results, which W&B keeps on its"),
    ({"method": "random"}, [], "method 'random' draws without end: give --count N"),
    ({"method": "hyperband"}, [], "method 'hyperband'; the local runner runs grid, random"),
    ({"method": "random", "run_cap": 0}, ["--count", "2"], "run_cap=0 must be an integer >= 1"),
])
def test_methods_it_cannot_run_are_refused(extra: dict[str, Any], argv: list[str], message: str,
                                           tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _recorder_sweep(tmp_path, {"x": {"values": [1]}}, **extra)
    assert sweep.run(["local", str(path), "--root", str(tmp_path / "out"), *argv]) == 2
    assert f"{path}: {message}" in caplog.text
    assert not (tmp_path / "out").exists()


def test_bayes_message_says_why_the_engine_is_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    path = _recorder_sweep(tmp_path, {"x": {"values": [1]}}, method="bayes")
    assert sweep.run(["local", str(path), "--root", str(tmp_path / "out")]) == 2
    assert "`wandb agent SWEEP_ID`" in caplog.text and "requires numpy<2" in caplog.text


def test_dry_run_prints_commands_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    path = _write_sweep(tmp_path / "rec.yaml", {"i": {"values": [0, 1]}}, ["${env}", "true", "${args}"])
    root = tmp_path / "out"
    assert sweep.run(["local", str(path), "--root", str(root), "--gpus", "7", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith("CUDA_VISIBLE_DEVICES=7 ") for line in lines)
    assert [line.split(" --run.root")[0] for line in lines] == [
        "CUDA_VISIBLE_DEVICES=7 /usr/bin/env true --i=0", "CUDA_VISIBLE_DEVICES=7 /usr/bin/env true --i=1"]
    assert all("--run.name rec --run.id i" in line for line in lines)
    assert not root.exists()


def test_the_cli_dispatches_sweep_and_exits_with_its_status(tmp_path: Path, capsys: pytest.CaptureFixture):
    from lightning_mem.cli import commands

    path = _write_sweep(tmp_path / "rec.yaml", {"i": {"values": [0, 1]}}, ["${env}", "true", "${args}"])
    commands.main(["sweep", "local", str(path), "--root", str(tmp_path / "out"), "--dry-run"])
    assert len(capsys.readouterr().out.splitlines()) == 2
    with pytest.raises(SystemExit) as exit_info:  # `lightning-mem sweep local` exits 1: a run failed
        sweep_file = str(_write_sweep(tmp_path / "f.yaml", {"i": {"value": 0}}, ["false"]))
        commands.main(["sweep", "local", sweep_file, "--root", str(tmp_path / "out")])
    assert exit_info.value.code == 1


def test_a_command_that_cannot_start_is_a_failed_run(tmp_path: Path) -> None:
    path = _write_sweep(tmp_path / "rec.yaml", {"i": {"values": [0, 1]}}, [str(tmp_path / "no-such-program")])
    assert sweep.run(["local", str(path), "--root", str(tmp_path / "out")]) == 1
    runs = _manifest(tmp_path / "out", "rec")["runs"].values()
    assert [r["status"] for r in runs] == ["failed", "failed"]
    assert all(r["reason"].startswith("could not start: ") and "no-such-program" in r["reason"] for r in runs)


def test_a_run_folder_still_owned_by_a_process_is_left_alone(tmp_path: Path) -> None:
    # An earlier attempt's fit that outlived its runner still holds its run folder's lock.
    path = _recorder_sweep(tmp_path, {"i": {"values": [0]}})
    root = tmp_path / "out"
    assert sweep.run(["local", str(path), "--root", str(root)]) == 0
    entry = next(iter(_manifest(root, "rec")["runs"].values()))
    run_dir = Path(entry["run_dir"])
    rundir.write_status(run_dir, "failed")  # make the rerun retry it
    manifest = _manifest(root, "rec")
    next(iter(manifest["runs"].values()))["status"] = "failed"
    rundir.write_manifest(root / "rec" / "manifest.json", manifest)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from lightning_mem.rundir import FolderLock
        lock = FolderLock(Path({str(run_dir)!r}), "run folder").acquire()  # kept: a dropped lock is released
        print("held", flush=True)
        time.sleep(1.5)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
        start = time.monotonic()
        # The rerun waits for the holder (issue 21: never a second fit into a live run's folder, never
        # "failed" while it runs), then records the run as its status.json says.
        assert sweep.run(["local", str(path), "--root", str(root)]) == 1
        assert time.monotonic() - start > 1.0
    finally:
        holder.kill()
        holder.wait()
    again = next(iter(_manifest(root, "rec")["runs"].values()))
    assert again["status"] == "failed" and again["attempts"] == 1  # not started again
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


# ---------------------------------------------------------------- locks: one runner per sweep


def _runner(path: Path, root: Path, *extra: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*SWEEP_MAIN, "local", str(path), "--root", str(root), *extra],
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_a_second_runner_of_one_sweep_refuses_and_disturbs_nothing(tmp_path: Path) -> None:
    path = _recorder_sweep(tmp_path, {"i": {"values": [0, 1, 2, 3]}, "sleep": {"value": 1.5}})
    root = tmp_path / "out"
    first = _runner(path, root, "--max-parallel", "2")
    try:
        _wait_for(_running(root / "rec" / "manifest.json", 2))
        second = _runner(path, root, "--max-parallel", "2")
        _, err = second.communicate(timeout=60)
        assert second.returncode == 2 and "Traceback" not in err
        assert f"is in use by another process (pid {first.pid} on " in err and "sweep folder" in err
        assert first.wait(timeout=120) == 0
    finally:
        for proc in (first,):
            if proc.poll() is None:
                proc.kill()
    runs = _manifest(root, "rec")["runs"]
    assert len(runs) == 4
    for r in runs.values():  # the manifest agrees with each run's own status.json; each ran once
        assert r["status"] == rundir.read_status(Path(r["run_dir"]))["status"] == "finished"  # type: ignore[index]
        assert r["attempts"] == 1 and r["metrics"]["val/acc"] == 0.25


def test_two_different_sweeps_into_one_root_run_side_by_side(tmp_path: Path) -> None:
    root = tmp_path / "out"
    space = {"i": {"values": [0, 1]}, "sleep": {"value": 1.0}}
    paths = [_recorder_sweep(tmp_path, space, name=n) for n in "ab"]
    procs = [_runner(p, root, "--max-parallel", "2") for p in paths]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    spans = []
    for name in "ab":
        records = [json.loads(Path(r["run_dir"], "record.json").read_text())
                   for r in _manifest(root, name)["runs"].values()]
        spans.append((min(r["t0"] for r in records), max(r["t1"] for r in records)))
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]  # they overlapped in time


def test_the_lock_of_a_killed_runner_is_taken_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _recorder_sweep(tmp_path, {"i": {"values": [0, 1, 2]}, "sleep": {"value": 600}})
    root = tmp_path / "out"
    manifest = root / "rec" / "manifest.json"
    first = _runner(path, root, "--max-parallel", "2")
    try:
        _wait_for(_running(manifest, 2))
        first.send_signal(signal.SIGKILL)  # no handler runs: the manifest still says "running"
        first.wait(timeout=30)
        stale = json.loads(manifest.read_text())["runs"]
        for r in stale.values():  # its children outlive it (own sessions); stop them as a user would
            if r["status"] == "running":
                os.killpg(r["pid"], signal.SIGKILL)
    finally:
        if first.poll() is None:
            first.kill()
    assert json.loads((root / "rec" / ".lock").read_text())["pid"] == first.pid
    monkeypatch.setenv("RECORDER_SLEEP", "0")
    assert sweep.run(["local", str(path), "--root", str(root), "--max-parallel", "2"]) == 0
    runs = _manifest(root, "rec")["runs"]
    assert sorted(r["status"] for r in runs.values()) == ["finished"] * 3
    assert sorted(r["attempts"] for r in runs.values()) == [1, 2, 2]  # the two that were running: again
    assert json.loads((root / "rec" / ".lock").read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("ignore_term", [False, True], ids=["sigterm", "sigkill"])
def test_sigint_stops_children_and_keeps_the_manifest(tmp_path: Path, ignore_term: bool) -> None:
    path = _recorder_sweep(tmp_path, {"i": {"values": [0, 1, 2]}, "sleep": {"value": 600},
                                      "ignore_term": {"value": ignore_term}})
    root = tmp_path / "out"
    runner = subprocess.Popen([*SWEEP_MAIN, "local", str(path), "--root", str(root), "--max-parallel", "2",
                               "--kill-timeout", "1"], cwd=tmp_path)
    manifest = root / "rec" / "manifest.json"
    try:
        _wait_for(_running(manifest, 2))
        runs = json.loads(manifest.read_text())["runs"]
        pids = [r["pid"] for r in runs.values() if r["status"] == "running"]
        time.sleep(0.5)  # let the children install their SIGTERM handlers
        runner.send_signal(signal.SIGINT)
        assert runner.wait(timeout=30) == 128 + signal.SIGINT
    finally:
        if runner.poll() is None:
            runner.kill()
    runs = json.loads(manifest.read_text())["runs"]  # valid JSON after the stop
    assert sorted(r["status"] for r in runs.values()) == ["interrupted", "interrupted", "pending"]
    for pid in pids:  # every child is gone (reaped by the runner)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    expected = -signal.SIGKILL if ignore_term else -signal.SIGTERM
    assert {r["returncode"] for r in runs.values() if r["status"] == "interrupted"} == {expected}


# ---------------------------------------------------------------- bad input: exit 2, no traceback


def _sweep_file_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path given as the sweep file, a part of the message)."""
    good = _recorder_sweep(tmp, {"i": {"values": [0]}}, name="good")
    (tmp / "empty.yaml").write_text("")
    (tmp / "truncated.yaml").write_text(good.read_text()[: len(good.read_text()) // 3] + "\n  - [unclosed")
    (tmp / "binary.yaml").write_bytes(bytes(range(256)))
    (tmp / "list.yaml").write_text("- just\n- a list\n")
    (tmp / "folder.yaml").mkdir()
    return {
        "missing": (tmp / "missing.yaml", "no such file and no packaged sweep of that name"),
        "directory": (tmp / "folder.yaml", "cannot read the sweep file"),
        "empty": (tmp / "empty.yaml", "a sweep is a mapping"),
        "truncated": (tmp / "truncated.yaml", "not valid YAML"),
        "binary": (tmp / "binary.yaml", "cannot read the sweep file"),
        "wrong-shape": (tmp / "list.yaml", "a sweep is a mapping"),
    }


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "truncated", "binary", "wrong-shape"])
def test_bad_sweep_files_exit_2_naming_the_file(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    from lightning_mem.cli import commands

    path, message = _sweep_file_cases(tmp_path)[case]
    with pytest.raises(SystemExit) as exit_info:  # any other exception would be a traceback
        commands.main(["sweep", "local", str(path), "--root", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err + caplog.text  # in process, pytest captures the log
    assert f"{path}: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


MANIFESTS = {
    "not-json": ('{"runs": {', "not a valid sweep manifest"),
    "empty": ("", "not a valid sweep manifest"),
    "binary": (bytes(range(256)), "not a valid sweep manifest"),
    "a-list": ('[{"status": "finished"}]', "not a sweep manifest (expected an object with a 'runs' object)"),
    "runs-a-list": ('{"runs": []}', "not a sweep manifest"),
    "entry-without-status": ('{"runs": {"r1": {"params": {}}}}', "run 'r1' has no valid status"),
    "entry-not-an-object": ('{"runs": {"r1": 3}}', "run 'r1' has no valid status"),
}


@pytest.mark.parametrize("case", MANIFESTS)
@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_a_manifest_of_the_wrong_shape_exits_2_and_is_kept(
    case: str, dry_run: bool, tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    from lightning_mem.cli import commands

    path = _recorder_sweep(tmp_path, {"i": {"values": [0]}})
    manifest = tmp_path / "out" / "rec" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    content, message = MANIFESTS[case]
    manifest.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SystemExit) as exit_info:
        commands.main(["sweep", "local", str(path), "--root", str(tmp_path / "out"),
                       *(["--dry-run"] * dry_run)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err + caplog.text  # in process, pytest captures the log
    assert f"{manifest}: {message}" in err and "move it away to start the sweep afresh" in err
    assert "Traceback" not in err
    assert manifest.read_bytes() == (content if isinstance(content, bytes) else content.encode())
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["manifest.json"]  # not even a lock file


def test_a_root_that_is_a_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture,
                                       caplog: pytest.LogCaptureFixture) -> None:
    from lightning_mem.cli import commands

    path = _recorder_sweep(tmp_path, {"i": {"values": [0]}})
    (tmp_path / "root").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        commands.main(["sweep", "local", str(path), "--root", str(tmp_path / "root")])
    err = capsys.readouterr().err + caplog.text  # in process, pytest captures the log
    assert exit_info.value.code == 2 and f"--root {tmp_path / 'root'}: cannot create the sweep folder" in err
    assert (tmp_path / "root").read_text() == "mine"


@pytest.mark.parametrize("argv", [["--count", "0"], ["--max-parallel", "-1"], ["--gpus-per-run", "x"]])
def test_bad_numbers_are_usage_errors(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _recorder_sweep(tmp_path, {"i": {"values": [0]}})
    with pytest.raises(SystemExit) as exit_info:
        sweep.run(["local", str(path), *argv])
    assert exit_info.value.code == 2 and "is not an integer >= 1" in capsys.readouterr().err


# ---------------------------------------------------------------- a real grid of fits


@pytest.mark.slow  # four real fits and two retries: ~30-60 s on 2 shared cores
def test_local_runs_a_real_grid_records_a_failure_and_skips_finished_runs(tmp_path: Path) -> None:
    # 2×2: σ × dataset, where MNIST is not in the (empty) data folder: the command parses (the check before
    # launch lets it through), the run fails reading its data; two fits finish, two fail, none stops the rest.
    data_dir = tmp_path / "no-data"
    data_dir.mkdir()
    path = _write_sweep(tmp_path / "tiny.yaml", {
        "model.net.init_std": {"values": [0.01, 1.0]},
        "data.dataset": {"values": ["digits", "mnist"]},
        "data.data_dir": {"value": str(data_dir)},
        "model.net.width": {"value": 16},
        "trainer.max_epochs": {"value": 1},
        "trainer.enable_progress_bar": {"value": False},
        "trainer.enable_checkpointing": {"value": False},
    }, ["${env}", "lightning-mem", "fit", "--config", str(REPO / "configs/quickstart.yaml"),
        "--config", "${args_json_file}"])
    root = tmp_path / "runs"
    argv = ["local", str(path), "--root", str(root), "--max-parallel", "2", "--wandb-mode", "disabled"]
    assert sweep.run(argv) == 1
    runs = _manifest(root, "tiny")["runs"]
    by_data: dict[str, list[dict[str, Any]]] = {}
    for r in runs.values():
        by_data.setdefault(r["params"]["data.dataset"], []).append(r)
    for r in by_data["digits"]:
        assert r["status"] == "finished" and r["returncode"] == 0
        assert 0.0 <= r["metrics"]["train/acc"] <= 1.0 and 0.0 <= r["metrics"]["val/acc"] <= 1.0
        assert r["metrics"]["epoch"] == 0.0
        run_dir = Path(r["run_dir"])
        assert run_dir.parent == root.resolve() / "tiny"
        assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.csv").is_file()
        assert rundir.read_status(run_dir)["status"] == "finished"  # type: ignore[index]
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["model"]["net"]["init_args"]["init_std"] == r["params"]["model.net.init_std"]
        assert config["run"]["id"] == run_dir.name
    for r in by_data["mnist"]:
        assert r["status"] == "failed" and r["returncode"] == 2
        assert r["reason"].startswith(f"error: dataset 'mnist' not found: the folder {data_dir}/MNIST/raw "
                                      "does not exist")  # the CLI's message
    # Rerun: the finished fits are skipped, the failed ones are tried again.
    assert sweep.run(argv) == 1
    again = _manifest(root, "tiny")["runs"]
    assert {rid: r["attempts"] for rid, r in again.items()} == {
        rid: 1 if r["status"] == "finished" else 2 for rid, r in runs.items()}
    assert all(again[rid]["metrics"] == r["metrics"] for rid, r in runs.items() if r["status"] == "finished")


# ---------------------------------------------------------------- tier 3: every sweep file


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    """The value of a dotted CLI key in a printed config, through ``init_args`` of subclass entries."""
    node: Any = config
    for part in dotted.split("."):
        if part not in node and "init_args" in node:
            node = node["init_args"]
        node = node[part]
    return node


def test_sweep_files_are_w_and_b_sweeps_with_the_cli_command() -> None:
    assert {p.stem for p in SWEEP_FILES} >= {
        "section3_sin", "section4_relu_losses", "section4_remedy_cross_entropy", "section4_remedy_hinge",
        "section4_remedy_squared", "section5_alignment", "label_noise", "cpu_mnist5k", "cpu_mnist5k_random"}
    for path in SWEEP_FILES:
        spec = yaml.safe_load(path.read_text())
        assert spec["method"] in ("grid", "random", "bayes"), path
        cmd = [str(c) for c in spec["command"]]
        assert "fit" in cmd and ("${args_json_file}" in cmd or "${args}" in cmd), path
        if path.parent.name == "sweeps":  # ours: named runs, W&B logging, the run's parameters last
            assert cmd[cmd.index("--run.name") + 1] == spec["name"] == path.stem, path
            assert "configs/logger/wandb.yaml" in cmd, path
            assert cmd.index("${args_json_file}") > max(i for i, c in enumerate(cmd) if c.endswith(".yaml"))
        for name, param in spec["parameters"].items():
            numbers = [param[k] for k in ("min", "max") if k in param]
            for value in param.get("values", [param["value"]] if "value" in param else numbers):
                if name.endswith(("init_std", "loss_scale", "label_noise")):
                    assert isinstance(value, float), (path, name, value)  # not the YAML string "1e-3"


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[str(p.relative_to(REPO / "sweeps")) for p in SWEEP_FILES])
def test_every_sweep_file_expands_to_commands_the_cli_accepts(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first and last run of each sweep: parsed, validated and instantiated by the CLI (model, data
    module, trainer and loggers; nothing trained). ``--print_config`` alone would not validate init_args."""

    from lightning_mem.cli import run as cli

    monkeypatch.chdir(REPO)  # the commands name configs relative to the repository root
    monkeypatch.setattr(sys, "argv", ["lightning-mem"])  # not pytest's arguments
    spec = yaml.safe_load(path.read_text())
    runs = sweep_file.points(spec, path, count=2 if spec["method"] == "random" else None, seed=0)
    assert runs
    for _, params in {0: runs[0], len(runs) - 1: runs[-1]}.values():  # first and last point
        cmd = sweep_file.build_command(spec["command"], params, tmp_path / "args.json")
        (tmp_path / "args.json").write_text(sweep_file.args_json(params))
        argv = cmd[cmd.index("fit") + 1 :]
        built = cli.build_cli([*argv, "--run.root", str(tmp_path / "runs")], run=False)
        config = built.config.as_dict()
        for key, value in params.items():
            if key != "config":  # a config file chosen by the grid (sweeps/repro)
                assert _lookup(config, key) == value, (key, value)
        if "model.net.class_path" in params:
            assert type(built.model.net).__name__ == params["model.net.class_path"].rsplit(".", 1)[-1]
        if "--run.name" in argv:
            assert built.run_dir.parent.name == argv[argv.index("--run.name") + 1]
        if "configs/logger/wandb.yaml" in cmd:
            assert [type(lg).__name__ for lg in built.trainer.loggers] == ["RunCSVLogger", "RunWandbLogger"]


def test_a_sweep_started_outside_the_repository_reads_the_packaged_configs(tmp_path: Path) -> None:
    # The shipped sweeps name `configs/...`; started elsewhere (no such path there), by its packaged name, the
    # check before launch reads the packaged copies (lightning_mem.cli.packaged); a config that is neither a
    # path nor packaged stops it (exit 2) naming where the relative paths were looked for, starting nothing.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([*SWEEP_MAIN, "local", "cpu_mnist5k", "--root", str(tmp_path / "runs"),
                           "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("--config configs/quickstart.yaml") == 4
    spec = yaml.safe_load((REPO / "sweeps" / "cpu_mnist5k.yaml").read_text())
    spec["command"] = [a.replace("configs/quickstart.yaml", "configs/nope.yaml") for a in spec["command"]]
    (tmp_path / "nope.yaml").write_text(yaml.safe_dump(spec))
    proc = subprocess.run([*SWEEP_MAIN, "local", "nope.yaml", "--root", str(tmp_path / "runs"), "--dry-run"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--config configs/nope.yaml: no such file and no packaged config of that name" in proc.stderr
    assert ", quickstart, " in proc.stderr and "paper/* (" in proc.stderr  # the packaged configs are listed
    assert f"relative to the folder the runner starts in, {tmp_path}; a config the package ships" \
        in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()
    proc = subprocess.run([*SWEEP_MAIN, "local", "cpu_mnist5", "--dry-run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no packaged sweep of that name" in proc.stderr, proc.stderr[-2000:]
    assert "cpu_mnist5k_random" in proc.stderr and "repro/* (" in proc.stderr
