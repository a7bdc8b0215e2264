"""lightning_mem.checks: the shared argument checks name the argument, the value and what is allowed."""

from __future__ import annotations

import pytest

from lightning_mem.alignment.kernel_monitor import KernelMonitor
from lightning_mem.alignment.monitor import AlignmentMonitor
from lightning_mem.checks import check_int


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("every_n_steps", 0, 1), "every_n_steps=0 must be an integer >= 1"),
        (("n", 2.5, 1), "n=2.5 must be an integer >= 1"),
        (("n", "3", 1), "n='3' must be an integer >= 1"),
        (("n", 65, 2, 64), r"n=65 must be an integer in \[2, 64\]$"),
        (("n", None, 1), "n=None must be an integer >= 1$"),
        (("n", 0, 1, None, ""), "n=0 must be an integer >= 1, or None$"),
        (("m", 0, 1, None, "for all classes"), "m=0 must be an integer >= 1, or None for all classes$"),
    ],
)
def test_bad_integers_are_named(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_int(*args)


def test_good_integers_and_an_allowed_none_pass() -> None:
    check_int("n", 1, 1)
    check_int("n", 64, 2, 64)
    check_int("n", None, 1, none="")


def test_both_monitors_use_it() -> None:
    with pytest.raises(ValueError, match="every_n_steps=0 must be an integer >= 1"):
        AlignmentMonitor(every_n_steps=0)
    with pytest.raises(ValueError, match="max_classes=0 must be an integer >= 1, or None for all classes"):
        AlignmentMonitor(max_classes=0)
    with pytest.raises(ValueError, match="train_every_n_steps=0 must be an integer >= 1, or None"):
        KernelMonitor(train_every_n_steps=0)
