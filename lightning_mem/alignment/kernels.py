"""Kernel and laziness measures: the empirical NTK, its target alignment and its drift from init.

For the paper's net z(x) = W2 · φ(W1 · x) (no biases) the empirical neural tangent kernel summed
over the k outputs, Θ(x, x′) = Σ_c ⟨∇_θ z_c(x), ∇_θ z_c(x′)⟩, has a closed form

    Θ(x, x′) = k · ⟨φ(W1x), φ(W1x′)⟩ + ⟨x, x′⟩ · Σ_h (Σ_c W2[c,h]²) φ′_h(x) φ′_h(x′)

(the W2 block, then the W1 block), and the per-output form is

    Θ_cc′(x, x′) = δ_cc′ ⟨φ(W1x), φ(W1x′)⟩ + ⟨x, x′⟩ · Σ_h W2[c,h] W2[c′,h] φ′_h(x) φ′_h(x′):

a (B, B) matrix from the layer input, the pre-activations and W2, no Jacobian formed.
Every other net gets Θ through ``torch.func`` per-example gradients of each output
(:func:`jacobian_ntk`), which costs k vmapped backward passes over the probe and B·P floats at
once (P parameters), so its probe is bounded by :data:`MAX_JACOBIAN_PROBE`.

Measures on a kernel K (B, B) and labels:
- kernel-target alignment A(K, YYᵀ) = ⟨K, YYᵀ⟩_F / (‖K‖_F ‖YYᵀ‖_F), Y one-hot (Cristianini et al.
  2002), and its centred form with K and YYᵀ both centred by H = I − 11ᵀ/B (Cortes et al. 2012);
- kernel distance 1 − ⟨K₀, K_t⟩_F / (‖K₀‖_F ‖K_t‖_F) (Fort et al. 2020; velocity: the distance
  between consecutive measurements);
- relative weight distance ‖W_t − W₀‖_F / ‖W₀‖_F (Chizat & Bach 2019);
- activation-pattern change: the fraction of (example, unit) pairs whose pattern changed since init
  (:func:`activation_pattern`);
- the class stiffness matrix (Fort et al. 2019): S[c, c′] = mean over i ∈ c, j ∈ c′, i ≠ j of the
  cosine of per-example loss gradients, from their all-pairs Gram.
All return fp64; matmuls run in IEEE fp32 or fp64 (:func:`lightning_mem.alignment.grams.ieee_fp32`): for the
MLP the two products over the input dimension in the inputs' precision, the rest in fp64.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

from lightning_mem.alignment.grams import ieee_fp32
from lightning_mem.alignment.measures import class_indicator
from lightning_mem.nets.paper import Sin

MAX_JACOBIAN_PROBE = 64  # examples: torch.func Θ holds B·P floats of per-example gradients at once


def activation_derivative(act: Callable[[Tensor], Tensor], pre: Tensor) -> Tensor:
    """φ′(pre) of an elementwise activation: cos for :class:`~lightning_mem.nets.Sin` and the step
    1[pre > 0] for ``nn.ReLU`` (the values autograd gives them, at a third of a JVP's cost), else a
    forward-mode JVP with a tangent of ones."""
    if type(act) is Sin:
        return torch.cos(pre)
    if type(act) is nn.ReLU:
        return (pre > 0).to(pre.dtype)
    return jvp(act, (pre,), (torch.ones_like(pre),))[1]


def input_products(x: Tensor, w1: Tensor, gram: bool = True) -> tuple[Tensor, Tensor | None]:
    """Pre-activations x W1ᵀ (B, h) and the input Gram x xᵀ (B, B) (None without ``gram``), both fp64:
    the two products over the input dimension d, the costly ones (B·d·h and B²·d), run in the inputs'
    precision (≥ IEEE fp32; fp64 inputs stay fp64); everything after them runs in fp64."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, w1 = x.to(dtype), w1.to(dtype)
    with ieee_fp32():
        return (x @ w1.T).double(), (x @ x.T).double() if gram else None


def mlp_ntk(
    x: Tensor, w1: Tensor, w2: Tensor, act: Callable[[Tensor], Tensor], per_output: bool = False
) -> Tensor:
    """Closed-form empirical NTK of z = W2 φ(W1 x) on inputs x (B, d).

    Args:
        x: Flattened inputs (B, d). w1: (h, d). w2: (k, h). act: the elementwise φ.
        per_output: Return Θ_cc′ as (B, k, B, k) instead of the sum over outputs (B, B).
    """
    with ieee_fp32():
        pre, xx = input_products(x, w1)
        assert xx is not None
        return mlp_ntk_from_products(pre, xx, w2, act, per_output)


def mlp_ntk_from_products(
    pre: Tensor, xx: Tensor, w2: Tensor, act: Callable[[Tensor], Tensor], per_output: bool = False
) -> Tensor:
    """:func:`mlp_ntk` from the pre-activations x W1ᵀ (B, h) and the input Gram x xᵀ (B, B)
    (:func:`input_products`): two kernels of one batch (now and at init) share x xᵀ."""
    with ieee_fp32():
        pre, xx, w2 = pre.double(), xx.double(), w2.double()
        a = act(pre)  # (B, h) φ(W1 x)
        d = activation_derivative(act, pre)  # (B, h) φ′(W1 x)
        aa = a @ a.T  # (B, B) Gram of the features
        k = w2.shape[0]
        if not per_output:
            weight = (w2 * w2).sum(0)  # (h,) Σ_c W2[c,h]²
            return k * aa + xx * ((d * weight) @ d.T)
        back = d[:, None, :] * w2[None]  # (B, k, h): W2[c,h] φ′_h(x_i)
        eye = torch.eye(k, dtype=aa.dtype, device=aa.device)
        w1_part = torch.einsum("ich,jdh->icjd", back, back) * xx[:, None, :, None]
        return aa[:, None, :, None] * eye[None, :, None, :] + w1_part


def mlp_loss_gradient_gram(
    x: Tensor, w1: Tensor, w2: Tensor, act: Callable[[Tensor], Tensor], grad_logits: Tensor
) -> Tensor:
    """(B, B) Gram of per-example loss gradients of z = W2 φ(W1 x), from g_i = ∂ℓ_i/∂z (B, k).

    ∇_{W2} ℓ_i = g_i aᵢᵀ and ∇_{W1} ℓ_i = δ_i xᵢᵀ with δ_i = (W2ᵀ g_i) ∘ φ′_i, so
    K = (A Aᵀ)∘(G Gᵀ) + (X Xᵀ)∘(Δ Δᵀ). The scale of g is that of the loss given (ℓ_i or ℓ_i / B).
    """
    with ieee_fp32():
        pre, xx = input_products(x, w1)
        assert xx is not None
        w2, g = w2.double(), grad_logits.double()
        a, d = act(pre), activation_derivative(act, pre)
        delta = (g @ w2) * d  # (B, h)
        return (a @ a.T) * (g @ g.T) + xx * (delta @ delta.T)


def _param_dict(net: nn.Module, params: dict[str, Tensor] | None) -> dict[str, Tensor]:
    return {n: p.detach() for n, p in net.named_parameters()} if params is None else params


def jacobian_ntk(
    net: nn.Module,
    x: Tensor,
    params: dict[str, Tensor] | None = None,
    per_output: bool = False,
    max_examples: int = MAX_JACOBIAN_PROBE,
) -> Tensor:
    """Empirical NTK of any net on x (B, ...) through ``torch.func`` per-example gradients.

    One vmapped gradient over the examples per output c (k passes); the B·P gradients of one output
    are reduced into the (B, B) kernel before the next (with ``per_output`` all k are kept: B·k·P).
    The net is evaluated as given (call ``eval()`` first for BatchNorm to use running statistics).

    Args:
        params: Parameters to evaluate at (e.g. those at init), by name; None: the net's own.
        per_output: Return (B, k, B, k) instead of (B, B).
        max_examples: Refuse larger probes (the memory is B·P floats; B·k·P with ``per_output``).
    """
    if x.shape[0] > max_examples:
        raise ValueError(f"jacobian_ntk probe of {x.shape[0]} examples exceeds max_examples={max_examples}")
    p = _param_dict(net, params)
    buffers = {n: b.detach() for n, b in net.named_buffers()}

    def output(ps: dict[str, Tensor], xi: Tensor, c: int) -> Tensor:
        return functional_call(net, (ps, buffers), (xi[None],))[0, c]

    k = int(functional_call(net, (p, buffers), (x[:1],)).shape[-1])
    kernel: Tensor | None = None
    flats: list[Tensor] = []
    with ieee_fp32():
        for c in range(k):
            grads = vmap(grad(output), in_dims=(None, 0, None))(p, x, c)  # name -> (B, *shape)
            flat = torch.cat([g.reshape(len(x), -1) for g in grads.values()], 1).double()  # (B, P)
            if per_output:
                flats.append(flat)
                continue
            kernel = flat @ flat.T if kernel is None else kernel + flat @ flat.T
        if per_output:
            j = torch.stack(flats, 1)  # (B, k, P)
            return torch.einsum("icp,jdp->icjd", j, j)
    assert kernel is not None
    return kernel


def jacobian_loss_gradient_gram(
    net: nn.Module,
    x: Tensor,
    labels: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    params: dict[str, Tensor] | None = None,
    max_examples: int = MAX_JACOBIAN_PROBE,
) -> Tensor:
    """(B, B) Gram of per-example gradients of ℓ_i = loss_fn(z(x_i), y_i) (per-example losses,
    ``loss_fn`` maps (B, k) logits and (B,) labels to (B,)) through ``torch.func``; B·P floats."""
    if x.shape[0] > max_examples:
        raise ValueError(f"probe of {x.shape[0]} examples exceeds max_examples={max_examples}")
    p = _param_dict(net, params)
    buffers = {n: b.detach() for n, b in net.named_buffers()}

    def loss(ps: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return loss_fn(functional_call(net, (ps, buffers), (xi[None],)), yi[None])[0]

    with ieee_fp32():
        grads = vmap(grad(loss), in_dims=(None, 0, 0))(p, x, labels)
        flat = torch.cat([g.reshape(len(x), -1) for g in grads.values()], 1).double()
        return flat @ flat.T


def _frobenius_cosine(a: Tensor, b: Tensor) -> Tensor:
    a, b = a.double(), b.double()
    den = torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)
    return (a * b).sum() / torch.where(den > 0, den, torch.ones_like(den))


def _centre(K: Tensor) -> Tensor:
    return K - K.mean(0, keepdim=True) - K.mean(1, keepdim=True) + K.mean()  # H K H


def target_alignment(K: Tensor, labels: Tensor, num_classes: int, centered: bool = False) -> Tensor:
    """Kernel-target alignment ⟨K, YYᵀ⟩_F / (‖K‖_F ‖YYᵀ‖_F) of a (B, B) kernel, Y (B, C) one-hot;
    ``centered``: both centred by H = I − 11ᵀ/B first. Labels outside [0, C) give zero rows."""
    y = class_indicator(labels.to(K.device), num_classes)
    target = y @ y.T  # (B, B) 1 where same class
    K = K.double()
    if centered:
        K, target = _centre(K), _centre(target)
    return _frobenius_cosine(K, target)


def kernel_distance(k0: Tensor, kt: Tensor) -> Tensor:
    """1 − ⟨K₀, K_t⟩_F / (‖K₀‖_F ‖K_t‖_F): 0 for kernels equal up to scale, up to 2."""
    return 1.0 - _frobenius_cosine(k0, kt)


def weight_distance(w0: Tensor, wt: Tensor) -> Tensor:
    """‖W_t − W₀‖_F / ‖W₀‖_F (inf if W₀ = 0 and W_t ≠ 0, 0 if both are 0)."""
    w0, wt = w0.double(), wt.double()
    num, den = torch.linalg.vector_norm(wt - w0), torch.linalg.vector_norm(w0)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)),
                       torch.where(num > 0, torch.full_like(num, math.inf), torch.zeros_like(num)))


def activation_pattern(pre: Tensor, activation: str) -> Tensor:
    """The piece of φ each pre-activation lies on, as integers: ReLU its sign (pre > 0); sin the
    half-period between consecutive extrema, round(pre / π), on which sin is monotone and φ′ = cos
    keeps its sign; any other activation the sign of pre."""
    if activation == "sin":
        return torch.round(pre.double() / math.pi).long()
    return (pre > 0).long()


def pattern_change(pre0: Tensor, pret: Tensor, activation: str) -> Tensor:
    """Fraction of (example, unit) pairs whose :func:`activation_pattern` differs between two
    pre-activation tensors of the same examples (init and now)."""
    if pre0.shape != pret.shape:
        raise ValueError(f"pre-activation shapes differ: {tuple(pre0.shape)} vs {tuple(pret.shape)}")
    changed = activation_pattern(pre0, activation) != activation_pattern(pret, activation)
    return changed.double().mean()


def class_stiffness_matrix(K: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(C, C) class stiffness from a (B, B) Gram of per-example gradients: S[c, c′] is the mean over
    pairs i ∈ c, j ∈ c′, i ≠ j, of K_ij / (‖g_i‖ ‖g_j‖) (a zero gradient gives cosine 0); NaN where a
    class has no such pair. Its diagonal is the in-class cosine stiffness, the rest cross-class."""
    K = K.double()
    B = K.shape[-1]
    if labels.shape != (B,):
        raise ValueError(f"labels must have shape ({B},) to match the Gram, got {tuple(labels.shape)}")
    norms = K.diagonal().clamp(min=0).sqrt()
    den = norms[:, None] * norms[None, :]
    cos = torch.where(den > 0, K / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(K))
    off = ~torch.eye(B, dtype=torch.bool, device=K.device)
    y = class_indicator(labels.to(K.device), num_classes)  # (B, C)
    sums = y.T @ (cos * off) @ y  # (C, C)
    pairs = y.T @ off.double() @ y
    return torch.where(pairs > 0, sums / pairs.clamp(min=1), torch.full_like(sums, math.nan))


def stiffness_summary(S: Tensor) -> tuple[Tensor, Tensor]:
    """(diagonal mean, off-diagonal mean) of a class stiffness matrix, over its non-NaN entries."""
    C = S.shape[0]
    eye = torch.eye(C, dtype=torch.bool, device=S.device)
    return S[eye].nanmean(), S[~eye].nanmean() if C > 1 else S.new_tensor(math.nan)
