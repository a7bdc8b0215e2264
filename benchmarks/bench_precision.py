"""How much TF32 and 16-bit autocast change φ(W1·x) at the paper's init scales — measured on a CPU.

A CIFAR-shaped batch (B × 3072) of random images, per-image standardized as the paper does, and
W1 ~ N(0, σ²) of shape (1024, 3072); the pre-activation z = x W1ᵀ is computed

- exactly (float64; the reference),
- in FP32 (what the CLI uses by default),
- as TF32 tensor cores do: both inputs rounded to a 10-bit mantissa (round to nearest even), products
  accumulated in FP32,
- as ``bf16-mixed`` / ``16-mixed`` autocast does: both inputs cast to bfloat16 / float16, FP32
  accumulation, the output cast back to 16 bits,

and the table gives max |φ(z) − φ(z_exact)| over the batch for φ ∈ {sin, sigmoid, tanh}. No GPU is
needed: the roundings are emulated bit for bit on the inputs (the accumulation order of a GPU kernel
differs from the CPU's, which is within FP32's own error, the FP32 column).

    python benchmarks/bench_precision.py [--batch 256] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

SIGMAS = (0.01, 0.1, 1.0, 10.0)
ACTIVATIONS = {"sin": torch.sin, "sigmoid": torch.sigmoid, "tanh": torch.tanh}


def per_image_standardize(x: torch.Tensor) -> torch.Tensor:
    """(x − mean) / max(std, 1/√d) per row, as tf.image.per_image_standardization."""
    d = x.shape[1]
    std = x.std(dim=1, keepdim=True, unbiased=False).clamp_min(1.0 / math.sqrt(d))
    return (x - x.mean(dim=1, keepdim=True)) / std


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 -> float32 with the mantissa rounded to 10 bits (nearest, ties to even), as TF32."""
    bits = x.float().contiguous().view(torch.int32)
    drop = 13  # 23 mantissa bits -> 10
    half = 1 << (drop - 1)
    lsb = (bits >> drop) & 1
    rounded = (bits + (half - 1) + lsb) & ~((1 << drop) - 1)
    return rounded.view(torch.float32)


def preactivations(x64: torch.Tensor, w64: torch.Tensor) -> dict[str, torch.Tensor]:
    """z = x Wᵀ in each arithmetic, as float64 for the comparison."""
    x32, w32 = x64.float(), w64.float()
    out = {"exact": x64 @ w64.T, "FP32": (x32 @ w32.T).double(),
           "TF32": (round_to_tf32(x32) @ round_to_tf32(w32).T).double()}
    for name, dtype in (("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16)):
        z = x32.to(dtype).float() @ w32.to(dtype).float().T  # 16-bit inputs, FP32 accumulation
        out[name] = z.to(dtype).double()  # autocast returns the matmul in 16 bits
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    x = per_image_standardize(torch.rand(args.batch, 3 * 32 * 32, dtype=torch.float64))
    w_unit = torch.randn(args.width, x.shape[1], dtype=torch.float64)
    arithmetics = ("FP32", "TF32", "bf16-mixed", "16-mixed")
    print(f"max |φ(W1·x) − exact (float64)|, batch {args.batch} × 3072 per-image-standardized random images, "
          f"W1 ~ N(0, σ²) of shape ({args.width}, 3072), seed {args.seed}\n")
    print("| φ | σ | std of W1·x | " + " | ".join(arithmetics) + " |")
    print("|---|---:|---:|" + "---:|" * len(arithmetics))
    for name, phi in ACTIVATIONS.items():
        for sigma in SIGMAS:
            z = preactivations(x, w_unit * sigma)
            exact = phi(z["exact"])
            errors = [float((phi(z[a]) - exact).abs().max()) for a in arithmetics]
            cells = " | ".join(f"{e:.2g}" for e in errors)
            print(f"| {name} | {sigma:g} | {float(z['exact'].std()):.3g} | {cells} |")
    seconds = time.perf_counter() - start
    print(f"\n{seconds:.1f} s on {torch.get_num_threads()} threads, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
