"""ProbeCollector: the first examples of the first validation loader, gathered once and then fixed."""

from __future__ import annotations

import torch

from lightning_mem.alignment.probe import ProbeCollector


def _batch(start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(start, start + n, dtype=torch.float32)[:, None], torch.arange(start, start + n)


def test_gathers_the_first_examples_of_loader_0_once() -> None:
    c = ProbeCollector(5)
    assert c.finish() is None  # nothing started
    c.start()
    with torch.inference_mode():  # as in a validation loop: the kept tensors are ordinary ones
        for batch in (_batch(0, 3), _batch(100, 3)):
            c.add(batch, dataloader_idx=1)  # another loader: ignored
        for start in (0, 3, 6):
            c.add(_batch(start, 3), dataloader_idx=0)
    probe = c.finish()
    assert probe is not None and probe[1].tolist() == [0, 1, 2, 3, 4]
    assert not probe[0].is_inference() and probe[0].shape == (5, 1)
    c.start()  # later validations keep the probe
    c.add(_batch(50, 3), 0)
    assert c.finish() is probe


def test_fewer_than_two_examples_make_no_probe() -> None:
    c = ProbeCollector(5)
    c.start()
    c.add(_batch(0, 1), 0)
    assert c.finish() is None
    c.start()  # the next validation tries again
    c.add(_batch(0, 4), 0)
    probe = c.finish()
    assert probe is not None and len(probe[1]) == 4
