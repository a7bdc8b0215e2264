"""docs/dashboard_study.sh (the study behind the README's screenshot) and tests/helpers/study.py (the
study the browser tests draw) are the same ensembles: one is a shell script for readers, the other
Python for the tests, and this test keeps them from drifting apart."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from tests.helpers import study

SCRIPT = study.REPO / "docs" / "dashboard_study.sh"


def _script() -> tuple[str, list[str], dict[str, list[str]]]:
    text = SCRIPT.read_text()
    heredoc = re.search(r"<<'YAML'\n(.*?)\nYAML\n", text, re.S)
    common = re.search(r'^C="(.*)"$', text, re.M)
    sigmas = re.search(r"^S=(\S+)$", text, re.M)
    assert heredoc and common and sigmas, "the script's kernels.yaml, C= or S= line is gone"
    fits: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("fit --run.name "):
            words = shlex.split(line.split("||")[0].replace("$S", sigmas.group(1)))[1:]
            name = words[1]
            fits[name] = [("kernels.yaml" if w == "$R/kernels.yaml" else w) for w in words[2:]]
    return heredoc.group(1), shlex.split(common.group(1)), fits


def test_the_docs_script_makes_the_tests_study() -> None:
    kernels, common, fits = _script()
    assert yaml.safe_load(kernels) == yaml.safe_load(study.KERNEL_CONFIG)
    assert fits == study.STUDY  # the same ensembles, in the same order, with the same options
    assert list(fits) == list(study.STUDY)
    options = [str(Path(w).relative_to(study.REPO)) if w.startswith(str(study.REPO)) else w
               for w in study.COMMON]
    assert common[:len(options)] == options
    assert common[common.index("--trainer.max_epochs") + 1] == str(study.EPOCHS)
