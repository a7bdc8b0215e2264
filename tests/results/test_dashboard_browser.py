"""The HTML dashboard of real runs in a real browser, and the W&B workspace against a real W&B run.

Four real fits through the CLI (``digits``, width 16, 3 epochs, σ ∈ {0.01, 10} × seeds {0, 1}; one of
them also logs to W&B offline), rendered by ``dashboard html`` and opened in headless Chromium
(Debian's ``chromium`` package, driven by Playwright; no browser is downloaded).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lightning_mem.results.dashboard import main
from lightning_mem.results.workspace import build, spec
from lightning_mem.rundir import HP_KEYS
from tests.training.test_loggers import read_wandb_records, wandb_config

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SIGMAS, SEEDS = ("0.01", "10"), ("0", "1")
PANELS = ["curves", "acc-sigma", "align-grad", "align-logits", "align-rep", "align-val_rep", "acc-align",
          "norm-sigma"]

pytestmark = pytest.mark.slow  # four real fits (~40 s on 2 busy cores), then Chromium


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runs' root; the fits run at once, each in its own process, as a user would start them."""
    root = tmp_path_factory.mktemp("dash")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "LIGHTNING_MEM_RUN_ID"}
    env |= {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(root / "wandb_dir"),
            "WANDB_CACHE_DIR": str(root / "cache"), "WANDB_CONFIG_DIR": str(root / "config"),
            "WANDB_DATA_DIR": str(root / "data")}
    procs = []
    for sigma in SIGMAS:
        for seed in SEEDS:
            one_with_wandb = (sigma, seed) == ("10", "1")
            wandb = ["--config", str(REPO / "configs/logger/wandb.yaml")] if one_with_wandb else []
            cmd = [sys.executable, "-m", "lightning_mem", "fit",
                   "--config", str(REPO / "configs/quickstart.yaml"), *wandb, "--data.dataset", "digits",
                   "--model.net.width", "16", "--trainer.max_epochs", "3",
                   "--model.net.init_std", sigma, "--seed_everything", seed, "--run.root", str(root / "runs"),
                   "--trainer.enable_progress_bar", "false"]
            procs.append(subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    return root / "runs"


@pytest.fixture(scope="module")
def page(runs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("html") / "dashboard.html"
    main(["html", str(runs), "--out", str(out)])
    return out


def chromium() -> Any:
    """Playwright's Chromium pointed at the system browser, with a fresh temporary profile."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    return sync_playwright(), {"executable_path": str(CHROMIUM), "args": CHROMIUM_ARGS}


def traces(pw_page: Any) -> dict[str, list[str]]:
    """Panel id -> the names of its plotly traces (empty list for a panel without a plot)."""
    return pw_page.evaluate("""Object.fromEntries([...document.querySelectorAll('.panel')].map(
        e => [e.id, e.data ? e.data.map(t => t.name || '') : []]))""")


def test_every_panel_is_drawn_in_headless_chromium(page: Path, tmp_path: Path) -> None:
    manager, launch = chromium()
    with manager as pw:
        browser = pw.chromium.launch(**launch)
        tab = browser.new_page(viewport={"width": 1400, "height": 900})
        messages: list[str] = []
        tab.on("console", lambda m: m.type in ("error", "warning") and messages.append(f"{m.type}: {m.text}"))
        tab.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
        requests: list[str] = []
        tab.on("request", lambda r: requests.append(r.url))
        tab.goto(page.as_uri())
        tab.wait_for_function("window.dashboard && window.dashboard.ready", timeout=60_000)
        assert traces(tab)["norm-sigma"] == []  # below the window: drawn when it scrolls into view
        tab.evaluate("window.dashboard.drawAll()")
        drawn = traces(tab)
        # 2 groups (σ) of 2 seeds: a mean line for train and for held-out accuracy, and their ±std bands
        # (one trace per σ: bands drawn alike are merged).
        assert [len(drawn[p]) for p in PANELS] == [6, 2, 4, 4, 4, 4, 2, 1], drawn
        assert [n for n in drawn["curves"] if n] == [
            "σ=0.01", "σ=0.01 train", "σ=10", "σ=10 train"]  # held-out solid, train dashed
        assert drawn["acc-sigma"] == ["held-out", "train"]
        assert tab.locator("#runs tbody tr").count() == 4
        assert tab.locator("#runs tbody td.st-finished").count() == 4
        shot = tmp_path / "dashboard.png"
        tab.screenshot(path=str(shot), full_page=True)
        # A control: grouping by the seed too gives one group per run (no std band), in every panel.
        tab.click("#groupby input[data-key='hp.seed']")
        tab.wait_for_function("window.dashboard.renders >= 2")
        tab.evaluate("window.dashboard.drawAll()")
        regrouped = traces(tab)
        # σ is the colour: the seeds get a marker symbol each, named by two legend-only traces.
        assert [len(regrouped[p]) for p in PANELS] == [10, 4, 6, 6, 6, 6, 6, 2], regrouped
        assert regrouped["curves"][-2:] == ["seed=0", "seed=1"]
        assert "σ=10, seed=1" in regrouped["curves"]
        # Sorting the table by best held-out accuracy puts a σ=0.01 run first.
        tab.click("#runs th[data-col='n:val_acc_best']")
        tab.click("#runs th[data-col='n:val_acc_best']")  # descending
        assert tab.locator("#runs tbody tr").first.locator("td").nth(2).inner_text() == "0.01"
        browser.close()
    assert messages == []
    assert [u for u in requests if not u.startswith("file://")] == []  # nothing fetched from the network
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    assert pixels.shape[1] == 1400 and pixels.shape[0] > 1500
    assert float(pixels.std()) > 0.05 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # not blank


# ---------------------------------------------------------------- the W&B workspace vs a real W&B run


@pytest.fixture(scope="module")
def wandb_run(runs: Path) -> list[Any]:
    files = list(runs.glob("*/*/wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    return read_wandb_records(files[0])


def _history_keys(records: list[Any]) -> set[str]:
    return {i.key or "/".join(i.nested_key) for r in records if r.WhichOneof("record_type") == "history"
            for i in r.history.item}


def _summary(records: list[Any]) -> dict[str, Any]:
    import json

    out: dict[str, Any] = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            out.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
    return out


def _flat_summary_keys(summary: dict[str, Any]) -> set[str]:
    return {f"{k}.{sub}" for k, v in summary.items() if isinstance(v, dict) for sub in v} | set(summary)


def _workspace_metrics(workspace_spec: dict[str, Any]) -> tuple[list[list[str]], set[str], set[str]]:
    sections = workspace_spec["spec"]["section"]["panelBankConfig"]["sections"]
    configs = [p["config"] for s in sections for p in s["panels"]]
    lines = [c["metrics"] for c in configs if "metrics" in c]
    axes = {c[a] for c in configs for a in ("xAxis", "yAxis") if a in c and "metrics" not in c}
    return lines, {a.split(":", 1)[1] for a in axes if a.startswith("summary:")}, {
        a.split(":", 1)[1] for a in axes if a.startswith("config:")}


def test_workspace_metrics_exist_in_a_real_wandb_run(wandb_run: list[Any]) -> None:
    history, summary = _history_keys(wandb_run), _summary(wandb_run)
    # Built from the run's own keys and summaries, as `dashboard wandb` does against a server.
    ws = spec(build("me", "mem", "n", ["init_std"], keys=history, summaries=[summary]))
    lines, summaries, configs = _workspace_metrics(ws)
    # accuracy, loss and the four alignment curves (no label noise, no KernelMonitor: no such panels)
    assert len(lines) == 6 and all(m in history for y in lines for m in y), lines
    assert "epoch" in history and summaries <= _flat_summary_keys(summary), summaries
    assert configs == {"hp.value.init_std"}
    # --print (no server) lists every candidate name: each panel has one this run logged.
    printed_lines, _, _ = _workspace_metrics(spec(build("me", "mem", "n", ["init_std"])))
    assert all(set(y) & history for y in printed_lines), printed_lines


def test_workspace_groups_on_keys_of_the_real_wandb_config(wandb_run: list[Any]) -> None:
    config = wandb_config(wandb_run)
    if "hp" not in config:
        pytest.skip("this checkout's CLI does not write the `hp` block into the W&B config yet (issue 10)")
    ws = spec(build("me", "mem", "n", list(HP_KEYS)))
    grouping = ws["spec"]["section"]["runSets"][0]["grouping"]
    for key in grouping:
        name = key["name"].split(".")
        assert key["section"] == "config" and name[:2] == ["hp", "value"] and name[2] in config["hp"], key


def test_declared_summaries_match_what_print_assumes(wandb_run: list[Any]) -> None:
    summary = _summary(wandb_run)
    if not isinstance(summary.get("val/acc"), dict):
        pytest.skip("this checkout does not declare W&B summaries yet (issue 10): val/acc is its last value")
    _, summaries, _ = _workspace_metrics(spec(build("me", "mem", "n", ["init_std"])))
    assert summaries <= _flat_summary_keys(summary), summaries
