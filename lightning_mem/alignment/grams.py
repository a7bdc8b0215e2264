"""Gram matrices of per-example gradients and representations, and the hooks that record them.

Everything the alignment measures need is a Gram matrix K_ij = ⟨v_i, v_j⟩ (see
:mod:`lightning_mem.alignment` for the measures). This module builds them without forming
per-example gradients where it can:

- Linear z = W a: the per-example weight gradient is g_i a_iᵀ, so K = (A Aᵀ) ∘ (G Gᵀ) from the
  layer input A and the gradient G at its output (both exist during the ordinary backward); with
  extra (sequence) dims, K_ij = Σ_{t,s} ⟨a_it, a_js⟩⟨g_it, g_js⟩. The bias gradient is Σ_t g_it.
- Conv2d: per-example gradients by unfold + batched matmul, then P Pᵀ.
- Any other parameter: per-example gradients by ``torch.func`` (functional API only).

Gram matmuls run in at least fp32 with TF32 disabled and are returned in fp64. The gradients seen
are those the backward computes (of the batch-mean loss in training, times the AMP loss scale);
the alignment measures are invariant to that one global scale.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

GRAM_MODULES = (nn.Linear, nn.Conv2d)  # exact types: subclasses may change forward, they use the fallback


def _matmul_precision_settings() -> list[Any]:
    """The per-backend fp32 matmul settings of torch >= 2.9 (``torch.backends.<b>.matmul``): CUDA
    (cuBLAS) and CPU (oneDNN, where the legacy 'medium' means bf16). Empty on older torch."""
    found = []
    for name in ("cuda", "mkldnn"):
        matmul = getattr(getattr(torch.backends, name, None), "matmul", None)
        if matmul is not None and hasattr(matmul, "fp32_precision"):
            found.append(matmul)
    return found


def ieee_fp32_now() -> bool:
    """Whether fp32 matmuls run in full IEEE precision with the current settings (what
    :func:`ieee_fp32` enforces): then a product the model's forward computed can stand for one of a
    measurement."""
    settings = _matmul_precision_settings()
    if settings:
        values = {s.fp32_precision for s in settings} | {getattr(torch.backends, "fp32_precision", "none")}
        if values == {"ieee"} or values == {"ieee", "none"}:
            return True
        if values != {"none"}:
            return False
    return torch.get_float32_matmul_precision() == "highest"


@contextmanager
def ieee_fp32() -> Iterator[None]:
    """Run fp32 matmuls in full IEEE precision (no TF32, no bf16), restoring the user's settings after.

    Works whichever API the user set precision with: on torch >= 2.9 the per-backend
    ``torch.backends.{cuda,mkldnn}.matmul.fp32_precision`` values are saved, set to ``"ieee"`` and
    restored exactly, which leaves a legacy ``torch.set_float32_matmul_precision`` setting intact
    too (the legacy getter raises once the new API was used, so it is never read there). No
    convolution runs under it: the conv Grams are ``F.unfold`` (a copy) plus a batched matmul.
    """
    settings = _matmul_precision_settings()
    if not settings:  # torch < 2.9: only the legacy API exists
        previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(previous)
        return
    saved = [s.fp32_precision for s in settings]
    for s in settings:
        s.fp32_precision = "ieee"
    try:
        yield
    finally:
        for s, value in zip(settings, saved, strict=True):
            s.fp32_precision = value


def _upcast(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    # fp16/bf16 (AMP) -> fp32; fp64 stays fp64 unless a dtype is asked for.
    return x.to(dtype or torch.promote_types(x.dtype, torch.float32))


def gram(vectors: Tensor, dtype: torch.dtype | None = None, blocks: int = 4) -> Tensor:
    """(n, ...) -> (n, n) fp64 Gram of the flattened vectors (matmul in ≥ fp32, no TF32).

    Only the upper block triangle is multiplied (row block i against rows i·n/blocks onward) and
    mirrored: 5/8 of the flops of V Vᵀ for 4 blocks, and K is exactly symmetric.
    """
    v = _upcast(vectors.detach().reshape(vectors.shape[0], -1), dtype)
    n = v.shape[0]
    blocks = max(1, min(blocks, n // 64))  # small blocks would lose more in GEMM efficiency than they save
    with ieee_fp32():
        if blocks == 1:
            k = v @ v.T
            return torch.triu(k).double() + torch.triu(k, 1).T.double()  # symmetric like the blocked path
        bounds = [n * i // blocks for i in range(blocks + 1)]
        k = torch.zeros(n, n, dtype=torch.float64, device=v.device)
        for lo, hi in itertools.pairwise(bounds):
            k[lo:hi, lo:] = v[lo:hi] @ v[lo:].T  # (rows of block i) × (rows from block i on)
    return torch.triu(k) + torch.triu(k, 1).T


# ----------------------------------------------------------------------------- Gram builders


def linear_grams(
    inputs: Tensor, grad_outputs: Tensor, bias: bool = False, dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor | None]:
    """Per-example gradient Grams of a Linear layer from its input A (B, *, in) and output grad G (B, *, out).

    Weight: K = (A Aᵀ) ∘ (G Gᵀ) without forming any per-example gradient; with extra dims T,
    K_ij = Σ_{t,s} ⟨a_it, a_js⟩⟨g_it, g_js⟩ (or P Pᵀ with P_i = Σ_t g_it a_itᵀ when T² > in·out).
    Bias: Gram of Σ_t g_it. The gradients are whatever G is (ℓ_i of a summed loss, ℓ_i/B of a mean).
    Returns fp64 (B, B) Grams (weight, bias or None).
    """
    B = inputs.shape[0]
    a = _upcast(inputs.reshape(B, -1, inputs.shape[-1]), dtype)  # (B, T, in)
    g = _upcast(grad_outputs.reshape(B, -1, grad_outputs.shape[-1]), dtype)  # (B, T, out)
    T = a.shape[1]
    with ieee_fp32():
        if T == 1:
            k_w = (a[:, 0] @ a[:, 0].T) * (g[:, 0] @ g[:, 0].T)
        elif a.shape[2] * g.shape[2] >= T * T:  # the (B, T, B, T) Grams are smaller than P
            aa = (a.reshape(B * T, -1) @ a.reshape(B * T, -1).T).reshape(B, T, B, T)
            gg = (g.reshape(B * T, -1) @ g.reshape(B * T, -1).T).reshape(B, T, B, T)
            k_w = (aa * gg).sum((1, 3))
        else:
            p = torch.einsum("bto,bti->boi", g, a).reshape(B, -1)  # (B, out·in) per-example grads
            k_w = p @ p.T
        k_b = None
        if bias:
            gb = g.sum(1)
            k_b = gb @ gb.T
    return k_w.double(), None if k_b is None else k_b.double()


def conv2d_per_example_grads(conv: nn.Conv2d, inputs: Tensor, grad_outputs: Tensor) -> tuple[Tensor, Tensor]:
    """Per-example gradients of a Conv2d from its input (B, C_in, H, W) and output grad (B, C_out, H', W').

    unfold gives the patches X_i (C_in·kh·kw, L); the weight gradient is G_i X_iᵀ per group, one
    batched matmul. Respects stride, padding (ints, 'same', 'valid'), dilation and groups; only
    padding_mode='zeros'. Returns (weight grads (B, C_out·C_in/groups·kh·kw), bias grads (B, C_out)).
    """
    if conv.padding_mode != "zeros":
        raise ValueError(f"Conv2d padding_mode={conv.padding_mode!r} is not supported; allowed: zeros")
    kh, kw = conv.kernel_size
    x = inputs
    padding: Any = conv.padding
    if isinstance(padding, str):  # 'same' pads total d·(k−1), the extra pixel on the right/bottom
        if padding == "same":
            pads: list[int] = []
            for d, k in zip(reversed(conv.dilation), (kw, kh), strict=True):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        padding = 0
    B, groups = x.shape[0], conv.groups
    cols = F.unfold(x, (kh, kw), dilation=conv.dilation, padding=padding, stride=conv.stride)
    cols = cols.reshape(B, groups, -1, cols.shape[-1])  # (B, groups, C_in/groups·kh·kw, L)
    g = grad_outputs.reshape(B, groups, conv.out_channels // groups, -1)  # (B, groups, C_out/groups, L)
    if g.shape[-1] != cols.shape[-1]:
        raise ValueError(f"conv output has {g.shape[-1]} positions but unfold gives {cols.shape[-1]}")
    with ieee_fp32():
        weight = torch.einsum("bgol,bgil->bgoi", g, cols).reshape(B, -1)
    return weight, grad_outputs.reshape(B, conv.out_channels, -1).sum(-1)


def per_example_grads(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    labels: Tensor,
    names: Sequence[str],
) -> dict[str, Tensor]:
    """Generic fallback: per-example gradients (B, *shape) of ``loss_fn`` w.r.t. the named parameters,
    by ``torch.func.vmap(grad(...))``: gradients of each example's own loss ℓ_i (summed-loss scale).
    BatchNorm must be in eval mode and Dropout off (vmap refuses batch-coupled or random ops)."""
    from torch.func import functional_call, grad, vmap

    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    state = {k: v.detach() for k, v in state.items()}
    chosen = {n: state[n] for n in names}

    def loss_one(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, {**state, **params}, (x.unsqueeze(0),))
        return loss_fn(logits, y.unsqueeze(0)).sum()

    return vmap(grad(loss_one), in_dims=(None, 0, 0))(chosen, inputs, labels)


# ----------------------------------------------------------------------------- capture by hooks


class _Call:
    """One forward call of a hooked module: its detached input, and its output gradient once known."""

    def __init__(self, inputs: Tensor) -> None:
        self.inputs = inputs
        self.grad: Tensor | None = None


def _positions(t: Tensor) -> Tensor:
    return t.flatten(1, -2) if t.dim() > 2 else t[:, None]  # (B, T, features)


class GramCapture:
    """Hooks that record, during one ordinary forward + backward, everything the Grams need.

    Forward hooks on every ``nn.Linear``/``nn.Conv2d`` of ``net`` (exact types) keep the detached
    input and put a tensor hook on the output that keeps its gradient; a hook on ``net`` keeps the
    gradient w.r.t. its output (the logits); hooks on ``rep_layers`` keep their (last) output.
    Hooks only read: the gradients the optimizer sees are untouched. A module called several times
    per forward has its calls summed into one per-example gradient. Parameters shared between
    modules, frozen, of other module types or Conv2d with a padding_mode other than 'zeros' are
    not hooked (absent from :meth:`grams`).
    """

    def __init__(self, net: nn.Module, gradients: bool = True, rep_layers: Sequence[str] = ()) -> None:
        self.net = net
        owners: dict[int, int] = {}
        for module in net.modules():
            for _, p in module.named_parameters(recurse=False, remove_duplicate=False):
                owners[id(p)] = owners.get(id(p), 0) + 1
        self.modules: dict[str, tuple[nn.Module, list[str]]] = {}
        if gradients:
            for name, module in net.named_modules():
                if type(module) in GRAM_MODULES and getattr(module, "padding_mode", "zeros") == "zeros":
                    local = [
                        k
                        for k, p in module.named_parameters(recurse=False, remove_duplicate=False)
                        if p.requires_grad and owners[id(p)] == 1
                    ]
                    if local:
                        self.modules[name] = (module, local)
        self.gradients = gradients
        self.rep_layers = list(rep_layers)
        self.calls: dict[str, list[_Call]] = {}
        self.grad_logits: Tensor | None = None
        self.features: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []

    def unhooked(self) -> list[str]:
        """Trainable parameters of ``net`` that get no per-example gradient Gram from these hooks."""
        hooked = {f"{m}.{k}" if m else k for m, (_, local) in self.modules.items() for k in local}
        return [n for n, p in self.net.named_parameters() if p.requires_grad and n not in hooked]

    def attach(self) -> GramCapture:
        self.calls = {name: [] for name in self.modules}
        self.grad_logits, self.features = None, {}
        for name, (module, _) in self.modules.items():
            self._handles.append(module.register_forward_hook(self._module_hook(name), with_kwargs=True))
        if self.gradients:
            self._handles.append(self.net.register_forward_hook(self._logits_hook))
        for layer in self.rep_layers:
            self._handles.append(self.net.get_submodule(layer).register_forward_hook(self._rep_hook(layer)))
        return self

    def detach(self) -> None:
        """Remove the module hooks (tensor hooks die with the autograd graph)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> GramCapture:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _module_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if not (isinstance(output, Tensor) and output.requires_grad):
                return
            x = args[0] if args else kwargs["input"]
            call = _Call(x.detach())
            self.calls[name].append(call)

            def save(grad: Tensor) -> None:
                call.grad = grad.detach()

            output.register_hook(save)

        return hook

    def _logits_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, Tensor) and output.requires_grad:

            def save(grad: Tensor) -> None:
                self.grad_logits = grad.detach()

            output.register_hook(save)

    def _rep_hook(self, layer: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(out, Tensor):
                self.features[layer] = out.detach()

        return hook

    def grams(self, keep: Tensor | None = None, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """fp64 (B', B') Grams: ``<param name>``, ``logits`` and ``rep:<layer>`` for what was captured.

        ``keep`` (B',) selects examples (e.g. the measured classes). Grams of the same tensor (a
        representation that is also the next Linear's input) are computed once.
        """
        cache: dict[tuple[Any, ...], Tensor] = {}

        def sub(t: Tensor) -> Tensor:
            return t if keep is None else t.index_select(0, keep)

        def cached_gram(t: Tensor) -> Tensor:
            # Keyed by storage, not object: ``h.detach()`` and the next layer's input share memory.
            key = (t.data_ptr(), t.shape, t.stride(), t.dtype, t.device)
            if key not in cache:
                cache[key] = gram(sub(t), dtype)
            return cache[key]

        out: dict[str, Tensor] = {}
        for name, (module, local) in self.modules.items():
            records = [(c.inputs, c.grad) for c in self.calls.get(name, []) if c.grad is not None]
            if not records:
                continue
            prefix = f"{name}." if name else ""
            if isinstance(module, nn.Conv2d):
                per_call = [conv2d_per_example_grads(module, sub(a), sub(g)) for a, g in records]
                if "weight" in local:
                    out[prefix + "weight"] = gram(torch.stack([w for w, _ in per_call]).sum(0), dtype)
                if "bias" in local:
                    out[prefix + "bias"] = gram(torch.stack([b for _, b in per_call]).sum(0), dtype)
                continue
            if len(records) == 1 and records[0][0].dim() == 2:  # the common case: reuse cached Grams
                a, g = records[0]
                k_g = cached_gram(g)
                if "weight" in local:
                    out[prefix + "weight"] = cached_gram(a) * k_g
                if "bias" in local:
                    out[prefix + "bias"] = k_g
                continue
            # Several calls or extra dims: calls are extra positions t of one per-example gradient.
            a_all = torch.cat([_positions(sub(a)) for a, _ in records], 1)  # (B', T, in)
            g_all = torch.cat([_positions(sub(g)) for _, g in records], 1)  # (B', T, out)
            k_w, k_b = linear_grams(a_all, g_all, bias="bias" in local, dtype=dtype)
            if "weight" in local:
                out[prefix + "weight"] = k_w
            if k_b is not None:
                out[prefix + "bias"] = k_b
        if self.grad_logits is not None:
            out["logits"] = cached_gram(self.grad_logits)
        for layer, h in self.features.items():
            out[f"rep:{layer}"] = cached_gram(h)
        return out
