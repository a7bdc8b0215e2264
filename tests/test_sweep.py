"""The sweep files and ``lightning-mem sweep local|agents``.

Tier 1: grid expansion and macro substitution against wandb's own implementation. Tier 2: the
runner on a fake child (a Python one-liner that records its environment) for slots, GPU pinning,
divergence, reruns and signals; one real 2×2 grid of fits on the 8×8 digits. Tier 3: every sweep
file, expanded, is accepted by the CLI (``--print_config`` in process).
"""

from __future__ import annotations

import itertools
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

from lightning_mem import sweep

REPO = Path(__file__).resolve().parents[1]
SWEEP_FILES = sorted((REPO / "sweeps").rglob("*.yaml"))
# `lightning-mem sweep` without importing torch (the CLI module does): the runner's own start-up cost.
SWEEP_MAIN = [sys.executable, "-c", "import sys; from lightning_mem.sweep import main; main(sys.argv[1:])"]


def _write_sweep(path: Path, parameters: dict[str, Any], command: list[str], **extra: Any) -> Path:
    path.write_text(yaml.safe_dump({"name": path.stem, "method": "grid", "parameters": parameters,
                                    "command": command, **extra}, sort_keys=False))
    return path


# A child that records what it was given and how it was started, then sleeps and exits as told.
RECORDER = textwrap.dedent("""
    import json, os, signal, sys, time
    args = json.load(open(sys.argv[1]))
    if args.get("ignore_term"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    run_dir = os.path.dirname(sys.argv[1])
    t0 = time.time()
    time.sleep(args.get("sleep", 0))
    if args.get("diverge"):
        record = {"status": "diverged", "reason": "training loss is nan"}
        json.dump(record, open(run_dir + "/status.json", "w"))
    open(run_dir + "/metrics.csv", "w").write("epoch,step,train/acc,val/acc\\n0,1,0.5,\\n0,1,,0.25\\n")
    json.dump({"argv": sys.argv[1:], "t0": t0, "t1": time.time(), "pid": os.getpid(),
               "env": {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "WANDB_MODE",
                                                       "LIGHTNING_MEM_RUN_ID")}},
              open(run_dir + "/record.json", "w"))
    sys.exit(args.get("exit", 0))
""")


def _recorder_sweep(tmp_path: Path, parameters: dict[str, Any]) -> Path:
    command = ["${interpreter}", "-c", RECORDER, "${args_json_file}"]
    return _write_sweep(tmp_path / "rec.yaml", parameters, command)


def _manifest(root: Path, name: str) -> dict[str, Any]:
    return json.loads((root / name / "manifest.json").read_text())


# ---------------------------------------------------------------- tier 1: grid and macros


def test_expand_grid_values_value_and_nested_in_yaml_order() -> None:
    grid = sweep.expand_grid({
        "a": {"values": [1, 2]},
        "b": {"value": "x"},
        "c": {"parameters": {"d": {"values": [True, False]}}},
    })
    assert grid == [
        {"a": 1, "b": "x", "c": {"d": True}}, {"a": 1, "b": "x", "c": {"d": False}},
        {"a": 2, "b": "x", "c": {"d": True}}, {"a": 2, "b": "x", "c": {"d": False}},
    ]


@pytest.mark.parametrize("spec", [
    {"distribution": "uniform", "min": 0.0, "max": 1.0},
    {"min": 1, "max": 3},
    {"distribution": "log_uniform_values", "min": 0.001, "max": 10.0},
])
def test_expand_grid_names_the_parameter_it_cannot_grid(spec: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"parameter 'model\.net\.init_std'.*cannot grid"):
        sweep.expand_grid({"seed_everything": {"values": [0, 1]}, "model.net.init_std": spec})


def test_argument_macros_match_wandb_agent() -> None:
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    params = {"model.net.init_std": 0.01, "model.loss": "hinge", "flag": True, "off": False, "none": None}
    theirs = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    ours = sweep.command_args(params)
    assert set(ours) == set(theirs) - {"args_dict"}
    for key, value in ours.items():
        assert value == theirs[key], key


def test_build_command_substitutes_macros_like_the_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_CONFIG", "base.yaml")
    template = ["${env}", "${interpreter}", "${program}", "--config", "${envvar:MY_CONFIG}",
                "--config", "${args_json_file}", "${args}", "${no_such_macro}"]
    cmd = sweep.build_command(template, {"a.b": 1, "c": "x"}, Path("/tmp/r/args.json"), program="train.py")
    assert cmd == ["/usr/bin/env", sys.executable, "train.py", "--config", "base.yaml",
                   "--config", "/tmp/r/args.json", "--a.b=1", "--c=x"]


def test_run_ids_are_stable_unique_and_safe() -> None:
    key = "model.net.class_path"
    a = sweep.run_id({key: "lightning_mem.nets.ConvNet", "x": 0.1}, show=[key])
    assert a.startswith("class_pathConvNet-")
    assert a == sweep.run_id({key: "lightning_mem.nets.ConvNet", "x": 0.1}, show=[key])
    assert a != sweep.run_id({key: "lightning_mem.nets.ConvNet", "x": 0.2}, show=[key])  # hash of all
    weird = sweep.run_id({"p": "a/b c:d;e,#?'"})
    assert all(ch.isalnum() or ch in "._-" for ch in weird) and len(weird) <= 64


def test_final_metrics_take_each_column_last_value_and_map_nan_to_none(tmp_path: Path) -> None:
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,step,train/loss,train/acc,val/acc\n0,5,1.5,0.4,\n0,5,,,0.3\n1,9,nan,0.6,\n")
    assert sweep.final_metrics(csv) == {"epoch": 1.0, "step": 9.0, "train/loss": None, "train/acc": 0.6,
                                        "val/acc": 0.3}
    assert sweep.final_metrics(tmp_path / "missing.csv") == {}


def test_run_status_reads_status_json_and_non_finite_loss(tmp_path: Path) -> None:
    assert sweep.run_status(tmp_path, 0, {"train/loss": 0.1}) == ("finished", None)
    assert sweep.run_status(tmp_path, 1, {}) == ("failed", None)
    assert sweep.run_status(tmp_path, 0, {"train/loss": None})[0] == "diverged"
    (tmp_path / "status.json").write_text('{"status": "diverged", "reason": "training loss is inf"}')
    assert sweep.run_status(tmp_path, 3, {}) == ("diverged", "training loss is inf")
    (tmp_path / "status.json").write_text("not json")
    assert sweep.run_status(tmp_path, 2, {}) == ("failed", None)


def test_write_json_atomic_leaves_no_temp_file(tmp_path: Path) -> None:
    sweep.write_json_atomic(tmp_path / "m.json", {"a": 1})
    with pytest.raises(ValueError):
        sweep.write_json_atomic(tmp_path / "m.json", {"a": float("nan")})  # strict JSON only
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


# ---------------------------------------------------------------- tier 2: the runner


def test_local_pins_one_gpu_per_slot_and_writes_args_json(tmp_path: Path) -> None:
    path = _recorder_sweep(tmp_path, {"i": {"values": [0, 1, 2, 3]}, "sleep": {"value": 0.5}})
    root = tmp_path / "out"
    assert sweep.run(["local", str(path), "--gpus", "3,5", "--root", str(root)]) == 0
    runs = _manifest(root, "rec")["runs"]
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


def test_local_records_diverged_and_failed_and_reruns_only_failed(tmp_path: Path) -> None:
    # "nan" writes status.json {"status": "diverged"} (as the CLI's RunStatus) and exits 3; "bad" exits 1.
    recorder = RECORDER.replace('args.get("diverge")', 'args["case"] == "nan"').replace(
        'sys.exit(args.get("exit", 0))', 'sys.exit({"nan": 3, "bad": 1}.get(args["case"], 0))')
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


def test_dry_run_prints_commands_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _write_sweep(tmp_path / "rec.yaml", {"i": {"values": [0, 1]}}, ["${env}", "true", "${args}"])
    root = tmp_path / "out"
    assert sweep.run(["local", str(path), "--root", str(root), "--gpus", "7", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith("CUDA_VISIBLE_DEVICES=7 ") for line in lines)
    assert [line.split(" --run.root")[0] for line in lines] == [
        "CUDA_VISIBLE_DEVICES=7 /usr/bin/env true --i=0", "CUDA_VISIBLE_DEVICES=7 /usr/bin/env true --i=1"]
    assert all("--run.name rec --run.id i" in line for line in lines)
    assert not root.exists()


def test_the_cli_dispatches_sweep_and_exits_with_its_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from lightning_mem import cli

    path = _write_sweep(tmp_path / "rec.yaml", {"i": {"values": [0, 1]}}, ["${env}", "true", "${args}"])
    cli.main(["sweep", "local", str(path), "--root", str(tmp_path / "out"), "--dry-run"])
    assert len(capsys.readouterr().out.splitlines()) == 2
    with pytest.raises(SystemExit) as exit_info:  # `lightning-mem sweep local` exits 1: a run failed
        cli.main(["sweep", "local", str(_write_sweep(tmp_path / "f.yaml", {"i": {"value": 0}}, ["false"])),
                  "--root", str(tmp_path / "out")])
    assert exit_info.value.code == 1


def test_local_rejects_a_distribution_with_a_message(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    path = _recorder_sweep(tmp_path, {"lr": {"distribution": "uniform", "min": 0.0, "max": 1.0}})
    assert sweep.run(["local", str(path), "--root", str(tmp_path / "out")]) == 2
    assert "parameter 'lr'" in caplog.text and "values: [...]" in caplog.text


@pytest.mark.parametrize(("text", "message"), [
    ("parameters: {a: {values: [1}\ncommand: [x]\n", "not valid YAML"),
    ("- just\n- a list\n", "a sweep is a mapping"),
    ("parameters: {a: {values: [1]}}\n", "`command:` list"),
])
def test_local_rejects_malformed_files_with_a_message(
    text: str, message: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert sweep.run(["local", str(path), "--root", str(tmp_path / "out")]) == 2
    assert f"{path}: " in caplog.text and message in caplog.text
    assert not (tmp_path / "out").exists()


def test_a_command_that_cannot_start_is_a_failed_run(tmp_path: Path) -> None:
    path = _write_sweep(tmp_path / "rec.yaml", {"i": {"values": [0, 1]}}, [str(tmp_path / "no-such-program")])
    assert sweep.run(["local", str(path), "--root", str(tmp_path / "out")]) == 1
    runs = _manifest(tmp_path / "out", "rec")["runs"].values()
    assert [r["status"] for r in runs] == ["failed", "failed"]
    assert all(r["reason"].startswith("could not start: ") and "no-such-program" in r["reason"] for r in runs)


def test_local_refuses_an_unreadable_manifest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _recorder_sweep(tmp_path, {"i": {"values": [0]}})
    (tmp_path / "out" / "rec").mkdir(parents=True)
    (tmp_path / "out" / "rec" / "manifest.json").write_text('{"runs": {')
    assert sweep.run(["local", str(path), "--root", str(tmp_path / "out")]) == 2
    assert "manifest.json is unreadable" in caplog.text


def _wait_for(predicate: Any, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("condition not met")
        time.sleep(0.1)


@pytest.mark.parametrize("ignore_term", [False, True], ids=["sigterm", "sigkill"])
def test_sigint_stops_children_and_keeps_the_manifest(tmp_path: Path, ignore_term: bool) -> None:
    path = _recorder_sweep(tmp_path, {"i": {"values": [0, 1, 2]}, "sleep": {"value": 600},
                                      "ignore_term": {"value": ignore_term}})
    root = tmp_path / "out"
    runner = subprocess.Popen([*SWEEP_MAIN, "local", str(path), "--root", str(root), "--max-parallel", "2",
                               "--kill-timeout", "1"], cwd=tmp_path)
    manifest = root / "rec" / "manifest.json"

    def two_running() -> bool:
        runs = json.loads(manifest.read_text())["runs"] if manifest.exists() else {}
        return sum(r["status"] == "running" for r in runs.values()) == 2

    try:
        _wait_for(two_running)
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


def test_local_runs_a_real_grid_records_a_failure_and_skips_finished_runs(tmp_path: Path) -> None:
    # 2×2: σ × lr, where lr = -1 is rejected by the module: two fits finish, two fail, none stops the rest.
    path = _write_sweep(tmp_path / "tiny.yaml", {
        "model.net.init_std": {"values": [0.01, 1.0]},
        "model.lr": {"values": [0.1, -1.0]},
        "data.dataset": {"value": "digits"},
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
    by_lr: dict[float, list[dict[str, Any]]] = {}
    for r in runs.values():
        by_lr.setdefault(r["params"]["model.lr"], []).append(r)
    for r in by_lr[0.1]:
        assert r["status"] == "finished" and r["returncode"] == 0
        assert 0.0 <= r["metrics"]["train/acc"] <= 1.0 and 0.0 <= r["metrics"]["val/acc"] <= 1.0
        assert r["metrics"]["epoch"] == 0.0
        run_dir = Path(r["run_dir"])
        assert run_dir.parent == root.resolve() / "tiny"
        assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.csv").is_file()
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["model"]["net"]["init_args"]["init_std"] == r["params"]["model.net.init_std"]
        assert config["run"]["id"] == run_dir.name
    for r in by_lr[-1.0]:
        assert r["status"] == "failed" and r["returncode"] not in (0, None)
        assert r["reason"] == "error: lr=-1.0 must be a positive finite number"  # the CLI's message
    # Rerun: the finished fits are skipped, the failed ones are tried again.
    assert sweep.run(argv) == 1
    again = _manifest(root, "tiny")["runs"]
    assert {rid: r["attempts"] for rid, r in again.items()} == {
        rid: 1 if r["status"] == "finished" else 2 for rid, r in runs.items()}
    assert all(again[rid]["metrics"] == r["metrics"] for rid, r in runs.items() if r["status"] == "finished")


# ---------------------------------------------------------------- agents, with a fake `wandb`


def _fake_wandb(bin_dir: Path, log_dir: Path) -> None:
    """A `wandb` executable that records its argv, GPU pin and start time, traps SIGINT, and exits
    with 1 on GPU "1" (a failing agent), else 0."""
    bin_dir.mkdir()
    script = bin_dir / "wandb"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""
        import json, os, signal, sys, time
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
        got = []
        signal.signal(signal.SIGINT, lambda s, f: got.append(s))
        record = {{"argv": sys.argv[1:], "gpu": gpu, "t": time.time(), "path": os.environ["PATH"]}}
        json.dump(record, open(os.path.join({str(log_dir)!r}, f"agent{{gpu}}.json"), "w"))
        end = time.time() + float(os.environ.get("FAKE_AGENT_SECONDS", "0"))
        while time.time() < end and not got:
            time.sleep(0.05)
        record["signals"] = got
        json.dump(record, open(os.path.join({str(log_dir)!r}, f"agent{{gpu}}.json"), "w"))
        sys.exit(1 if gpu == "1" else 0)
    """))
    script.chmod(0o755)


def _agents(tmp_path: Path, *args: str, seconds: float = 0.0) -> tuple[subprocess.Popen[str], Path]:
    logs = tmp_path / "logs"
    logs.mkdir()
    _fake_wandb(tmp_path / "bin", logs)
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
               FAKE_AGENT_SECONDS=str(seconds))
    proc = subprocess.Popen([*SWEEP_MAIN, "agents", *args], env=env, stdout=subprocess.PIPE, text=True)
    return proc, logs


def test_agents_one_per_gpu_staggered_and_report_exit_codes(tmp_path: Path) -> None:
    proc, logs = _agents(tmp_path, "me/proj/abc123", "--gpus", "0,1,2", "--count", "4", "--stagger", "0.5")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1  # the agent on GPU 1 failed
    assert out.splitlines() == ["agent GPU 0: exit 0", "agent GPU 1: exit 1", "agent GPU 2: exit 0"]
    records = [json.loads((logs / f"agent{g}.json").read_text()) for g in "012"]
    assert [r["argv"] for r in records] == [["agent", "--count", "4", "me/proj/abc123"]] * 3
    assert [r["gpu"] for r in records] == ["0", "1", "2"]
    assert all(b["t"] - a["t"] >= 0.45 for a, b in itertools.pairwise(records))
    # The runs the agents start find this Python's lightning-mem first on PATH.
    assert all(r["path"].split(os.pathsep)[0] == str(Path(sys.executable).parent) for r in records)


def test_agents_forward_sigint(tmp_path: Path) -> None:
    proc, logs = _agents(tmp_path, "abc123", "--gpus", "0,2", "--stagger", "0", seconds=60)
    try:
        _wait_for(lambda: len(list(logs.glob("agent*.json"))) == 2, timeout=30)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and out.splitlines() == ["agent GPU 0: exit 0", "agent GPU 2: exit 0"]
    for g in "02":
        assert json.loads((logs / f"agent{g}.json").read_text())["signals"] == [signal.SIGINT]


# ---------------------------------------------------------------- tier 3: every sweep file


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    """The value of a dotted CLI key in a printed config, through ``init_args`` of subclass entries."""
    node: Any = config
    for part in dotted.split("."):
        if part not in node and "init_args" in node:
            node = node["init_args"]
        node = node[part]
    return node


def test_sweep_files_are_w_and_b_grids_with_the_cli_command() -> None:
    assert {p.stem for p in SWEEP_FILES} >= {
        "section3_sin", "section4_relu_losses", "section4_remedy_cross_entropy", "section4_remedy_hinge",
        "section4_remedy_squared", "section5_alignment", "label_noise", "cpu_mnist5k"}
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
            for value in param.get("values", [param.get("value")]):
                if name.endswith(("init_std", "loss_scale", "label_noise")):
                    assert isinstance(value, float), (path, name, value)  # not the YAML string "1e-3"


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[str(p.relative_to(REPO / "sweeps")) for p in SWEEP_FILES])
def test_every_sweep_file_expands_to_commands_the_cli_accepts(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first and last run of each grid: parsed, validated and instantiated by the CLI (model, data
    module, trainer and loggers; nothing trained). ``--print_config`` alone would not validate init_args."""
    from lightning_mem import cli

    monkeypatch.chdir(REPO)  # the commands name configs relative to the repository root
    monkeypatch.setattr(sys, "argv", ["lightning-mem"])  # not pytest's arguments
    spec = yaml.safe_load(path.read_text())
    grid = sweep.expand_grid(spec["parameters"])
    assert grid
    for params in {0: grid[0], len(grid) - 1: grid[-1]}.values():  # first and last combination
        cmd = sweep.build_command(spec["command"], params, tmp_path / "args.json")
        (tmp_path / "args.json").write_text(sweep.command_args(params)["args_json"][0])
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
