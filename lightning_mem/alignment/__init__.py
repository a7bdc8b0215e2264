"""Alignment of per-example gradients and representations: the math, the Grams, the monitor.

- :mod:`~lightning_mem.alignment.measures`: pure Ω functions (Ω_c, in-class means, the comparison
  measures) from Gram matrices, and the public one-call helpers re-exported here.
- :mod:`~lightning_mem.alignment.grams`: Gram builders — (A Aᵀ) ∘ (G Gᵀ) for linear layers, per-example
  conv gradients — and the hooks that record A and G during the ordinary backward.
- :mod:`~lightning_mem.alignment.metric`: metric key names and the held-out ``torchmetrics.Metric``.
- :mod:`~lightning_mem.alignment.monitor`: :class:`AlignmentMonitor`, the callback that decides when to
  measure and logs (public path :class:`lightning_mem.callbacks.AlignmentMonitor`).
"""

from lightning_mem.alignment.measures import (
    alignment,
    class_alignment,
    gradient_alignment,
    representation_alignment,
)

__all__ = ["alignment", "class_alignment", "gradient_alignment", "representation_alignment"]
