"""The CPS objective (DESIGN section 4) as pure functions of network outputs.

Outputs and targets are lists with one tensor per deep-supervision scale (highest resolution first), as nnU-Net's
``DeepSupervisionWrapper`` expects: outputs ``(B, C, *spatial)`` logits, targets ``(B, 1, *spatial)`` label maps.
A single tensor is treated as a list of one.

    L_sup = l(T1(x_l), y) + l(T2(x_l), y)
    L_cps = l(T1(x_l), Y2(x_l)) + l(T2(x_l), Y1(x_l)) + l(T1(x_u), Y2(x_u)) + l(T2(x_u), Y1(x_u))
    L     = L_sup + lambda * L_cps

with Y = argmax of the other network's output at each scale, detached: each network's gradient comes only from its
own terms, so one backward pass of L followed by a step of each network's optimizer is the same as two separate ones.

The cross terms' loss ``l`` is, in the paper, the supervised Dice+CE (``cps_loss="dice_ce"``). The alternative here
(``"ce"``, the original CPS of Chen et al. and SSL4MIS's 3D CPS) is the cross-entropy alone, optionally restricted
to confident pseudo-labels: voxels where the other network's top softmax probability is below ``confidence`` add
nothing (the mean is still over all voxels, so an unsure teacher teaches little).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

Outputs = Sequence[Tensor] | Tensor
LossFn = Callable[[Sequence[Tensor], Sequence[Tensor]], Tensor]
# (student outputs, teacher outputs) -> the student's loss on the teacher's pseudo-labels
CrossFn = Callable[[Sequence[Tensor], Sequence[Tensor]], Tensor]


def as_list(x: Outputs) -> list[Tensor]:
    return [x] if isinstance(x, Tensor) else list(x)


def pseudo_labels(outputs: Outputs) -> list[Tensor]:
    """Hard pseudo-labels ``(B, 1, *spatial)`` (int64) from logits at every scale, without gradient."""
    with torch.no_grad():
        return [o.detach().argmax(1, keepdim=True) for o in as_list(outputs)]


@dataclass
class CPSLossTerms:
    """The six loss terms of one iteration (scalars with gradient)."""

    sup_1: Tensor
    sup_2: Tensor
    cps_labeled_1: Tensor
    cps_labeled_2: Tensor
    cps_unlabeled_1: Tensor | None = None
    cps_unlabeled_2: Tensor | None = None

    @property
    def supervised(self) -> Tensor:
        return self.sup_1 + self.sup_2

    @property
    def cps(self) -> Tensor:
        total = self.cps_labeled_1 + self.cps_labeled_2
        if self.cps_unlabeled_1 is not None and self.cps_unlabeled_2 is not None:
            total = total + self.cps_unlabeled_1 + self.cps_unlabeled_2
        return total

    def total(self, lam: float) -> Tensor:
        return self.supervised + lam * self.cps

    def network_losses(self, lam: float) -> tuple[Tensor, Tensor]:
        """Each network's own share of the total (for logging and per-network schedules)."""
        l1 = self.sup_1 + lam * (self.cps_labeled_1 + (self.cps_unlabeled_1 if self.cps_unlabeled_1 is not None else 0))
        l2 = self.sup_2 + lam * (self.cps_labeled_2 + (self.cps_unlabeled_2 if self.cps_unlabeled_2 is not None else 0))
        return l1, l2


def confidence_masks(outputs: Outputs, threshold: float) -> list[Tensor]:
    """Per scale, ``(B, 1, *spatial)`` float masks: 1 where the top softmax probability is >= ``threshold``."""
    with torch.no_grad():
        return [(torch.softmax(o.detach().float(), 1).amax(1, keepdim=True) >= threshold).to(o.dtype)
                for o in as_list(outputs)]


def masked_cross_entropy(logits: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over all voxels of the cross-entropy of ``logits`` (B, C, *spatial) against ``labels`` (B, 1, *spatial),
    each voxel weighted by ``mask`` (B, 1, *spatial; None: all 1). Masked voxels count in the mean as zeros."""
    ce = F.cross_entropy(logits, labels[:, 0].long(), reduction="none")
    if mask is not None:
        ce = ce * mask[:, 0]
    return ce.mean()


def pseudo_label_cross_entropy(student: Outputs, teacher: Outputs, weights: Sequence[float],
                               confidence: float) -> Tensor:
    """The ``"ce"`` cross term: sum over scales of ``weights[i]`` x the cross-entropy of the student's logits against
    the teacher's detached argmax, on voxels where the teacher's top probability is >= ``confidence`` (0: all)."""
    s, t = as_list(student), as_list(teacher)
    if len(weights) < len(s):
        raise ValueError(f"{len(weights)} deep-supervision weight(s) for {len(s)} output scale(s)")
    labels = pseudo_labels(t)
    masks = confidence_masks(t, confidence) if confidence > 0 else [None] * len(s)
    total = s[0].new_zeros(())
    for w, o, y, m in zip(weights, s, labels, masks):
        if w != 0:
            total = total + w * masked_cross_entropy(o, y, m)
    return total


def paper_cross_fn(loss_fn: LossFn) -> CrossFn:
    """The paper's cross term: the supervised loss ``loss_fn`` (Dice+CE) against the teacher's hard labels."""
    return lambda student, teacher: loss_fn(as_list(student), pseudo_labels(teacher))


def cross_terms(cross_fn: CrossFn, out1: Outputs, out2: Outputs) -> tuple[Tensor, Tensor]:
    """``(l(T1(x), argmax T2(x)), l(T2(x), argmax T1(x)))`` for one batch: each network learns from the other's
    detached labels, through ``cross_fn(student, teacher)`` (:func:`paper_cross_fn` or a
    :func:`pseudo_label_cross_entropy` closure)."""
    o1, o2 = as_list(out1), as_list(out2)
    return cross_fn(o1, o2), cross_fn(o2, o1)


def cps_loss_terms(loss_fn: LossFn, out1_l: Outputs, out2_l: Outputs, target_l: Outputs,
                   out1_u: Outputs | None = None, out2_u: Outputs | None = None,
                   cross_fn: CrossFn | None = None) -> CPSLossTerms:
    """All terms of the CPS objective for one labeled (and optionally one unlabeled) batch: ``loss_fn`` for the
    supervised terms, ``cross_fn`` for the cross terms (None: the paper's, ``loss_fn`` on pseudo-labels)."""
    cross = cross_fn if cross_fn is not None else paper_cross_fn(loss_fn)
    o1l, o2l, y = as_list(out1_l), as_list(out2_l), as_list(target_l)
    terms = CPSLossTerms(loss_fn(o1l, y), loss_fn(o2l, y), *cross_terms(cross, o1l, o2l))
    if out1_u is not None and out2_u is not None:
        terms.cps_unlabeled_1, terms.cps_unlabeled_2 = cross_terms(cross, out1_u, out2_u)
    return terms


def pseudo_label_stats(outputs: Outputs, confidence: float) -> tuple[float, float]:
    """(fraction of voxels whose argmax is foreground, fraction whose top probability is >= ``confidence``) at the
    highest resolution: how much a teacher's pseudo-labels say and how much of it a confidence mask keeps."""
    o = as_list(outputs)[0].detach()
    fg = float((o.argmax(1) > 0).float().mean())
    kept = float(confidence_masks(o, confidence)[0].mean()) if confidence > 0 else 1.0
    return fg, kept
