"""The bounded YAML loader (``lightning_mem.safeyaml``) and every place that reads a user's YAML through it.

Parser bombs of several shapes (aliases nested 6..9 levels of 10, wide and deep; flow and block nesting
of 65..5,000 levels; a recursive alias; a text over the size bound) are refused in milliseconds, before
anything is expanded; the project's own configs load exactly as ``yaml.safe_load`` loads them (the
independent reference). Through the tools: a ``--config`` file, inline ``--config`` text, an option's
value, a sweep file and a run folder's ``config.yaml`` each exit 2 within seconds with a short message
naming the file or option, no traceback, and every file that existed byte-identical.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from lightning_mem import safeyaml
from tests.reliability.test_fuzz import FIT, message, run_tool, snapshot

REPO = Path(__file__).resolve().parents[1]


def laughs(levels: int, width: int = 10, flow: bool = False) -> str:
    """The billion-laughs shape: ``levels`` anchors, each a list of ``width`` aliases of the one before
    (``width ** levels`` values expanded, a few hundred bytes of text)."""
    if flow:
        parts = [f"&a0 [{', '.join(['lol'] * width)}]"]
        parts += [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
        return f"[{', '.join(parts)}]"
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def expanded(levels: int, width: int = 10) -> int:
    """Values of :func:`laughs` when expanded (block form), counted by its recurrence."""
    sizes = [1 + width]
    for _ in range(1, levels):
        sizes.append(1 + width * sizes[-1])
    return 1 + levels + sum(sizes)  # the root mapping, its keys, the values


BOMBS = {
    "laughs-6x10": laughs(6),  # 1.1e6 values
    "laughs-9x10": laughs(9),  # 1.1e9
    "laughs-30x2": laughs(30, width=2),  # 2.1e9, narrow and deep
    "laughs-flow-8x10": laughs(8, flow=True),
    "merge-keys": "a: &a {" + ", ".join(f"k{i}: {i}" for i in range(400)) + "}\n"
                  + "\n".join(f"b{i}: {{<<: *a}}" for i in range(400)),  # 160,000 values through <<
}
DEEP = {
    "flow-65": "x: " + "[" * 65 + "]" * 65,
    "flow-5000": "[" * 5000 + "]" * 5000,
    "block-200": "".join(f"{'  ' * i}k{i}:\n" for i in range(200)) + "  " * 200 + "v: 1\n",
    "mixed-100": "a: " + "{b: " * 100 + "1" + "}" * 100,
}


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_an_alias_bomb_is_refused_before_expanding(case: str) -> None:
    start = time.perf_counter()
    with pytest.raises(safeyaml.YAMLLimitError, match=r"^bomb\.yaml: the YAML's aliases expand to more than "
                                                      r"100000 values \(anchors: "):
        safeyaml.load(BOMBS[case], "bomb.yaml")
    assert time.perf_counter() - start < 1.0


def test_the_count_matches_the_expansion_at_the_bound() -> None:
    # 4 levels of 10: 11,116 values, loaded whole; 5 levels: 111,117 > 100,000, refused.
    assert expanded(4) < safeyaml.MAX_VALUES < expanded(5)
    loaded = safeyaml.load(laughs(4), "ok.yaml")
    assert loaded == yaml.safe_load(laughs(4))
    assert len(loaded["a3"]) == 10 and loaded["a3"][9][9][9] == ["lol"] * 10
    with pytest.raises(safeyaml.YAMLLimitError):
        safeyaml.load(laughs(5), "big.yaml")


@pytest.mark.parametrize("case", sorted(DEEP))
def test_deep_nesting_is_refused_without_recursion(case: str) -> None:
    with pytest.raises(safeyaml.YAMLLimitError, match=r"^deep\.yaml: YAML nested more than 64 levels deep"):
        safeyaml.load(DEEP[case], "deep.yaml")


def test_nesting_at_the_bound_loads() -> None:
    text = "[" * 63 + "1" + "]" * 63
    assert safeyaml.load(text, "x") == yaml.safe_load(text)


@pytest.mark.parametrize("text", ["a: &x [1, *x]", "a: &x {b: *x}", "- &x [[*x]]"])
def test_a_recursive_alias_is_refused(text: str) -> None:
    with pytest.raises(safeyaml.YAMLLimitError, match=r"alias \*x is used inside its own anchor"):
        safeyaml.load(text, "r.yaml")


def test_a_text_over_the_size_bound_is_refused_unread() -> None:
    text = "k: " + "x" * safeyaml.MAX_BYTES
    with pytest.raises(safeyaml.YAMLLimitError, match=rf"^s\.yaml: {len(text)} bytes of YAML, more than the "
                                                      rf"{safeyaml.MAX_BYTES}"):
        safeyaml.load(text, "s.yaml")


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in
                                        [*REPO.glob("configs/**/*.yaml"), *REPO.glob("sweeps/*.yaml")]))
def test_the_projects_own_yaml_loads_as_pyyaml_loads_it(path: str) -> None:
    text = (REPO / path).read_text()
    assert safeyaml.load(text, path) == yaml.safe_load(text)


# ---------------------------------------------------------------------------- through the tools


def _run_folder(root: Path, config: str) -> Path:
    run = root / "exp" / "r1"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("epoch,step,train/acc\n0,9,0.5\n")
    (run / "config.yaml").write_text(config)
    return run


@pytest.mark.parametrize("bomb", ["laughs", "deep"])
@pytest.mark.parametrize("where", ["config-file", "config-inline", "option-value", "sweep-file",
                                  "run-config"])
def test_every_reader_of_user_yaml_refuses_a_bomb(where: str, bomb: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    text = laughs(9) if bomb == "laughs" else "a: " + "[" * 3000 + "]" * 3000
    inline = laughs(9, flow=True) if bomb == "laughs" else "[" * 3000 + "]" * 3000
    file = tmp_path / "bomb.yaml"
    file.write_text(text)
    named = str(file)
    if where == "config-file":
        argv = [*FIT, "--config", named]
    elif where == "config-inline":
        argv, named = [*FIT, "--config", "{a: " + inline + "}"], "--config (YAML text)"
    elif where == "option-value":
        argv, named = [*FIT, "--model.lr", inline], "--model.lr"
    elif where == "sweep-file":
        argv = ["sweep", "local", named, "--dry-run", "--root", str(tmp_path / "runs")]
    else:
        file.unlink()
        named = str(_run_folder(tmp_path / "runs", text) / "config.yaml")
        argv = ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    before = snapshot(tmp_path)
    start = time.perf_counter()
    code, output = run_tool(argv, capsys, caplog)
    assert time.perf_counter() - start < 20  # parsing the rest of the command line takes a few seconds
    assert code == 2, output[-2000:]
    assert "Traceback" not in output
    assert len(output) < 4000  # nothing expanded is echoed
    text_of_error = message(output) if "error:" in output else output
    assert named in text_of_error
    assert ("expand to more than 100000 values" in text_of_error) == (bomb == "laughs")
    assert ("nested more than 64 levels deep" in text_of_error) == (bomb == "deep")
    assert snapshot(tmp_path) == before
