"""The mixed study of real runs (tests/helpers/study.py), trained once per test session and shared by
the slow dashboard and report tests that read it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.study import build_study, stop_running


@pytest.fixture(scope="session")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The study's runs root (103 runs: 101 finished, 1 diverged, 1 running while the session lasts).

    ``LM_STUDY_RUNS=DIR`` reuses the runs of an earlier ``build_study`` (its stopped fit still alive) while
    working on these tests."""
    if os.environ.get("LM_STUDY_RUNS"):
        yield Path(os.environ["LM_STUDY_RUNS"])
        return
    runs, running = build_study(tmp_path_factory.mktemp("study"))
    try:
        yield runs
    finally:
        stop_running(running)
