"""DSC and NSD of one case under the FLARE 2022 rules, on label maps already in memory.

Rules, per case and per evaluated structure ("target": a label, or a region made of several labels, see
:mod:`cps3d.evaluation.targets`), computed on the reference's grid with the reference's spacing:

1. Reference and prediction both empty: DSC = NSD = 1. Exactly one of them empty: DSC = NSD = 0. (Decided on the
   whole volume, before rule 2.)
2. Aorta (5), inferior vena cava (6) and esophagus (10): both masks are restricted to the reference's slices of
   that organ along the axial axis (the voxel axis most aligned with the patient's head-foot direction, from the
   reference's direction cosines). ``slice_range="official"`` (the default) reproduces FLARE 2022's evaluation
   script, whose Python slice ``lo:hi`` stops before the reference's highest slice; ``"inclusive"`` keeps the
   highest slice too, as the rule is worded. The default is the script's convention because every published FLARE
   2022 number (the leaderboard, the 3D-CPS paper's tables) was computed with it. An organ lying on a single slice
   keeps that slice under both conventions (the script would compare empty arrays there).
3. NSD tolerances in mm: liver 5, right kidney 3, spleen 3, pancreas 5, aorta 2, IVC 2, right adrenal 2, left
   adrenal 2, gallbladder 2, esophagus 3, stomach 5, duodenum 7, left kidney 3; other labels get
   ``default_tolerance_mm``; any of them can be overridden by name or number.
4. DSC below ``nsd_min_dice`` (0.2): NSD = 0 (and is not computed).

DSC and NSD come from :mod:`cps3d.evaluation.metrics`; NSD matches the ``surface-distance`` reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cps3d.evaluation.metrics import Box, dice, label_bounding_boxes, normalized_surface_dice, union_box
from cps3d.evaluation.targets import SLICE_RANGES, Target
from cps3d.images import through_plane_axis

__all__ = ["CaseResult", "axial_axis", "evaluate_label_maps", "score_with_boxes"]


def axial_axis(direction: Sequence[float], ndim: int = 3) -> int:
    """Numpy axis (SimpleITK array order, i.e. reversed index order) most aligned with the head-foot direction.

    ``direction``: SimpleITK's row-major direction matrix (9 values; column c is index axis c in
    world coordinates, world axis 2 being head-foot in both LPS and RAS). For a usual axial NIfTI this is axis 0 of
    the SimpleITK array, i.e. the last axis in nibabel order.
    """
    if ndim != 3:
        raise ValueError(f"an axial axis is defined for 3D images only, got {ndim}D")
    return ndim - 1 - through_plane_axis(direction)


def _slice_window(ref_box: tuple[slice, ...], axis: int, convention: str) -> slice:
    lo, hi = ref_box[axis].start, ref_box[axis].stop - 1  # reference's lowest and highest slice (inclusive)
    if convention == "inclusive" or hi == lo:
        return slice(lo, hi + 1)
    return slice(lo, hi)


def evaluate_label_maps(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float],
                        targets: Sequence[Target], axial: int | None = None, slice_range: str = "official",
                        nsd_min_dice: float = 0.2) -> dict[str, tuple[float, float]]:
    """DSC and NSD of every target for one case: ``{target name: (dsc, nsd)}`` under the FLARE rules.

    ``pred``, ``ref``: integer label maps of the same shape (2D or 3D), on the same grid. ``spacing_mm``: voxel
    size along each array axis (mm). ``axial``: the array axis of rule 2 (see :func:`axial_axis`); None skips rule 2
    (2D images). Bounding boxes of all labels come from one pass over each map; every target is then evaluated on
    its own crop, so no full-volume mask is ever built.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference shapes differ: {pred.shape} vs {ref.shape}")
    if len(spacing_mm) != ref.ndim:
        raise ValueError(f"spacing has {len(spacing_mm)} values for a {ref.ndim}D label map")
    if slice_range not in SLICE_RANGES:
        raise ValueError(f"slice_range must be one of {SLICE_RANGES}, got {slice_range!r}")
    if not targets:
        return {}
    max_label = max(max(t.values) for t in targets)
    return score_with_boxes(pred, ref, label_bounding_boxes(pred, max_label), label_bounding_boxes(ref, max_label),
                            tuple(float(s) for s in spacing_mm), targets, axial, slice_range, nsd_min_dice)


def score_with_boxes(pred: np.ndarray, ref: np.ndarray, boxes_p: Sequence[Box | None],
                     boxes_r: Sequence[Box | None], spacing: tuple[float, ...], targets: Sequence[Target],
                     axial: int | None, slice_range: str, nsd_min_dice: float) -> dict[str, tuple[float, float]]:
    """The rules of the module docstring, given the bounding boxes of labels 1..len(boxes) of each map."""

    def box_of(boxes: Sequence[Box | None], values: tuple[int, ...]) -> Box | None:
        return union_box(*(boxes[v - 1] for v in values if v <= len(boxes)))

    results: dict[str, tuple[float, float]] = {}
    for t in targets:
        box_p, box_r = box_of(boxes_p, t.values), box_of(boxes_r, t.values)
        if box_p is None and box_r is None:
            results[t.name] = (1.0, 1.0)
            continue
        if box_p is None or box_r is None:
            results[t.name] = (0.0, 0.0)
            continue
        box = union_box(box_p, box_r)
        if t.slice_range and axial is not None:
            window = _slice_window(box_r, axial, slice_range)
            box = tuple(window if a == axial else s for a, s in enumerate(box))
        if len(t.values) == 1:
            p, r = pred[box] == t.values[0], ref[box] == t.values[0]
        else:
            p, r = np.isin(pred[box], t.values), np.isin(ref[box], t.values)
        dsc = dice(p, r)
        nsd = 0.0 if dsc < nsd_min_dice else normalized_surface_dice(p, r, spacing, t.tolerance_mm)
        results[t.name] = (dsc, nsd)
    return results



@dataclass(frozen=True)
class CaseResult:
    """Scores of one case: ``scores[target name] = (dsc, nsd)``."""

    case: str
    scores: dict[str, tuple[float, float]]
    targets: tuple[Target, ...] = field(default=(), repr=False)
