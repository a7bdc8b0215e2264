"""Input transforms: the paper's per-image standardization."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

Normalization = Literal["per_image", "dataset", "none"]


def per_image_standardize(x: Tensor) -> Tensor:
    """tf.image.per_image_standardization: (x − mean(x)) / max(std(x), 1/√d) per image.

    (N, C, H, W) -> float32 (N, C, H, W); mean and population std (ddof 0) over the d = C·H·W
    values of each image, on raw pixel values (TF casts without rescaling).
    """
    flat = x.reshape(len(x), -1).to(torch.float32, copy=True)  # (N, d); a copy, the input stays intact
    std, mean = torch.std_mean(flat, dim=1, keepdim=True, correction=0)
    floor = 1.0 / math.sqrt(flat.shape[1])  # protects constant images
    return flat.sub_(mean).div_(std.clamp_min(floor)).view(x.shape)
