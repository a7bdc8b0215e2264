"""The training data of K single runs held once: one image table, per-member rows, labels and order.

Single runs that differ in seed differ in their data too: the class-balanced ``train_subset`` is
drawn with the seed, the random labels with the label seed, and the order of every epoch is a
permutation seeded by (seed, epoch). :class:`EnsembleData` keeps one copy of the (normalized) images
and, per member, the rows of its subset, its labels and its clean/noisy mask — (K, n) tensors — and
serves batches (K, B, C, H, W) gathered by index on the device, member k's batch being exactly the
one :class:`~lightning_mem.data.ImageClassificationData` would serve its single run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor

from lightning_mem.data.datamodule import ImageClassificationData
from lightning_mem.data.datasets import DatasetName, balanced_subset
from lightning_mem.data.labels import LabelNoiseMode, corrupt_labels
from lightning_mem.data.loader import TensorBatchLoader
from lightning_mem.data.transforms import Normalization
from lightning_mem.ensemble.stacked import MemberSpec


def member_split(
    clean_labels: Tensor, num_classes: int, seed: int, label_seed: int, train_subset: int | None,
    label_noise: float, label_noise_mode: LabelNoiseMode,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(rows, labels, noisy)`` of one member, as ``ImageClassificationData.setup`` draws them.

    ``rows`` (n,) index the full train split (a class-balanced subset drawn with ``seed``, or all of
    it); ``labels`` (n,) are the labels trained on, random on ``noisy`` (n,) (drawn with ``label_seed``).
    """
    if train_subset is None:
        rows = torch.arange(len(clean_labels))
    else:
        rows = balanced_subset(clean_labels, train_subset, torch.Generator().manual_seed(seed))
    labels, noisy = corrupt_labels(clean_labels[rows], num_classes, label_noise, label_noise_mode, label_seed)
    return rows, labels, noisy


class MemberBatchLoader:
    """Batches ``(x (K, B, *shape), y (K, B), noisy (K, B))``: member k's batch of its single run.

    The order of epoch e for member k is ``TensorBatchLoader.indices(e)`` with k's seed (the single
    run's function, called here); the images are gathered from the one shared table by index, on
    its device. The last batch may be short (no drop_last), as in the single run.
    """

    def __init__(
        self, images: Tensor, rows: Tensor, labels: Tensor, noisy: Tensor, batch_size: int,
        seeds: Sequence[int], epoch_fn: Callable[[], int | None] | None = None,
    ) -> None:
        self.images, self.rows, self.labels, self.noisy = images, rows, labels, noisy
        self.batch_size = batch_size
        n = rows.shape[1]
        # The single run's order: a TensorBatchLoader over n examples with the member's seed.
        self._orders = [TensorBatchLoader((torch.empty(n, 0),), batch_size, shuffle=True, seed=s)
                        for s in seeds]
        self._flat = images.reshape(len(images), -1)  # (N, d): one contiguous row per example
        self.epoch_fn = epoch_fn
        self._iterations = 0

    def __len__(self) -> int:
        return math.ceil(self.rows.shape[1] / self.batch_size)

    def positions(self, epoch: int) -> Tensor:
        """(K, n) positions into each member's rows, in serving order for ``epoch`` (on the rows' device)."""
        return torch.stack([o.indices(epoch) for o in self._orders]).to(self.rows.device)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        if epoch is None:
            epoch = self._iterations
        self._iterations += 1
        pos = self.positions(epoch)
        rows, labels, noisy = (t.gather(1, pos) for t in (self.rows, self.labels, self.noisy))
        K, shape = rows.shape[0], self.images.shape[1:]
        for r, y, m in zip(rows.split(self.batch_size, 1), labels.split(self.batch_size, 1),
                           noisy.split(self.batch_size, 1), strict=True):
            yield self._flat.index_select(0, r.reshape(-1)).view(K, r.shape[1], *shape), y, m


class EnsembleData(LightningDataModule):
    """The data of K single runs that differ only in seed (and label seed), held once.

    Every argument but ``members`` is ``ImageClassificationData``'s and means the same; member k's
    single run is ``ImageClassificationData(..., seed=k.seed, label_seed=k.label_seed)``, kept in
    :attr:`member_data` (not set up: it describes the member's data and checks the arguments).
    Train batches are ``(x, y, noisy)`` with shapes (K, B, C, H, W), (K, B), (K, B); val and test
    batches are the held-out ``(x, y)`` shared by every member. All tensors are moved to the
    trainer's device at setup, so batches are gathered there.
    """

    def __init__(
        self,
        members: Sequence[MemberSpec],
        dataset: DatasetName = "mnist5k",
        data_dir: str = "data",
        download: bool = False,
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        normalization: Normalization = "per_image",
        label_noise: float = 0.0,
        label_noise_mode: LabelNoiseMode = "uniform",
        train_subset: int | None = None,
    ) -> None:
        super().__init__()
        common = dict(dataset=dataset, data_dir=data_dir, download=download, batch_size=batch_size,
                      eval_batch_size=eval_batch_size, normalization=normalization)
        noise = dict(label_noise=label_noise, label_noise_mode=label_noise_mode, train_subset=train_subset)
        self.members = list(members)
        self.member_data = [
            ImageClassificationData(**common, **noise, seed=m.seed, label_seed=m.label_seed)  # type: ignore[arg-type]
            for m in self.members
        ]
        # The full train split with its true labels, and the held-out split: one copy for all members.
        self.shared = ImageClassificationData(**common)  # type: ignore[arg-type]
        self.batch_size, self.label_noise, self.label_noise_mode = batch_size, label_noise, label_noise_mode
        self.train_subset = train_subset
        self.num_classes, self.input_shape = self.shared.num_classes, self.shared.input_shape
        # Set by setup(): rows, labels, noisy (K, n) per member; images and held-out data are shared.
        self.rows: Tensor
        self.labels: Tensor
        self.noisy: Tensor

    def prepare_data(self) -> None:
        self.shared.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        shared = self.shared
        shared.setup(stage)
        n_full, split = len(shared.train_clean_y), f"the {shared.dataset} train split"
        if self.train_subset is not None and self.train_subset > n_full:
            raise ValueError(f"train_subset={self.train_subset} is larger than {split} ({n_full} examples)")
        if self.batch_size > (self.train_subset or n_full):
            raise ValueError(f"batch_size={self.batch_size} is larger than {split} "
                             f"({self.train_subset or n_full} examples); lower --data.batch_size")
        splits = [member_split(shared.train_clean_y, self.num_classes, d.seed, d.label_seed,
                               self.train_subset, self.label_noise, self.label_noise_mode)
                  for d in self.member_data]
        self.rows, self.labels, self.noisy = (torch.stack(t) for t in zip(*splits, strict=True))
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        for name in ("rows", "labels", "noisy"):
            setattr(self, name, getattr(self, name).to(device))
        for name in ("train_x", "val_x", "val_y"):
            setattr(shared, name, getattr(shared, name).to(device))

    def _current_epoch(self) -> int | None:
        return self.trainer.current_epoch if self.trainer is not None else None

    def train_dataloader(self) -> MemberBatchLoader:
        return MemberBatchLoader(self.shared.train_x, self.rows, self.labels, self.noisy, self.batch_size,
                                 [d.seed for d in self.member_data], epoch_fn=self._current_epoch)

    def val_dataloader(self) -> TensorBatchLoader:
        return self.shared.val_dataloader()

    def test_dataloader(self) -> TensorBatchLoader:
        return self.shared.val_dataloader()
