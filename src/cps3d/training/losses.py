"""The CPS objective (DESIGN section 4) as pure functions of network outputs.

Outputs and targets are lists with one tensor per deep-supervision scale (highest resolution first), as nnU-Net's
``DeepSupervisionWrapper`` expects: outputs ``(B, C, *spatial)`` logits, targets ``(B, 1, *spatial)`` label maps.
A single tensor is treated as a list of one.

    L_sup = l(T1(x_l), y) + l(T2(x_l), y)
    L_cps = l(T1(x_l), Y2(x_l)) + l(T2(x_l), Y1(x_l)) + l(T1(x_u), Y2(x_u)) + l(T2(x_u), Y1(x_u))
    L     = L_sup + lambda * L_cps

with Y = argmax of the other network's output at each scale, detached: each network's gradient comes only from its
own terms, so one backward pass of L followed by a step of each network's optimizer is the same as two separate ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Outputs = Sequence[Tensor] | Tensor
LossFn = Callable[[Sequence[Tensor], Sequence[Tensor]], Tensor]


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


def cross_terms(loss_fn: LossFn, out1: Outputs, out2: Outputs) -> tuple[Tensor, Tensor]:
    """``(l(T1(x), argmax T2(x)), l(T2(x), argmax T1(x)))`` for one batch: each network learns from the other's
    detached hard labels."""
    o1, o2 = as_list(out1), as_list(out2)
    return loss_fn(o1, pseudo_labels(o2)), loss_fn(o2, pseudo_labels(o1))


def cps_loss_terms(loss_fn: LossFn, out1_l: Outputs, out2_l: Outputs, target_l: Outputs,
                   out1_u: Outputs | None = None, out2_u: Outputs | None = None) -> CPSLossTerms:
    """All terms of the CPS objective for one labeled (and optionally one unlabeled) batch."""
    o1l, o2l, y = as_list(out1_l), as_list(out2_l), as_list(target_l)
    terms = CPSLossTerms(loss_fn(o1l, y), loss_fn(o2l, y), *cross_terms(loss_fn, o1l, o2l))
    if out1_u is not None and out2_u is not None:
        terms.cps_unlabeled_1, terms.cps_unlabeled_2 = cross_terms(loss_fn, out1_u, out2_u)
    return terms
