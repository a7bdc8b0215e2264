"""Hostile strings in every field of a run that reaches the HTML dashboard, in real headless Chromium.

Copies of one real run (``lightning-mem fit``, digits, width 16) each carry hostile text (``<!--<script>``,
``</script><script>...``, ``<img onerror>``, ``<svg onload>``, U+2028/U+2029, entities, quotes, a template
literal) in its run name (``hp.json``), its folder name, its status reason (``status.json``), a config value
and a config key (``config.yaml``), and in the page's ``--title``. The page must draw (its own script ran:
plots drawn, every run in the page), run none of the injected code (``window.__pwned`` unset, no dialog,
no page error, no script element beyond the template's own), and show each string as text.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from lightning_mem.results import dashboard
from tests.helpers.exitcodes import run_cli
from tests.reliability.test_fuzz import FIT
from tests.results.test_dashboard_browser import chromium

HOSTILE = [
    "<!--<script>",
    "</script><script>window.__pwned='close'</script>",
    "<script>window.__pwned='open'</script>",
    "<img src=x onerror=\"window.__pwned='img'\">",
    "<svg/onload=window.__pwned='svg'>",
    "]]><!-- -->",
    "sep\u2028line\u2029para",
    "&lt;b&gt; &amp; &#60;script&#62;",
    "\"dq' `${window.__pwned='tpl'}`",
    "<!--",
]
FOLDER_SAFE = [h for h in HOSTILE if "/" not in h]  # a folder name cannot hold "/"


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    assert run_cli(*FIT, "--run.root", str(root), "--run.name", "t", "--run.id", "r") == 0
    return root / "t" / "r"


def hostile_runs(real_run: Path, root: Path) -> list[str]:
    """One copy of ``real_run`` per hostile string, under ``root``; the run names used."""
    names = []
    for i, text in enumerate(HOSTILE):
        folder = f"r{i}-{FOLDER_SAFE[i % len(FOLDER_SAFE)]}"
        run = root / "exp" / folder
        shutil.copytree(real_run, run)
        hp = json.loads((run / "hp.json").read_text())
        hp["run_name"] = text
        (run / "hp.json").write_text(json.dumps(hp))
        (run / "status.json").write_text(json.dumps({"status": "failed",
                                                     "reason": HOSTILE[(i + 1) % len(HOSTILE)]}))
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["model"]["note"] = HOSTILE[(i + 2) % len(HOSTILE)]  # differs across runs: shown
        config["model"][HOSTILE[i % 3]] = i  # a hostile key name (3 of them, each in some runs)
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        names.append(text)
    return names


def test_embedded_data_reads_back_exactly_and_holds_no_markup_characters() -> None:
    data = {"title": HOSTILE, "runs": [{"name": h, h: [h]} for h in HOSTILE]}
    text = dashboard.embed_json(data)
    assert json.loads(text) == data  # the independent reader: JSON as the page's JSON.parse reads it
    assert not set(text) & {"<", ">", "&", "\u2028", "\u2029"}
    assert "\\u003c!--\\u003cscript\\u003e" in text


@pytest.mark.slow  # one real fit, then Chromium (~10 s on 2 busy cores)
def test_hostile_strings_render_as_text_and_run_nothing(real_run: Path, tmp_path: Path) -> None:
    names = hostile_runs(real_run, tmp_path / "runs")
    out = tmp_path / "dash.html"
    title = "<!--<script>title</script>"
    dashboard.main(["html", str(tmp_path / "runs"), "--out", str(out), "--title", title])
    data = json.loads(dashboard.embed_json(dashboard.payload(
        dashboard.load_runs([tmp_path / "runs"], statuses=None), None, title)))
    reached = json.dumps(data)
    for text in HOSTILE:  # every hostile string is in the page's data (else the test proves nothing)
        assert json.dumps(text)[1:-1] in reached, text
    template = (Path(dashboard.__file__).parent / "dashboard.html").read_text()
    own_scripts = len(re.findall(r"<script[\s>]", template))

    manager, launch = chromium()
    problems: list[str] = []
    with manager as pw:
        browser = pw.chromium.launch(**launch)
        tab = browser.new_page(viewport={"width": 1400, "height": 900})
        tab.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
        tab.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
        tab.goto(out.as_uri())
        tab.wait_for_function("document.querySelectorAll('.js-plotly-plot').length > 0", timeout=20_000)
        tab.evaluate("window.dashboard.drawAll()")  # the panels below the window too
        state: dict[str, Any] = tab.evaluate("""() => ({
            pwned: window.__pwned === undefined ? null : String(window.__pwned),
            scripts: document.querySelectorAll('script').length,
            plots: document.querySelectorAll('.js-plotly-plot').length,
            imgs: document.querySelectorAll('img[onerror], svg[onload]').length,
            text: document.body.innerText,
            title: document.title,
        })""")
        browser.close()
    assert problems == []
    assert state["pwned"] is None  # no injected code ran
    assert state["scripts"] == own_scripts and state["imgs"] == 0  # no element was injected
    assert state["plots"] >= 1  # the page's own script ran and drew
    assert state["title"] == title
    for name in names:  # shown as text (innerText turns U+2028/9 into line breaks)
        shown = name.replace("\u2028", "\n").replace("\u2029", "\n")
        assert shown in state["text"] or name in state["text"], name
