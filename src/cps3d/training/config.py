"""Training configuration: one frozen dataclass, saved as JSON in every run folder."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from cps3d.options import check_choice

MODES = ("cps", "supervised")
CROSS_LOSSES = ("dice_ce", "ce")  # the cross terms' loss (cps3d.training.losses)
LR_SCHEDULES = ("plateau", "poly")
PLATEAU_SIGNALS = ("total", "supervised")
# Options that ``--continue`` may change: they say how long and how watchfully to go on, not what is trained. Every
# other option shapes the state already in the checkpoint (networks, optimizers, schedules, seeds, loss) and is refused.
RESUMABLE = frozenset({"epochs", "max_minutes", "save_every", "final_validation", "val_iters"})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run besides the plans and the data.

    mode: ``cps`` (two networks, labeled + unlabeled batches) or ``supervised`` (one network, the paper's baseline).
    epochs, iters_per_epoch, val_iters: nnU-Net's epochs, training and validation iterations per epoch by default.
    lambda_max, lambda_ramp_epochs: CPS weight rises linearly from 0 to ``lambda_max`` over ``lambda_ramp_epochs``
        epochs (None = half of ``epochs``), then stays. lambda_start_epoch: lambda is 0 for this many epochs before the
        ramp begins (0, the paper's, by default; a warm-up for short runs).
    cps_loss: the loss of the cross terms: ``dice_ce`` (the paper's: the supervised Dice+CE against the other
        network's hard labels) or ``ce`` (cross-entropy only, as the original CPS). confidence: with ``ce``, voxels
        where the other network's top softmax probability is below this are left out of the cross terms (0: none).
    lr_schedule: ``plateau`` (the paper's ReduceLROnPlateau on the training loss) or ``poly`` (nnU-Net's, the authors'
        code). plateau_*: its factor, patience (epochs), absolute threshold, and the EMA of the training loss it watches.
        plateau_on: which loss of each network the plateau schedule watches: ``total`` (supervised + lambda x CPS; it
        rises by design while lambda ramps up) or ``supervised``.
    lr_final_decay: the last share of the run (0 to 1) over which the learning rate falls linearly to 0, on top of
        ``lr_schedule`` (0: off, the paper's). The run's progress is its epoch over ``epochs`` or, with
        ``max_minutes``, its training time over that if further on.
    initial_lr, weight_decay, momentum, grad_clip: SGD with Nesterov momentum; gradient-norm clipping per network.
    seed: network 1 is initialised with ``seed``, network 2 with ``seed + 1``; data sampling is seeded with
        ``seed + 1000 * rank`` so that DDP ranks draw different batches.
    save_every: write ``checkpoint_latest.pth`` every this many epochs (a killed run resumes from it).
    final_validation: predict the validation fold with network 1 at the end, as nnU-Net does.
    amp: mixed precision (CUDA only; ignored on CPU).
    max_minutes: stop after the epoch in which this much training time (minutes, this run) has passed, as if
        ``epochs`` had been reached there (final checkpoint, final validation); None: no time limit.
    """

    mode: str = "cps"
    epochs: int = 1000
    iters_per_epoch: int = 250
    val_iters: int = 50
    lambda_max: float = 0.5
    lambda_ramp_epochs: int | None = None
    lambda_start_epoch: int = 0
    cps_loss: str = "dice_ce"
    confidence: float = 0.0
    cutmix: bool = False
    lr_schedule: str = "plateau"
    initial_lr: float = 0.01
    weight_decay: float = 3e-5
    momentum: float = 0.99
    grad_clip: float = 12.0
    plateau_factor: float = 0.2
    plateau_patience: int = 30
    plateau_threshold: float = 1e-3
    plateau_ema: float = 0.93
    plateau_on: str = "total"
    lr_final_decay: float = 0.0
    min_lr: float = 1e-6
    seed: int = 12345
    save_every: int = 1
    final_validation: bool = True
    amp: bool = True
    max_minutes: float | None = None

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("cps_loss", self.cps_loss, CROSS_LOSSES)
        if not 0 <= self.confidence < 1:
            raise ValueError(f"confidence={self.confidence}: must be in [0, 1)")
        if self.confidence > 0 and self.cps_loss != "ce":
            raise ValueError(f"confidence={self.confidence} needs cps_loss='ce' (the paper's Dice+CE cross terms use "
                             "every voxel's pseudo-label)")
        if self.cutmix and self.mode != "cps":
            raise ValueError("cutmix=True needs mode='cps' (it mixes the unlabeled batch of the cross terms)")
        check_choice("plateau_on", self.plateau_on, PLATEAU_SIGNALS)
        if not 0 <= self.lr_final_decay <= 1:
            raise ValueError(f"lr_final_decay={self.lr_final_decay}: must be in [0, 1] (a share of the run)")
        for name in ("epochs", "iters_per_epoch", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be at least 1")
        if self.val_iters < 0:
            raise ValueError(f"val_iters={self.val_iters}: must be >= 0")
        if self.lambda_max < 0:
            raise ValueError(f"lambda_max={self.lambda_max}: must be >= 0")
        if self.lambda_ramp_epochs is not None and self.lambda_ramp_epochs < 0:
            raise ValueError(f"lambda_ramp_epochs={self.lambda_ramp_epochs}: must be >= 0")
        if self.lambda_start_epoch < 0:
            raise ValueError(f"lambda_start_epoch={self.lambda_start_epoch}: must be >= 0")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes={self.max_minutes}: must be positive (or None for no limit)")
        if self.initial_lr <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1 or self.grad_clip <= 0:
            raise ValueError("initial_lr > 0, weight_decay >= 0, 0 <= momentum < 1 and grad_clip > 0 are required")

    @property
    def ramp_epochs(self) -> int:
        return self.lambda_ramp_epochs if self.lambda_ramp_epochs is not None else self.epochs // 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training option(s): {sorted(unknown)}")
        return cls(**d)


def merge_for_resume(saved: TrainConfig, given: Mapping[str, Any]) -> tuple[TrainConfig, list[str]]:
    """The configuration a resumed run trains with: ``saved`` (the run folder's) with the options in ``given``
    (those the user gave; a full ``TrainConfig.to_dict()`` is fine) applied, and a line for the log per change.

    Only the options in :data:`RESUMABLE` may differ from ``saved``; any other difference raises ValueError naming the
    option, the saved value and the given one. With ``lambda_ramp_epochs`` unset (half of ``epochs``), a change of
    ``epochs`` keeps the saved ramp (``lambda_ramp_epochs`` is set to it) so that lambda goes on from where it was; a
    given ``lambda_ramp_epochs=None`` therefore always means the run's own ramp.
    """
    unknown = set(given) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown training option(s): {sorted(unknown)}")
    changed = {k: v for k, v in given.items() if v != getattr(saved, k)
               # None (half of epochs) after a resume that pinned the ramp: the run's ramp, not a change
               and not (k == "lambda_ramp_epochs" and v is None)}
    refused = sorted(set(changed) - RESUMABLE)
    if refused:
        raise ValueError("--continue cannot change " + "; ".join(
            f"{k} (the run was trained with {getattr(saved, k)!r}, given {changed[k]!r})" for k in refused)
            + ": only " + ", ".join(sorted(RESUMABLE)) + " may change; train anew with --overwrite to change the rest")
    merged = replace(saved, **changed)
    notes = [f"{k}: {getattr(saved, k)!r} -> {v!r}" for k, v in sorted(changed.items())]
    if "epochs" in changed:
        if saved.lambda_ramp_epochs is None:
            merged = replace(merged, lambda_ramp_epochs=saved.ramp_epochs)
            notes.append(f"lambda keeps its ramp over {saved.ramp_epochs} epochs (half of the saved {saved.epochs})")
        if saved.lr_schedule == "poly":
            notes.append(f"poly learning rate: decays from its current value to 0 at epoch {merged.epochs} "
                         f"(instead of {saved.epochs})")
    return merged, notes
