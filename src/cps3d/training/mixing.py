"""CutMix for the unlabeled cross terms (an option, not the paper's): box masks and their use on inputs and teachers.

With ``cutmix`` on, the unlabeled batch is mixed before the networks learn from it: each sample keeps a random box
of itself and takes the rest from the next sample in the batch (``roll`` by one). The teachers' pseudo-labels come
from the *unmixed* batch and are mixed with the same box, so each network must reproduce on the mixed image what the
other network said about the two images it was cut from. Both networks see the same mixed image, as in the original
CPS with CutMix (Chen et al., CVPR 2021); the box covers 25-50 % of the patch by default.

The masks are ``(B, 1, *spatial)`` float tensors of 0 and 1 (1: the sample's own voxels). At the coarser scales of
deep supervision the mask is resampled with nearest neighbour, as nnU-Net downsamples its targets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

BOX_FRACTION = (0.25, 0.5)  # share of the patch's voxels inside the box, drawn uniformly per sample


def box_masks(batch: int, spatial: Sequence[int], generator: torch.Generator,
              fraction: tuple[float, float] = BOX_FRACTION) -> Tensor:
    """One random axis-aligned box per sample, fully inside the patch, covering about ``fraction`` of its voxels.

    Each side is the patch's side times ``f ** (1 / ndim)`` times a random aspect factor (sides multiply back to
    ``f``, clipped to the patch), rounded to whole voxels and at least one voxel.
    """
    lo, hi = fraction
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"fraction={fraction}: need 0 < low <= high <= 1")
    nd = len(spatial)
    masks = torch.zeros((batch, 1, *spatial))
    for b in range(batch):
        f = lo + (hi - lo) * float(torch.rand((), generator=generator))
        log_aspect = (torch.rand(nd, generator=generator) - 0.5) * 0.8  # aspect factors within about e^(+-0.4)
        log_aspect -= log_aspect.mean()
        sides = [max(1, min(s, round(s * f ** (1 / nd) * float(torch.exp(a))))) for s, a in zip(spatial, log_aspect)]
        starts = [int(torch.randint(0, s - k + 1, (), generator=generator)) for s, k in zip(spatial, sides)]
        box: tuple[int | slice, ...] = (b, 0, *(slice(o, o + k) for o, k in zip(starts, sides)))
        masks[box] = 1.0
    return masks


def mix(x: Tensor, mask: Tensor) -> Tensor:
    """``mask * x + (1 - mask) * roll(x)``: each sample's box from itself, the rest from the next sample."""
    m = mask.to(device=x.device, dtype=x.dtype)
    return m * x + (1 - m) * torch.roll(x, shifts=1, dims=0)


def mix_outputs(outputs: Sequence[Tensor], mask: Tensor) -> list[Tensor]:
    """Mix a teacher's outputs (one tensor per deep-supervision scale) with ``mask``, resampled to each scale."""
    mixed = []
    for o in outputs:
        m = mask if tuple(mask.shape[2:]) == tuple(o.shape[2:]) else F.interpolate(mask, size=o.shape[2:],
                                                                                  mode="nearest")
        mixed.append(mix(o, m))
    return mixed
