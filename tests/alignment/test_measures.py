"""Tier 1: the alignment math against O(n²) definitions and a per-example autograd loop."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mem.alignment.grams import gram
from lightning_mem.alignment.measures import (
    MEASURES,
    alignment,
    class_alignment,
    class_alignment_from_sums,
    class_indicator,
    class_measures_from_gram,
    class_sums,
    gradient_alignment,
    representation_alignment,
)
from lightning_mem.nets import ACTIVATIONS, ConvNet, ScaledMLP
from lightning_mem.training.losses import LOSSES

# ----------------------------------------------------------------------------- references


def omega_pairwise(vectors: list[Tensor]) -> float:
    """The definition, literally: Σ_{i≠j} ⟨v_i, v_j⟩ / (n (n−1) m²), m = mean ‖v_i‖ (0 -> 1)."""
    v = [x.double().flatten() for x in vectors]
    n = len(v)
    off = sum(float(v[i] @ v[j]) for i in range(n) for j in range(n) if i != j)
    m = sum(float(x.norm()) for x in v) / n
    return off / (n * (n - 1) * (m if m > 0 else 1.0) ** 2)


def measures_pairwise(vectors: list[Tensor]) -> dict[str, float]:
    v = [x.double().flatten() for x in vectors]
    pairs = [(i, j) for i in range(len(v)) for j in range(len(v)) if i != j]
    cos = [float(v[i] @ v[j] / (v[i].norm() * v[j].norm())) for i, j in pairs]
    return {
        "alignment": omega_pairwise(vectors),
        "diversity": float(sum(x.norm() ** 2 for x in v) / torch.stack(v).sum(0).norm() ** 2),
        "stiffness": sum(cos) / len(cos),
        "confusion": min(float(v[i] @ v[j]) for i, j in pairs),
    }


def reference_alignment(
    model: nn.Module, loss_fn, x: Tensor, y: Tensor, num_classes: int
) -> dict[str, float]:
    """The paper's reference-code approach: one autograd.grad per example, then the pairwise Ω per class."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    per_example: dict[str, list[Tensor]] = {n: [] for n in [*names, "logits"]}
    for i in range(len(y)):
        logits = model(x[i : i + 1])
        grads = torch.autograd.grad(loss_fn(logits, y[i : i + 1]).sum(), [logits, *params])
        for name, g in zip(["logits", *names], grads, strict=True):
            per_example[name].append(g)
    out = {}
    for name, vecs in per_example.items():
        per_class = {
            c: omega_pairwise([vecs[i] for i in range(len(y)) if y[i] == c])
            for c in range(num_classes)
            if int((y == c).sum()) >= 2
        }
        out[name] = sum(per_class.values()) / len(per_class)
        out |= {f"{name}/class_{c}": v for c, v in per_class.items()}
    return out


def assert_close_dicts(
    got: dict[str, float], want: dict[str, float], rtol: float, atol: float = 1e-12
) -> None:
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=rtol, abs=atol), key


# ----------------------------------------------------------------------------- Ω itself


def test_alignment_equals_pairwise_definition() -> None:
    v = torch.randn(7, 3, 5, generator=torch.Generator().manual_seed(0))
    assert float(alignment(v)) == pytest.approx(omega_pairwise(list(v)), rel=1e-12)


def test_alignment_is_invariant_to_rescaling_and_one_for_identical_vectors() -> None:
    v = torch.randn(6, 11, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert float(alignment(37.5 * v)) == pytest.approx(float(alignment(v)), rel=1e-12)
    assert float(alignment(1e-3 * v)) == pytest.approx(float(alignment(v)), rel=1e-12)
    assert float(alignment(v[:1].expand(5, -1))) == pytest.approx(1.0, rel=1e-12)


def test_alignment_hand_computed_values() -> None:
    # Orthogonal unit vectors: no off-diagonal mass.
    assert float(alignment(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))) == 0.0
    # (1,0), (1,1): Σ_{i≠j} = 2, m = (1+√2)/2 -> Ω = 2 / (2 m²) = 4 / (3 + 2√2).
    assert float(alignment(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))) == pytest.approx(
        4 / (3 + 2 * math.sqrt(2))
    )
    # (1,0), (−1,0), (0,2): Σ_{i≠j} = −2, m = 4/3 -> Ω = −2 / (6 · 16/9) = −0.1875.
    assert float(alignment(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]]))) == pytest.approx(-0.1875)


def test_alignment_zero_norm_guard_and_too_few_vectors() -> None:
    assert float(alignment(torch.zeros(4, 3))) == 0.0  # m = 0 -> 1, not 0/0
    assert float(alignment(torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0]]))) == 0.0
    with pytest.raises(ValueError, match="at least 2 vectors, got 1"):
        alignment(torch.ones(1, 3))


def test_alignment_runs_in_fp64_under_tf32_setting() -> None:
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        v = torch.randn(5, 8, generator=torch.Generator().manual_seed(2))
        assert alignment(v).dtype == torch.float64
        assert float(alignment(v)) == pytest.approx(omega_pairwise(list(v)), rel=1e-12)
    finally:
        torch.set_float32_matmul_precision(previous)


def test_class_alignment_reports_missing_classes_and_leaves_them_out_of_the_mean() -> None:
    v = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 2, 0, 1, 2, 2])  # class 1 has one example, class 3 none
    result = class_alignment(v, labels, num_classes=4)
    assert result.present.tolist() == [True, False, True, False]
    assert torch.isnan(result.values[1]) and torch.isnan(result.values[3])
    omega0, omega2 = float(alignment(v[[0, 2]])), float(alignment(v[[1, 4, 5]]))
    assert result.values[0].item() == pytest.approx(omega0, rel=1e-12)
    assert result.values[2].item() == pytest.approx(omega2, rel=1e-12)
    assert result.mean.item() == pytest.approx((omega0 + omega2) / 2, rel=1e-12)


def test_class_alignment_with_no_class_present_is_nan() -> None:
    result = class_alignment(torch.randn(3, 2), torch.tensor([0, 1, 2]))
    assert not result.present.any() and torch.isnan(result.mean)


def test_comparison_measures_match_pairwise_definitions_per_class() -> None:
    g = torch.Generator().manual_seed(4)
    v = torch.randn(9, 5, generator=g) + 0.5
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 2, 1, 0])
    stats = class_measures_from_gram(gram(v, torch.float64), labels, num_classes=3)
    for c in (0, 1):
        want = measures_pairwise([v[i] for i in range(9) if labels[i] == c])
        for name, value in want.items():
            assert stats[name].values[c].item() == pytest.approx(value, rel=1e-10), (name, c)
    for name in stats:
        assert torch.isnan(stats[name].values[2])  # one example: missing
        assert stats[name].mean.item() == pytest.approx(stats[name].values[:2].mean().item(), rel=1e-12)


def test_measures_batch_over_leading_gram_dims() -> None:
    v = torch.randn(3, 8, 4, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([0, 0, 1, 1, 1, 0, 1, 0])
    K = torch.stack([gram(x, torch.float64) for x in v])  # (3, 8, 8)
    batched = class_measures_from_gram(K, labels, 2)
    for i in range(3):
        single = class_measures_from_gram(K[i], labels, 2)
        for name in single:
            torch.testing.assert_close(batched[name].values[i], single[name].values)


def test_labels_outside_the_classes_are_ignored_by_every_measure() -> None:
    # What the callback's max_classes relies on: a mask instead of selecting rows (a host sync).
    g = torch.Generator().manual_seed(21)
    v, labels = torch.randn(12, 5, generator=g) + 0.4, torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3])
    kept = labels < 2
    K = gram(v, torch.float64)
    masked = class_measures_from_gram(K, labels, num_classes=2)
    selected = class_measures_from_gram(gram(v[kept], torch.float64), labels[kept], num_classes=2)
    for name in MEASURES:
        torch.testing.assert_close(masked[name].values, selected[name].values, rtol=1e-12, atol=0)
        torch.testing.assert_close(masked[name].mean, selected[name].mean, rtol=1e-12, atol=0)
    by_sums = class_alignment_from_sums(class_sums(v, labels, 2))
    torch.testing.assert_close(by_sums.values, selected["alignment"].values, rtol=1e-10, atol=1e-12)
    assert class_indicator(torch.tensor([1, -1, 5]), 3).tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 0]]


def test_class_sums_path_equals_gram_path() -> None:
    g = torch.Generator().manual_seed(6)
    v, labels = torch.randn(40, 6, generator=g) + 0.3, torch.randint(0, 4, (40,), generator=g)
    by_gram = class_alignment(v, labels, 5)
    chunks = class_sums(v[:17], labels[:17], 5) + class_sums(v[17:], labels[17:], 5)
    by_sums = class_alignment_from_sums(chunks)
    assert by_sums.present.tolist() == by_gram.present.tolist()
    torch.testing.assert_close(by_sums.values, by_gram.values, rtol=1e-10, atol=1e-12, equal_nan=True)
    torch.testing.assert_close(by_sums.mean, by_gram.mean, rtol=1e-10, atol=1e-12)


def test_representation_alignment_small_and_large_paths() -> None:
    g = torch.Generator().manual_seed(7)
    h, labels = torch.randn(5000, 3, generator=g) + 0.2, torch.randint(0, 3, (5000,), generator=g)
    small = representation_alignment(h[:300], labels[:300], per_class=True)
    assert isinstance(small, dict) and set(small) == {"in_class", "class_0", "class_1", "class_2"}
    assert small["class_1"] == pytest.approx(float(alignment(h[:300][labels[:300] == 1])), rel=1e-10)
    large = representation_alignment(h, labels)  # > 4096 rows: fp64 class sums
    want = sum(float(alignment(h[labels == c])) for c in range(3)) / 3
    assert large == pytest.approx(want, rel=1e-9)


# ----------------------------------------------------------------------------- gradient_alignment


def _data(shape: tuple[int, ...], n: int, k: int, seed: int, dtype=torch.float64) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k  # every class has ≥ 2 examples ...
    y[-1] = k  # ... except class k, which has one: it must be missing, not averaged in
    return torch.randn(n, *shape, generator=g, dtype=dtype), y


@pytest.mark.parametrize("activation, loss", itertools.product(sorted(ACTIVATIONS), sorted(LOSSES)))
def test_gradient_alignment_matches_per_example_loop_mlp(activation: str, loss: str) -> None:
    torch.manual_seed(10)
    net = ScaledMLP((2, 3, 3), num_classes=4, width=16, activation=activation, init_std=0.5).double()
    x, y = _data((2, 3, 3), 13, 3, seed=11)
    loss_fn = LOSSES[loss]
    got = gradient_alignment(net, loss_fn, x, y, per_class=True, num_classes=4)
    want = reference_alignment(net, loss_fn, x, y, 4)
    assert {"hidden.weight", "out.weight", "logits", "logits/class_2"} <= set(got)
    assert "logits/class_3" not in got  # one example
    assert_close_dicts(got, want, rtol=1e-9)


def test_gradient_alignment_matches_per_example_loop_convnet() -> None:
    torch.manual_seed(12)
    net = ConvNet((3, 16, 16), num_classes=3).double()
    x, y = _data((3, 16, 16), 8, 2, seed=13)
    got = gradient_alignment(net, LOSSES["cross_entropy"], x, y, per_class=True, num_classes=3)
    want = reference_alignment(net, LOSSES["cross_entropy"], x, y, 3)
    assert {"conv1.weight", "conv1.bias", "conv2.weight", "fc.bias", "out.weight"} <= set(got)
    assert_close_dicts(got, want, rtol=1e-9)


class Mixed(nn.Module):
    """Biases, a module called twice, a (B, T, d) sequence Linear and a LayerNorm (torch.func fallback)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 6)
        self.shared = nn.Linear(6, 6)  # called twice: per-example gradient sums both calls
        self.norm = nn.LayerNorm(6)
        self.head = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))

    def forward(self, x: Tensor) -> Tensor:  # x: (B, T=4, 3)
        h = torch.tanh(self.embed(x))
        h = torch.tanh(self.shared(torch.tanh(self.shared(h))))
        return self.head(self.norm(h).mean(1))


@pytest.mark.parametrize("model_name", ["sequential_bias", "inplace_relu", "reflect_conv", "mixed"])
def test_gradient_alignment_matches_per_example_loop_with_biases(model_name: str) -> None:
    torch.manual_seed(14)
    if model_name == "sequential_bias":
        net = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.Sigmoid(), nn.Linear(7, 3)).double()
    elif model_name == "inplace_relu":  # the hooked outputs are overwritten in place afterwards
        net = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(inplace=True), nn.Linear(7, 3)).double()
        net.append(nn.ReLU(inplace=True))
    elif model_name == "reflect_conv":  # padding_mode != 'zeros': the torch.func fallback
        conv = nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")
        net = nn.Sequential(nn.Unflatten(1, (1, 4)), conv, nn.Tanh(), nn.Flatten(), nn.Linear(24, 3)).double()
    else:
        net = Mixed().double()
    x, y = _data((4, 3), 11, 2, seed=15)
    got = gradient_alignment(net, LOSSES["hinge"], x, y, per_class=True, num_classes=3)
    want = reference_alignment(net, LOSSES["hinge"], x, y, 3)
    assert_close_dicts(got, want, rtol=1e-9)
    assert all(p.grad is None for p in net.parameters())  # .grad untouched


def test_gradient_alignment_fp32_model_within_1e5() -> None:
    torch.manual_seed(16)
    net = ScaledMLP((3, 4, 4), num_classes=4, width=32, activation="sin", init_std=1.0)
    x, y = _data((3, 4, 4), 12, 3, seed=17, dtype=torch.float32)
    got = gradient_alignment(net, LOSSES["cross_entropy"], x, y, num_classes=4)
    want = reference_alignment(net.double(), LOSSES["cross_entropy"], x.double(), y, 4)
    assert_close_dicts(got, {k: v for k, v in want.items() if "/" not in k}, rtol=1e-5, atol=1e-7)


def test_gradient_alignment_comparison_measures_match_per_example_loop() -> None:
    torch.manual_seed(18)
    net = ScaledMLP((1, 3, 3), num_classes=4, width=8, activation="relu").double()
    x, y = _data((1, 3, 3), 10, 3, seed=19)
    got = gradient_alignment(
        net,
        LOSSES["squared"],
        x,
        y,
        per_class=True,
        num_classes=4,
        measures=("alignment", "diversity", "stiffness", "confusion"),
    )
    logits = [
        torch.autograd.grad(LOSSES["squared"](net(x[i : i + 1]), y[i : i + 1]).sum(), net.out.weight)[0]
        for i in range(10)
    ]
    for c in range(3):
        want = measures_pairwise([logits[i] for i in range(10) if y[i] == c])
        assert got[f"out.weight/class_{c}"] == pytest.approx(want["alignment"], rel=1e-9)
        for name in ("diversity", "stiffness", "confusion"):
            assert got[f"{name}/out.weight/class_{c}"] == pytest.approx(want[name], rel=1e-9)


def test_gradient_alignment_rejects_training_batchnorm_and_bad_loss() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    x, y = torch.randn(6, 4), torch.tensor([0, 1] * 3)
    with pytest.raises(ValueError, match=r"BatchNorm.*model\.eval"):
        gradient_alignment(net, LOSSES["cross_entropy"], x, y)
    net.eval()
    assert "1.weight" in gradient_alignment(net, LOSSES["cross_entropy"], x, y)
    with pytest.raises(ValueError, match="per-example losses"):
        gradient_alignment(net, lambda z, t: F.cross_entropy(z, t), x, y)


@pytest.mark.parametrize("B", [0, 1])
def test_measures_of_fewer_than_two_examples_are_missing_not_errors(B: int) -> None:
    # The callback relies on this under DDP: every rank must produce the same keys, whatever its batch.
    stats = class_measures_from_gram(torch.ones(2, B, B), torch.zeros(B, dtype=torch.long), num_classes=3)
    for result in stats.values():
        assert (
            result.values.shape == (2, 3)
            and torch.isnan(result.values).all()
            and torch.isnan(result.mean).all()
        )
