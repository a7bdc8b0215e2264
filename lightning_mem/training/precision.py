"""The precision policy: full FP32 matmuls and convolutions unless a run asks for less.

The paper's large-σ experiments push pre-activations W1·x to a std of about σ·√d (hundreds at σ = 10 on
CIFAR-10), and sin/sigmoid/tanh of such a value is only as good as its absolute error: TF32 keeps a
10-bit mantissa, so W1·x is off by ~1e-3 of its size and sin(W1·x) by O(1) — the experiment silently
becomes another one. ``benchmarks/bench_precision.py`` measures the error (README, "Precision").

- Default: TF32 off for float32 matmuls and cuDNN convolutions on CUDA (cuDNN convolutions default to
  TF32 in torch, and Lightning's own hint invites users to turn it on for matmuls). Set by the CLI before
  training through whichever API the installed torch has.
- ``--precision.tf32 true`` or a reduced ``--trainer.precision`` (``bf16-mixed``, ``16-mixed``, ...) is
  refused for a sin/sigmoid/tanh network at σ ≥ 1 unless ``--precision.accept_large_sigma_error true``
  is given too; then a warning names the error.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

log = logging.getLogger(__name__)

RISKY_ACTIVATIONS = ("sin", "sigmoid", "tanh")  # bounded, non-homogeneous: the absolute error of W1·x shows
RISKY_SIGMA = 1.0
FULL_PRECISIONS = ("32", "32-true", "64", "64-true", None)  # everything else computes in 16 bits somewhere
# max |φ(W1·x) − exact| at σ = 1 and σ = 10 on a CIFAR-shaped per-image-standardized batch, width 1024,
# measured by `python benchmarks/bench_precision.py` (CPU emulation of the roundings; README "Precision").
MEASURED_ERROR = {
    "sin": {"FP32": (7.7e-5, 7.1e-4), "TF32": (0.07, 0.62), "bf16": (0.73, 2.0), "fp16": (0.098, 0.99)},
    "sigmoid": {"FP32": (1.2e-5, 9.4e-5), "TF32": (0.014, 0.11), "bf16": (0.12, 0.76), "fp16": (0.014, 0.11)},
    "tanh": {"FP32": (4.7e-5, 3.7e-4), "TF32": (0.056, 0.42), "bf16": (0.45, 1.9), "fp16": (0.056, 0.42)},
}


def _cudnn_conv() -> Any:
    return getattr(torch.backends.cudnn, "conv")  # noqa: B009  (torch >= 2.9 only; untyped there)


def _new_api() -> bool:
    """torch ≥ 2.9 has per-backend ``fp32_precision`` flags; mixing them with the legacy ones raises."""
    return hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(torch.backends.cudnn, "conv")


def tf32_state() -> dict[str, Any]:
    """The current TF32 settings, read through the API the installed torch has (for tests and logs)."""
    if _new_api():
        return {"matmul": torch.backends.cuda.matmul.fp32_precision,
                "conv": _cudnn_conv().fp32_precision}
    return {"matmul": torch.backends.cuda.matmul.allow_tf32, "conv": torch.backends.cudnn.allow_tf32}


def tf32_enabled() -> bool:
    """Whether float32 matmuls or cuDNN convolutions may round to TF32 now."""
    state = tf32_state()
    return any(v is True or v == "tf32" for v in state.values())


def set_tf32(enabled: bool) -> None:
    """TF32 on or off for float32 CUDA matmuls and cuDNN convolutions together.

    Matmuls through ``torch.set_float32_matmul_precision`` ("highest" = IEEE FP32, "high" = TF32): on
    torch ≥ 2.9 it sets the new per-backend flags consistently, whereas assigning
    ``torch.backends.cuda.matmul.fp32_precision`` alone leaves ``torch.get_float32_matmul_precision()``
    (which Lightning reads on CUDA) stale or raising. Convolutions through
    ``torch.backends.cudnn.conv.fp32_precision`` where it exists (cuDNN defaults to TF32 there), else the
    legacy ``torch.backends.cudnn.allow_tf32``.
    """
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    if _new_api():
        _cudnn_conv().fp32_precision = "tf32" if enabled else "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = enabled


def _snapshot() -> dict[str, Any]:
    state = tf32_state()
    with contextlib.suppress(RuntimeError):  # torch 2.14 raises when a user mixed the two APIs
        state["precision"] = torch.get_float32_matmul_precision()
    return state


def _restore(state: dict[str, Any]) -> None:
    if "precision" in state:
        torch.set_float32_matmul_precision(state["precision"])
    if _new_api():
        if "precision" not in state:
            torch.backends.cuda.matmul.fp32_precision = state["matmul"]
        _cudnn_conv().fp32_precision = state["conv"]
    else:
        torch.backends.cuda.matmul.allow_tf32 = state["matmul"]
        torch.backends.cudnn.allow_tf32 = state["conv"]


@contextmanager
def tf32_policy(enabled: bool) -> Iterator[None]:
    """Hold :func:`set_tf32` for a block and restore the previous settings after it (a CLI run inside a
    notebook or a test leaves the process as it found it)."""
    before = _snapshot()
    set_tf32(enabled)
    try:
        yield
    finally:
        _restore(before)


def reduced_precision(tf32: bool, trainer_precision: Any) -> str | None:
    """What lowers the precision of this run (``"TF32"``, ``"--trainer.precision bf16-mixed"``), or None."""
    if trainer_precision is not None and str(trainer_precision) not in FULL_PRECISIONS:
        return f"--trainer.precision {trainer_precision}"
    return "TF32 (--precision.tf32 true)" if tf32 else None


def precision_risk(reduced: str | None, activation: Any, init_std: Any) -> str | None:
    """A message naming the error when ``reduced`` precision meets a sin/sigmoid/tanh net at σ ≥ 1."""
    if reduced is None or activation not in RISKY_ACTIVATIONS:
        return None
    if not isinstance(init_std, (int, float)) or isinstance(init_std, bool) or init_std < RISKY_SIGMA:
        return None
    kind = "TF32" if reduced.startswith("TF32") else "bf16" if "bf16" in reduced else "fp16"
    at_1, at_10 = MEASURED_ERROR[activation][kind]
    fp32_1, fp32_10 = MEASURED_ERROR[activation]["FP32"]
    return (
        f"{reduced} with a {activation} net at init_std={init_std:g}: W1·x loses its low bits ({kind} keeps "
        f"a {'10' if kind != 'bf16' else '7'}-bit mantissa), and {activation}(W1·x) is then wrong by "
        f"up to {at_1:.2g} at σ = 1 and {at_10:.2g} at σ = 10 (FP32: {fp32_1:.1g} and {fp32_10:.1g}; "
        "max |φ(W1·x) − exact| measured by benchmarks/bench_precision.py): the large-σ result is not "
        "the paper's experiment"
    )
