"""The numbers a trainer logs each epoch, as functions: nnU-Net's online pseudo-Dice (hard voxel counts per class of
one output, and Dice from the counts summed over steps and DDP ranks) and means over DDP ranks. The trainers
validate each network and the average of all with these."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from torch import distributed as dist


def hard_counts(output: torch.Tensor, target: torch.Tensor, label_manager: Any, probabilities: bool = False) -> dict:
    """True/false positive and false negative voxel counts per foreground class of one output (logits, or
    probabilities when ``probabilities``), as nnU-Net's online pseudo-Dice counts them (``label_manager``: nnU-Net's,
    for regions and the ignore label)."""
    axes = [0] + list(range(2, output.ndim))
    if label_manager.has_regions:
        onehot = ((output > 0.5) if probabilities else (torch.sigmoid(output) > 0.5)).long()
    else:
        seg = output.argmax(1)[:, None]
        onehot = torch.zeros(output.shape, device=output.device, dtype=torch.float16)
        onehot.scatter_(1, seg, 1)
    mask = None
    if label_manager.has_ignore_label:
        if not label_manager.has_regions:
            mask = (target != label_manager.ignore_label).float()
            target = torch.where(target == label_manager.ignore_label, torch.zeros_like(target), target)
        else:
            mask = (~target[:, -1:].bool()).float()
            target = target[:, :-1]
    tp, fp, fn, _ = get_tp_fp_fn_tn(onehot, target, axes=axes, mask=mask)
    tp, fp, fn = (t.detach().cpu().numpy() for t in (tp, fp, fn))
    if not label_manager.has_regions:
        tp, fp, fn = tp[1:], fp[1:], fn[1:]
    return {"tp": tp, "fp": fp, "fn": fn}


def gathered(value: Any, ddp: bool) -> list[Any]:
    """``[value]``, or under DDP every rank's value (in rank order)."""
    if not ddp:
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def mean_over_ranks(values: np.ndarray, ddp: bool) -> float:
    """The mean of ``values`` over this process's and (under DDP) every other rank's values."""
    return float(np.mean(np.concatenate([np.atleast_1d(v) for v in gathered(values, ddp)])))


def dice_per_class(outputs: dict, suffix: str, ddp: bool) -> list[float]:
    """Dice per class from the collated ``tp_hard{suffix}``, ``fp_hard{suffix}``, ``fn_hard{suffix}`` of an epoch's
    validation steps, summed over steps (and over ranks under DDP); NaN for a class absent from both."""
    tp, fp, fn = (np.sum(outputs[f"{k}_hard{suffix}"], 0) for k in ("tp", "fp", "fn"))
    tp, fp, fn = (np.sum(gathered(arr, ddp), 0) for arr in (tp, fp, fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        return [float(v) for v in 2 * tp / (2 * tp + fp + fn)]
