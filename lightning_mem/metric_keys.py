"""Metric key names: the one home of every logged key's name (torch-free, so reports, dashboards and the
sweep runner read them without importing torch).

Per epoch: ``train/loss``, ``train/acc`` (and, with label noise, ``train/acc_clean`` and ``train/acc_noisy``:
accuracy against the training labels on the examples whose label was kept / corrupted), ``val/loss``,
``val/acc`` (the held-out split). Alignment: :func:`metric_key` — ``align/grad/<param>``,
``align/grad/logits``, ``align/rep/<layer>``, ``val/align/rep/<layer>``, per class under ``.../class_<k>``;
the comparison measures under ``diversity/``, ``stiffness/``, ``confusion/``; ‖∇W‖/‖W‖ under
``norm/grad_over_weight/<param>``.
"""

from __future__ import annotations

TRAIN_LOSS, TRAIN_ACC = "train/loss", "train/acc"
TRAIN_ACC_CLEAN, TRAIN_ACC_NOISY = "train/acc_clean", "train/acc_noisy"
TRAIN_KEYS = (TRAIN_LOSS, TRAIN_ACC, TRAIN_ACC_CLEAN, TRAIN_ACC_NOISY)  # the epoch's training metrics
VAL_PREFIX = "val/"  # every key measured on the held-out split
VAL_LOSS, VAL_ACC = "val/loss", "val/acc"
ALIGN_GRAD, ALIGN_REP, VAL_ALIGN_REP = "align/grad/", "align/rep/", "val/align/rep/"  # + parameter / layer
GRAD_LOGITS = "align/grad/logits"
GRAD_OVER_WEIGHT = "norm/grad_over_weight/"  # + parameter
REP_PREFIX = "rep:"  # Gram names of representations (``rep:<layer>``); any other name is a gradient
# The KernelMonitor's keys (lightning_mem.alignment.kernel_monitor) that reports and dashboards draw.
KERNEL_TARGET_ALIGNMENT, KERNEL_DISTANCE = "kernel/target_alignment", "kernel/distance_from_init"
WEIGHT_DISTANCE = "weights/distance_from_init/"  # + parameter: ‖W_t − W₀‖_F / ‖W₀‖_F
STIFFNESS_MATRIX = "stiffness/class_matrix/"  # + ``<c>_<c′>``: one entry of the class stiffness matrix
# The GrokkingMonitor's keys (lightning_mem.training.grokking, lightning_mem.ensemble.grokking).
WEIGHT_NORM = "weight_norm"  # ‖θ‖₂ of every parameter together
GROK_FIT_STEP, GROK_VAL_STEP = "grok/fit_step", "grok/val_step"  # when train fits / held-out generalizes


def metric_key(measure: str, name: str, cls: int | None = None, prefix: str = "") -> str:
    """The logged key of one value.

    ``measure`` is ``alignment``, ``diversity``, ``stiffness`` or ``confusion``; ``name`` a parameter
    (``hidden.weight``), ``logits`` or ``rep:<layer>``. Examples: (alignment, hidden.weight) ->
    ``align/grad/hidden.weight``; (alignment, rep:act, prefix="val/") -> ``val/align/rep/act``;
    (confusion, logits, 3) -> ``confusion/grad/logits/class_3``.
    """
    kind, sub = ("rep", name[len(REP_PREFIX):]) if name.startswith(REP_PREFIX) else ("grad", name)
    head = "align" if measure == "alignment" else measure
    key = f"{prefix}{head}/{kind}/{sub}"
    return key if cls is None else f"{key}/class_{cls}"
