"""Networks: plain ``nn.Module``s whose ``forward`` takes inputs only, with their init rules.

- :mod:`~lightning_mem.nets.paper`: the paper's :class:`ScaledMLP` (σ on W1) and the Section 5
  :class:`ConvNet`.
- :mod:`~lightning_mem.nets.zoo`: ResNet-18/50 and DenseNet-121 from torchvision adapted to small images
  (imported only when asked for: it imports torchvision).

Each net names the layer whose output is its hidden representation in ``representation_layer``, so
:class:`~lightning_mem.callbacks.AlignmentMonitor` can hook it.
"""

from lightning_mem.nets.paper import ACTIVATIONS, Activation, ConvNet, ScaledMLP, Sin, check_init_std

__all__ = ["ACTIVATIONS", "Activation", "ConvNet", "ScaledMLP", "Sin", "check_init_std"]
