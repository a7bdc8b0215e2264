"""Tier 1: metric keys, the held-out ClassAlignment metric, shard bookkeeping and the row buffer."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

from lightning_mem.alignment.grams import gram
from lightning_mem.alignment.measures import PerClass, class_alignment, class_measures_from_gram
from lightning_mem.alignment.metric import ClassAlignment, DeviceRows, Row, flatten_measures, shard_take
from lightning_mem.metric_keys import metric_key
from tests.alignment.test_monitor import RecordingLogger


@pytest.mark.parametrize(
    "args, key",
    [
        (("alignment", "hidden.weight"), "align/grad/hidden.weight"),
        (("alignment", "logits", 3), "align/grad/logits/class_3"),
        (("alignment", "rep:act"), "align/rep/act"),
        (("alignment", "rep:features.7", None, "val/"), "val/align/rep/features.7"),
        (("confusion", "conv1.bias", 0), "confusion/grad/conv1.bias/class_0"),
        (("diversity", "logits"), "diversity/grad/logits"),
    ],
)
def test_metric_key(args: tuple, key: str) -> None:
    assert metric_key(*args) == key


def test_flatten_measures_orders_keys_and_values_alike() -> None:
    g = torch.Generator().manual_seed(0)
    K = torch.stack([gram(torch.randn(6, 4, generator=g), torch.float64) for _ in range(2)])
    labels = torch.tensor([0, 0, 1, 1, 1, 2])  # class 2: one example, NaN
    stats = class_measures_from_gram(K, labels, 3, ("alignment", "stiffness"))
    keys, values = flatten_measures(stats, ["w", "rep:h"], per_class=True)
    assert keys == [
        "align/grad/w", "align/grad/w/class_0", "align/grad/w/class_1", "align/grad/w/class_2",
        "align/rep/h", "align/rep/h/class_0", "align/rep/h/class_1", "align/rep/h/class_2",
        "stiffness/grad/w", *(f"stiffness/grad/w/class_{c}" for c in range(3)),
    ]  # no stiffness for the representation
    a, s = stats["alignment"], stats["stiffness"]
    want = [a.mean[0], *a.values[0], a.mean[1], *a.values[1], s.mean[0], *s.values[0]]
    torch.testing.assert_close(values, torch.stack(want), equal_nan=True)
    keys, values = flatten_measures(stats, ["w"], per_class=False, prefix="val/")
    assert keys == ["val/align/grad/w", "val/stiffness/grad/w"] and values.shape == (2,)


def test_class_alignment_metric_equals_the_gram_of_all_batches() -> None:
    g = torch.Generator().manual_seed(1)
    h, y = torch.randn(50, 3, 2, generator=g) + 0.3, torch.randint(0, 4, (50,), generator=g)
    metric = ClassAlignment(num_classes=5)
    for lo, hi in ((0, 17), (17, 17), (17, 50)):  # an empty batch too
        metric.update(h[lo:hi], y[lo:hi])
    got, want = metric.compute(), class_alignment(h, y, 5)
    assert got.present.tolist() == [True, True, True, True, False]
    torch.testing.assert_close(got.values, want.values, rtol=1e-10, atol=1e-12, equal_nan=True)
    torch.testing.assert_close(got.mean, want.mean, rtol=1e-10, atol=1e-12)
    metric.reset()
    metric.update(h[:10], y[:10])
    torch.testing.assert_close(metric.compute().mean, class_alignment(h[:10], y[:10], 5).mean)


def test_class_alignment_metric_discovers_classes_and_ignores_others() -> None:
    g = torch.Generator().manual_seed(2)
    h = torch.randn(30, 4, generator=g)
    y = torch.tensor([0, 1] * 5 + [0, 1, 2] * 5 + [3] * 5)
    found = ClassAlignment()
    found.update(h[:10], y[:10])  # classes 0, 1 only so far
    found.update(h[10:], y[10:])
    torch.testing.assert_close(found.compute().values, class_alignment(h, y).values, rtol=1e-10, atol=1e-12)
    first_two = ClassAlignment(num_classes=2)
    first_two.update(h, y)
    keep = y < 2
    torch.testing.assert_close(first_two.compute().mean, class_alignment(h[keep], y[keep], 2).mean)
    with pytest.raises(ValueError, match="num_classes=0 must be an integer >= 1"):
        ClassAlignment(num_classes=0)


@pytest.mark.parametrize("n, world, limit, batch", [(10, 1, 4, 3), (7, 3, 5, 2), (7, 3, 100, 2), (9, 2, 0, 4),
                                                    (5, 4, 5, 1), (4, 3, 2, 1)])
def test_shard_take_picks_the_first_examples_of_the_split(n: int, world: int, limit: int, batch: int) -> None:
    # Each rank serves its shard as Lightning's unpadded sampler lays it out; together the ranks
    # must take exactly the first min(limit, n) examples of the split, each once.
    taken: list[int] = []
    for rank in range(world):
        shard = list(UnrepeatedDistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False))
        seen = 0
        for lo in range(0, len(shard), batch):
            chunk = shard[lo : lo + batch]
            taken += chunk[: shard_take(limit, rank, world, seen, len(chunk))]
            seen += len(chunk)
    assert sorted(taken) == list(range(min(limit, n)))


def test_device_rows_log_each_row_at_its_step_with_its_epoch() -> None:
    logger = RecordingLogger()
    trainer = L.Trainer(logger=logger, accelerator="cpu", devices=1, enable_progress_bar=False)
    rows = DeviceRows()
    rows.append(Row(3, 0, ["a", "b"], torch.tensor([0.5, math.nan], dtype=torch.float64)))
    rows.append(Row(7, 1, ["a"], torch.tensor([math.nan], dtype=torch.float64)))  # nothing left: no row
    rows.append(Row(9, 1, ["a", "c"], torch.tensor([0.25, -1.0], dtype=torch.float64)))
    assert len(rows) == 3
    rows.flush(trainer)
    assert len(rows) == 0
    assert logger.calls == [({"a": 0.5, "epoch": 0}, 3), ({"a": 0.25, "c": -1.0, "epoch": 1}, 9)]
    assert rows.last == {"a": 0.25, "c": -1.0}
    rows.flush(trainer)  # empty: no call
    assert len(logger.calls) == 2


def test_per_class_result_is_a_named_tuple_of_values_present_and_mean() -> None:
    result = ClassAlignment(num_classes=2)
    result.update(torch.eye(3), torch.tensor([0, 0, 1]))
    out = result.compute()
    assert isinstance(out, PerClass) and out.values.shape == (2,) and out.present.tolist() == [True, False]
