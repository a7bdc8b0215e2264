"""Stateful optimizers for an ensemble: SGD with momentum and weight decay, Adam and AdamW, per member.

Every parameter of a :class:`~lightning_mem.ensemble.stacked.StackedMLP` has the member axis first, so
member k's slice ``p[k]`` is its single run's parameter. :class:`MemberOptimizer` keeps one state per
parameter with that axis too (SGD's momentum buffer; Adam's first and second moments) and updates every
member with its own hyperparameters, (K,) tensors: lr, weight decay, momentum, β1, β2. The arithmetic is
that of torch's single-tensor ``SGD`` / ``Adam`` / ``AdamW`` (``foreach=False``, no ``maximize``,
``nesterov``, ``amsgrad``, dampening 0), so member k's update equals torch's optimizer run on member k
alone, to float tolerance (bias corrections are computed in float64 here, as Python floats there; the
tests compare with ``torch.optim`` on single members).

``active`` (K,) bool (the module's ``alive`` buffer): members outside it keep their parameters and their
state bitwise. With state, a zeroed gradient still moves a weight (momentum, decay), so the divergence
guard's zeroing alone would not freeze a diverged member; this mask does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_mem.training.module import OptimizerName

MemberOptimizerName = OptimizerName  # the names of a single run's optimizers (one home: training/module.py)
EPS = 1e-8  # torch.optim.Adam's default eps, which MemorizationModule's single runs use


def _per_member(values: Tensor, like: Tensor) -> Tensor:
    """(K,) -> (K, 1, ..., 1) broadcasting against ``like`` (K, ...), in its dtype."""
    return values.view(-1, *[1] * (like.dim() - 1)).to(like.dtype)


class MemberOptimizer(torch.optim.Optimizer):
    """torch's SGD (momentum, weight decay), Adam or AdamW with per-member hyperparameters and state.

    Args:
        params: Parameters with the member axis first, (K, ...).
        kind: ``sgd``, ``adam`` or ``adamw``.
        lr, weight_decay, momentum, beta1, beta2: (K,) tensors on the parameters' device.
        active: (K,) bool tensor read at every step: members to update (the others stay as they are).
    """

    def __init__(self, params: Sequence[Tensor], kind: MemberOptimizerName, lr: Tensor, weight_decay: Tensor,
                 momentum: Tensor, beta1: Tensor, beta2: Tensor, active: Tensor | None = None) -> None:
        if kind not in ("sgd", "adam", "adamw"):
            raise ValueError(f"optimizer={kind!r} must be one of sgd, adam, adamw")
        super().__init__(params, {})
        self.kind = kind
        self.lr, self.weight_decay, self.momentum = lr, weight_decay, momentum
        self.beta1, self.beta2, self.active = beta1, beta2, active

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.grad, self.state[p])
        return loss

    def _keep(self, p: Tensor, new: Tensor) -> Tensor:
        """``new`` where the member is active, ``p`` (its old value) elsewhere."""
        if self.active is None:
            return new
        return torch.where(_per_member(self.active, p).bool(), new, p)

    def _update(self, p: Tensor, grad: Tensor, state: dict[str, Any]) -> None:
        lr64, wd64 = self.lr.double(), self.weight_decay.double()  # torch's hyperparameters are Python floats
        lr, wd = _per_member(lr64, p), _per_member(wd64, p)
        if self.kind == "sgd":
            d_p = grad + wd * p  # torch: grad.add(param, alpha=weight_decay)
            if "momentum_buffer" in state:  # torch: buf.mul_(momentum).add_(d_p); the first step buf = d_p
                buf = state["momentum_buffer"]
                d_p = self._keep(buf, buf * _per_member(self.momentum, p) + d_p)
            else:
                d_p = self._keep(torch.zeros_like(p), d_p)
            state["momentum_buffer"] = d_p.clone()
            p.copy_(self._keep(p, p + (-lr) * d_p))  # torch: param.add_(d_p, alpha=-lr)
            return
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float64, device=p.device)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] = state["step"] + 1
        step = state["step"]
        b1, b2 = self.beta1.double(), self.beta2.double()
        if self.kind == "adamw":
            base = p * _per_member(1 - lr64 * wd64, p)  # torch: param.mul_(1 - lr * weight_decay), decoupled
        else:
            base, grad = p, grad + wd * p  # torch: grad.add(param, alpha=weight_decay), L2
        exp_avg = state["exp_avg"].lerp(grad, _per_member(1 - b1, p))  # torch: exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"] * _per_member(b2, p) + grad * grad * _per_member(1 - b2, p)
        step_size = _per_member(lr64 / (1 - b1**step), p)  # torch: lr / bias_correction1
        denom = (exp_avg_sq.sqrt() / _per_member((1 - b2**step).sqrt(), p)).add_(EPS)
        state["exp_avg"] = self._keep(state["exp_avg"], exp_avg)
        state["exp_avg_sq"] = self._keep(state["exp_avg_sq"], exp_avg_sq)
        # torch: param.addcdiv_(exp_avg, denom, value=-step_size)
        p.copy_(self._keep(p, base + (-step_size) * (exp_avg / denom)))
