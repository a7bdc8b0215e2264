"""Data: one DataModule for every dataset, held in memory and served by index gather.

- :mod:`~lightning_mem.data.datamodule`: the dataset table (CIFAR-10/100, SVHN, MNIST, Fashion-MNIST via
  torchvision; the embedded ``mnist5k`` and ``digits``), per-image standardization, random labels with
  their clean/noisy mask, the index-gather loader, and :class:`ImageClassificationData`.
"""

from lightning_mem.data.datamodule import ImageClassificationData
from lightning_mem.data.datasets import DATASETS

__all__ = ["DATASETS", "ImageClassificationData"]
