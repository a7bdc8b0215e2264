"""Alignment of per-example gradients and representations, computed from Gram matrices.

The measure (Mehta, Cutkosky & Neyshabur 2021, Section 3): for n ≥ 2 vectors v_i of one class
(per-example gradients of one parameter, gradients w.r.t. the logits, or hidden representations),
with m = mean_i ‖v_i‖ (m = 0 is replaced by 1),

    Ω = Σ_{i≠j} ⟨v_i, v_j⟩ / (n (n−1) m²),

and Ω_in-class is the mean of Ω_c over the classes with n_c ≥ 2. Ω is 1 for identical vectors,
≈ 0 for orthogonal ones, and invariant to one global rescaling of all vectors: per-example
gradients of the *summed* loss (ℓ_i) and of the *mean* loss (ℓ_i / B, what training back-propagates,
times the AMP loss scale) give the same Ω. Every function here says which of the two it sees.

Everything follows from the Gram matrix K_ij = ⟨v_i, v_j⟩, and K is cheap
(:mod:`lightning_mem.alignment.grams` builds it):
- Linear z = W a: the per-example weight gradient is g_i a_iᵀ, so K = (A Aᵀ) ∘ (G Gᵀ) from the
  layer input A and the gradient G at its output (both exist during the ordinary backward); with
  extra (sequence) dims, K_ij = Σ_{t,s} ⟨a_it, a_js⟩⟨g_it, g_js⟩. The bias gradient is Σ_t g_it.
- Conv2d: per-example gradients by unfold + batched matmul, then P Pᵀ.
- Any other parameter: per-example gradients by ``torch.func`` (functional API only).
- Logit gradients: G_out G_outᵀ. Representations: H Hᵀ.

Off-diagonal sums are taken from the masked Gram (more accurate than ‖Σv‖² − Σ‖v‖²) in fp64;
Gram matmuls run in at least fp32 with TF32 disabled. The comparison measures of the paper
(gradient diversity, cosine stiffness, gradient confusion) come from the same per-class blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mem.alignment.grams import GramCapture, gram, per_example_grads
from lightning_mem.nets.layers import has_batchnorm

MEASURES = ("alignment", "diversity", "stiffness", "confusion")


class PerClass(NamedTuple):
    """A measure per class: ``values`` (..., C) is NaN where ``present`` (C,) is False (n_c < 2);
    ``mean`` (...) is the mean over present classes only (NaN if none is present)."""

    values: Tensor
    present: Tensor
    mean: Tensor


# ----------------------------------------------------------------------------- Ω from Grams


def alignment_from_gram(K: Tensor) -> Tensor:
    """Ω of all n vectors behind the Gram ``K`` (..., n, n); returns (...) in fp64."""
    n = K.shape[-1]
    if n < 2:
        raise ValueError(f"alignment needs at least 2 vectors, got {n}")
    K = K.double()
    eye = torch.eye(n, dtype=torch.bool, device=K.device)
    off = K.masked_fill(eye, 0.0).sum((-2, -1))  # Σ_{i≠j} ⟨v_i, v_j⟩
    m = K.diagonal(dim1=-2, dim2=-1).clamp(min=0).sqrt().mean(-1)  # mean ‖v_i‖
    m = torch.where(m > 0, m, torch.ones_like(m))
    return off / (n * (n - 1) * m**2)


def alignment(vectors: Tensor) -> Tensor:
    """Ω of n ≥ 2 vectors (n, ...) (each row flattened), in fp64; a 0-dim tensor."""
    if vectors.shape[0] < 2:
        raise ValueError(f"alignment needs at least 2 vectors, got {vectors.shape[0]}")
    return alignment_from_gram(gram(vectors, torch.float64))


def _num_classes(labels: Tensor, num_classes: int | None) -> int:
    return int(labels.max().item()) + 1 if num_classes is None else num_classes


def class_indicator(labels: Tensor, num_classes: int) -> Tensor:
    """(B,) labels -> (B, C) fp64 one-hot; a label outside [0, C) gives a zero row: that example is
    ignored (how the callback's ``max_classes`` drops classes without a data-dependent index, a host
    sync). Unlike ``F.one_hot`` nothing is checked on the host (no sync) and nothing asserts on the device."""
    return (labels[:, None] == torch.arange(num_classes, device=labels.device)).double()


def class_measures_from_gram(
    K: Tensor, labels: Tensor, num_classes: int | None = None, measures: Sequence[str] = MEASURES
) -> dict[str, PerClass]:
    """Per-class measures from a (..., B, B) Gram (leading dims batch several Grams) and labels (B,).

    Examples whose label is outside [0, num_classes) are ignored (see :func:`class_indicator`).
    For class c with examples I_c (n_c ≥ 2), all from the same-class, off-diagonal block of K:
    - ``alignment``  Ω_c = Σ_{i≠j∈I_c} K_ij / (n_c (n_c−1) m_c²), m_c = mean_{I_c} √K_ii.
    - ``diversity``  Σ_i ‖g_i‖² / ‖Σ_i g_i‖² = Σ_i K_ii / Σ_{i,j} K_ij (Yin et al. 2018); inf if Σ g = 0.
    - ``stiffness``  mean_{i≠j} K_ij / (‖g_i‖ ‖g_j‖), cosine stiffness (Fort et al. 2019), 0-norm -> 0.
    - ``confusion``  min_{i≠j} K_ij, gradient confusion (Sankararaman et al. 2020).
    One batched pass: a (B, C) one-hot gathers row sums per class; no loop over examples or classes.
    """
    unknown = set(measures) - set(MEASURES)
    if unknown:
        raise ValueError(f"unknown measures {sorted(unknown)}; allowed: {', '.join(MEASURES)}")
    B = K.shape[-1]
    if labels.shape != (B,):
        raise ValueError(f"labels must have shape ({B},) to match the Gram, got {tuple(labels.shape)}")
    K = K.double()
    C = _num_classes(labels, num_classes)
    onehot = class_indicator(labels, C)  # (B, C)
    counts = onehot.sum(0)  # (C,) n_c
    present = counts >= 2
    pairs = (counts * (counts - 1)).clamp(min=1)  # n_c (n_c − 1)
    eye = torch.eye(B, dtype=torch.bool, device=K.device)
    off = (labels[:, None] == labels[None, :]) & ~eye  # (B, B) same class, i ≠ j
    sq = K.diagonal(dim1=-2, dim2=-1).clamp(min=0)  # (..., B) ‖v_i‖²
    norms = sq.sqrt()
    off_sum = (K * off).sum(-1) @ onehot  # (..., C) Σ_{i≠j} K_ij per class
    out: dict[str, Tensor] = {}
    if "alignment" in measures:
        m = (norms @ onehot) / counts.clamp(min=1)
        out["alignment"] = off_sum / (pairs * torch.where(m > 0, m, torch.ones_like(m)) ** 2)
    if "diversity" in measures:
        sq_sum = sq @ onehot
        total = off_sum + sq_sum  # ‖Σ_i g_i‖²
        out["diversity"] = torch.where(total > 0, sq_sum / total, torch.full_like(total, math.inf))
    if "stiffness" in measures:
        denom = norms[..., :, None] * norms[..., None, :]
        cos = torch.where(denom > 0, K / denom.clamp(min=1e-300), torch.zeros_like(K))
        out["stiffness"] = ((cos * off).sum(-1) @ onehot) / pairs
    if "confusion" in measures:
        # Pad one example-less row so that min over an empty batch is inf (then NaN: not present).
        row_min = F.pad(K.masked_fill(~off, math.inf), (0, 1, 0, 1), value=math.inf).amin(-1)  # (..., B+1)
        in_class = F.pad(onehot.bool(), (0, 0, 0, 1))  # (B+1, C)
        out["confusion"] = row_min[..., :, None].masked_fill(~in_class, math.inf).amin(-2)
    result = {}
    for name, values in out.items():
        values = torch.where(present, values, torch.full_like(values, math.nan))
        mean = torch.where(present, values, torch.zeros_like(values)).sum(-1) / present.sum()
        result[name] = PerClass(values, present, mean)
    return result


def class_alignment_from_gram(K: Tensor, labels: Tensor, num_classes: int | None = None) -> PerClass:
    """Ω_c per class and the in-class mean from a (..., B, B) Gram; see :func:`class_measures_from_gram`."""
    return class_measures_from_gram(K, labels, num_classes, ("alignment",))["alignment"]


def class_alignment(vectors: Tensor, labels: Tensor, num_classes: int | None = None) -> PerClass:
    """Ω_c per class and Ω_in-class of vectors (B, ...) with labels (B,); classes with n_c < 2 are
    NaN in ``values``, False in ``present`` and left out of ``mean``."""
    return class_alignment_from_gram(gram(vectors, torch.float64), labels, num_classes)


# ------------------------------------------------- streaming Ω for many vectors (validation sets)


def class_sums(vectors: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Sufficient statistics (C, D+3) fp64 of one chunk: [Σ v_i, Σ ‖v_i‖², Σ ‖v_i‖, n_c] per class.

    Labels outside [0, C) are ignored. Chunks add up (and all-reduce by sum across DDP ranks);
    O(C·D) memory for any number of examples. :func:`class_alignment_from_sums` turns the total into Ω_c.
    """
    v = vectors.reshape(vectors.shape[0], math.prod(vectors.shape[1:])).double()  # (B, D), B may be 0
    onehot = class_indicator(labels, num_classes)  # (B, C)
    sq = (v * v).sum(1, keepdim=True)  # (B, 1)
    stats = torch.cat([v, sq, sq.sqrt(), torch.ones_like(sq)], dim=1)  # (B, D+3)
    return onehot.T @ stats


def class_alignment_from_sums(sums: Tensor) -> PerClass:
    """Ω_c from :func:`class_sums`: Σ_{i≠j}⟨v_i,v_j⟩ = ‖Σ v_i‖² − Σ‖v_i‖², in fp64.

    The subtraction cancels when Ω_c·n_c ≪ 1; in fp64 the relative error stays ~1e-16/(Ω_c n_c),
    far below anything measurable, and no (n, n) Gram of a 10k-example split is formed.
    """
    total, sq, norm_sum, counts = sums[:, :-3], sums[:, -3], sums[:, -2], sums[:, -1]
    present = counts >= 2
    m = norm_sum / counts.clamp(min=1)
    off = (total * total).sum(1) - sq
    values = off / ((counts * (counts - 1)).clamp(min=1) * torch.where(m > 0, m, torch.ones_like(m)) ** 2)
    values = torch.where(present, values, torch.full_like(values, math.nan))
    mean = torch.where(present, values, torch.zeros_like(values)).sum() / present.sum()
    return PerClass(values, present, mean)


# ----------------------------------------------------------------------------- notebook API


def _has_training_batchnorm(model: nn.Module) -> bool:
    return has_batchnorm(model, training=True)


def _flatten(name: str, per_class: PerClass, with_classes: bool) -> dict[str, float]:
    out = {name: float(per_class.mean)}
    if with_classes:
        for c in torch.nonzero(per_class.present).flatten().tolist():
            out[f"{name}/class_{c}"] = float(per_class.values[c])
    return out


def gradient_alignment(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    labels: Tensor,
    per_class: bool = False,
    num_classes: int | None = None,
    measures: Sequence[str] = ("alignment",),
) -> dict[str, float]:
    """In-class Ω of per-example gradients of every parameter of ``model`` and of the logits.

    One forward and one backward of Σ_i ℓ_i (``loss_fn(logits, labels)`` must return per-example
    losses (B,)), so the gradients are those of each example's own loss; ``.grad`` is untouched.
    Linear/Conv2d parameters use the Gram path; any other parameter the ``torch.func`` fallback.

    Returns ``{param name as in model.named_parameters(): Ω_in-class, ..., "logits": Ω}``; with
    ``per_class`` also ``"<name>/class_<c>"`` for each class with ≥ 2 examples; each extra measure
    (``diversity``, ``stiffness``, ``confusion``) adds ``"<measure>/<name>"`` keys likewise.
    """
    if _has_training_batchnorm(model):
        raise ValueError(
            "BatchNorm in training mode couples the examples of a batch, so per-example gradients are "
            "not defined; call model.eval() first"
        )
    C = _num_classes(labels, num_classes)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    with GramCapture(model) as capture:
        logits = model(inputs)
        losses = loss_fn(logits, labels)
        if losses.shape != labels.shape:
            raise ValueError(f"loss_fn must return per-example losses of shape {tuple(labels.shape)}")
        torch.autograd.grad(losses.sum(), [p for _, p in params], allow_unused=True)
    grams = capture.grams()
    rest = [n for n, _ in params if n not in grams]
    if rest:
        for name, g in per_example_grads(model, loss_fn, inputs, labels, rest).items():
            grams[name] = gram(g)
    names = [n for n, _ in params if n in grams] + (["logits"] if "logits" in grams else [])
    stats = class_measures_from_gram(torch.stack([grams[n] for n in names]), labels, C, measures)
    out: dict[str, float] = {}
    for measure, values in stats.items():
        for i, name in enumerate(names):
            row = PerClass(values.values[i], values.present, values.mean[i])
            out |= _flatten(name if measure == "alignment" else f"{measure}/{name}", row, per_class)
    return out


def representation_alignment(
    features: Tensor, labels: Tensor, per_class: bool = False, num_classes: int | None = None
) -> float | dict[str, float]:
    """In-class Ω of representations ``features`` (B, ...) with labels (B,).

    Returns Ω_in-class, or with ``per_class`` ``{"in_class": Ω, "class_<c>": Ω_c, ...}`` (classes
    with ≥ 2 examples). Up to 4096 examples use the masked Gram, beyond that fp64 class sums.
    """
    C = _num_classes(labels, num_classes)
    if features.shape[0] <= 4096:
        result = class_alignment(features, labels, C)
    else:
        result = class_alignment_from_sums(class_sums(features, labels, C))
    if not per_class:
        return float(result.mean)
    flat = _flatten("in_class", result, True)
    return {k.replace("in_class/", ""): v for k, v in flat.items()}
