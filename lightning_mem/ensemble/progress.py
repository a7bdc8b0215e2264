"""What an ensemble's fit shows of its members: how many are alive, the best and worst accuracies.

With the progress bar on, :class:`EnsembleProgressBar` (Lightning's ``TQDMProgressBar``) puts them in the
bar's postfix (``alive=3/4, train/acc=0.113..0.998, val/acc=0.094..0.912``: worst..best over the members);
with it off, :class:`EnsembleProgressLog` logs one line after the first and the last epoch and at least
every ``every_n_seconds`` between (``epoch 3/8: 3 of 4 members alive (1 diverged), train/acc
0.113..0.998, val/acc 0.094..0.912 (worst..best)``). Both read the members' last logged values
(:attr:`~lightning_mem.ensemble.module.EnsembleModule.last_metrics`) and the ``alive`` mask once per epoch
end, never per batch.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from typing_extensions import override

from lightning_mem import metric_keys
from lightning_mem.ensemble.module import EnsembleModule

log = logging.getLogger(__name__)

KEYS = (metric_keys.TRAIN_ACC, metric_keys.VAL_ACC)  # shown worst..best over the members


def member_summary(module: EnsembleModule) -> dict[str, str]:
    """``{"alive": "3/4", "train/acc": "0.113..0.998", "val/acc": ...}``: alive members of all, and each of
    :data:`KEYS` as worst..best of the members' last values (keys no member logged yet are left out)."""
    alive = [bool(a) for a in module.alive.tolist()]  # (K,) one host read
    out = {"alive": f"{sum(alive)}/{len(alive)}"}
    for key in KEYS:
        values = [m[key] for m in module.last_metrics
                  if isinstance(m.get(key), float) and math.isfinite(m[key])]
        if values:
            out[key] = f"{min(values):.3f}..{max(values):.3f}"
    return out


class EnsembleProgressBar(TQDMProgressBar):
    """Lightning's bar with the members' summary (:func:`member_summary`, updated at epoch ends) as its
    postfix, in place of the version number."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._summary: dict[str, str] = {}

    @override
    def get_metrics(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        metrics = {k: v for k, v in super().get_metrics(trainer, pl_module).items() if k != "v_num"}
        return {**metrics, **self._summary}

    def _update(self, pl_module: L.LightningModule) -> None:
        if isinstance(pl_module, EnsembleModule):
            self._summary = member_summary(pl_module)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._update(pl_module)  # the module's own epoch end (its train/* rows) ran after the callbacks'
        super().on_train_epoch_start(trainer, pl_module)

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._update(pl_module)
        super().on_validation_end(trainer, pl_module)


class EnsembleProgressLog(L.Callback):
    """One log line on the members (see the module docstring) after the first and the last epoch and at
    least every ``every_n_seconds`` between: where the bar is off (sweeps, paper configs)."""

    def __init__(self, every_n_seconds: float = 30.0) -> None:
        super().__init__()
        self.every_n_seconds = every_n_seconds
        self._at = -math.inf

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, final: bool) -> None:
        epoch = trainer.current_epoch  # epochs done: called when the next starts, and at the end
        now = time.monotonic()
        if not isinstance(pl_module, EnsembleModule) or epoch < 1 \
                or (now - self._at < self.every_n_seconds and epoch > 1 and not final):
            return
        self._at = now
        s = member_summary(pl_module)
        alive, total = (int(x) for x in s["alive"].split("/"))
        of = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        text = f"epoch {epoch}{of}: {alive} of {total} members alive"
        text += f" ({total - alive} diverged)" if alive < total else ""
        text += "".join(f", {key} {s[key]}" for key in KEYS if key in s)
        log.info("%s", text + (" (worst..best)" if any(key in s for key in KEYS) else ""))

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, final=False)  # the module's epoch end (train/* rows) ran after ours

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, final=True)
