"""Fuzz-style tables of hostile input through the real tools, in this process (``commands.main``).

Two tables (issue 11): every numeric key of ``fit`` × {0, -1, nan, inf, 1e300, 10**30, a string, a list}, and
the tools' file arguments × {missing, directory, empty, truncated, wrong shape, binary, existing file for
outputs}. Every case asserts the exit code (2 for bad input; an accepted value is checked with
``lightning_mem.cli.run.check_args``, which parses without training), a message naming the key and value or
the
file, no "Traceback" in the output, and that the files of an earlier run (and every other file that existed)
are byte-identical afterwards. Failures happen before training, so the whole table stays fast.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from lightning_mem.cli.commands import main
from lightning_mem.cli.run import check_args
from tests.helpers.exitcodes import exit_code

TESTS = Path(__file__).resolve().parents[1]
QUICKSTART = TESTS.parent / "configs" / "quickstart.yaml"
FIT = ["fit", "--config", str(QUICKSTART), "--data.dataset", "digits", "--model.net.width", "16",
       "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
       "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]

# ---------------------------------------------------------------------------- helpers


def run_tool(argv: list[str], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
             ) -> tuple[int, str]:
    """(exit code, everything written to stdout, stderr and the log) of ``lightning-mem argv``."""
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = exit_code(main, argv)
    out = capsys.readouterr()
    return code, out.out + out.err + caplog.text


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root``: its bytes (the lock file's holder record included)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def message(output: str) -> str:
    """The last ``error:`` message of the output (what the user reads last)."""
    at = output.rfind("error:")
    return output[at:] if at >= 0 else output[-600:]


# ---------------------------------------------------------------------------- numeric keys


VALUES = {"zero": "0", "minus1": "-1", "nan": "nan", "inf": "inf", "huge_float": "1e300",
          "huge_int": str(10**30), "string": "abc", "list": "[1, 2]"}
# key -> the values it accepts (their runs would train: checked by parsing only). Everything else: exit 2.
NUMERIC = {
    "seed_everything": {"zero"},
    "model.lr": {"huge_int"},  # 1e30: a valid (diverging) learning rate
    "model.loss_scale": {"huge_int"},
    "model.momentum": {"zero", "huge_int"},
    "model.weight_decay": {"zero", "huge_int"},
    "model.net.width": set(),
    "model.net.init_std": {"huge_int"},
    "data.batch_size": set(),
    "data.eval_batch_size": set(),
    "data.label_noise": {"zero"},
    "data.label_seed": {"zero"},
    "data.train_subset": set(),
    "trainer.max_epochs": {"zero", "minus1"},  # -1: no limit (Lightning)
    "trainer.min_epochs": {"zero", "minus1"},
    "trainer.max_steps": {"zero", "minus1"},
    "trainer.min_steps": {"zero", "minus1"},
    "trainer.limit_train_batches": {"zero", "huge_float", "huge_int"},  # 1e300 (a float): all batches
    "trainer.limit_val_batches": {"zero", "huge_float", "huge_int"},
    "trainer.val_check_interval": set(),
    "trainer.check_val_every_n_epoch": set(),
    "trainer.accumulate_grad_batches": set(),
    "trainer.gradient_clip_val": {"zero", "huge_float", "huge_int"},
    "trainer.num_nodes": set(),
    "trainer.devices": set(),
    "trainer.log_every_n_steps": {"zero", "minus1"},
    "trainer.num_sanity_val_steps": {"zero", "minus1"},  # -1: the whole split
    "trainer.reload_dataloaders_every_n_epochs": {"zero"},
}
# The alignment callback's numbers, given in a config file (a YAML value of the same kind each).
CALLBACK = {"every_n_steps": set(), "val_max_examples": {"zero"}, "max_classes": set()}
YAML_VALUES: dict[str, Any] = {"zero": 0, "minus1": -1, "nan": math.nan, "inf": math.inf, "huge_float": 1e300,
                               "huge_int": 10**30, "string": "abc", "list": [1, 2]}

NUMERIC_CASES = [(key, label) for key in NUMERIC for label in VALUES]
CALLBACK_CASES = [(key, label) for key in CALLBACK for label in VALUES]


def value_forms(label: str) -> list[str]:
    """How a message may write the value: as given, as Python prints the float or int, or its start."""
    raw = VALUES[label]
    forms = [raw, raw.split(",")[0]]
    try:
        number = float(raw)
        forms += [repr(number), f"{number:g}"]
        if number.is_integer():
            forms.append(str(int(number)))
    except ValueError:
        pass
    return forms


@pytest.fixture(scope="module")
def earlier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run root holding a finished run's files (written by hand: fast), which no bad command may touch."""
    root = tmp_path_factory.mktemp("fuzz_root")
    run_dir = root / "quickstart" / "old"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "metrics.csv").write_text("epoch,step,val/acc\r\n0,5,0.9\r\n")
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (run_dir / "status.json").write_text('{"status": "finished"}\n')
    return root


def _assert_refused(code: int, output: str, key: str, forms: list[str], before: dict[str, bytes],
                    root: Path) -> None:
    text = message(output)
    assert code == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert key.rsplit(".", 1)[-1] in text, text
    assert any(form in text for form in forms), (forms, text)
    assert snapshot(root) == before  # the earlier run untouched, no new run folder


@pytest.mark.parametrize(("key", "label"), NUMERIC_CASES, ids=[f"{k}={v}" for k, v in NUMERIC_CASES])
def test_numeric_key(key: str, label: str, earlier: Path, capsys: pytest.CaptureFixture[str],
                     caplog: pytest.LogCaptureFixture) -> None:
    argv = [*FIT, "--run.root", str(earlier), f"--{key}", VALUES[label]]
    if label in NUMERIC[key]:  # accepted: it parses and passes every check made before training
        assert check_args(argv) is None
        return
    before = snapshot(earlier)
    code, output = run_tool(argv, capsys, caplog)
    _assert_refused(code, output, key, value_forms(label), before, earlier)


@pytest.mark.parametrize(("key", "label"), CALLBACK_CASES, ids=[f"{k}={v}" for k, v in CALLBACK_CASES])
def test_callback_key_in_a_config_file(key: str, label: str, earlier: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
                                       ) -> None:
    callback = {"class_path": "lightning_mem.callbacks.AlignmentMonitor",
                "init_args": {key: YAML_VALUES[label]}}
    config = tmp_path / "callback.yaml"
    config.write_text(yaml.safe_dump({"trainer": {"callbacks": [callback]}}))
    argv = [*FIT, "--config", str(config), "--run.root", str(earlier)]
    if label in CALLBACK[key]:
        assert check_args(argv) is None
        return
    before = snapshot(earlier)
    code, output = run_tool(argv, capsys, caplog)
    forms = [*value_forms(label), ".nan" if label == "nan" else ".inf" if label == "inf" else VALUES[label]]
    _assert_refused(code, output, key, forms, before, earlier)


# `lightning-mem ensemble fit --ensemble.<key> v1,v2`: each member is a `fit` of the same option, so a value
# refused by `fit` (the table above) is refused for the ensemble too, before any folder is written; and the
# list itself may be malformed.
ENSEMBLE = {"init_std": ("model.net.init_std", "0.1"), "seed": ("seed_everything", "1"),
            "lr": ("model.lr", "0.1"), "loss_scale": ("model.loss_scale", "1"),
            "label_seed": ("data.label_seed", "1")}
ENSEMBLE_CASES = [(key, label) for key, (fit_key, _) in ENSEMBLE.items() for label in VALUES
                  if label not in NUMERIC[fit_key]]
LISTS = {"empty": "", "blank-item": "{ok},,{ok}", "trailing-comma": "{ok},", "only-commas": ",,"}


@pytest.mark.parametrize(("key", "label"), ENSEMBLE_CASES, ids=[f"{k}={v}" for k, v in ENSEMBLE_CASES])
def test_ensemble_key(key: str, label: str, earlier: Path, capsys: pytest.CaptureFixture[str],
                      caplog: pytest.LogCaptureFixture) -> None:
    fit_key, ok = ENSEMBLE[key]
    argv = ["ensemble", *FIT, "--run.root", str(earlier), f"--ensemble.{key}", f"{ok},{VALUES[label]}"]
    before = snapshot(earlier)
    code, output = run_tool(argv, capsys, caplog)
    _assert_refused(code, output, fit_key, value_forms(label), before, earlier)


@pytest.mark.parametrize("form", list(LISTS))
def test_ensemble_malformed_list(form: str, earlier: Path, capsys: pytest.CaptureFixture[str],
                                 caplog: pytest.LogCaptureFixture) -> None:
    text = LISTS[form].format(ok="0.1")
    before = snapshot(earlier)
    argv = ["ensemble", *FIT, "--run.root", str(earlier), "--ensemble.lr", text]
    code, output = run_tool(argv, capsys, caplog)
    _assert_refused(code, output, "--ensemble.lr", [repr(text)], before, earlier)
    assert "comma-separated values" in message(output)


def test_an_ensemble_too_large_for_memory_names_its_size(
    earlier: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Each member fits; 3,000 of them stacked do not: refused after parsing the first, with the bytes."""
    seeds = ",".join(map(str, range(3000)))
    argv = ["ensemble", *FIT, "--model.net.width", "200000", "--run.root", str(earlier),
            "--ensemble.seed", seeds]
    before = snapshot(earlier)
    code, output = run_tool(argv, capsys, caplog)
    text = message(output)
    assert code == 2 and "Traceback" not in output, output[-3000:]
    want = ("an ensemble of 3000 members of model.net: ScaledMLP(num_classes=10, width=200000, depth=1) "
            "needs 177.6 GB")
    assert want in text, text
    assert "3000 x hidden.weight of shape (200000, 64)" in text and "this machine has" in text
    assert snapshot(earlier) == before


# ---------------------------------------------------------------------------- file arguments


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Damaged and misplaced files of every kind, built once, and a real finished run (width 32)."""
    tmp = tmp_path_factory.mktemp("fuzz_files")
    real = tmp / "real"
    assert exit_code(main, [*FIT, "--model.net.width", "32", "--run.root", str(real), "--run.id", "w32"]) == 0
    run_dir = real / "quickstart" / "w32"
    ckpt = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    made: dict[str, Path] = {"run": run_dir, "real_root": real}

    def put(name: str, data: bytes | str) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        made[name.replace(".", "_").replace("/", "_")] = path

    put("empty.yaml", "")
    put("list.yaml", "- model\n- data\n")
    put("scalar.yaml", "just words\n")
    put("truncated.yaml", "model: {lr: 0.1, loss: cross_")
    put("binary.yaml", bytes(range(128, 256)) * 4)
    put("empty.ckpt", b"")
    put("truncated.ckpt", ckpt[: len(ckpt) // 2])
    put("binary.ckpt", bytes(range(256)) * 16)
    shape = tmp / "shape.ckpt"
    torch.save({"weights": torch.zeros(3)}, shape)
    made["shape_ckpt"] = shape
    made["width32_ckpt"] = run_dir / "checkpoints" / "last.ckpt"
    put("empty.json", "")
    put("list.json", "[1, 2]\n")
    put("nostatus.json", '{"runs": {"a": {"run_dir": "a"}}}\n')
    put("runs_list.json", '{"runs": [1]}\n')
    put("binary.json", bytes(range(128, 256)))
    put("binary_run/q/r/metrics.csv", bytes(range(128, 256)))
    put("noheader_run/q/r/metrics.csv", "0,5,0.9\r\n1,10,0.8\r\n")
    put("a_file.txt", "someone's notes\n")
    put("sweep_empty.yaml", "")
    put("sweep_list.yaml", "- name\n")
    put("sweep_truncated.yaml", "name: s\nparameters:\n  model.lr: {values: [0.1, 0.")
    put("sweep_binary.yaml", bytes(range(128, 256)))
    command = ["lightning-mem", *FIT, "--config", "${args_json_file}"]
    put("sweep_badkey.yaml", yaml.safe_dump({"name": "bk", "parameters": {"model.lrr": {"values": [0.1]}},
                                             "command": command}))
    put("pack_empty/pack.json", "")
    put("pack_list/pack.json", "[1, 2]\n")
    put("pack_shape/pack.json", '{"members": [{"run_id": "a"}]}\n')
    put("pack_binary/pack.json", bytes(range(128, 256)))
    member = [*FIT[1:], "--run.root", str(tmp / "pack_root"), "--run.id", "m0"]
    bad_member = {"run_id": "m0", "argv": [*member, "--model.lrr", "1"]}
    put("pack_badkey/pack.json", json.dumps({"members": [bad_member]}))
    put("pack_torn/pack.json", json.dumps({"members": [{"run_id": "m0", "argv": member}]}))
    put("pack_torn/checkpoints/last.ckpt", ckpt[: len(ckpt) // 3])
    (tmp / "a_dir").mkdir()
    (tmp / "empty_dir").mkdir()
    made["a_dir"], made["empty_dir"], made["tmp"] = tmp / "a_dir", tmp / "empty_dir", tmp
    return made


def _sweep_file(tmp: Path, name: str) -> Path:
    path = tmp / f"{name}.yaml"
    command = ["lightning-mem", *FIT, "--config", "${args_json_file}"]
    path.write_text(yaml.safe_dump({"name": name, "parameters": {"model.lr": {"values": [0.1]}},
                                    "command": command}))
    return path


# (id, argv with {names} of `files`, exit code, parts of the message with {names})
FILE_CASES: list[tuple[str, list[str], int, list[str]]] = [
    # fit --config
    ("config-missing", [*FIT, "--config", "{tmp}/nope.yaml"], 2, ["{tmp}/nope.yaml", "no such file"]),
    ("config-directory", [*FIT, "--config", "{a_dir}"], 2, ["{a_dir}", "is a directory"]),
    ("config-empty", [*FIT, "--config", "{empty_yaml}"], 2, ["{empty_yaml}", "empty", "mapping"]),
    ("config-truncated", [*FIT, "--config", "{truncated_yaml}"], 2, ["{truncated_yaml}", "not valid YAML"]),
    ("config-list", [*FIT, "--config", "{list_yaml}"], 2, ["{list_yaml}", "must be a mapping", "list"]),
    ("config-scalar", [*FIT, "--config", "{scalar_yaml}"], 2, ["{scalar_yaml}", "must be a mapping"]),
    ("config-binary", [*FIT, "--config", "{binary_yaml}"], 2, ["{binary_yaml}", "not a text file"]),
    ("model-config-list", [*FIT, "--model", "{list_yaml}"], 2, ["--model {list_yaml}", "must be a mapping"]),
    ("config-empty-path", [*FIT, "--config", ""], 2, ["--config ''", "an empty path"]),
    ("config-not-a-regular-file", [*FIT, "--config", "/dev/null"], 2, ["/dev/null", "not a regular file"]),
    ("run-root-empty-path", [*FIT, "--run.root", ""], 2, ["run.root=''", "is empty"]),
    # fit --ckpt_path (each would resume into, or start beside, the real run: it must stay byte-identical)
    ("ckpt-missing", [*FIT, "--ckpt_path", "{tmp}/nope.ckpt"], 2, ["{tmp}/nope.ckpt", "no such checkpoint"]),
    ("ckpt-empty-path", [*FIT, "--ckpt_path", ""], 2, ["--ckpt_path ''", "an empty path"]),
    ("ckpt-directory", [*FIT, "--ckpt_path", "{a_dir}"], 2, ["{a_dir}", "no such checkpoint file"]),
    ("ckpt-empty", [*FIT, "--ckpt_path", "{empty_ckpt}"], 2, ["{empty_ckpt}", "does not load"]),
    ("ckpt-truncated", [*FIT, "--ckpt_path", "{truncated_ckpt}"], 2, ["{truncated_ckpt}", "does not load"]),
    ("ckpt-binary", [*FIT, "--ckpt_path", "{binary_ckpt}"], 2, ["{binary_ckpt}", "does not load"]),
    ("ckpt-wrong-shape", [*FIT, "--ckpt_path", "{shape_ckpt}"], 2,
     ["{shape_ckpt}", "not a Lightning checkpoint"]),
    ("ckpt-other-width", [*FIT, "--ckpt_path", "{width32_ckpt}"], 2,
     ["{width32_ckpt}", "checkpoint has width 32, config asks for 16"]),
    ("resume-other-width", [*FIT, "--run.root", "{real_root}", "--run.id", "w32", "--ckpt_path", "last",
                            "--model.net.width", "64"], 2, ["checkpoint has width 32, config asks for 64"]),
    ("validate-ckpt-truncated", ["validate", "--ckpt_path", "{truncated_ckpt}"], 2, ["{truncated_ckpt}"]),
    # report: inputs and --out
    ("report-input-missing", ["report", "{tmp}/nope", "--out", "{tmp}/rep"], 2, ["{tmp}/nope"]),
    ("report-input-empty-dir", ["report", "{empty_dir}", "--out", "{tmp}/rep"], 2, ["no finished runs"]),
    ("report-manifest-empty", ["report", "{empty_json}", "--out", "{tmp}/rep"], 2, ["{empty_json}"]),
    ("report-manifest-list", ["report", "{list_json}", "--out", "{tmp}/rep"], 2,
     ["{list_json}", "not a sweep manifest"]),
    ("report-manifest-no-status", ["report", "{nostatus_json}", "--out", "{tmp}/rep"], 2,
     ["{nostatus_json}", "no valid status"]),
    ("report-manifest-runs-list", ["report", "{runs_list_json}", "--out", "{tmp}/rep"], 2,
     ["{runs_list_json}"]),
    ("report-manifest-binary", ["report", "{binary_json}", "--out", "{tmp}/rep"], 2, ["{binary_json}"]),
    ("report-metrics-binary", ["report", "{tmp}/binary_run", "--out", "{tmp}/rep"], 2,
     ["binary_run/q/r/metrics.csv", "not a metrics.csv"]),
    ("report-metrics-no-header", ["report", "{tmp}/noheader_run", "--out", "{tmp}/rep"], 2,
     ["noheader_run/q/r/metrics.csv", "no 'step' column"]),
    ("report-input-empty-path", ["report", "", "--out", "{tmp}/rep"], 2, ["inputs", "'' is an empty path"]),
    ("report-out-empty-path", ["report", "{run}", "--out", ""], 2, ["--out", "'' is an empty path"]),
    ("dashboard-input-empty-path", ["dashboard", "html", "", "--out", "{tmp}/d.html"], 2,
     ["inputs", "'' is an empty path"]),
    ("dashboard-out-empty-path", ["dashboard", "html", "{run}", "--out", ""], 2,
     ["--out", "'' is an empty path"]),
    ("theorem1-out-empty-path", ["theorem1", "--out", ""], 2, ["--out", "'' is an empty path"]),
    ("sweep-file-empty-path", ["sweep", "local", "", "--dry-run"], 2, ["sweep", "'' is an empty path"]),
    ("sweep-root-empty-path", ["sweep", "local", "{tmp}/good_sweep.yaml", "--root", " "], 2,
     ["--root", "' ' is an empty path"]),
    ("pack-empty-path", ["ensemble", "fit", "--pack", ""], 2, ["--pack", "'' is an empty path"]),
    ("report-out-existing-file", ["report", "{run}", "--out", "{a_file_txt}"], 2,
     ["--out {a_file_txt}", "existing file"]),
    ("report-out-under-a-file", ["report", "{run}", "--out", "{a_file_txt}/sub"], 2,
     ["{a_file_txt}", "file"]),
    # dashboard html: inputs and --out
    ("dashboard-input-missing", ["dashboard", "html", "{tmp}/nope", "--out", "{tmp}/d.html"], 2,
     ["{tmp}/nope"]),
    ("dashboard-manifest-list", ["dashboard", "html", "{list_json}", "--out", "{tmp}/d.html"], 2,
     ["{list_json}"]),
    ("dashboard-manifest-binary", ["dashboard", "html", "{binary_json}", "--out", "{tmp}/d.html"], 2,
     ["{binary_json}"]),
    ("dashboard-out-directory", ["dashboard", "html", "{run}", "--out", "{a_dir}"], 2,
     ["--out {a_dir}", "is a directory"]),
    ("dashboard-out-existing-file", ["dashboard", "html", "{run}", "--out", "{a_file_txt}"], 2,
     ["--out {a_file_txt}", "not a lightning-mem dashboard"]),
    ("dashboard-out-under-a-file", ["dashboard", "html", "{run}", "--out", "{a_file_txt}/d.html"], 2,
     ["{a_file_txt}", "is a file"]),
    # theorem1 --out
    ("theorem1-out-existing-file", ["theorem1", "--out", "{a_file_txt}"], 2, ["--out {a_file_txt}"]),
    ("theorem1-out-under-a-file", ["theorem1", "--out", "{a_file_txt}/sub"], 2, ["{a_file_txt}/sub"]),
    # sweep local: the sweep file
    ("sweep-missing", ["sweep", "local", "{tmp}/nope.yaml", "--root", "{tmp}/sw", "--dry-run"], 2,
     ["{tmp}/nope.yaml"]),
    ("sweep-directory", ["sweep", "local", "{a_dir}", "--root", "{tmp}/sw", "--dry-run"], 2, ["{a_dir}"]),
    ("sweep-empty", ["sweep", "local", "{sweep_empty_yaml}", "--root", "{tmp}/sw", "--dry-run"], 2,
     ["{sweep_empty_yaml}", "mapping"]),
    ("sweep-list", ["sweep", "local", "{sweep_list_yaml}", "--root", "{tmp}/sw", "--dry-run"], 2,
     ["{sweep_list_yaml}", "mapping"]),
    ("sweep-truncated", ["sweep", "local", "{sweep_truncated_yaml}", "--root", "{tmp}/sw", "--dry-run"], 2,
     ["{sweep_truncated_yaml}", "not valid YAML"]),
    ("sweep-binary", ["sweep", "local", "{sweep_binary_yaml}", "--root", "{tmp}/sw", "--dry-run"], 2,
     ["{sweep_binary_yaml}"]),
    # ensemble fit: --pack DIR (its pack.json) and --ckpt_path
    ("pack-missing", ["ensemble", "fit", "--pack", "{tmp}/nope"], 2,
     ["{tmp}/nope/pack.json", "no such file"]),
    ("pack-dir-without-pack-json", ["ensemble", "fit", "--pack", "{empty_dir}"], 2,
     ["{empty_dir}/pack.json", "no such file"]),
    ("pack-given-the-file", ["ensemble", "fit", "--pack", "{pack_list_pack_json}"], 2,
     ["--pack {pack_list_pack_json}", "the folder that holds it"]),
    ("pack-empty", ["ensemble", "fit", "--pack", "{tmp}/pack_empty"], 2, ["{pack_empty_pack_json}"]),
    ("pack-list", ["ensemble", "fit", "--pack", "{tmp}/pack_list"], 2,
     ["{pack_list_pack_json}", "not a pack file"]),
    ("pack-wrong-shape", ["ensemble", "fit", "--pack", "{tmp}/pack_shape"], 2,
     ["{pack_shape_pack_json}", "not a pack file"]),
    ("pack-binary", ["ensemble", "fit", "--pack", "{tmp}/pack_binary"], 2, ["{pack_binary_pack_json}"]),
    ("pack-member-bad-key", ["ensemble", "fit", "--pack", "{tmp}/pack_badkey"], 2, ["--model.lrr"]),
    ("pack-ckpt-torn", ["ensemble", "fit", "--pack", "{tmp}/pack_torn", "--ckpt_path", "last"], 2,
     ["{tmp}/pack_torn/checkpoints/last.ckpt", "does not load"]),
    ("ensemble-ckpt-outside-an-ensemble", [*("ensemble", *FIT), "--ensemble.seed", "0,1", "--ckpt_path",
                                           "{truncated_ckpt}"], 2, ["--ckpt_path {truncated_ckpt}"]),
    ("ensemble-ckpt-missing", [*("ensemble", *FIT), "--ensemble.seed", "0,1", "--ckpt_path",
                               "{tmp}/nope.ckpt"], 2, ["{tmp}/nope.ckpt"]),
    ("sweep-parameter-not-a-cli-key", ["sweep", "local", "{sweep_badkey_yaml}", "--root", "{tmp}/sw"], 2,
     ["{sweep_badkey_yaml}", "model.lrr", "no run was started"]),
    ("sweep-root-is-a-file", ["sweep", "local", "{tmp}/good_sweep.yaml", "--root", "{a_file_txt}"], 2,
     ["--root {a_file_txt}"]),
]
# sweep local: its manifest (in <root>/<sweep name>/), damaged in each way; the sweep must not start.
MANIFESTS = {"empty": "", "list": "[1, 2]\n", "no-status": '{"runs": {"a": {"run_dir": "a"}}}\n',
             "runs-list": '{"runs": [1]}\n', "binary": bytes(range(128, 256))}


@pytest.mark.parametrize(("argv", "code", "parts"), [c[1:] for c in FILE_CASES],
                         ids=[c[0] for c in FILE_CASES])
def test_file_argument(argv: list[str], code: int, parts: list[str], files: dict[str, Path],
                       capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    tmp = files["tmp"]
    _sweep_file(tmp, "good_sweep")
    names = {k: str(v) for k, v in files.items()}
    args = [a.format(**names) for a in argv]
    if args[0] in ("fit", "validate", "ensemble") and "--run.root" not in args and "--pack" not in args:
        args += ["--run.root", str(files["real_root"])]
    before = snapshot(tmp)
    got, output = run_tool(args, capsys, caplog)
    text = message(output)
    assert got == code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    for part in parts:
        assert part.format(**names) in text, (part.format(**names), text)
    after = snapshot(tmp)
    changed = sorted(set(after) ^ set(before)) or [k for k in after if after[k] != before.get(k)]
    assert after == before, changed


# The tools' own numeric options × VALUES: (argv before the option, the values it accepts). Refused values
# exit 2 naming the option and the value; accepted ones are not run here (they would do real work).
TOOL_NUMBERS: dict[str, tuple[list[str], set[str]]] = {
    "report --tail": (["report", "{run}", "--out", "{tmp}/rep"], {"huge_int"}),  # 10**30: every value
    "dashboard html --tail": (["dashboard", "html", "{run}", "--out", "{tmp}/d.html"], {"huge_int"}),
    "theorem1 --sigma": (["theorem1", "--out", "{tmp}/th"], {"huge_float", "huge_int"}),
    "theorem1 --pairs": (["theorem1", "--out", "{tmp}/th"], set()),
    "theorem1 --samples": (["theorem1", "--out", "{tmp}/th"], set()),
    "theorem1 --seed": (["theorem1", "--out", "{tmp}/th"], {"zero"}),
    "sweep local --count": (["sweep", "local", "{tmp}/good_sweep.yaml", "--dry-run"], set()),
    "sweep local --max-parallel": (["sweep", "local", "{tmp}/good_sweep.yaml", "--dry-run"], set()),
    "sweep local --pack-size": (["sweep", "local", "{tmp}/good_sweep.yaml", "--pack", "--dry-run"],
                                {"huge_int"}),  # a cap larger than any group: no cap
    "sweep local --kill-timeout": (["sweep", "local", "{tmp}/good_sweep.yaml", "--dry-run"], {"zero"}),
    "sweep local --gpus-per-run": (["sweep", "local", "{tmp}/good_sweep.yaml", "--gpus", "0", "--dry-run"],
                                   {"huge_int"}),  # then: more GPUs per run than --gpus gives (exit 2)
    "sweep agents --stagger": (["sweep", "agents", "e/p/s", "--gpus", "0,1"], {"zero"}),
    "sweep agents --count": (["sweep", "agents", "e/p/s", "--gpus", "0"], {"huge_int"}),
}
TOOL_CASES = [(name, label) for name, (_, accepted) in TOOL_NUMBERS.items() for label in VALUES
              if label not in accepted]


@pytest.mark.parametrize(("name", "label"), TOOL_CASES, ids=[f"{n}={v}" for n, v in TOOL_CASES])
def test_tool_number(name: str, label: str, files: dict[str, Path], capsys: pytest.CaptureFixture[str],
                     caplog: pytest.LogCaptureFixture) -> None:
    tmp = files["tmp"]
    _sweep_file(tmp, "good_sweep")
    names = {k: str(v) for k, v in files.items()}
    head, _ = TOOL_NUMBERS[name]
    option = name.rsplit(" ", 1)[1]
    before = snapshot(tmp)
    code, output = run_tool([*(a.format(**names) for a in head), option, VALUES[label]], capsys, caplog)
    text = message(output)
    assert code == 2 and "Traceback" not in output, output[-3000:]
    assert option in text and VALUES[label] in text, text
    assert snapshot(tmp) == before


@pytest.mark.parametrize("grid", ["int_uniform", "product"])
def test_a_sweep_too_large_to_expand_is_refused_at_once(grid: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """10**12 grid points (one int_uniform axis, or a product of four 1,000-value lists) are counted, not
    built: exit 2 naming the count, even with --count 3 (the grid is expanded before it is cut)."""
    values = {"values": list(range(1000))}
    parameters = ({"seed_everything": {"distribution": "int_uniform", "min": 0, "max": 10**12 - 1}}
                  if grid == "int_uniform" else {k: values for k in ("a", "b", "c", "d")})
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump({"name": "big", "parameters": parameters,
                                    "command": ["lightning-mem", *FIT, "--config", "${args_json_file}"]}))
    code, output = run_tool(["sweep", "local", str(path), "--root", str(tmp_path / "r"), "--count", "3"],
                            capsys, caplog)
    assert code == 2 and "Traceback" not in output, output[-3000:]
    assert f"{path}: the grid has 1,000,000,000,000 points; the local runner expands at most 1,000,000" \
        in message(output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.yaml"]


@pytest.mark.parametrize("kind", list(MANIFESTS))
def test_damaged_sweep_manifest_stops_the_sweep(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                caplog: pytest.LogCaptureFixture) -> None:
    sweep = _sweep_file(tmp_path, "s")
    manifest = tmp_path / "root" / "s" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    data = MANIFESTS[kind]
    manifest.write_bytes(data if isinstance(data, bytes) else data.encode())
    before = snapshot(tmp_path)
    code, output = run_tool(["sweep", "local", str(sweep), "--root", str(tmp_path / "root")], capsys, caplog)
    assert code == 2, output[-3000:]
    assert "Traceback" not in output and str(manifest) in message(output), output[-3000:]
    assert snapshot(tmp_path) == before


def test_a_torn_last_checkpoint_names_the_epoch_checkpoint_that_loads(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A last.ckpt torn by a writer other than ours: `--ckpt_path last` exits 2, names the file and the
    epoch checkpoint to resume from; the run folder is byte-identical afterwards."""
    root = tmp_path / "root"
    shutil.copytree(files["real_root"], root)
    run_dir = root / "quickstart" / "w32"
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    before = snapshot(root)
    code, output = run_tool([*FIT, "--model.net.width", "32", "--run.root", str(root), "--run.id", "w32",
                             "--ckpt_path", "last"], capsys, caplog)
    text = message(output)
    assert code == 2 and "Traceback" not in output, output[-3000:]
    assert f"{last}" in text and "does not load" in text
    assert f"resume from it with --ckpt_path {run_dir / 'checkpoints' / 'epoch0.ckpt'}" in text
    assert snapshot(root) == before


def test_table_sizes() -> None:
    """The counts the README quotes (a change here is a change there)."""
    sizes = (len(NUMERIC_CASES), len(CALLBACK_CASES), len(ENSEMBLE_CASES), len(LISTS), len(FILE_CASES),
             len(MANIFESTS), len(TOOL_CASES))
    assert sizes == (216, 24, 35, 4, 67, 5, 94)
