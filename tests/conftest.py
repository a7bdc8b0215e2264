"""Test-wide setup: no network, W&B disabled and pointed at a temporary folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

_WANDB_TMP = Path(tempfile.mkdtemp(prefix="lightning_mem_wandb_"))
for key, value in {
    "WANDB_MODE": "disabled",
    "WANDB_DIR": str(_WANDB_TMP),
    "WANDB_CACHE_DIR": str(_WANDB_TMP / "cache"),
    "WANDB_CONFIG_DIR": str(_WANDB_TMP / "config"),
    "WANDB_DATA_DIR": str(_WANDB_TMP / "data"),
    "WANDB_SILENT": "true",
    "PYTHONHASHSEED": "0",
}.items():
    os.environ.setdefault(key, value)
os.environ.pop("LIGHTNING_MEM_RUN_ID", None)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fresh_run_id(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI exports the run id for DDP children; each test starts without one.
    monkeypatch.delenv("LIGHTNING_MEM_RUN_ID", raising=False)


@pytest.fixture(autouse=True, scope="session")
def _threads() -> None:
    torch.set_num_threads(2)
