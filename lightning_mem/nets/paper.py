"""Networks of the paper: the scaled-init 2-layer MLP and the Section 5 ConvNet.

Models are plain ``nn.Module``s: ``forward`` takes inputs only, and the init rules live here.
Each net names the layer whose output is its hidden representation in ``representation_layer``
so that :class:`lightning_mem.callbacks.AlignmentMonitor` can hook it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from lightning_mem.checks import check_choice

Activation = Literal["sin", "relu", "sigmoid", "tanh", "linear", "gelu"]
InitRule = Literal["glorot", "torch"]


class Sin(nn.Module):
    """Elementwise ``sin``: the activation of the paper's main experiments."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sin": Sin,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "linear": nn.Identity,
    "gelu": nn.GELU,
}


def check_init_std(init_std: float | None) -> None:
    if init_std is not None and not (init_std > 0 and math.isfinite(init_std)):
        raise ValueError(f"init_std={init_std!r} must be a positive finite number, or null for Glorot init")


def check_depth_and_scale(depth: int, init_scale: float) -> None:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth={depth!r} must be an integer >= 1 (the number of hidden layers)")
    if isinstance(init_scale, bool) or not (init_scale > 0 and math.isfinite(init_scale)):
        raise ValueError(f"init_scale={init_scale!r} must be a positive finite number")


class ScaledMLP(nn.Module):
    """The paper's network z(x) = W2 · φ(W1 · x), no biases (Section 3), and its deeper kin.

    The defaults (``depth=1``, ``bias=False``, ``init_scale=1``, ``init_rule="glorot"``) are the
    paper's net, drawn bitwise as before. Omnigrok's grokking net (784→200→200→10 with biases,
    torch's default init times α) is ``depth=2, width=200, bias=True, init_rule="torch",
    init_scale=α``.

    Args:
        input_shape: Shape of one input image (C, H, W); it is flattened to d = C·H·W.
            Linked from the data by the CLI.
        num_classes: Number of outputs k. Linked from the data by the CLI.
        width: Hidden width (1024 in the paper).
        activation: φ, one of sin, relu, sigmoid, tanh, linear, gelu.
        init_std: σ of W1 ~ N(0, σ²), the scale the paper studies. None gives Glorot-uniform
            (the Keras default the paper used). Every other weight follows ``init_rule``.
        depth: Number of hidden layers (1 in the paper): W1, then ``depth - 1`` width×width layers
            in ``deep``, each after φ. The representation hooked as ``act`` is the last hidden one.
        bias: Give every layer a bias (none in the paper).
        init_scale: α multiplying every parameter after its init (Omnigrok's scale), W1 included
            even when ``init_std`` sets it; 1 leaves the init as drawn.
        init_rule: ``glorot``: Glorot-uniform weights, zero biases (Keras, the paper);
            ``torch``: ``nn.Linear``'s own init (Kaiming-uniform weights, uniform biases; Omnigrok).
    """

    representation_layer = "act"

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        width: int = 1024,
        activation: Activation = "sin",
        init_std: float | None = None,
        depth: int = 1,
        bias: bool = False,
        init_scale: float = 1.0,
        init_rule: InitRule = "glorot",
    ) -> None:
        super().__init__()
        check_choice("activation", activation, get_args(Activation))
        check_choice("init_rule", init_rule, get_args(InitRule))
        check_init_std(init_std)
        check_depth_and_scale(depth, init_scale)
        if width < 1 or num_classes < 2:
            raise ValueError(f"width={width} must be >= 1 and num_classes={num_classes} >= 2")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = num_classes
        self.init_std = init_std
        self.depth, self.bias, self.init_rule = depth, bool(bias), init_rule
        self.init_scale = float(init_scale)
        d = math.prod(self.input_shape)
        self.flatten = nn.Flatten()
        self.hidden = nn.Linear(d, width, bias=self.bias)  # W1: (width, d)
        layers: list[nn.Module] = []
        for _ in range(depth - 1):
            layers += [ACTIVATIONS[activation](), nn.Linear(width, width, bias=self.bias)]
        self.deep = nn.Sequential(*layers)  # empty (the identity) at depth 1
        self.act = ACTIVATIONS[activation]()
        self.out = nn.Linear(width, num_classes, bias=self.bias)  # W2: (k, width)
        self.reset_parameters()

    def linears(self) -> list[nn.Linear]:
        """The linear layers in order: W1, the ``deep`` ones, W2."""
        return [self.hidden, *(m for m in self.deep if isinstance(m, nn.Linear)), self.out]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Draw order at the defaults is W1 then W2, as it always was: the same seed gives the same net.
        for i, layer in enumerate(self.linears()):
            if self.init_rule == "torch":
                layer.reset_parameters()
            elif not (i == 0 and self.init_std is not None):
                nn.init.xavier_uniform_(layer.weight)
            if self.init_rule == "glorot" and layer.bias is not None:
                nn.init.zeros_(layer.bias)
            if i == 0 and self.init_std is not None:
                nn.init.normal_(layer.weight, mean=0.0, std=self.init_std)
        if self.init_scale != 1.0:
            for p in self.parameters():
                p.mul_(self.init_scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.act(self.deep(self.hidden(self.flatten(x)))))  # (B, k)


class ConvNet(nn.Module):
    """The Section 5 ConvNet of the paper's reference code, with biases.

    conv 5×5 32 'same' + ReLU → maxpool 3/2 'valid' → conv 5×5 64 'valid' + ReLU →
    maxpool 3/2 'valid' → flatten → dense 1024 + ReLU → dense k.

    Args:
        input_shape: Shape of one input image (C, H, W). Linked from the data by the CLI.
        num_classes: Number of outputs k. Linked from the data by the CLI.
        init_std: σ of the first conv layer's kernel ~ N(0, σ²); None gives Glorot-uniform.
            Every other kernel is Glorot-uniform and every bias zero (Keras defaults).
    """

    representation_layer = "act"

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        check_init_std(init_std)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = num_classes
        self.init_std = init_std
        c, h, w = self.input_shape
        self.conv1 = nn.Conv2d(c, 32, 5, padding=2)
        self.act1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(3, 2)
        self.conv2 = nn.Conv2d(32, 64, 5)
        self.act2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(3, 2)
        self.flatten = nn.Flatten()
        h, w = self._spatial(h), self._spatial(w)
        if h < 1 or w < 1:
            raise ValueError(f"input_shape={self.input_shape} is too small for ConvNet (needs H, W >= 15)")
        self.fc = nn.Linear(64 * h * w, 1024)
        self.act = nn.ReLU()
        self.out = nn.Linear(1024, num_classes)
        self.reset_parameters()

    @staticmethod
    def _spatial(n: int) -> int:
        n = (n - 3) // 2 + 1  # pool1 (conv1 keeps the size)
        n = n - 4  # conv2, 'valid'
        return (n - 3) // 2 + 1 if n >= 3 else 0  # pool2

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for layer in (self.conv1, self.conv2, self.fc, self.out):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)  # type: ignore[arg-type]  # every layer here has a bias
        if self.init_std is not None:
            nn.init.normal_(self.conv1.weight, mean=0.0, std=self.init_std)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        return self.out(self.act(self.fc(self.flatten(x))))  # (B, k)
