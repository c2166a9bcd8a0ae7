"""Forced spacing at inference (DESIGN section 5): show the network each scan as if it had a fixed voxel size.

The rule, with the preset's spacing (sx, sy, sz) in mm and S = the number of slices along the scan's through-plane
axis:

- S < ``min_slices`` (150): (sx, sy, the scan's own through-plane spacing)
- ``min_slices`` <= S <= ``max_slices`` (600): (sx, sy, sz)
- S > ``max_slices``: (sx, sy, sz * max(``min_factor``, ``max_slices`` / S)), ``min_factor`` = 0.8

As in the authors' code, the spacing is only *assumed*: the header spacing is replaced, the voxels are not
resampled. nnU-Net's preprocessing then resamples from the assumed spacing to the plan spacing, so the network sees
``shape * assumed / plan`` voxels, and the prediction is written back on the scan's original grid and geometry.
Whether this saves time depends on the scan (it only does where the assumed spacing is finer than the real one), and
it distorts anatomy by the same ratio.

Axis conventions. Geometry is given in *index order* (ITK/SimpleITK/NIfTI order i, j, k: ``image.GetSpacing()``)
unless a name says ``array``: nnU-Net's SimpleITK reader returns arrays in reversed (k, j, i) order. The direction
matrix is SimpleITK's (row-major, 9 values; column c is index axis c in world coordinates). World axis 2 is the
patient's head-foot axis in both LPS (ITK) and RAS (NIfTI/nibabel) conventions, world axis 0 is left-right. The
through-plane axis is the index axis whose direction has the largest head-foot component, whatever the file's axis
order (the first such axis on an exact tie); of the two in-plane axes, the one more aligned with left-right gets sx
(the first on a tie), the other sy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from cps3d.images import direction_matrix, through_plane_axis
from cps3d.options import closest

log = logging.getLogger(__name__)

__all__ = ["ForcedSpacing", "PRESETS", "parse_forced_spacing", "through_plane_axis", "in_plane_axes",
           "assumed_spacing", "array_axis_directions", "force_spacing_on_properties"]


@dataclass(frozen=True)
class ForcedSpacing:
    """The forced-spacing rule (module docstring). Spacings in mm, slice counts in voxels.

    sx, sy: in-plane spacing assumed for the left-right-most and the other in-plane axis; sz: through-plane spacing
    assumed for scans with ``min_slices`` to ``max_slices`` slices. Thinner scans keep their own slice spacing; scans
    with more than ``max_slices`` slices get ``sz * max(min_factor, max_slices / S)``.
    """

    sx: float
    sy: float
    sz: float
    min_slices: int = 150
    max_slices: int = 600
    min_factor: float = 0.8

    def __post_init__(self) -> None:
        for name in ("sx", "sy", "sz"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"forced spacing {name}={v!r}: must be a positive number of mm")
        for name in ("min_slices", "max_slices"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"forced spacing {name}={v!r}: must be a positive whole number of slices")
        if self.min_slices > self.max_slices:
            raise ValueError(f"forced spacing min_slices={self.min_slices} must not exceed "
                             f"max_slices={self.max_slices}")
        if not (isinstance(self.min_factor, (int, float)) and 0 < self.min_factor <= 1):
            raise ValueError(f"forced spacing min_factor={self.min_factor!r}: must be in (0, 1]")

    def through_plane_spacing(self, n_slices: int, original_mm: float) -> float:
        """The assumed through-plane spacing (mm) of a scan with ``n_slices`` slices of ``original_mm`` each."""
        if n_slices < 1:
            raise ValueError(f"a scan has at least one slice, got {n_slices}")
        if n_slices < self.min_slices:
            return float(original_mm)
        if n_slices <= self.max_slices:
            return float(self.sz)
        return float(self.sz * max(self.min_factor, self.max_slices / n_slices))

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, ForcedSpacing] = {
    "paper": ForcedSpacing(0.75, 0.75, 0.5),   # the paper's defaults
    "authors": ForcedSpacing(1.0, 1.0, 1.5),   # the authors' public code
}


def parse_forced_spacing(text: str | None) -> ForcedSpacing | None:
    """``off`` (or None) -> None; ``paper`` / ``authors`` -> the preset; ``SX,SY,SZ`` (mm) -> a custom rule."""
    if text is None:
        return None
    value = text.strip().lower()
    if value in ("off", "none", ""):
        return None
    if value in PRESETS:
        return PRESETS[value]
    parts = [p.strip() for p in value.split(",")]
    if len(parts) == 3:
        try:
            sx, sy, sz = (float(p) for p in parts)
        except ValueError:
            pass
        else:
            return ForcedSpacing(sx, sy, sz)
    choices = ["off", *PRESETS]
    close = closest(value, choices)
    hint = f" (did you mean {close!r}?)" if close else ""
    raise ValueError(f"forced spacing {text!r}: choose one of {', '.join(choices)} or three spacings in mm "
                     f"'SX,SY,SZ'{hint}")


def in_plane_axes(direction: Sequence[float] | np.ndarray) -> tuple[int, int]:
    """The two in-plane index axes as (the one more aligned with left-right, the other); ties keep index order."""
    d = direction_matrix(direction)
    through = int(np.argmax(np.abs(d[2])))
    a, b = [k for k in range(3) if k != through]
    return (b, a) if abs(d[0, b]) > abs(d[0, a]) else (a, b)


def assumed_spacing(spacing: Sequence[float], size: Sequence[int], direction: Sequence[float] | np.ndarray,
                    rule: ForcedSpacing) -> tuple[float, float, float]:
    """The spacing (mm, index order) the network is told a scan has under ``rule``.

    ``spacing``, ``size``: the scan's voxel size (mm) and number of voxels per index axis (i, j, k), as SimpleITK's
    ``GetSpacing()`` and ``GetSize()`` give them. ``direction``: SimpleITK's direction matrix.
    """
    if len(spacing) != 3 or len(size) != 3:
        raise ValueError(f"forced spacing needs a 3D scan, got spacing {tuple(spacing)} and size {tuple(size)}")
    through = through_plane_axis(direction)
    ax_x, ax_y = in_plane_axes(direction)
    out = [0.0, 0.0, 0.0]
    out[ax_x], out[ax_y] = float(rule.sx), float(rule.sy)
    out[through] = rule.through_plane_spacing(int(size[through]), abs(float(spacing[through])))
    return out[0], out[1], out[2]


def array_axis_directions(properties: dict) -> np.ndarray:
    """SimpleITK-style direction matrix (3x3, column c = world direction of *index* axis c) of an image read by an
    nnU-Net reader, from its properties: ``sitk_stuff`` (SimpleITKIO and variants) or ``nibabel_stuff`` (NibabelIO
    and variants; the affine is RAS, which only flips world axes 0 and 1 and so keeps the head-foot and left-right
    magnitudes the rule uses). Index axis c is array axis ``2 - c`` for both readers (3D).
    """
    if "sitk_stuff" in properties:
        return direction_matrix(properties["sitk_stuff"]["direction"])
    if "nibabel_stuff" in properties:
        stuff = properties["nibabel_stuff"]
        affine = np.asarray(stuff.get("reoriented_affine", stuff.get("original_affine")), np.float64)
        return direction_matrix(affine[:3, :3])
    raise ValueError("forced spacing needs the scan's direction cosines, but the reader gave none "
                     f"(properties hold {sorted(properties)}); use a SimpleITK or nibabel reader")


def force_spacing_on_properties(properties: dict, array_shape: Sequence[int], rule: ForcedSpacing) -> dict:
    """Replace ``properties['spacing']`` (nnU-Net's array-order spacing) by the assumed one, in place; the geometry
    used to write the result (``sitk_stuff`` / ``nibabel_stuff``) is left alone, so the prediction goes back on the
    original grid. ``array_shape``: the image's spatial shape in array order. Returns ``{"original_spacing",
    "assumed_spacing", "through_plane_axis", "n_slices"}`` in array order for logging.
    """
    if len(array_shape) != 3 or len(properties["spacing"]) != 3:
        raise ValueError(f"forced spacing needs a 3D scan, got an array of shape {tuple(array_shape)}")
    direction = array_axis_directions(properties)
    original = [float(s) for s in properties["spacing"]]
    size_index = list(array_shape)[::-1]
    spacing_index = original[::-1]
    assumed = list(assumed_spacing(spacing_index, size_index, direction, rule))[::-1]
    through_array = 2 - through_plane_axis(direction)
    properties["spacing"] = assumed
    return {"original_spacing": original, "assumed_spacing": assumed, "through_plane_axis": through_array,
            "n_slices": int(array_shape[through_array])}
