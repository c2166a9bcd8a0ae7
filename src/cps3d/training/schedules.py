"""Schedules of the CPS weight lambda and of the learning rate, as pure functions of the epoch.

Epochs count from 0. ``cps_lambda`` rises linearly from 0 at epoch 0 to ``lambda_max`` at epoch ``ramp_epochs`` and
stays there (the paper: 0 -> 0.5 over the first half of training). The authors' code used (epoch + 1) / 500 * 0.5; we
start at exactly 0 so that the first epoch is purely supervised, as the paper's "from 0" says. ``start_epoch`` (not in
the paper, 0 by default) holds lambda at 0 for that many epochs first and shifts the ramp: on a short budget the
networks must predict the organs before their pseudo-labels are worth learning from, or the cross terms teach both of
them that everything is background.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau


def cps_lambda(epoch: int, lambda_max: float, ramp_epochs: int, start_epoch: int) -> float:
    """Weight of the CPS loss at ``epoch``: 0 before ``start_epoch``, then
    ``lambda_max * min(1, (epoch - start_epoch) / ramp_epochs)``; ``lambda_max`` from ``start_epoch`` on if ramp is 0.
    (The defaults are :class:`~cps3d.training.config.TrainConfig`'s.)"""
    if epoch < 0 or start_epoch < 0:
        raise ValueError(f"epoch={epoch}, start_epoch={start_epoch}: must be >= 0")
    if epoch < start_epoch:
        return 0.0
    if ramp_epochs <= 0:
        return float(lambda_max)
    return float(lambda_max) * min(1.0, (epoch - start_epoch) / ramp_epochs)


def extended_poly_initial_lr(initial_lr: float, old_max_epochs: int, new_max_epochs: int, next_epoch: int,
                             exponent: float = 0.9) -> float:
    """The ``initial_lr`` of a poly curve over ``new_max_epochs`` that passes through the learning rate the old
    curve (``initial_lr`` over ``old_max_epochs``) gave the last trained epoch, ``next_epoch - 1``.

    How ``--continue`` with another number of epochs goes on under poly: from the current learning rate down to 0 at
    the new end, instead of from 0 (the old curve's end) or jumping back up to the new curve over the whole run.
    Unchanged epochs give back ``initial_lr``. Raises ValueError unless ``1 <= next_epoch <= min(old, new)`` (an
    epoch was trained and one is left to train).
    """
    if not 1 <= next_epoch <= min(old_max_epochs, new_max_epochs):
        raise ValueError(f"next_epoch={next_epoch}: must be within [1, {min(old_max_epochs, new_max_epochs)}]")
    if new_max_epochs == old_max_epochs:
        return initial_lr
    last = next_epoch - 1
    return initial_lr * ((1 - last / old_max_epochs) / (1 - last / new_max_epochs)) ** exponent


def final_decay_factor(progress: float, share: float) -> float:
    """The factor on the learning rate at ``progress`` through the run (0 at its start, 1 at its end) that lets it
    fall linearly to 0 over the run's last ``share``: 1 before ``1 - share``, then ``(1 - progress) / share``.
    ``share`` 0 (TrainConfig's default) leaves the learning rate alone. Raises ValueError unless ``0 <= share <= 1``.

    On top of either schedule: plateau rarely lowers the rate in a run of minutes, so the last weights are a noisy
    iterate of SGD at the full rate; the decay lets them settle.
    """
    if not 0 <= share <= 1:
        raise ValueError(f"share={share}: must be in [0, 1]")
    if share == 0:
        return 1.0
    return min(1.0, max(0.0, 1.0 - progress) / share)


class PlateauSchedule:
    """ReduceLROnPlateau on an exponential moving average of an epoch's training loss (nnU-Net v1's recipe).

    Call ``step(epoch_loss)`` once per epoch, after the epoch. The learning rate drops by ``factor`` after
    ``patience`` epochs in which the averaged loss did not improve by more than ``threshold`` (absolute).
    Every setting is given: their defaults are :class:`~cps3d.training.config.TrainConfig`'s ``plateau_*`` and
    ``min_lr``.
    """

    def __init__(self, optimizer: Optimizer, *, factor: float, patience: int, threshold: float, ema_alpha: float,
                 min_lr: float):
        if not 0 < factor < 1:
            raise ValueError(f"factor={factor}: must be in (0, 1)")
        if not 0 <= ema_alpha < 1:
            raise ValueError(f"ema_alpha={ema_alpha}: must be in [0, 1)")
        self.ema_alpha = ema_alpha
        self.loss_ema: float | None = None
        self.scheduler = ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience,
                                           threshold=threshold, threshold_mode="abs", min_lr=min_lr)

    def step(self, epoch_loss: float) -> float:
        if not math.isfinite(epoch_loss):
            return self.loss_ema if self.loss_ema is not None else epoch_loss
        self.loss_ema = epoch_loss if self.loss_ema is None else \
            self.ema_alpha * self.loss_ema + (1 - self.ema_alpha) * epoch_loss
        self.scheduler.step(self.loss_ema)
        return self.loss_ema

    def state_dict(self) -> dict:
        return {"loss_ema": self.loss_ema, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or not {"loss_ema", "scheduler"} <= set(state):
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"not the state of a plateau schedule (keys 'loss_ema', 'scheduler'); found {found}")
        self.loss_ema = state["loss_ema"]
        self.scheduler.load_state_dict(state["scheduler"])
