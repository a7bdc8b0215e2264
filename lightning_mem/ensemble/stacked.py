"""Many runs in one process: K members of the paper's MLP stacked on a leading member axis.

A σ × seed grid is dozens of ``ScaledMLP`` runs that differ only in σ, seed (and maybe lr and loss
scale). :class:`StackedMLP` holds their weights as ``hidden.weight`` (K, width, d) and ``out.weight``
(K, k, width) — the single run's parameter names with a member axis in front — and
:class:`EnsembleModule` trains all K with plain SGD, each member on its own batches, with its own
lr, loss scale, metrics and divergence guard. Member k starts from exactly the weights its single
run would draw (``seed_everything(seed)`` then ``ScaledMLP(...)``) and sees exactly its batches
(:mod:`lightning_mem.ensemble.data`); its per-member loss is the mean over its batch, and the total
that autograd differentiates is the sum over members, so members are decoupled: member k's gradient
is the gradient of its own loss, and a NaN in member j never reaches member k.

The stacked layer gives the batched matmul nn.Linear's own backward (∂W_k = G_kᵀ X_k, contiguous):
faster than autograd through ``x @ W.mT`` (a transposed ∂W that later ops walk with strides) and than
``vmap(grad(...))``, and it keeps ordinary autograd, modules and hooks — a Gram needs each layer's input
and output gradient, and Lightning's loop needs one ordinary backward. The measurements behind the
choice are on the docs' ensembles page (``benchmarks/bench_ensemble.py --modes layout``).

Exactness: member k's forward, loss and ∂W1 are bitwise those of its single run; ∂W2 may differ by
summation order (bmm and mm can block the k × B × width product differently). The SGD update
``W.addcmul_(∇W, −lr)`` is bitwise ``torch.optim.SGD``'s (tests/ensemble/test_train.py). On a GPU cuBLAS
picks its own kernels: expect equality up to summation order.

Only ScaledMLP is stacked. The Section 5 ConvNet would need grouped convolutions (members as groups)
and max-pooling on a member axis, and its alignment uses per-example gradients by unfold, not the
(A Aᵀ)∘(G Gᵀ) Gram: a different design, left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

import torch
from torch import Tensor, nn

from lightning_mem.checks import check_choice
from lightning_mem.nets import ACTIVATIONS, Activation, ScaledMLP, check_init_std
from lightning_mem.nets.paper import InitRule


@dataclass(frozen=True)
class MemberSpec:
    """What one member of an ensemble changes from run to run (the packable keys of a sweep).

    Attributes:
        seed: The run seed (``seed_everything``): init, data order, class-balanced subset, and the
            random labels unless ``label_seed`` is given.
        init_std: σ of W1 ~ N(0, σ²); None gives Glorot-uniform.
        lr: SGD learning rate.
        loss_scale: The loss knob (temperature, margin, target scale), before ``loss_scale_with_init``.
        label_seed: Seed of the random labels; None uses ``seed``.
        init_scale: α multiplying every parameter after its init (``ScaledMLP``'s ``init_scale``).
        weight_decay: The optimizer's weight decay (L2 for sgd and adam, decoupled for adamw).
        momentum: SGD's momentum.
        betas: Adam's (β1, β2).
    """

    seed: int
    init_std: float | None
    lr: float = 0.01
    loss_scale: float = 1.0
    label_seed: int | None = None
    init_scale: float = 1.0
    weight_decay: float = 0.0
    momentum: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        for name, seed in (("seed", self.seed), ("label_seed", self.label_seed)):
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
                raise ValueError(f"member {name}={seed!r} must be an integer >= 0")
        check_init_std(self.init_std)
        positive = (("lr", self.lr), ("loss_scale", self.loss_scale), ("init_scale", self.init_scale))
        for name, value in positive:
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"member {name}={value!r} must be a positive finite number")
        for name, value in (("weight_decay", self.weight_decay), ("momentum", self.momentum)):
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"member {name}={value!r} must be a finite number >= 0")
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"member betas={self.betas!r} must be two numbers in [0, 1)")
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))


def member_net(
    member: MemberSpec, input_shape: Sequence[int], num_classes: int, width: int, activation: Activation,
    depth: int = 1, bias: bool = False, init_rule: InitRule = "glorot",
) -> ScaledMLP:
    """The network the single run of ``member`` starts from: its init after ``seed_everything(seed)``.

    The global torch RNG is seeded inside ``fork_rng`` and restored after, so building an ensemble
    leaves the caller's random state alone.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(member.seed)  # what seed_everything does to the generator that inits the weights
        return ScaledMLP(input_shape, num_classes, width, activation, member.init_std, depth=depth, bias=bias,
                         init_scale=member.init_scale, init_rule=init_rule)


class _StackedLinear(torch.autograd.Function):
    """Y_k = X_k W_kᵀ for every member k in one bmm: (K, B, in), (K, out, in) -> (K, B, out).

    The backward is nn.Linear's, batched: ∂X_k = G_k W_k and ∂W_k = G_kᵀ X_k, both contiguous.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return torch.bmm(x, weight.mT)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(grad.mT, x) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w


class StackedLinear(nn.Module):
    """K linear layers, ``weight`` (K, out, in) and with ``bias`` a ``bias`` (K, out); input (K, B, in), or
    (B, in) shared by all."""

    def __init__(self, members: int, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(members, out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:  # one input for every member (evaluation): one matmul against all K weights
            K, out, _ = self.weight.shape
            y = (x @ self.weight.flatten(0, 1).T).view(len(x), K, out).transpose(0, 1)  # (K, B, out)
        else:
            y = _StackedLinear.apply(x, self.weight)
        return y if self.bias is None else y + self.bias[:, None, :]  # ∂b_k = Σ_B G_k (autograd's sum)


class StackedMLP(nn.Module):
    """K copies of :class:`~lightning_mem.nets.ScaledMLP` z = W2 · φ(W1 · x) with their own weights.

    Parameters ``hidden.weight`` (K, width, d) and ``out.weight`` (K, k, width): member k's slice
    is ``ScaledMLP``'s ``hidden.weight`` / ``out.weight``. ``forward`` takes (K, B, *input_shape) —
    a batch per member — or (B, *input_shape) shared by all members, and returns logits (K, B, k).
    Build it with :meth:`from_members`, which draws each member's init as its single run would.
    """

    representation_layer = "act"

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, width: int, activation: Activation,
        init_stds: Sequence[float | None], depth: int = 1, bias: bool = False, init_rule: InitRule = "glorot",
        init_scales: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        check_choice("activation", activation, get_args(Activation))
        if not init_stds:
            raise ValueError("an ensemble needs at least one member")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes, self.width, self.activation = num_classes, width, activation
        self.init_stds = list(init_stds)
        self.depth, self.bias, self.init_rule = depth, bool(bias), init_rule
        scales = [1.0] * len(self.init_stds) if init_scales is None else init_scales
        self.init_scales = [float(a) for a in scales]
        d, K = math.prod(self.input_shape), len(self.init_stds)
        self.hidden = StackedLinear(K, d, width, self.bias)  # W1
        layers: list[nn.Module] = []
        for _ in range(depth - 1):  # ScaledMLP's ``deep``: (φ, W) pairs, the same parameter names
            layers += [ACTIVATIONS[activation](), StackedLinear(K, width, width, self.bias)]
        self.deep = nn.Sequential(*layers)
        self.act = ACTIVATIONS[activation]()
        self.out = StackedLinear(K, width, num_classes, self.bias)  # W2

    @classmethod
    def from_members(
        cls, members: Sequence[MemberSpec], input_shape: Sequence[int], num_classes: int, width: int = 1024,
        activation: Activation = "sin", depth: int = 1, bias: bool = False, init_rule: InitRule = "glorot",
    ) -> StackedMLP:
        """Member k's weights are bitwise those of ``ScaledMLP`` built after ``seed_everything(seed_k)``."""
        net = cls(input_shape, num_classes, width, activation, [m.init_std for m in members], depth, bias,
                  init_rule, [m.init_scale for m in members])
        params = dict(net.named_parameters())
        with torch.no_grad():
            for k, member in enumerate(members):
                single = member_net(member, input_shape, num_classes, width, activation, depth, bias,
                                    init_rule)
                for name, p in single.named_parameters():
                    params[name][k].copy_(p)
        return net

    @property
    def num_members(self) -> int:
        return len(self.init_stds)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(x.dim() - len(self.input_shape))  # (K, B, d) or (B, d)
        return self.out(self.act(self.deep(self.hidden(x))))  # (K, B, k)

    def member_state_dict(self, k: int) -> dict[str, Tensor]:
        """Member k's weights under ScaledMLP's names (copies on the CPU)."""
        return {name: p[k].detach().cpu().clone() for name, p in self.named_parameters()}

    def member(self, k: int) -> ScaledMLP:
        """A standalone ``ScaledMLP`` holding member k's current weights."""
        net = ScaledMLP(self.input_shape, self.num_classes, self.width, self.activation, self.init_stds[k],
                        depth=self.depth, bias=self.bias, init_scale=self.init_scales[k],
                        init_rule=self.init_rule)
        net.load_state_dict(self.member_state_dict(k))
        return net


class MemberSGD(torch.optim.Optimizer):
    """Plain SGD with one learning rate per member: W_k ← W_k − lr_k ∇W_k (no momentum, no decay).

    ``lr`` (K,) lives on the parameters' device; the update is ``W.addcmul_(∇W, −lr)``, bitwise
    ``torch.optim.SGD``'s ``W.add_(∇W, alpha=−lr)`` for each member (checked in the tests).
    """

    def __init__(self, params: Sequence[Tensor], lr: Tensor) -> None:
        super().__init__(params, {})
        self.lr = lr

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        neg_lr = -self.lr
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.addcmul_(p.grad, neg_lr.view(-1, *[1] * (p.dim() - 1)).to(p.dtype))
        return loss
