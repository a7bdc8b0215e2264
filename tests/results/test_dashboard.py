"""``lightning-mem dashboard``: the page's data (curves, decimation, statuses, numbers), the
self-contained HTML file, the W&B workspace spec (offline), and bad input as usage errors.

Run folders are written by Lightning's CSVLogger (see test_runlog); the browser and real fits are in
test_dashboard_browser.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lightning_mem import rundir
from lightning_mem.results.dashboard import MAX_POINTS, main, payload, write_html
from lightning_mem.results.runs import load_runs
from lightning_mem.results.workspace import build, metric_names, spec, summary_name
from lightning_mem.rundir import HP_KEYS
from tests.results.test_runs import config, epoch_rows, write_run


def page_data(html: Path) -> dict[str, Any]:
    """The JSON embedded in a written page."""
    text = html.read_text()
    found = re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)
    assert found is not None
    return json.loads(found.group(1))


@pytest.fixture
def sweep(tmp_path: Path) -> Iterator[Path]:
    """σ ∈ {0.01, 10} × 2 seeds, finished; plus one diverged, one failed and one running run."""
    root = tmp_path / "runs"
    align = [(s, {"align/grad/hidden.weight": a, "align/grad/logits": 0.9, "align/rep/act": 0.5,
                  "norm/grad_over_weight/hidden.weight": 0.01}) for s, a in ((0, 0.25), (3, 0.75), (6, 0.5))]
    for sigma, train, val in ((0.01, [0.5, 0.75], [0.6, 0.7]), (10.0, [0.75, 1.0], [0.2, 0.1])):
        for seed in (0, 1):
            rows = epoch_rows(train, [v + 0.1 * seed for v in val], steps_per_epoch=4) + align
            rows += [(3, {"val/align/rep/act": 0.4, "epoch": 0}), (7, {"val/align/rep/act": 0.3, "epoch": 1})]
            write_run(root, f"s{sigma}-{seed}", rows, config(sigma, seed), status="finished")
    write_run(root, "div", epoch_rows([0.5], [0.25], 4), config(100.0, 0), status="diverged")
    rundir.write_status(root / "div", "diverged", step=5, reason="the training loss is nan")
    write_run(root, "fail", [(1, {"train/loss": 2.0, "epoch": 0})], config(1.0, 0), status="failed")
    write_run(root, "live", epoch_rows([0.5], [0.3], 4), config(1.0, 0), status="running")
    with rundir.FolderLock(root / "live", "run folder"):  # running: a process holds its folder
        yield root


def test_payload_curves_numbers_and_statuses(sweep: Path) -> None:
    runs = load_runs([sweep], statuses=None)
    data = payload(runs, None, "t")
    assert data["group_by"] == ["hp.init_std"] and data["groupable"] == ["hp.init_std", "hp.seed"]
    assert data["metrics"] == {"train": "train/acc", "val": "val/acc", "grad": "align/grad/hidden.weight",
                               "logits": "align/grad/logits", "rep": "align/rep/act",
                               "val_rep": "val/align/rep/act", "norm": "norm/grad_over_weight/hidden.weight"}
    by_name = {Path(r["path"]).name: r for r in data["runs"]}
    assert {n: r["status"] for n, r in by_name.items()} == {
        "div": "diverged", "fail": "failed", "live": "running", "s0.01-0": "finished", "s0.01-1": "finished",
        "s10.0-0": "finished", "s10.0-1": "finished"}
    run = by_name["s0.01-1"]
    assert run["values"]["hp.init_std"] == 0.01 and run["values"]["hp.seed"] == 1
    assert run["values"]["hp.dataset"] == "digits" and run["values"]["hp.activation"] == "sin"
    # x = epoch + 1; training-batch alignment is the epoch's mean: steps 0, 3 in epoch 0, step 6 in epoch 1.
    assert run["x"] == [1, 2] and run["epochs"] == 2
    assert run["y"] == {"train": [0.5, 0.75], "val": [0.7, 0.8], "grad": [0.5, 0.5], "logits": [0.9, 0.9],
                        "rep": [0.5, 0.5], "val_rep": [0.4, 0.3]}
    assert run["numbers"]["val_acc_best"] == 0.8 and run["numbers"]["train_acc"] == 0.75
    assert run["numbers"]["align_grad"] == pytest.approx((0.25 + 0.75 + 0.5) / 3, abs=1e-4)
    div = by_name["div"]
    assert div["reason"] == "the training loss is nan" and div["y"]["val"] == [0.25]
    assert all(v is None for v in div["numbers"].values())  # a diverged run has no final numbers
    assert by_name["fail"]["x"] == [1] and by_name["live"]["x"] == [1]
    assert by_name["fail"]["y"]["train_loss"] == [2.0] and "noisy" not in by_name["fail"]["y"]  # loss panel
    # Every logged key is in the metric picker; one that is a curve is read from the curve (embedded once).
    assert "train/loss" in data["picks"] and data["curve_of"]["train/loss"] == "train_loss"
    assert "train/loss" not in by_name["fail"]["p"]
    assert by_name["s0.01-1"]["p"]["norm/grad_over_weight/hidden.weight"] == [[1, 2], [0.01, 0.01]]
    assert data["picks"][:3] == ["align/grad/hidden.weight", "align/grad/logits", "align/rep/act"]
    # The page names no status, σ key or metric key itself: they come from the payload.
    assert data["statuses"] == ["finished", "diverged", "running", "interrupted", "killed", "failed"]
    assert (data["sigma_key"], data["seed_key"]) == ("hp.init_std", "hp.seed")
    assert data["default_pick"] == "train/loss" and data["diverged"] == "diverged"
    assert by_name["s0.01-1"]["spe"] == 4  # steps per epoch, for the step axis


def test_long_runs_are_decimated_on_one_shared_grid(tmp_path: Path) -> None:
    epochs = 3100  # stride ⌈3100 / 500⌉ = 7
    long_rows = epoch_rows([0.5] * epochs, [0.25] * epochs, steps_per_epoch=1)
    write_run(tmp_path, "long", long_rows, config(0.01))
    write_run(tmp_path, "short", epoch_rows([0.5] * 10, [0.25] * 10, steps_per_epoch=1), config(10.0))
    data = payload(load_runs([tmp_path]), None, "t")
    assert data["stride"] == 7
    long, short = sorted(data["runs"], key=lambda r: -len(r["x"]))
    assert long["x"][:3] == [7, 14, 21] and long["x"][-2:] == [3094, 3100] and len(long["x"]) == 443
    assert len(long["x"]) <= MAX_POINTS and all(len(v) == len(long["x"]) for v in long["y"].values())
    assert short["x"] == [7, 10]  # the same grid, plus its last epoch


def test_html_is_one_self_contained_file(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "d.html"
    data = write_html([sweep], out, title="a </script> title")
    text = out.read_text()
    assert page_data(out) == json.loads(json.dumps(data))  # the page holds exactly the payload
    assert text.count("</script>") == 3  # plotly.js, the data, the page's code: "</" in data is escaped
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", text)  # nothing loaded from elsewhere
    from plotly.offline import get_plotlyjs

    assert get_plotlyjs() in text  # plotly.js inlined from the installed package


def test_cli_html_writes_the_file_and_bad_input_exits_2(sweep: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sub" / "d.html"
    main(["html", str(sweep), "--out", str(out), "--group-by", "init_std,seed"])
    assert page_data(out)["group_by"] == ["hp.init_std", "hp.seed"]
    assert f"{out}: 7 runs" in capsys.readouterr().out
    for args, message in (
        ([str(tmp_path / "missing")], "missing: not a run folder, a folder of runs or a manifest.json"),
        ([str(tmp_path / "sub")], "no runs (folders with a metrics.csv) under"),
        ([str(sweep), "--group-by", "colour"], "--group-by 'colour': no such key"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["html", *args, "--out", str(tmp_path / "x.html")])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    (sweep / "s10.0-1" / "metrics.csv").write_text("step,val/acc\n0,abc\n")
    with pytest.raises(SystemExit):
        main(["html", str(sweep), "--out", str(tmp_path / "x.html")])
    assert f"{sweep / 's10.0-1' / 'metrics.csv'}: not a metrics.csv" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


# ---------------------------------------------------------------- W&B workspace, offline


def panels(workspace_spec: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    sections = workspace_spec["spec"]["section"]["panelBankConfig"]["sections"]
    return {s["name"]: [p["config"] for p in s["panels"]] for s in sections}


def test_wandb_print_groups_on_the_canonical_config_keys(capsys) -> None:
    main(["wandb", "--entity", "me", "--project", "mem", "--sweep", "ab12cd", "--group-by", "init_std",
          "activation", "--print"])
    printed = json.loads(capsys.readouterr().out)
    runset = printed["spec"]["section"]["runSets"][0]
    # Config("hp.init_std") is the backend path config.hp.value.init_std: the nested `hp` block.
    assert runset["grouping"] == [{"section": "config", "name": "hp.value.init_std"},
                                  {"section": "config", "name": "hp.value.activation"}]
    assert runset["filters"]["filters"] == [{"key": {"section": "run", "name": "sweep"}, "op": "=",
                                             "value": "ab12cd", "disabled": False}]
    assert "config:hp.value.seed" in runset["runFeed"]["columnOrder"]
    assert printed["displayName"] == "lightning-mem ab12cd"
    assert printed["spec"]["section"]["settings"]["xAxis"] == "epoch"
    got = panels(printed)
    assert list(got) == ["Memorization curves", "Alignment vs epoch", "Accuracy and alignment vs σ"]
    assert [p["metrics"] for p in got["Memorization curves"]] == [["train/acc", "val/acc"],
                                                                  ["train/loss", "val/loss"]]
    assert {(p["groupAgg"], p["groupArea"], p["xAxis"]) for p in got["Alignment vs epoch"]} == {
        ("mean", "stddev", "epoch")}
    scatter = got["Accuracy and alignment vs σ"]
    assert [(p["xAxis"], p["yAxis"]) for p in scatter] == [
        ("config:hp.value.init_std", "summary:train/acc"),
        ("config:hp.value.init_std", "summary:val/acc.max"),
        ("summary:align/grad/hidden.weight", "summary:val/acc.max"),
        ("summary:align/rep/act", "summary:val/acc.max"),
        ("summary:val/align/rep/act", "summary:val/acc.max"),
        ("config:hp.value.init_std", "summary:norm/grad_over_weight/hidden.weight"),
    ]


def test_wandb_group_by_must_be_canonical(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["wandb", "--entity", "me", "--project", "mem", "--group-by", "model.net.init_std", "--print"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--group-by model.net.init_std: not a canonical key; allowed: run_name, net, init_std" in err


def test_wandb_without_credentials_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    capsys) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "cfg"))
    with pytest.raises(SystemExit) as exit_info:
        main(["wandb", "--entity", "me", "--project", "mem"])
    assert exit_info.value.code == 2
    assert "No API key configured" in capsys.readouterr().err


def test_summary_names_follow_what_the_runs_hold() -> None:
    assert summary_name("val/acc", None) == "val/acc.max"
    assert summary_name("train/acc", None) == "train/acc"  # declared "last" only: a plain value
    assert summary_name("val/acc", [{"val/acc": {"max": 0.9, "last": 0.8}}]) == "val/acc.max"
    assert summary_name("val/acc", [{"val/acc": 0.8}]) == "val/acc"  # undeclared: W&B keeps the last value
    assert summary_name("train/acc", [{}, {"train/acc": {"last": 1.0}}]) == "train/acc.last"


def test_metric_names_from_a_runs_keys_or_every_candidate() -> None:
    conv = {"train/acc", "val/acc", "align/grad/conv1.weight", "align/grad/fc.weight", "align/rep/features",
            "val/align/rep/features", "norm/grad_over_weight/conv1.weight"}
    names = metric_names(conv)
    assert names["grad"] == ["align/grad/conv1.weight"] and names["rep"] == ["align/rep/features"]
    assert names["logits"] == [] and names["val_rep"] == ["val/align/rep/features"]
    every = metric_names(None)
    assert every["grad"][0] == "align/grad/hidden.weight" and "align/grad/conv1.weight" in every["grad"]
    ws = build("me", "mem", "n", list(HP_KEYS[:2]), keys=conv)
    assert panels(spec(ws))["Alignment vs epoch"][0]["metrics"] == ["align/grad/conv1.weight"]
