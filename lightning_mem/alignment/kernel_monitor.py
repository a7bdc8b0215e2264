"""``KernelMonitor``: kernel and laziness measures while training, on a fixed held-out probe batch.

The math lives in :mod:`lightning_mem.alignment.kernels`. At every validation (not the sanity check) the
monitor measures on the first ``probe_size`` held-out examples of the first validation loader (taken
at the first validation and kept fixed) and logs one row, at the step of that epoch's ``val/acc``:

- ``kernel/target_alignment``, ``kernel/target_alignment_centered``: of the empirical NTK Θ_t;
- ``kernel/distance_from_init``: 1 − cos_F(Θ₀, Θ_t), Θ₀ the kernel at the weights of init on the
  same probe; ``kernel/velocity``: 1 − cos_F between this and the previous measurement's Θ;
- ``weights/distance_from_init/<param>``: ‖W_t − W₀‖_F / ‖W₀‖_F;
- ``act/pattern_change``: fraction of (example, unit) pairs of every activation module's input whose
  piece of φ changed since init (ReLU sign, sin half-period:
  :func:`~lightning_mem.alignment.kernels.activation_pattern`);
- ``stiffness/class_matrix/diag_mean``, ``stiffness/class_matrix/off_diag_mean`` and, with
  ``stiffness_matrix``, every entry ``stiffness/class_matrix/<c>_<c′>``: the class stiffness matrix of
  the per-example gradients of each example's own loss ℓ_i (the module's ``loss_fn`` when it has one,
  else cross-entropy).

With ``train_every_n_steps`` it also measures on the training batch (its first ``probe_size``
examples) when ``global_step`` is a multiple, before the step, logged at that step:
``train/kernel/target_alignment``, ``train/kernel/target_alignment_centered``,
``train/kernel/distance_from_init`` (Θ₀ on the same batch) and ``train/act/pattern_change``.

:class:`~lightning_mem.nets.ScaledMLP` uses the closed form (no Jacobian); every other net
``torch.func`` per-example gradients with the probe cut to ``jacobian_probe_size`` examples
(memory B·P floats; k vmapped backward passes). The weights of init are part of the callback's
checkpoint state, so a resumed run measures against the same init.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.func import functional_call

from lightning_mem.alignment import kernels
from lightning_mem.alignment.grams import ieee_fp32_now
from lightning_mem.alignment.metric import DeviceRows, Row
from lightning_mem.alignment.monitor import _epoch_end_step
from lightning_mem.alignment.probe import ProbeCollector
from lightning_mem.checks import check_int
from lightning_mem.nets import ScaledMLP, Sin

PATTERN_MODULES = (Sin, nn.ReLU, nn.Sigmoid, nn.Tanh, nn.GELU)  # elementwise φ with pieces; not Identity

LossFn = Callable[[Tensor, Tensor], Tensor]
FULL_PRECISION = ("32-true", "64-true")  # Trainer precisions whose forward products a measurement can reuse


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits, labels, reduction="none")


def pattern_name(module: nn.Module) -> str:
    """The :func:`~lightning_mem.alignment.kernels.activation_pattern` name of an activation module."""
    return "sin" if isinstance(module, Sin) else "relu"


@contextmanager
def _record_inputs(net: nn.Module) -> Iterator[list[tuple[str, Tensor]]]:
    """Record the input of every activation module call (a module called twice records twice)."""
    seen: list[tuple[str, Tensor]] = []
    handles = [
        m.register_forward_pre_hook(lambda mod, args: seen.append((pattern_name(mod), args[0].detach())))
        for m in net.modules() if isinstance(m, PATTERN_MODULES)
    ]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def pre_activations(net: nn.Module, params: dict[str, Tensor], x: Tensor) -> list[tuple[str, Tensor]]:
    """(pattern name, input) of every activation call of ``net`` at ``params`` on x."""
    with _record_inputs(net) as seen, torch.no_grad():
        functional_call(net, params, (x,))
    return seen


def patterns_changed(before: list[tuple[str, Tensor]], after: list[tuple[str, Tensor]]) -> Tensor | None:
    """Fraction of (example, unit) pairs whose pattern changed, over all activation calls; None if none."""
    if not before:
        return None
    changed = sum(float(kernels.pattern_change(a, b, name) * a.numel())
                  for (name, a), (_, b) in zip(before, after, strict=True))
    return torch.tensor(changed / sum(a.numel() for _, a in before), dtype=torch.float64)


class _FirstCall:
    """Records the input and output (first ``n`` rows, detached) of the first call of ``layer``, with what
    the measurement of that step needs besides."""

    def __init__(self, layer: nn.Module, n: int, y: Tensor, w2: Tensor, step: int, epoch: int) -> None:
        self.n, self.y, self.w2, self.step, self.epoch = n, y, w2, step, epoch
        self.got: tuple[Tensor, Tensor] | None = None
        self.handle = layer.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        if self.got is None and out.dtype in (torch.float32, torch.float64):
            self.got = args[0][: self.n].detach(), out[: self.n].detach()
        self.handle.remove()


class NetKernels:
    """Θ, the loss-gradient Gram and the pre-activations of one net at given parameters."""

    def __init__(self, net: nn.Module, loss_fn: LossFn, jacobian_probe_size: int) -> None:
        self.net, self.loss_fn = net, loss_fn
        # The closed form is of z = W2 φ(W1 x): depth 1, no biases.
        self.closed_form = type(net) is ScaledMLP and net.depth == 1 and not net.bias
        self.max_examples = None if self.closed_form else jacobian_probe_size

    def cut(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return (x, y) if self.max_examples is None else (x[: self.max_examples], y[: self.max_examples])

    def ntk(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        if self.closed_form:
            assert isinstance(self.net, ScaledMLP)
            return kernels.mlp_ntk(x.flatten(1), params["hidden.weight"], params["out.weight"], self.net.act)
        return kernels.jacobian_ntk(self.net, x, params, max_examples=len(x))

    def loss_gram(self, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        if self.closed_form:
            assert isinstance(self.net, ScaledMLP)
            logits = functional_call(self.net, params, (x,)).detach().requires_grad_()
            (g,) = torch.autograd.grad(self.loss_fn(logits, y).sum(), logits)  # ∂ℓ_i/∂z_i
            return kernels.mlp_loss_gradient_gram(
                x.flatten(1), params["hidden.weight"], params["out.weight"], self.net.act, g)
        return kernels.jacobian_loss_gradient_gram(self.net, x, y, self.loss_fn, params, max_examples=len(x))


def probe_measures(
    theta: Tensor,
    theta0: Tensor,
    previous: Tensor | None,
    labels: Tensor,
    num_classes: int,
    weights: list[tuple[str, Tensor, Tensor]],
    pattern: Tensor | None,
    loss_gram: Tensor | None,
    stiffness_matrix: bool,
    prefix: str = "",
) -> tuple[list[str], list[Tensor]]:
    """Keys and 0-dim fp64 values of every measure of one kernel measurement (see the module doc)."""
    keys = [f"{prefix}kernel/target_alignment", f"{prefix}kernel/target_alignment_centered",
            f"{prefix}kernel/distance_from_init"]
    values = [kernels.target_alignment(theta, labels, num_classes),
              kernels.target_alignment(theta, labels, num_classes, centered=True),
              kernels.kernel_distance(theta0, theta)]
    if previous is not None:
        keys.append(f"{prefix}kernel/velocity")
        values.append(kernels.kernel_distance(previous, theta))
    for name, w0, wt in weights:
        keys.append(f"weights/distance_from_init/{name}")
        values.append(kernels.weight_distance(w0, wt))
    if pattern is not None:
        keys.append(f"{prefix}act/pattern_change")
        values.append(pattern)
    if loss_gram is not None:
        S = kernels.class_stiffness_matrix(loss_gram, labels, num_classes)
        diag, off = kernels.stiffness_summary(S)
        keys += ["stiffness/class_matrix/diag_mean", "stiffness/class_matrix/off_diag_mean"]
        values += [diag, off]
        if stiffness_matrix:
            C = S.shape[0]
            keys += [f"stiffness/class_matrix/{a}_{b}" for a in range(C) for b in range(C)]
            values += list(S.flatten().unbind())
    return keys, [v.double().reshape(()) for v in values]


class KernelMonitor(L.Callback):
    """Logs kernel and laziness measures of ``pl_module.net`` (see the module docstring).

    Args:
        probe_size: Held-out examples in the fixed probe batch (the first of the split), ≥ 2.
        train_every_n_steps: Also measure on the training batch when ``global_step`` is a multiple of
            this; None: held-out probe only.
        stiffness: Log the class stiffness matrix's diagonal and off-diagonal means.
        stiffness_matrix: Also log every entry of the class stiffness matrix (C² keys).
        jacobian_probe_size: Probe examples for nets without a closed form (``torch.func``; memory
            B·P floats), at most :data:`~lightning_mem.alignment.kernels.MAX_JACOBIAN_PROBE`.
    """

    def __init__(
        self,
        probe_size: int = 256,
        train_every_n_steps: int | None = None,
        stiffness: bool = True,
        stiffness_matrix: bool = True,
        jacobian_probe_size: int = 32,
    ) -> None:
        super().__init__()
        check_int("probe_size", probe_size, 2)
        check_int("train_every_n_steps", train_every_n_steps, 1, none="")
        check_int("jacobian_probe_size", jacobian_probe_size, 2, kernels.MAX_JACOBIAN_PROBE)
        self.probe_size, self.train_every_n_steps = probe_size, train_every_n_steps
        self.stiffness, self.stiffness_matrix = stiffness, stiffness_matrix
        self.jacobian_probe_size = jacobian_probe_size
        self._init: dict[str, Tensor] | None = None  # the weights of init, by name
        self._previous: Tensor | None = None  # Θ of the previous probe measurement
        self._probe: tuple[Tensor, Tensor] | None = None  # the collector's, cut to the net's probe size
        self._collector = ProbeCollector(probe_size)
        self._theta0: Tensor | None = None
        self._pre0: list[tuple[str, Tensor]] | None = None
        self._kernels: NetKernels | None = None
        self._pending: _FirstCall | None = None  # a training-batch measurement waiting for its forward
        self._reuse_forward = True
        self._num_classes = 0
        self._rows = DeviceRows()

    @property
    def last_metrics(self) -> dict[str, float]:
        """The values of the latest row logged, for notebooks and tests."""
        return self._rows.last

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        net = getattr(pl_module, "net", pl_module)
        if not isinstance(net, nn.Module):
            raise TypeError("KernelMonitor needs pl_module.net to be an nn.Module")
        loss_fn = getattr(pl_module, "loss_fn", None)
        loss = loss_fn if callable(loss_fn) else _cross_entropy
        self._kernels = NetKernels(net, loss, self.jacobian_probe_size)
        if not self._kernels.closed_form:
            rank_zero_info(f"KernelMonitor: {type(net).__name__} has no closed-form NTK; torch.func on "
                           f"{self.jacobian_probe_size} probe examples")
        datamodule = getattr(trainer, "datamodule", None)
        classes = getattr(net, "num_classes", None) or getattr(datamodule, "num_classes", None)
        self._num_classes = int(classes or 0)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._init is None:  # not restored from a checkpoint: these are the weights of init
            assert self._kernels is not None
            self._init = {n: p.detach().clone() for n, p in self._kernels.net.named_parameters()}

    def state_dict(self) -> dict[str, Any]:
        return {"init": self._init, "previous": self._previous}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._init, self._previous = state_dict.get("init"), state_dict.get("previous")

    def _params(self) -> dict[str, Tensor]:
        assert self._kernels is not None
        return {n: p.detach() for n, p in self._kernels.net.named_parameters()}

    def _init_params(self, like: dict[str, Tensor]) -> dict[str, Tensor]:
        assert self._init is not None
        return {n: self._init[n].to(like[n]) for n in like}

    def _classes(self, labels: Tensor) -> int:
        return self._num_classes or int(labels.max()) + 1

    # ------------------------------------------------------------------ training batches

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        n = self.train_every_n_steps
        if n is None or trainer.global_step % n or not trainer.loggers or self._kernels is None:
            return
        nk = self._kernels
        x, y = nk.cut(batch[0][: self.probe_size], batch[1][: self.probe_size])
        params = self._params()
        if (nk.closed_form and self._reuse_forward and pl_module.automatic_optimization
                and str(trainer.precision) in FULL_PRECISION and ieee_fp32_now()):
            # The step's own forward computes x W1ᵀ at these weights: take it from there
            # (on_train_batch_end), with W2 as it is now.
            assert isinstance(nk.net, ScaledMLP)
            self._pending = _FirstCall(nk.net.hidden, len(y), y, params["out.weight"].clone(),
                                       trainer.global_step, trainer.current_epoch)
            return
        init = self._init_params(params)
        if nk.closed_form:  # one x xᵀ and one x W1ᵀ per weights, shared by Θ and the patterns
            flat = x.flatten(1)
            pre = kernels.input_products(flat, params["hidden.weight"], gram=False)[0]
            theta, theta0, pattern = self._mlp_batch(flat, pre, params["out.weight"], init)
        else:
            theta, theta0 = nk.ntk(params, x), nk.ntk(init, x)
            pattern = patterns_changed(pre_activations(nk.net, init, x), pre_activations(nk.net, params, x))
        self._log_train(trainer, trainer.global_step, trainer.current_epoch, theta, theta0, pattern, y)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        pending.handle.remove()
        if pending.got is None:  # the step did not call the hidden layer: measure before the step from now on
            self._reuse_forward = False
            rank_zero_warn("KernelMonitor: the training step did not call net.hidden; the training-batch "
                           "measures run before the step from the next one on")
            return
        flat, pre = pending.got
        with torch.no_grad():
            theta, theta0, pattern = self._mlp_batch(flat, pre.double(), pending.w2,
                                                     self._init_params(self._params()))
        self._log_train(trainer, pending.step, pending.epoch, theta, theta0, pattern, pending.y)

    def _log_train(self, trainer: L.Trainer, step: int, epoch: int, theta: Tensor, theta0: Tensor,
                   pattern: Tensor | None, y: Tensor) -> None:
        keys, values = probe_measures(theta, theta0, None, y, self._classes(y), [], pattern, None, False,
                                      prefix="train/")
        self._rows.log(trainer, [Row(step, epoch, keys, torch.stack(values))], reduce=False)

    @torch.no_grad()
    def _mlp_batch(self, flat: Tensor, pre: Tensor, w2: Tensor,
                   init: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        """Θ_t (from the pre-activations ``pre`` = x W1ᵀ and W2 of now), Θ₀ and the pattern change of
        the flattened batch ``flat``: x xᵀ and x W1₀ᵀ computed once each, shared."""
        assert self._kernels is not None and isinstance(self._kernels.net, ScaledMLP)
        act = self._kernels.net.act
        pre0, xx = kernels.input_products(flat, init["hidden.weight"])
        assert xx is not None
        theta = kernels.mlp_ntk_from_products(pre, xx, w2, act)
        theta0 = kernels.mlp_ntk_from_products(pre0, xx, init["out.weight"], act)
        has_pattern = isinstance(act, PATTERN_MODULES)
        pattern = kernels.pattern_change(pre0, pre, pattern_name(act)) if has_pattern else None
        return theta, theta0, pattern

    # ------------------------------------------------------------------ held-out probe

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._probe is None and not trainer.sanity_checking and trainer.loggers:
            self._collector.start()

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collector.add(batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        probe = self._collector.finish()
        if self._probe is None and probe is not None:
            assert self._kernels is not None
            self._probe = self._kernels.cut(*probe)
        if self._probe is None or trainer.sanity_checking or not trainer.loggers:
            return
        with torch.inference_mode(False), torch.enable_grad():
            keys, values = self._measure_probe()
        row = Row(_epoch_end_step(trainer), trainer.current_epoch, keys, torch.stack(values))
        self._rows.log(trainer, [row], reduce=False)

    def _measure_probe(self) -> tuple[list[str], list[Tensor]]:
        assert self._kernels is not None and self._probe is not None
        nk, (x, y) = self._kernels, self._probe
        params = self._params()
        init = self._init_params(params)
        if self._theta0 is None:  # the probe is fixed: Θ₀ and the init patterns once
            self._theta0 = nk.ntk(init, x).detach()
            self._pre0 = pre_activations(nk.net, init, x)
        theta = nk.ntk(params, x).detach()
        assert self._pre0 is not None
        pattern = patterns_changed(self._pre0, pre_activations(nk.net, params, x))
        previous = None if self._previous is None else self._previous.to(theta)
        if previous is not None and previous.shape != theta.shape:
            previous = None  # another probe size after a resume
        weights = [(n, init[n], params[n]) for n in params]
        gram = nk.loss_gram(params, x, y).detach() if self.stiffness else None
        self._previous = theta
        return probe_measures(theta, self._theta0, previous, y, self._classes(y), weights, pattern, gram,
                              self.stiffness_matrix)
