"""The dashboard of a real mixed study of 103 runs (tests/helpers/study.py: sin, ReLU and sigmoid × 5 σ ×
seeds through ``ensemble fit`` on the 8×8 digits, label noise, an lr grid, a diverged and a running run),
drawn in headless Chromium (Debian's ``chromium``, driven by Playwright) and checked on the drawn page:
what it groups on, the legends, the plot areas, the σ colours, the noisy/clean curves, the page width and
the time to regroup at 200 runs; then ``--watch``: the open page reloads after the file is rewritten and
keeps its controls.
"""

from __future__ import annotations

import csv
import itertools
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lightning_mem.results.dashboard import main
from tests.results.test_dashboard import page_data
from tests.results.test_dashboard_browser import chromium

pytestmark = pytest.mark.slow  # the study (~1-2 min on 2 idle cores, once per session), then Chromium

# What the page drew, per visible panel: its box, the plot area of its axes (plotly's drag rectangle of
# the xy subplot), the legend's entries as drawn, and the traces.
PANELS_JS = """() => [...document.querySelectorAll('.panel')].filter(e => e.data && e.offsetParent !== null)
  .map(e => {
    const box = e.getBoundingClientRect(), drag = e.querySelector('.nsewdrag');
    const area = drag ? drag.getBoundingClientRect() : null;
    return { id: e.id, title: e.layout.title.text, box: [box.width, box.height],
      area: area ? [area.width, area.height] : null,
      legend: [...e.querySelectorAll('.legend .traces .legendtext')].map(t => t.textContent),
      traces: e.data.map(t => ({ name: t.name || '', type: t.type, color: (t.line || {}).color || null,
        legend: t.showlegend !== false, band: t.fill === 'toself',
        hover: (t.hovertemplate || '').replace('%{text}', (t.text || [''])[0]),
        x: t.x, y: t.y, z: t.z || null })) };
  })"""
IGNORE = shutil.ignore_patterns(".lock")  # a copied run folder is not held by anyone
SIGMA_RE = re.compile(r"σ=([0-9.e+-]+)")


def sigma_of(trace: dict[str, Any]) -> float:
    """The σ a trace's hover names (its full group)."""
    found = SIGMA_RE.search(trace["hover"])
    assert found is not None, trace["hover"]
    return float(found.group(1))


def open_page(pw: Any, launch: dict[str, Any], html: Path, width: int = 1400) -> tuple[Any, Any, list[str]]:
    browser = pw.chromium.launch(**launch)
    tab = browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.on("console", lambda m: m.type == "error" and errors.append(m.text))
    tab.goto(html.as_uri())
    tab.wait_for_function("window.dashboard && window.dashboard.ready", timeout=120_000)
    return browser, tab, errors


def viridis_position(rgb: str) -> float:
    """Where an ``rgb(r,g,b)`` colour lies on matplotlib's viridis (0..1): the nearest of 1,024 samples."""
    from matplotlib import colormaps

    samples = colormaps["viridis"](np.linspace(0, 1, 1024))[:, :3] * 255
    c = np.array([float(v) for v in re.findall(r"[\d.]+", rgb)[:3]])
    distance = np.linalg.norm(samples - c, axis=1)
    assert distance.min() < 6, f"{rgb} is not a viridis colour"
    return float(np.argmin(distance) / 1023)


def csv_means(runs: Path, name: str, key: str) -> dict[float, dict[int, float]]:
    """σ -> {epoch + 1: mean over seeds of ``key``} of the runs named ``name``, read with the csv module
    from each metrics.csv and config.yaml (an independent reading of the run folders)."""
    import yaml

    per: dict[float, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for folder in (runs / name).glob("*_*_*"):
        config = yaml.safe_load((folder / "config.yaml").read_text())
        sigma = float(config["model"]["net"]["init_args"]["init_std"])
        with (folder / "metrics.csv").open() as fh:
            for row in csv.DictReader(fh):
                if row.get(key):
                    per[sigma][int(row["epoch"]) + 1].append(float(row[key]))
    return {s: {e: float(np.mean(v)) for e, v in d.items()} for s, d in per.items()}


@pytest.fixture(scope="module")
def page(study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("study_page") / "dashboard.html"
    main(["html", str(study), "--out", str(out)])
    return out


def test_the_drawn_page_of_103_real_runs(study: Path, page: Path) -> None:
    data = page_data(page)
    assert len(data["runs"]) == 103
    assert sorted({r["status"] for r in data["runs"]}) == ["diverged", "finished", "running"]
    # Default groups: the experimental factors that vary, in the canonical order; never the run name,
    # max_epochs, the progress bar or the seed (what a group averages over).
    assert data["group_by"] == ["hp.init_std", "hp.activation", "hp.lr", "hp.label_noise"]
    manager, launch = chromium()
    with manager as pw:
        browser, tab, errors = open_page(pw, launch, page)
        tab.evaluate("window.dashboard.drawAll()")  # the panels below the window too
        panels = tab.evaluate(PANELS_JS)
        scroll = tab.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        stiff_run = tab.evaluate("document.getElementById('stiff-run').value")
        # Grokking runs read on a log step axis: x = the global step at the end of each epoch.
        renders = tab.evaluate("window.dashboard.renders")
        tab.select_option("#ax-x", "step")
        tab.select_option("#ax-epoch", "log")
        tab.wait_for_function(f"window.dashboard.renders >= {renders + 2}")
        tab.evaluate("window.dashboard.drawAll()")
        by_step = {p["title"].split(":")[0]: p for p in tab.evaluate(PANELS_JS)
                   if p["id"].startswith("curves")}
        step_axis = tab.evaluate("document.getElementById('curves').layout.xaxis")
        browser.close()
    assert errors == []
    assert scroll[0] <= scroll[1] == 1400  # no horizontal scroll in a 1,400 px window
    by_id = {p["id"]: p for p in panels}
    # Facets: the default is activation (3 values, the fewest among activation, loss, dataset, net), a row
    # of accuracy and loss per value; the noisy/clean panel only in the sin facet (the label-noise runs).
    facets = sorted(p["title"].split(":")[0] for p in panels if p["id"].startswith("curves"))
    assert facets == ["activation=relu", "activation=sigmoid", "activation=sin"]
    noisy_panels = [p for p in panels if p["id"].startswith("noisy")]
    assert [p["title"].split(":")[0] for p in noisy_panels] == ["activation=sin"]
    assert {"kernel-kta", "kernel-kdist", "kernel-wdist", "stiffness", "acc-sigma", "picked"} <= set(by_id)
    for p in panels:
        assert len(p["legend"]) <= 12 and all(len(t) <= 40 for t in p["legend"]), (p["id"], p["legend"])
        assert p["area"] is not None and p["area"][0] * p["area"][1] >= 0.6 * p["box"][0] * p["box"][1], p
    # σ: one colour per value in every panel, monotone along viridis as σ grows (log scale: equal steps).
    colours: dict[float, set[str]] = defaultdict(set)
    for p in panels:
        if p["id"].startswith(("curves", "noisy", "loss", "kernel", "align")):
            for t in p["traces"]:
                found = SIGMA_RE.search(t["hover"])
                if t["color"] and found and not t["band"]:
                    colours[float(found.group(1))].add(t["color"])
    assert sorted(colours) == [0.001, 0.01, 0.1, 1.0, 10.0], colours
    assert all(len(c) == 1 for c in colours.values()), colours
    positions = [viridis_position(next(iter(colours[s]))) for s in sorted(colours)]
    assert all(b > a for a, b in itertools.pairwise(positions)), positions
    assert np.diff(positions) == pytest.approx(np.full(4, np.diff(positions).mean()), abs=0.04)
    # The memorization of noisy labels: for label noise 0.5, one dotted noisy and one dash-dot clean curve
    # per σ, each the mean over the 4 seeds of what the runs logged (read back from their metrics.csv).
    noisy = noisy_panels[0]["traces"]
    for key, suffix in (("train/acc_noisy", " noisy"), ("train/acc_clean", " clean")):
        expected = csv_means(study, "noisy_sin", key)
        drawn = [t for t in noisy if t["name"].endswith(suffix) and not t["band"]]
        assert sorted(sigma_of(t) for t in drawn) == sorted(expected)
        for t in drawn:
            sigma = sigma_of(t)
            assert "label_noise=0.5" in t["hover"]
            assert t["x"] == sorted(expected[sigma])
            assert t["y"] == pytest.approx([expected[sigma][x] for x in t["x"]], abs=2e-3)
    assert not [t for p in panels if not p["id"].startswith("noisy") for t in p["traces"]
                if t["name"].endswith((" noisy", " clean"))]
    # The stiffness matrix of a chosen run (the first that logged one): a 10 × 10 heat map of the last
    # epoch's stiffness/class_matrix/<c>_<c′>, read back from its metrics.csv.
    heat = by_id["stiffness"]["traces"][0]
    assert heat["type"] == "heatmap" and stiff_run.startswith("kernel_sin/")
    with (study / stiff_run / "metrics.csv").open() as fh:
        last = [row for row in csv.DictReader(fh) if row.get("stiffness/class_matrix/0_0")][-1]
    expected = [[float(last[f"stiffness/class_matrix/{a}_{b}"]) for b in range(10)] for a in range(10)]
    assert np.array(heat["z"], dtype=float) == pytest.approx(np.array(expected), abs=1e-3)
    # The step axis: x = the steps of the epochs' ends (6 steps an epoch: 1,437 training digits, batch 256).
    assert step_axis["type"] == "log" and step_axis["title"]["text"] == "step"
    sigmoid = [t for t in by_step["activation=sigmoid"]["traces"] if not t["band"] and t["x"]]
    assert sigmoid and all(t["x"] == [6 * e for e in range(1, 9)] for t in sigmoid), sigmoid[0]["x"]


def test_a_grouping_change_redraws_within_1_s_at_200_runs(study: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for copy in ("a", "b"):  # the study twice: 206 real run folders
        shutil.copytree(study, root / copy, ignore=IGNORE)
    out = tmp_path / "d.html"
    main(["html", str(root), "--out", str(out)])
    manager, launch = chromium()
    with manager as pw:
        browser, tab, errors = open_page(pw, launch, out)
        cdp = tab.context.new_cdp_session(tab)
        cdp.send("Performance.enable")

        def busy() -> float:  # CPU seconds of the page's main thread (what other jobs' load does not inflate)
            return next(m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]
                        if m["name"] == "ThreadTime")

        times = []
        # The panels in the window are redrawn; those below it as they scroll into view.
        for key in ("hp.seed", "hp.lr", "hp.seed"):  # one group per run (206 groups), and back
            renders, before, t0 = tab.evaluate("window.dashboard.renders"), busy(), time.perf_counter()
            tab.click(f"#groupby input[data-key='{key}']")
            tab.wait_for_function(f"window.dashboard.renders > {renders}", timeout=60_000)
            times.append((busy() - before, time.perf_counter() - t0))
        groups = tab.evaluate("document.getElementById('summary').textContent")
        browser.close()
    assert errors == []
    assert "206 of 206 runs shown" in groups
    assert max(t[0] for t in times) <= 1.0, times  # main-thread CPU time of each redraw
    assert max(t[1] for t in times) <= 10.0, times  # wall time, generous on a shared machine


def test_watch_reloads_the_open_page_and_keeps_its_controls(study: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for name in ("study_relu", "study_sigmoid"):
        shutil.copytree(study / name, root / name, ignore=IGNORE)
    out = tmp_path / "live.html"
    command = ["dashboard", "html", str(root), "--out", str(out), "--watch", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "lightning_mem", *command], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not out.is_file():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout and proc.stdout.read()
            time.sleep(0.2)
        manager, launch = chromium()
        with manager as pw:
            browser, tab, errors = open_page(pw, launch, out)
            assert "40 of 40 runs shown" in tab.inner_text("#summary")
            # Controls: group by the seed too, drop σ = 10 by the range, hide sigmoid, log epoch axis.
            tab.click("#groupby input[data-key='hp.seed']")
            tab.select_option("#sigma-max", "1")
            tab.click("#filters input[data-filter='hp.activation=\"sigmoid\"']")
            tab.select_option("#ax-epoch", "log")
            tab.fill("#name-filter", "study")
            tab.wait_for_function("document.getElementById('summary').textContent.startsWith('16 of 40')")
            # A new run folder appears (the noisy sin runs): the file is rewritten, the page reloads.
            with tab.expect_event("load", timeout=60_000):
                shutil.copytree(study / "noisy_sin", root / "noisy_sin", ignore=IGNORE)
            tab.wait_for_function("window.dashboard && window.dashboard.ready && "
                                  "(document.getElementById('summary') || {textContent: ''}).textContent"
                                  ".includes(' of 60 runs')", timeout=60_000)
            kept = tab.evaluate("""() => ({
              seed: document.querySelector("#groupby input[data-key='hp.seed']").checked,
              sigmaMax: document.getElementById('sigma-max').value,
              sigmoid: document.querySelector(`#filters input[data-filter='hp.activation="sigmoid"']`)
                .checked,
              axis: document.getElementById('ax-epoch').value,
              name: document.getElementById('name-filter').value,
              xtype: document.getElementById('curves').layout.xaxis.type,
              summary: document.getElementById('summary').textContent })""")
            browser.close()
        assert errors == []
        assert kept["seed"] and kept["sigmaMax"] == "1" and not kept["sigmoid"], kept
        assert kept["axis"] == kept["xtype"] == "log" and kept["name"] == "study"
        # The new runs (noisy_sin, not named "study") stay out by the name filter; 16 relu runs with σ ≤ 1.
        assert kept["summary"].startswith("16 of 60 runs shown"), kept
    finally:
        proc.terminate()
        proc.wait(timeout=30)
