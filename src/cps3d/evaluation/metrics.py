"""Overlap and surface metrics on boolean masks: Dice and normalized surface Dice (NSD).

Conventions shared by every function here:

- Masks are numpy arrays of dtype ``bool`` with 2 or 3 axes; ``spacing_mm`` gives the voxel size along each array
  axis, in the same order as the axes, in millimetres. Nothing here knows about world orientation.
- Voxels outside the array count as background: an object touching the border of the array has a closed surface
  there (as in the reference implementation, which crops and zero-pads).
- Both masks empty: Dice = NSD = 1.0 (nothing to find, nothing found). Exactly one mask empty: Dice = NSD = 0.0.
  The ``surface-distance`` reference returns NaN for two empty masks; the FLARE 2022 rules score them 1.

The surface is the one of the Medical Segmentation Decathlon / DeepMind ``surface-distance`` package: every 2x2x2
block of voxels (a "cube" whose corners are voxel centres) whose corners are neither all inside nor all outside is a
surface element ("surfel"). Its area is that of the marching-cubes surface (Lorensen's case table, iso-level half-way
between inside and outside) inside the cube, scaled by the spacing; a configuration with more than four inside
corners gets the surface of its complement. In 2D the blocks are 2x2 squares and the surfels are contour segments
weighted by their length. The distance between two surfels is the Euclidean distance in mm between their cube
positions. NSD at tolerance t is

    (area of ref surfels within t of the pred surface + area of pred surfels within t of the ref surface)
    / (area of ref surfels + area of pred surfels)

It agrees with ``surface_distance.compute_surface_dice_at_tolerance(compute_surface_distances(ref, pred, spacing),
t)`` to rounding (about 1e-15). It is faster because it builds no distance map and sorts nothing: each mask pair
is cropped to its bounding box; a surfel whose block is also a surfel of the other surface is at distance 0; one
with an other-surface surfel among the blocks up to 2 positions away (and within the tolerance) is decided by direct
look-up; only the rest query a k-d tree of the other surface's surfels. Every distance is computed in the arithmetic
of ``scipy.ndimage.distance_transform_edt`` (which the reference uses), and k-d tree distances within a hair (1e-9
relative) of the tolerance are recomputed that way, so that ties (a surfel exactly ``t`` away, frequent with round
spacings and integer tolerances) are decided as the reference decides them. Label maps are handled by
:func:`cps3d.evaluation.scoring.evaluate_label_maps`, which finds every label's box in one pass.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Sequence
from typing import overload

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

log = logging.getLogger(__name__)

__all__ = [
    "dice",
    "normalized_surface_dice",
    "label_bounding_boxes",
    "union_box",
    "surfel_area_table",
]

# Relative band around the tolerance within which distances from the k-d tree are recomputed exactly.
_TIE_BAND = 1e-9
# Surfels whose match lies within this many blocks (per axis) are found by direct look-up, before the k-d tree.
_NEIGHBOUR_RADIUS = 2


def _check_masks(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float] | None = None) -> None:
    for name, m in (("pred", pred), ("ref", ref)):
        if not isinstance(m, np.ndarray):
            raise ValueError(f"{name} must be a numpy array, got {type(m).__name__}")
        if m.dtype != bool:
            raise ValueError(f"{name} must be a boolean mask (dtype bool), got dtype {m.dtype}; "
                             "for a label map pass `labels == k`")
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref have different shapes: {pred.shape} vs {ref.shape}")
    if spacing_mm is not None:
        if pred.ndim not in (2, 3):
            raise ValueError(f"masks must have 2 or 3 axes, got {pred.ndim} (shape {pred.shape})")
        if len(spacing_mm) != pred.ndim:
            raise ValueError(f"spacing_mm has {len(spacing_mm)} values but the masks have {pred.ndim} axes")
        if not all(np.isfinite(s) and s > 0 for s in spacing_mm):
            raise ValueError(f"spacing_mm must be positive and finite, got {tuple(spacing_mm)}")


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice similarity coefficient 2|P & R| / (|P| + |R|) of two boolean masks of the same shape (any number of axes).

    Both masks empty -> 1.0 (by convention, as in the FLARE 2022 rules; the ``surface-distance`` reference gives NaN).
    Raises ValueError for non-boolean masks or different shapes.
    """
    _check_masks(pred, ref)
    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(ref))
    if n_pred + n_ref == 0:
        return 1.0
    if n_pred == 0 or n_ref == 0:
        return 0.0
    return 2.0 * int(np.count_nonzero(pred & ref)) / (n_pred + n_ref)


# ---------------------------------------------------------------------------------------------------------------
# surfel areas


def _corner_offsets(ndim: int) -> list[tuple[int, ...]]:
    """Corners of a 2^ndim block in the order of the neighbour-code bits, most significant bit first."""
    return list(itertools.product((0, 1), repeat=ndim))


def _corner_weights(ndim: int) -> list[int]:
    """Bit of each corner (same order as ``_corner_offsets``): the lowest corner is the most significant bit."""
    n = 2**ndim
    return [1 << (n - 1 - i) for i in range(n)]


@functools.lru_cache(maxsize=1)
def _unit_cube_area_vectors() -> tuple[np.ndarray, ...]:
    """For each of the 256 corner configurations, the area vectors (one row per triangle, unit spacing)."""
    from skimage.measure import marching_cubes

    corners = _corner_offsets(3)
    weights = _corner_weights(3)
    out: list[np.ndarray] = []
    for code in range(256):
        inside = [bool(code & w) for w in weights]
        if sum(inside) > 4:  # the reference gives a configuration the surface of its complement
            inside = [not v for v in inside]
        if not any(inside):
            out.append(np.zeros((0, 3)))
            continue
        cube = np.zeros((2, 2, 2), np.float32)
        for c, v in zip(corners, inside):
            cube[c] = float(v)
        verts, faces, _, _ = marching_cubes(cube, level=0.5, method="lorensen")
        tri = verts.astype(np.float64)[faces]  # vertices are edge midpoints: exact in float32
        out.append(0.5 * np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]))
    return tuple(out)


def _contour_length_table(spacing_mm: tuple[float, ...]) -> np.ndarray:
    """Length in mm of the marching-squares contour inside each of the 16 configurations of a 2x2 block."""
    corners = _corner_offsets(2)
    weights = _corner_weights(2)
    s = np.asarray(spacing_mm, np.float64)
    table = np.zeros(16)
    for code in range(16):
        inside = {c: bool(code & w) for c, w in zip(corners, weights)}
        # crossed edges: pairs of corners differing along one axis and on different sides of the contour
        mids = [(np.add(a, b) / 2.0) * s for a, b in itertools.combinations(corners, 2)
                if sum(x != y for x, y in zip(a, b)) == 1 and inside[a] != inside[b]]
        if len(mids) == 2:
            table[code] = float(np.linalg.norm(mids[0] - mids[1]))
        elif len(mids) == 4:  # saddle: two segments, each cutting off one corner
            table[code] = 2.0 * 0.5 * float(np.hypot(s[0], s[1]))
    return table


@functools.lru_cache(maxsize=64)
def surfel_area_table(spacing_mm: tuple[float, ...]) -> np.ndarray:
    """Surface element size for each neighbour code, for voxels of ``spacing_mm`` (2 or 3 values, mm).

    3D: 256 areas in mm^2 (marching cubes, Lorensen's table, complement rule, see the module docstring).
    2D: 16 contour lengths in mm. The neighbour code of a block sets the bit ``1 << (2**ndim - 1 - i)`` for its
    i-th corner in ``itertools.product((0, 1), repeat=ndim)`` order when that corner is inside. Read-only array.
    """
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) == 2:
        table = _contour_length_table(spacing)
    elif len(spacing) == 3:
        s0, s1, s2 = spacing
        scale = np.array([s1 * s2, s0 * s2, s0 * s1])  # an area vector scales by the cofactors of diag(spacing)
        table = np.array([float(np.linalg.norm(v * scale, axis=1).sum()) for v in _unit_cube_area_vectors()])
    else:
        raise ValueError(f"spacing_mm must have 2 or 3 values, got {spacing}")
    table.setflags(write=False)
    return table


# ---------------------------------------------------------------------------------------------------------------
# bounding boxes


Box = tuple[slice, ...]
_MAX_LABEL = 2**20  # find_objects returns one entry per label value up to the largest


def label_bounding_boxes(label_map: np.ndarray, max_label: int | None = None) -> list[Box | None]:
    """Bounding boxes of labels 1..max_label of an integer label map, in one pass (``scipy.ndimage.find_objects``).

    Returns a list whose entry ``k - 1`` is the tuple of slices (one per axis, voxel indices) of label ``k``, or
    None where label ``k`` is absent. ``max_label`` defaults to the largest label present. Negative labels are
    ignored; a float label map with integer values is accepted (converted once).
    """
    if not isinstance(label_map, np.ndarray):
        raise ValueError(f"label_map must be a numpy array, got {type(label_map).__name__}")
    lm = label_map
    if lm.dtype == bool:
        lm = lm.view(np.uint8)
    elif not np.issubdtype(lm.dtype, np.integer):
        if not np.all(np.isfinite(lm)) or not np.array_equal(lm, np.round(lm)):
            raise ValueError(f"label map of dtype {lm.dtype} holds non-integer values")
        lm = lm.astype(np.int64)
    if max_label is None:
        max_label = int(lm.max()) if lm.size else 0
    if max_label <= 0:
        return []
    if max_label > _MAX_LABEL:
        raise ValueError(f"label value {max_label} is too large for a label map (at most {_MAX_LABEL})")
    if np.issubdtype(lm.dtype, np.signedinteger) and lm.size and lm.min() < 0:
        lm = np.where(lm < 0, 0, lm)
    # find_objects visits every voxel in a scalar loop; vectorised projections first shrink its work to the
    # foreground's box (labels rarely fill the field of view)
    fg = _mask_box(lm)
    if fg is None:
        return [None] * max_label
    boxes = ndimage.find_objects(lm[fg], max_label=max_label)
    starts = [s.start for s in fg]
    return [tuple(slice(sl.start + o, sl.stop + o) for sl, o in zip(b, starts)) if b is not None else None
            for b in boxes]


@overload
def union_box(first: Box, /, *boxes: Box | None) -> Box: ...
@overload
def union_box(*boxes: Box | None) -> Box | None: ...
def union_box(*boxes: Box | None) -> Box | None:
    """Smallest box containing all given boxes (None entries are skipped; None if all are None)."""
    present = [b for b in boxes if b is not None]
    if not present:
        return None
    ndim = len(present[0])
    return tuple(slice(min(b[a].start for b in present), max(b[a].stop for b in present)) for a in range(ndim))


def _mask_box(mask: np.ndarray) -> Box | None:
    """Bounding box of the nonzero voxels of an array (None if there are none), from projections on each axis."""
    if mask.ndim == 1:
        idx = np.flatnonzero(mask)
        return (slice(int(idx[0]), int(idx[-1]) + 1),) if idx.size else None
    head = np.asarray(mask.any(axis=0))  # one full pass gives the projection on the other axes
    sub = _mask_box(head)
    if sub is None:
        return None
    idx = np.flatnonzero(mask.any(axis=tuple(range(1, mask.ndim))))
    return (slice(int(idx[0]), int(idx[-1]) + 1), *sub)


# ---------------------------------------------------------------------------------------------------------------
# surfaces and distances


def _neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """Neighbour code of every block of 2^ndim voxels of ``mask`` zero-padded by one voxel on every side.

    Output shape: ``mask.shape + 1`` per axis; entry ``c`` describes voxels ``c - 1`` and ``c`` along each axis.
    """
    ndim = mask.ndim
    padded = np.zeros(tuple(n + 2 for n in mask.shape), np.uint8)
    padded[tuple(slice(1, -1) for _ in range(ndim))] = mask
    out_shape = tuple(n + 1 for n in mask.shape)
    codes = np.zeros(out_shape, np.uint8)
    tmp = np.empty(out_shape, np.uint8)
    for corner, weight in zip(_corner_offsets(ndim), _corner_weights(ndim)):
        view = padded[tuple(slice(o, o + n) for o, n in zip(corner, out_shape))]
        np.multiply(view, np.uint8(weight), out=tmp)
        codes |= tmp
    return codes


def _exact_distance(offsets: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distances (mm) of integer voxel offsets (rows), in the arithmetic of ``distance_transform_edt``.

    scipy computes ``float(offset) * spacing`` per axis, squares, sums the axes in order and takes the square root;
    doing the same here makes a surfel lying exactly at the tolerance count as the reference counts it.
    """
    scaled = offsets.astype(np.float64) * spacing
    sq = scaled * scaled
    d2 = sq[..., 0].copy()
    for a in range(1, sq.shape[-1]):
        d2 += sq[..., a]
    return np.sqrt(d2)


@functools.lru_cache(maxsize=256)
def _neighbour_offsets(spacing: tuple[float, ...], tolerance_mm: float) -> np.ndarray:
    """Offsets (rows, in blocks) to the blocks at most ``_NEIGHBOUR_RADIUS`` away along every axis that lie within
    the tolerance, nearest first. Read-only."""
    r = range(-_NEIGHBOUR_RADIUS, _NEIGHBOUR_RADIUS + 1)
    offsets = np.array([o for o in itertools.product(r, repeat=len(spacing)) if any(o)], np.int64)
    dist = _exact_distance(offsets, np.asarray(spacing, np.float64))
    keep = np.flatnonzero(dist <= tolerance_mm)
    out = offsets[keep[np.argsort(dist[keep], kind="stable")]]
    out.setflags(write=False)
    return out


def _within_tolerance(own: np.ndarray, other: np.ndarray, spacing: np.ndarray, tolerance_mm: float) -> np.ndarray:
    """For every surfel of ``own`` (boolean grid of block positions), whether ``other`` has one within the tolerance.

    Returns a boolean array aligned with ``np.argwhere(own)``. Cheap tests first: the same block (distance 0), then
    the neighbouring blocks within the tolerance; the remaining surfels query a k-d tree of ``other``'s surfels.
    Distances are those of ``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``; k-d tree distances
    within a hair of the tolerance are re-decided with that exact arithmetic.
    """
    shape = own.shape
    pad = _NEIGHBOUR_RADIUS  # neighbours of edge blocks fall on the padding, never wrap to another row
    padded = np.zeros(tuple(n + 2 * pad for n in shape), bool)
    padded[tuple(slice(pad, pad + n) for n in shape)] = other
    flat_other = padded.ravel()
    pts = np.argwhere(own)
    strides = np.array([int(np.prod(padded.shape[a + 1:])) for a in range(len(shape))], np.int64)
    flat = (pts + pad) @ strides
    result = flat_other[flat]
    todo = np.flatnonzero(~result)
    for delta in _neighbour_offsets(tuple(spacing.tolist()), tolerance_mm) @ strides:
        if todo.size == 0:
            return result
        hit = flat_other[flat[todo] + delta]
        result[todo[hit]] = True
        todo = todo[~hit]
    if todo.size == 0 or not other.any():
        return result

    features = np.argwhere(other)
    tree = cKDTree(features * spacing, balanced_tree=False, compact_nodes=False)
    band = _TIE_BAND * max(tolerance_mm, 1.0)
    queries = pts[todo]
    dist, nearest = tree.query(queries * spacing, k=1, distance_upper_bound=tolerance_mm + band)
    result[todo[dist <= tolerance_mm - band]] = True
    unsure = np.flatnonzero(np.isfinite(dist) & (dist > tolerance_mm - band))
    if unsure.size == 0:
        return result
    # near-ties: first the nearest surfel in exact arithmetic, then (rarely) every surfel within the band
    exact = _exact_distance(features[nearest[unsure]] - queries[unsure], spacing) <= tolerance_mm
    result[todo[unsure[exact]]] = True
    rest = unsure[~exact]
    if rest.size:
        candidates = tree.query_ball_point(queries[rest] * spacing, r=tolerance_mm + band)
        for i, cand in zip(rest, candidates):
            d = _exact_distance(features[np.asarray(cand, np.intp)] - queries[i], spacing)
            result[todo[i]] = bool(np.any(d <= tolerance_mm))
    return result


def _surface_dice_cropped(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...],
                          tolerance_mm: float) -> float:
    """NSD of two non-empty boolean masks already cropped to (at least) their joint bounding box."""
    table = surfel_area_table(spacing)
    full = np.uint8(2 ** (2**pred.ndim) - 1)
    codes_p = _neighbour_codes(pred)
    codes_r = _neighbour_codes(ref)
    border_p = (codes_p != 0) & (codes_p != full)
    border_r = (codes_r != 0) & (codes_r != full)
    area_p = table[codes_p[border_p]]  # C order, aligned with np.argwhere(border_p)
    area_r = table[codes_r[border_r]]
    total = float(area_p.sum() + area_r.sum())
    if total == 0.0:
        return 0.0
    s = np.asarray(spacing, np.float64)
    tol = float(tolerance_mm)
    overlap = float(area_r[_within_tolerance(border_r, border_p, s, tol)].sum())
    overlap += float(area_p[_within_tolerance(border_p, border_r, s, tol)].sum())
    return overlap / total


def normalized_surface_dice(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float],
                            tolerance_mm: float) -> float:
    """Normalized surface Dice (surface Dice at tolerance) of two boolean masks, in [0, 1].

    ``pred``, ``ref``: boolean arrays of the same 2D or 3D shape. ``spacing_mm``: voxel size along each array axis
    (mm). ``tolerance_mm``: a surfel counts as matched when the other surface is at most this far (mm, inclusive).
    Surfels and their areas follow the DeepMind ``surface-distance`` definition (module docstring); the result
    equals ``compute_surface_dice_at_tolerance(compute_surface_distances(ref, pred, spacing_mm), tolerance_mm)``.
    Both masks empty -> 1.0; exactly one empty -> 0.0. Raises ValueError for non-boolean masks, different shapes,
    a spacing that does not match the number of axes, or a negative tolerance.
    """
    _check_masks(pred, ref, spacing_mm)
    if not np.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm}")
    box = union_box(_mask_box(pred), _mask_box(ref))
    if box is None:
        return 1.0
    pred_c, ref_c = pred[box], ref[box]
    if not pred_c.any() or not ref_c.any():
        return 0.0
    return _surface_dice_cropped(pred_c, ref_c, tuple(float(s) for s in spacing_mm), float(tolerance_mm))
