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


def _as_list(x: Outputs) -> list[Tensor]:
    return [x] if isinstance(x, Tensor) else list(x)


def pseudo_labels(outputs: Outputs) -> list[Tensor]:
    """Hard pseudo-labels ``(B, 1, *spatial)`` (int64) from logits at every scale, without gradient."""
    with torch.no_grad():
        return [o.detach().argmax(1, keepdim=True) for o in _as_list(outputs)]


def split_batch(outputs: Outputs, n_first: int) -> tuple[list[Tensor], list[Tensor]]:
    """Split every scale's output along the batch axis into the first ``n_first`` samples and the rest."""
    outs = _as_list(outputs)
    return [o[:n_first] for o in outs], [o[n_first:] for o in outs]


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


def cps_loss_terms(loss_fn: LossFn, out1_l: Outputs, out2_l: Outputs, target_l: Outputs,
                   out1_u: Outputs | None = None, out2_u: Outputs | None = None) -> CPSLossTerms:
    """All terms of the CPS objective for one labeled (and optionally one unlabeled) batch."""
    o1l, o2l, y = _as_list(out1_l), _as_list(out2_l), _as_list(target_l)
    terms = CPSLossTerms(
        sup_1=loss_fn(o1l, y),
        sup_2=loss_fn(o2l, y),
        cps_labeled_1=loss_fn(o1l, pseudo_labels(o2l)),
        cps_labeled_2=loss_fn(o2l, pseudo_labels(o1l)),
    )
    if out1_u is not None and out2_u is not None:
        o1u, o2u = _as_list(out1_u), _as_list(out2_u)
        terms.cps_unlabeled_1 = loss_fn(o1u, pseudo_labels(o2u))
        terms.cps_unlabeled_2 = loss_fn(o2u, pseudo_labels(o1u))
    return terms
