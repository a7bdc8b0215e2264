"""Section 5 networks: ResNet-18/50 and DenseNet-121 from torchvision, adapted to small images.

The paper compares a ResNet-50 and a DenseNet-121 with its ConvNet and MLP on CIFAR-10 (it does
not give their code). These wrappers build the torchvision classes with random weights — never
pretrained, nothing is downloaded — and change the stem for 32×32 inputs, as is usual on CIFAR:

- ResNet: the 7×7 stride-2 first conv becomes 3×3 stride 1 and the initial max-pool is dropped,
  so the 32×32 input is not reduced to 8×8 before the first block.
- DenseNet: the same for its stem (``features.conv0`` 3×3 stride 1, ``features.pool0`` removed).

Each net routes its pooled penultimate features through an ``nn.Identity`` named ``features``
(``representation_layer = "features"``), so :class:`lightning_mem.callbacks.AlignmentMonitor`
measures representation alignment there, and exposes ``num_classes`` and ``init_std``.

BatchNorm caveat: these nets use BatchNorm, which normalizes with statistics of the whole batch,
so one example's output (and gradient) depends on the others in the batch. Per-example gradients
are therefore not independent and the paper's gradient alignment is not defined for them;
measure **representation alignment only** (the AlignmentMonitor does so by itself and warns).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lightning_mem.nets import check_init_std


def _stem_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    # 3×3 stride 1: keeps the 32×32 resolution of CIFAR-sized inputs (torchvision: 7×7 stride 2).
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)


class _ZooNet(nn.Module):
    """A torchvision backbone (``backbone``) whose classifier is replaced by ``features`` + ``out``.

    ``forward``: backbone (through global average pooling, classifier removed) → flatten →
    ``features`` (Identity, the representation layer) → ``out`` (Linear → k). BatchNorm couples the
    examples of a batch: per-example gradients are not independent, so measure representation
    alignment only.

    Args:
        input_shape: Shape of one input image (C, H, W). Linked from the data by the CLI.
        num_classes: Number of outputs k. Linked from the data by the CLI.
        init_std: σ of the first conv's kernel ~ N(0, σ²); None keeps torchvision's init.
    """

    representation_layer = "features"
    arch: ClassVar[str]  # the torchvision.models builder, e.g. "resnet18"

    def __init__(
        self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, init_std: float | None = None
    ) -> None:
        import torchvision.models as tvm  # lazy: importing torchvision costs ~1 s

        super().__init__()
        check_init_std(init_std)
        self.input_shape = tuple(int(s) for s in input_shape)
        if len(self.input_shape) != 3:
            raise ValueError(f"input_shape={self.input_shape} must be (C, H, W)")
        # DenseNet's three transitions halve H and W (2×2 avg-pool each): 8×8 inputs end at 1×1.
        if min(self.input_shape[1:]) < 8:
            raise ValueError(
                f"input_shape={self.input_shape} is too small for {type(self).__name__} (needs H, W >= 8)"
            )
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes} must be >= 2")
        self.num_classes = num_classes
        self.init_std = init_std
        # torchvision model, weights=None: random init. Typed Any: its submodules differ per family.
        self.backbone: Any = getattr(tvm, self.arch)(weights=None, num_classes=num_classes)
        self._adapt(self.input_shape[0])
        head = self._take_head()  # the torchvision classifier Linear(D, k)
        self.flatten = nn.Flatten()
        self.features = nn.Identity()  # (B, D) penultimate representation
        self.out = head
        if init_std is not None:
            with torch.no_grad():
                nn.init.normal_(self.first_conv().weight, mean=0.0, std=init_std)

    def _adapt(self, in_channels: int) -> None:
        raise NotImplementedError

    def _take_head(self) -> nn.Linear:
        raise NotImplementedError

    def first_conv(self) -> nn.Conv2d:
        """The stem conv whose kernel is drawn with ``init_std``."""
        raise NotImplementedError

    def embed(self, x: Tensor) -> Tensor:
        """Pooled penultimate features (B, D), before ``features``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.features(self.flatten(self.embed(x))))  # (B, k)


class _ResNet(_ZooNet):
    def _adapt(self, in_channels: int) -> None:
        net = self.backbone
        old = net.conv1
        net.conv1 = _stem_conv(in_channels, old.out_channels)
        # Kaiming-normal, as torchvision initialises its convs.
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()  # no initial downsampling on small images

    def _take_head(self) -> nn.Linear:
        head = self.backbone.fc
        self.backbone.fc = nn.Identity()
        return head

    def first_conv(self) -> nn.Conv2d:
        return self.backbone.conv1

    def embed(self, x: Tensor) -> Tensor:
        return self.backbone(x)  # fc is Identity: (B, D) after avgpool + flatten


class _DenseNet(_ZooNet):
    def _adapt(self, in_channels: int) -> None:
        feats = self.backbone.features
        old = feats.conv0
        feats.conv0 = _stem_conv(in_channels, old.out_channels)
        nn.init.kaiming_normal_(feats.conv0.weight)
        feats.pool0 = nn.Identity()

    def _take_head(self) -> nn.Linear:
        head = self.backbone.classifier
        self.backbone.classifier = nn.Identity()
        return head

    def first_conv(self) -> nn.Conv2d:
        return self.backbone.features.conv0

    def embed(self, x: Tensor) -> Tensor:
        return self.backbone(x)  # classifier is Identity: (B, D) after relu + avgpool + flatten


class ResNet18(_ResNet):
    """torchvision ResNet-18 with a 3×3 stride-1 stem and no max-pool (small images); representation layer
    ``features``: the pooled 512-d features. BatchNorm: measure representation alignment only (see
    :class:`_ZooNet` for why and for the arguments)."""

    arch = "resnet18"


class ResNet50(_ResNet):
    """torchvision ResNet-50 with a 3×3 stride-1 stem and no max-pool (small images); representation layer
    ``features``: the pooled 2048-d features. BatchNorm: measure representation alignment only (see
    :class:`_ZooNet` for why and for the arguments)."""

    arch = "resnet50"


class DenseNet121(_DenseNet):
    """torchvision DenseNet-121 with a 3×3 stride-1 stem and no initial max-pool (small images);
    representation layer ``features``: the pooled 1024-d features. BatchNorm: measure
    representation alignment only (see :class:`_ZooNet` for why and for the arguments)."""

    arch = "densenet121"


ZOO: dict[str, type[_ZooNet]] = {"resnet18": ResNet18, "resnet50": ResNet50, "densenet121": DenseNet121}


def feature_dim(net: _ZooNet) -> int:
    """Width D of the representation layer ``features``."""
    return int(net.out.in_features)


__all__ = ["ZOO", "DenseNet121", "ResNet18", "ResNet50", "feature_dim"]
