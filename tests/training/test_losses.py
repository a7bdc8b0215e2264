import math

import pytest
import torch

from lightning_mem.training.losses import LOSSES, cross_entropy, multiclass_hinge, squared_error

LOGITS = torch.tensor([[2.0, 1.0, -1.0], [0.5, 0.5, 3.0]])
LABELS = torch.tensor([0, 1])


def _ce_by_hand(z: list[float], y: int, t: float) -> float:
    return -z[y] / t + math.log(sum(math.exp(v / t) for v in z))


@pytest.mark.parametrize("temperature", [1.0, 0.5, 4.0])
def test_cross_entropy_by_hand(temperature: float) -> None:
    got = cross_entropy(LOGITS, LABELS, temperature)
    want = [_ce_by_hand(row, y, temperature) for row, y in zip(LOGITS.tolist(), LABELS.tolist(), strict=True)]
    assert got.shape == (2,)
    assert got.tolist() == pytest.approx(want, rel=1e-6)


def test_hinge_by_hand() -> None:
    # row 0, y=0: max(0, 1+1-2) + max(0, 1-1-2) = 0; row 1, y=1: max(0, 1+.5-.5) + max(0, 1+3-.5) = 1 + 3.5
    assert multiclass_hinge(LOGITS, LABELS).tolist() == pytest.approx([0.0, 4.5])
    # margin 3: row 0: max(0, 3+1-2) + max(0, 3-1-2) = 2; row 1: 3 + 5.5
    assert multiclass_hinge(LOGITS, LABELS, margin=3.0).tolist() == pytest.approx([2.0, 8.5])


def test_squared_by_hand() -> None:
    # row 0: ((2-1)^2 + 1 + 1)/3 = 1; row 1: (0.25 + 0.25 + 9)/3
    assert squared_error(LOGITS, LABELS).tolist() == pytest.approx([1.0, 9.5 / 3])
    # target scale 2: row 0: (0 + 1 + 1)/3
    want = [2 / 3, (0.25 + 2.25 + 9) / 3]
    assert squared_error(LOGITS, LABELS, target_scale=2.0).tolist() == pytest.approx(want)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_scale_undoes_logit_scale(name: str) -> None:
    """Scaling logits and the loss knob by c changes CE not at all and hinge/squared by c, c²."""
    torch.manual_seed(0)
    z, y, c = torch.randn(6, 4), torch.randint(0, 4, (6,)), 7.0
    base, scaled = LOSSES[name](z, y, 1.0), LOSSES[name](c * z, y, c)
    factor = {"cross_entropy": 1.0, "hinge": c, "squared": c * c}[name]
    torch.testing.assert_close(scaled, factor * base)
