"""Tests of lightning_mem.data: real torchvision classes on tiny files in their real on-disk formats,
the embedded datasets, preprocessing against numpy, random labels, the index-gather loader, bad input."""

from __future__ import annotations

import functools
import math
import pickle
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets

from lightning_mem.data import datamodule as data_mod
from lightning_mem.data.datamodule import ImageClassificationData
from lightning_mem.data.datasets import DATASETS, DatasetName, balanced_subset
from lightning_mem.data.labels import corrupt_labels
from lightning_mem.data.loader import IndexBlock, TensorBatchLoader
from lightning_mem.data.transforms import per_image_standardize

# (train_x uint8 (N, C, H, W), train_y, test_x, test_y) as written to disk
Expected = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


# ---------------------------------------------------------------- fake files in the real formats


def _images(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _write_cifar(root: Path, folder: str, train_files: list[str], test_file: str, meta: tuple[str, str],
                 label_key: str, k: int) -> Expected:
    rng = np.random.default_rng(0)
    (root / folder).mkdir(parents=True)
    out: list[np.ndarray] = []
    for files in (train_files, [test_file]):
        xs, ys = [], []
        for name in files:
            x = _images(rng, 4, (3, 32, 32))  # CIFAR stores rows of 3072 bytes in CHW order
            y = rng.integers(0, k, size=4)
            entry = {"data": x.reshape(4, 3072), label_key: y.tolist(), "coarse_labels": [0] * 4}
            (root / folder / name).write_bytes(pickle.dumps(entry))
            xs.append(x)
            ys.append(y)
        out += [np.concatenate(xs), np.concatenate(ys)]
    (root / folder / meta[0]).write_bytes(pickle.dumps({meta[1]: [f"class{i}" for i in range(k)]}))
    return out[0], out[1], out[2], out[3]


def write_cifar10(root: Path) -> Expected:
    train = [f"data_batch_{i}" for i in range(1, 6)]
    return _write_cifar(root, "cifar-10-batches-py", train, "test_batch", ("batches.meta", "label_names"),
                        "labels", 10)


def write_cifar100(root: Path) -> Expected:
    return _write_cifar(root, "cifar-100-python", ["train"], "test", ("meta", "fine_label_names"),
                        "fine_labels", 100)


def write_svhn(root: Path) -> Expected:
    rng = np.random.default_rng(1)
    (root / "svhn").mkdir(parents=True)
    out: list[np.ndarray] = []
    for name, n in (("train_32x32.mat", 12), ("test_32x32.mat", 5)):
        x = _images(rng, n, (3, 32, 32))  # NCHW, what we expect back
        digit = np.arange(n) % 10
        y = np.where(digit == 0, 10, digit).astype(np.uint8)[:, None]  # (N, 1); SVHN writes digit 0 as 10
        scipy.io.savemat(root / "svhn" / name, {"X": x.transpose(2, 3, 1, 0), "y": y})  # X: (H, W, C, N)
        out += [x, digit]
    return out[0], out[1], out[2], out[3]


def _write_idx(path: Path, arr: np.ndarray) -> None:
    # IDX: magic 0x00 0x00 0x08 (uint8) ndim, then each dim as a big-endian int32, then the bytes.
    path.write_bytes(struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
                     + arr.tobytes())


def _write_mnist_like(root: Path, folder: str) -> Expected:
    rng = np.random.default_rng(2)
    raw = root / folder / "raw"  # torchvision reads <root>/<ClassName>/raw/<file>, uncompressed
    raw.mkdir(parents=True)
    out: list[np.ndarray] = []
    for split, n in (("train", 10), ("t10k", 4)):
        x = _images(rng, n, (28, 28))
        y = (np.arange(n) % 10).astype(np.uint8)
        _write_idx(raw / f"{split}-images-idx3-ubyte", x)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", y)
        out += [x[:, None], y.astype(np.int64)]
    return out[0], out[1], out[2], out[3]


WRITERS: dict[str, Callable[[Path], Expected]] = {
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
    "svhn": write_svhn,
    "mnist": lambda root: _write_mnist_like(root, "MNIST"),
    "fashion_mnist": lambda root: _write_mnist_like(root, "FashionMNIST"),
}


@pytest.fixture
def no_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip the md5 checks of the real files, as torchvision's own tests do."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    for cls in (torchvision.datasets.CIFAR10, torchvision.datasets.CIFAR100, torchvision.datasets.SVHN):
        monkeypatch.setattr(cls, "_check_integrity", lambda self: True)


# ---------------------------------------------------------------- the table and the real classes


def test_table_matches_literal_and_shapes() -> None:
    assert set(DATASETS) == set(get_args(DatasetName))
    assert all(spec.name == name for name, spec in DATASETS.items())
    shapes = {name: spec.input_shape for name, spec in DATASETS.items()}
    assert shapes == {"mnist5k": (1, 28, 28), "digits": (1, 8, 8), "mnist": (1, 28, 28),
                      "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32),
                      "svhn": (3, 32, 32)}
    dm = ImageClassificationData("cifar100", data_dir="/nonexistent")  # known before setup, no files read
    assert (dm.num_classes, dm.input_shape) == (100, (3, 32, 32))


@pytest.mark.usefixtures("no_md5")
@pytest.mark.parametrize("name", list(WRITERS))
def test_torchvision_dataset_loads_real_format(name: DatasetName, tmp_path: Path) -> None:
    train_x, train_y, test_x, test_y = WRITERS[name](tmp_path)
    dm = ImageClassificationData(name, data_dir=str(tmp_path), batch_size=2, normalization="none")
    dm.setup("fit")
    c, h, w = DATASETS[name].input_shape
    assert dm.train_x.shape == (len(train_y), c, h, w) and dm.train_x.dtype == torch.float32
    assert dm.val_x.shape == (len(test_y), c, h, w)
    assert dm.train_y.dtype == torch.int64 and dm.train_noisy.dtype == torch.bool
    # Pixel-exact, in (N, C, H, W) order: the layout conversion of each class is right.
    assert torch.equal((dm.train_x * 255).round().to(torch.uint8), torch.from_numpy(train_x))
    assert torch.equal((dm.val_x * 255).round().to(torch.uint8), torch.from_numpy(test_x))
    assert torch.equal(dm.train_y, torch.from_numpy(train_y).long())
    assert torch.equal(dm.val_y, torch.from_numpy(test_y).long())
    assert torch.equal(torch.bincount(dm.train_y, minlength=dm.num_classes),
                       torch.from_numpy(np.bincount(train_y, minlength=dm.num_classes)))
    assert not dm.train_noisy.any()
    x, y, noisy = next(iter(dm.train_dataloader()))
    assert x.shape == (2, c, h, w) and y.shape == (2,) and noisy.shape == (2,)


@pytest.mark.usefixtures("no_md5")
def test_svhn_label_10_means_digit_0(tmp_path: Path) -> None:
    write_svhn(tmp_path)
    dm = ImageClassificationData("svhn", data_dir=str(tmp_path), batch_size=2)
    dm.setup()
    assert dm.train_y.min() == 0 and dm.train_y.max() == 9
    assert torch.equal(dm.train_y, torch.arange(12) % 10)


# ---------------------------------------------------------------- embedded datasets


def test_mnist5k_fixed_class_balanced_split() -> None:
    dm = ImageClassificationData("mnist5k", normalization="none", seed=0)
    dm.setup()
    assert dm.train_x.shape == (4000, 1, 28, 28) and dm.val_x.shape == (1000, 1, 28, 28)
    assert torch.equal(torch.bincount(dm.train_y), torch.full((10,), 400))
    assert torch.equal(torch.bincount(dm.val_y), torch.full((10,), 100))
    assert dm.train_x.min() == 0.0 and dm.train_x.max() == 1.0  # real digits: black background, white ink
    assert 0.05 < dm.train_x.mean() < 0.25
    other = ImageClassificationData("mnist5k", normalization="none", seed=7)  # held-out does not move
    other.setup()
    assert torch.equal(other.val_x, dm.val_x) and torch.equal(other.val_y, dm.val_y)
    # Disjoint: no held-out image appears in the train split.
    train_rows = {bytes(r) for r in (dm.train_x * 255).round().to(torch.uint8).flatten(1).numpy()}
    val_rows = [bytes(r) for r in (dm.val_x * 255).round().to(torch.uint8).flatten(1).numpy()]
    assert not any(r in train_rows for r in val_rows)


def test_digits_loads() -> None:
    dm = ImageClassificationData("digits", normalization="none")
    dm.setup()
    assert dm.train_x.shape == (1437, 1, 8, 8) and dm.val_x.shape == (360, 1, 8, 8)
    assert torch.equal(torch.bincount(dm.val_y), torch.full((10,), 36))
    assert dm.train_x.max() == 1.0 and dm.train_x.min() == 0.0  # pixel values 0..16 divided by 16


def test_balanced_subset() -> None:
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 5)
    idx = balanced_subset(labels, 31, torch.Generator().manual_seed(0))
    assert torch.equal(idx, torch.unique(idx))  # sorted, no repeats
    assert torch.bincount(labels[idx]).tolist() == [13, 13, 5]  # class 2 runs out; the rest share evenly
    assert torch.equal(idx, balanced_subset(labels, 31, torch.Generator().manual_seed(0)))
    assert not torch.equal(idx, balanced_subset(labels, 31, torch.Generator().manual_seed(1)))


# ---------------------------------------------------------------- preprocessing


def _np_per_image(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1).astype(np.float64)
    std = np.maximum(flat.std(axis=1, ddof=0, keepdims=True), 1.0 / np.sqrt(flat.shape[1]))
    return ((flat - flat.mean(axis=1, keepdims=True)) / std).reshape(x.shape)


def test_per_image_standardization_matches_formula() -> None:
    raw = ImageClassificationData("digits", normalization="none")
    raw.setup()
    pixels = (raw.train_x[:3] * 16).round().to(torch.uint8)
    std = ImageClassificationData("digits")  # default: per_image
    std.setup()
    np.testing.assert_allclose(std.train_x[:3].numpy(), _np_per_image(pixels.numpy()), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(per_image_standardize(pixels).numpy(), _np_per_image(pixels.numpy()),
                               rtol=1e-5, atol=1e-5)
    assert torch.allclose(std.train_x.flatten(1).mean(1), torch.zeros(1437), atol=1e-5)


def test_per_image_floor_on_flat_images() -> None:
    constant = torch.full((1, 3, 4, 4), 7, dtype=torch.uint8)
    assert torch.equal(per_image_standardize(constant), torch.zeros(1, 3, 4, 4))  # no NaN: 0 / (1/√48)
    near = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    near[0, 0, 0, 0] = 1  # std = √15/16 ≈ 0.242 < 1/√16 = 0.25: the floor decides
    out = per_image_standardize(near)
    np.testing.assert_allclose(out.numpy(), _np_per_image(near.numpy()), rtol=1e-6)
    assert out[0, 0, 0, 0].item() == pytest.approx((1 - 1 / 16) / 0.25)
    floats = near.float()
    assert torch.equal(per_image_standardize(floats), out) and floats.max() == 1.0  # float input not modified


def test_dataset_normalization_uses_train_statistics() -> None:
    dm = ImageClassificationData("digits", normalization="dataset")
    dm.setup()
    assert dm.train_x.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert dm.train_x.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    assert abs(dm.val_x.mean().item()) < 0.1  # held-out uses the train statistics, so only close to 0


# ---------------------------------------------------------------- random labels


@pytest.mark.parametrize("mode", ["uniform", "shuffle"])
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 1.0])
def test_corrupt_labels_exact_fraction_and_determinism(mode: str, fraction: float) -> None:
    clean = torch.arange(4001) % 10
    new, chosen = corrupt_labels(clean, 10, fraction, mode, seed=3)  # type: ignore[arg-type]
    assert int(chosen.sum()) == round(fraction * 4001)
    assert torch.equal(new[~chosen], clean[~chosen])  # only chosen labels may change
    again, chosen_again = corrupt_labels(clean, 10, fraction, mode, seed=3)  # type: ignore[arg-type]
    assert torch.equal(again, new) and torch.equal(chosen_again, chosen)
    assert torch.equal(clean, torch.arange(4001) % 10)  # input untouched
    if mode == "shuffle":
        assert torch.equal(torch.bincount(new), torch.bincount(clean))
    if fraction >= 0.1:
        changed = int((new != clean).sum())
        assert 0.8 * chosen.sum() < changed <= chosen.sum()  # ~90% of random classes differ from the truth
        other, _ = corrupt_labels(clean, 10, fraction, mode, seed=4)  # type: ignore[arg-type]
        assert not torch.equal(other, new)


def test_label_noise_in_datamodule() -> None:
    clean = ImageClassificationData("mnist5k", seed=5)
    clean.setup()
    state = torch.get_rng_state()
    dm = ImageClassificationData("mnist5k", label_noise=0.3, label_noise_mode="shuffle", seed=5)
    dm.setup()
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never used
    assert int(dm.train_noisy.sum()) == 1200
    assert torch.equal(dm.train_clean_y, clean.train_y)
    assert torch.equal(dm.val_y, clean.val_y)  # held-out labels untouched
    assert torch.equal(torch.bincount(dm.train_y), torch.bincount(clean.train_y))
    assert torch.equal(dm.train_y[~dm.train_noisy], clean.train_y[~dm.train_noisy])
    same = ImageClassificationData("mnist5k", label_noise=0.3, label_noise_mode="shuffle", label_seed=5)
    same.setup()  # label_seed=None falls back to seed
    assert torch.equal(same.train_y, dm.train_y)
    other = ImageClassificationData("mnist5k", label_noise=0.3, label_noise_mode="shuffle", label_seed=6)
    other.setup()
    assert not torch.equal(other.train_y, dm.train_y)
    _, _, noisy = next(iter(dm.train_dataloader()))
    assert noisy.dtype == torch.bool


def test_train_subset_before_noise() -> None:
    dm = ImageClassificationData("mnist5k", train_subset=100, batch_size=10, label_noise=0.25, seed=1)
    dm.setup()
    assert dm.train_x.shape == (100, 1, 28, 28)
    assert torch.equal(torch.bincount(dm.train_clean_y), torch.full((10,), 10))
    assert int(dm.train_noisy.sum()) == 25
    assert dm.val_x.shape[0] == 1000  # held-out is never subset
    full = ImageClassificationData("mnist5k", seed=1)
    full.setup()
    assert torch.equal(full.train_x[dm.train_indices], dm.train_x)


# ---------------------------------------------------------------- the loader


def _order(loader: TensorBatchLoader) -> torch.Tensor:
    return torch.cat([batch[0] for batch in loader])


def test_loader_covers_every_index_once_per_epoch() -> None:
    loader = TensorBatchLoader((torch.arange(50),), batch_size=7, shuffle=True, seed=1)
    sizes = [len(b[0]) for b in loader]
    assert len(loader) == 8 and sizes == [7] * 7 + [1]  # drop_last False
    for _ in range(3):
        order = _order(loader)
        assert torch.equal(torch.sort(order).values, torch.arange(50))
        assert not torch.equal(order, torch.arange(50))


def test_loader_order_is_a_function_of_seed_and_epoch() -> None:
    data = (torch.arange(100),)
    counting = TensorBatchLoader(data, 16, shuffle=True, seed=2)
    it = iter(counting)  # iter() alone, as Lightning's check does, must not advance the epoch
    del it
    epochs = [_order(counting) for _ in range(3)]  # epochs 0, 1, 2 by counting
    for e in range(3):
        fixed = TensorBatchLoader(data, 16, shuffle=True, seed=2, epoch_fn=functools.partial(int, e))
        assert torch.equal(_order(fixed), epochs[e]) and torch.equal(_order(fixed), epochs[e])
    assert not torch.equal(epochs[0], epochs[1])
    other_seed = TensorBatchLoader(data, 16, shuffle=True, seed=3, epoch_fn=lambda: 0)
    assert not torch.equal(_order(other_seed), epochs[0])
    assert torch.equal(_order(TensorBatchLoader(data, 16)), torch.arange(100))  # eval: no shuffle


def test_loader_gathers_aligned_rows() -> None:
    x = torch.arange(30.0).view(10, 1, 3)[:, :, None, :].expand(10, 2, 2, 3)  # (10, 2, 2, 3), row i ~ i
    y = torch.arange(10)
    for xb, yb in TensorBatchLoader((x, y), 4, shuffle=True, seed=0):
        assert xb.shape[1:] == (2, 2, 3)
        assert torch.equal(xb, x[yb])


@pytest.mark.parametrize("n", [48, 50])
def test_loader_ddp_shards(n: int) -> None:
    world = 3
    shards = [_order(TensorBatchLoader((torch.arange(n),), 5, shuffle=True, seed=4, epoch_fn=lambda: 1,
                                       rank=r, world_size=world)) for r in range(world)]
    per_rank = math.ceil(n / world)
    assert [len(s) for s in shards] == [per_rank] * world
    everything = torch.cat(shards)
    assert torch.equal(torch.unique(everything), torch.arange(n))  # every example served
    assert len(everything) - n == per_rank * world - n  # repeats only from wrap-around padding
    if n % world == 0:
        assert len(torch.unique(everything)) == len(everything)  # disjoint
    single = _order(TensorBatchLoader((torch.arange(n),), 5, shuffle=True, seed=4, epoch_fn=lambda: 1))
    # Rank r takes every world-th index of one shared permutation.
    assert torch.equal(shards[0][: n // world], single[0 : 3 * (n // world) : 3])


def test_loader_serves_the_plan_in_the_ordinary_order() -> None:
    data = ImageClassificationData("digits", batch_size=64)
    data.setup()
    loader = data.train_dataloader()  # no trainer: no module to ask, one batch per step
    loader.epoch_fn = lambda: 0  # both passes below serve epoch 0
    assert loader.block_plan is None and len(loader) == 23
    batches = list(loader)
    asked: list[list[int]] = []
    loader.block_plan = lambda sizes: asked.append(sizes) or [(5, False), (1, True), (16, False), (1, False)]
    with pytest.raises(TypeError, match="has no fixed number of batches per epoch"):
        len(loader)
    grouped = list(loader)
    assert asked == [[64] * 22 + [29]]
    assert [len(g.idx) if isinstance(g, IndexBlock) else 1 for g in grouped] == [5, 1, 16, 1]
    i = 0
    for group in grouped:
        if isinstance(group, IndexBlock):
            assert group.source is loader
            for rows in group.idx:  # each row gathers exactly the ordinary batch
                assert torch.equal(data.train_x[rows], batches[i][0])
                assert torch.equal(data.train_y[rows], batches[i][1])
                i += 1
        else:  # an eager group is the ordinary batch itself
            assert all(torch.equal(a, b) for a, b in zip(group, batches[i], strict=True))
            i += 1
    assert i == len(batches) == 23


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ([(5, False)], r"block_plan returned \[\(5, False\)\] for 23 batches: groups must cover them"),
        ([(23, False)], r"block_plan group \(23, False\) at batch 0 mixes batch sizes"),
        ([(2, True), (21, False)], r"block_plan group \(2, True\) at batch 0 .* more than one eager batch"),
    ],
)
def test_loader_rejects_a_plan_that_does_not_fit(plan: list[tuple[int, bool]], message: str) -> None:
    data = ImageClassificationData("digits", batch_size=64)
    data.setup()
    loader = data.train_dataloader()
    loader.block_plan = lambda sizes: plan
    with pytest.raises(ValueError, match=message):
        list(loader)


def test_dataloaders_and_batch_structure() -> None:
    dm = ImageClassificationData("digits", batch_size=100)
    with pytest.raises(RuntimeError, match="call setup"):
        dm.train_dataloader()
    dm.setup()
    train = dm.train_dataloader()
    assert len(train) == math.ceil(1437 / 100)
    x, y, noisy = next(iter(train))
    assert x.shape == (100, 1, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and noisy.dtype == torch.bool
    val = dm.val_dataloader()
    assert val.batch_size == 1024 and len(val) == 1  # eval default: max(batch_size, 1024)
    batch = next(iter(dm.test_dataloader()))
    assert len(batch) == 2 and torch.equal(batch[1], dm.val_y)
    x_before = dm.train_x
    dm.setup("test")  # repeated setup does not reload or reprocess
    assert dm.train_x is x_before


@pytest.mark.usefixtures("no_md5")
def test_prepare_data_loads_once_and_setup_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10(tmp_path)  # present: torchvision's download() returns early, nothing is fetched
    calls: list[bool] = []
    real = data_mod.load_raw

    def counting(spec: data_mod.DatasetSpec, data_dir: str, download: bool = False) -> data_mod.RawSplits:
        calls.append(download)
        return real(spec, data_dir, download)

    monkeypatch.setattr(data_mod, "load_raw", counting)
    dm = ImageClassificationData("cifar10", data_dir=str(tmp_path), download=True, batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("validate")
    assert calls == [True] and dm.train_x.shape == (20, 3, 32, 32)


def test_trainer_epochs_drive_the_order() -> None:
    import lightning.pytorch as pl

    class Recorder(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(64, 10)
            self.seen: list[tuple[int, torch.Tensor]] = []

        def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
            x, y, _ = batch
            self.seen.append((self.current_epoch, y.clone()))
            return torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    dm = ImageClassificationData("digits", batch_size=512, seed=3, preload_to_device=True)
    model = Recorder()
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(model, datamodule=dm)
    assert [e for e, _ in model.seen] == [0, 0, 0, 1, 1, 1]
    for epoch in (0, 1):
        expected = dm.train_y[TensorBatchLoader((dm.train_y,), 512, shuffle=True, seed=3).indices(epoch)]
        assert torch.equal(torch.cat([y for e, y in model.seen if e == epoch]), expected)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset": "imagenet"}, "dataset='imagenet' is not supported; allowed: mnist5k, digits, mnist"),
        ({"label_noise": 1.5}, r"label_noise=1.5 must be a fraction in \[0, 1\]"),
        ({"label_noise": -0.1}, r"label_noise=-0.1 must be a fraction in \[0, 1\]"),
        ({"label_noise": float("nan")}, r"label_noise=nan must be a fraction in \[0, 1\]"),
        ({"label_noise_mode": "flip"}, "label_noise_mode='flip' is not supported; allowed: uniform, shuffle"),
        ({"normalization": "zscore"}, "normalization='zscore' is not supported; allowed: per_image, dataset"),
        ({"batch_size": 0}, "batch_size=0 must be an integer >= 1"),
        ({"eval_batch_size": -4}, "eval_batch_size=-4 must be an integer >= 1"),
        ({"train_subset": 0}, "train_subset=0 must be an integer >= 1"),
        ({"seed": -1}, "seed=-1 must be an integer >= 0"),
    ],
)
def test_bad_arguments_raise_in_init(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ImageClassificationData(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 5000}, r"batch_size=5000 is larger than the digits train split \(1437 examples\)"),
        ({"train_subset": 2000}, r"train_subset=2000 is larger than the digits train split \(1437 exa"),
        ({"train_subset": 100}, r"batch_size=256 is larger than the digits train split \(100 examples\)"),
    ],
)
def test_sizes_checked_at_setup(kwargs: dict[str, object], message: str) -> None:
    dm = ImageClassificationData("digits", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        dm.setup()


@pytest.mark.parametrize("name", list(WRITERS))
def test_missing_files_name_folder_and_flag(name: DatasetName, tmp_path: Path) -> None:
    folder = tmp_path.resolve() / DATASETS[name].folder  # type: ignore[operator]
    dm = ImageClassificationData(name, data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=re.escape(str(folder)) + ".*--data.download true"):
        dm.setup()


def test_partly_missing_files_are_listed(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    dm = ImageClassificationData("cifar10", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"lacks data_batch_3\. Pass --data.download true"):
        dm.setup()


def test_corrupt_files_name_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10(tmp_path)  # all present, but not the real bytes: the md5 check fails
    folder = re.escape(str(tmp_path.resolve() / "cifar-10-batches-py"))
    with pytest.raises(ValueError, match=f"the files in {folder} are corrupt or unreadable"):
        ImageClassificationData("cifar10", data_dir=str(tmp_path)).setup()
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"not a pickle")
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    with pytest.raises(ValueError, match=f"{folder} are corrupt or unreadable .*UnpicklingError"):
        ImageClassificationData("cifar10", data_dir=str(tmp_path)).setup()
    _write_mnist_like(tmp_path, "MNIST")  # MNIST has no md5: a truncated file fails in the parser
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:500])
    with pytest.raises(ValueError, match=re.escape(str(images.parent.resolve())) + " are corrupt"):
        ImageClassificationData("mnist", data_dir=str(tmp_path)).setup()


@pytest.mark.usefixtures("no_md5")
def test_wrong_shapes_are_reported(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 4), ("t10k", 2)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", np.zeros((n, 16, 16), np.uint8))
        _write_idx(raw / f"{split}-labels-idx1-ubyte", np.zeros(n, np.uint8))
    message = r"corrupt: images \(4, 1, 16, 16\) torch.uint8, 4 labels; expected uint8 \(N, 1, 28"
    with pytest.raises(ValueError, match=message):
        ImageClassificationData("mnist", data_dir=str(tmp_path), batch_size=2).setup()


def test_failed_download_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self: object) -> None:
        raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    dm = ImageClassificationData("cifar10", data_dir=str(tmp_path), download=True)
    with pytest.raises(RuntimeError, match=r"downloading into .*cifar-10-batches-py failed .*no network"):
        dm.prepare_data()
