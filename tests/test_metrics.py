"""Dice and normalized surface Dice against hand-worked values and the ``surface-distance`` reference.

The reference is DeepMind's ``surface_distance`` package (Medical Segmentation Decathlon NSD):
``compute_surface_dice_at_tolerance(compute_surface_distances(ref, pred, spacing), tol)``. Our NSD must agree with it
to 1e-6 (in practice to rounding) on every mask pair below.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import surface_distance as sd
from scipy import ndimage
from surface_distance import lookup_tables

from cps3d.evaluation.metrics import dice, label_bounding_boxes, normalized_surface_dice, surfel_area_table

REAL_CT = Path(__file__).parent / "data" / "real_ct"

# the reference package imports scipy's deprecated namespaces
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:surface_distance")


def reference_nsd(pred: np.ndarray, ref: np.ndarray, spacing, tol: float) -> float:
    return float(sd.compute_surface_dice_at_tolerance(sd.compute_surface_distances(ref, pred, spacing), tol))


def blobs(rng: np.random.Generator, shape, sigma: float = 2.0, level: float = 0.5) -> np.ndarray:
    """Random smooth blobs: thresholded, smoothed uniform noise (several components, holes, odd shapes)."""
    return ndimage.gaussian_filter(rng.random(shape), sigma) > level


# --- surfel areas --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 0.8, 2.5), (2.0, 0.7, 1.3), (3.0, 3.0, 3.0)])
def test_surfel_area_table_matches_reference_3d(spacing):
    ours = surfel_area_table(spacing)
    ref = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.8, 1.3), (2.5, 0.5)])
def test_contour_length_table_matches_reference_2d(spacing):
    ours = surfel_area_table(spacing)
    ref = lookup_tables.create_table_neighbour_code_to_contour_length(spacing)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_single_corner_area_by_hand():
    # one inside corner: the triangle through the three edge midpoints around it; area vector (1/8, 1/8, 1/8)
    # at unit spacing, scaled by (s1 s2, s0 s2, s0 s1)
    s = (0.5, 2.0, 3.0)
    expected = 0.125 * math.sqrt((s[1] * s[2]) ** 2 + (s[0] * s[2]) ** 2 + (s[0] * s[1]) ** 2)
    assert surfel_area_table(s)[1] == pytest.approx(expected, abs=1e-12)
    assert surfel_area_table(s)[0] == 0.0 and surfel_area_table(s)[255] == 0.0


# --- dice ----------------------------------------------------------------------------------------------------------


def test_dice_by_hand():
    p = np.zeros((4, 4), bool)
    r = np.zeros((4, 4), bool)
    p[0, 0:2] = True  # 2 voxels
    r[0, 1:4] = True  # 3 voxels, 1 shared
    assert dice(p, r) == pytest.approx(2 * 1 / 5)
    assert dice(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0  # convention: both empty
    assert dice(p, np.zeros((4, 4), bool)) == 0.0


def test_dice_matches_reference_on_blobs():
    rng = np.random.default_rng(3)
    a, b = blobs(rng, (20, 24, 16)), blobs(rng, (20, 24, 16))
    assert dice(a, b) == pytest.approx(float(sd.compute_dice_coefficient(b, a)), abs=1e-12)


# --- NSD by hand ---------------------------------------------------------------------------------------------------


def test_nsd_single_voxels_by_hand():
    # A single voxel has 8 surfels (the 8 blocks containing it), all of equal area. Shifting it by one voxel along
    # axis 0 (2 mm) leaves 4 surfels shared (distance 0) on each side and 4 at exactly 2 mm.
    spacing = (2.0, 1.0, 1.0)
    ref = np.zeros((6, 5, 5), bool)
    pred = np.zeros((6, 5, 5), bool)
    ref[2, 2, 2] = True
    pred[3, 2, 2] = True
    assert normalized_surface_dice(pred, ref, spacing, 1.9) == pytest.approx(0.5)
    assert normalized_surface_dice(pred, ref, spacing, 2.0) == pytest.approx(1.0)  # inclusive tolerance
    assert normalized_surface_dice(ref, ref, spacing, 0.0) == 1.0


def test_nsd_tie_at_tolerance_with_inexact_spacing():
    # 0.4 mm is not exact in binary; 5 voxels = 2.0 mm in scipy's arithmetic, and the reference counts it as within
    # a 2 mm tolerance. Voxels 5 apart: the 4 surfels of each voxel facing away are 5 blocks (2 mm) from the other's
    # nearest surfels, the 4 facing surfels 4 blocks (1.6 mm).
    spacing = (0.4, 0.4, 0.4)
    ref = np.zeros((9, 3, 3), bool)
    pred = np.zeros((9, 3, 3), bool)
    ref[1, 1, 1] = True
    pred[6, 1, 1] = True
    assert normalized_surface_dice(pred, ref, spacing, 2.0) == 1.0
    assert normalized_surface_dice(pred, ref, spacing, 2.0) == reference_nsd(pred, ref, spacing, 2.0)
    assert normalized_surface_dice(pred, ref, spacing, 1.99) == pytest.approx(0.5)
    assert normalized_surface_dice(pred, ref, spacing, 1.99) == pytest.approx(reference_nsd(pred, ref, spacing, 1.99))


def test_nsd_2d_square_by_hand():
    # A 2x2 square has 8 contour surfels (the 3x3 blocks around it minus the inner one): 4 straight segments of
    # 1 mm and 4 corner diagonals of sqrt(2)/2 mm. Shifted by 2 pixels along axis 1, each square's outer column of
    # surfels (1 straight + 2 corners) is 2 blocks (2 mm) from the other contour; every other surfel is within 1 mm.
    ref = np.zeros((6, 8), bool)
    pred = np.zeros((6, 8), bool)
    ref[2:4, 2:4] = True
    pred[2:4, 4:6] = True
    diag = math.sqrt(2) / 2
    total = 2 * (4 * 1.0 + 4 * diag)
    far = 2 * (1.0 + 2 * diag)
    assert normalized_surface_dice(pred, ref, (1.0, 1.0), 1.0) == pytest.approx((total - far) / total)
    assert normalized_surface_dice(pred, ref, (1.0, 1.0), 2.0) == pytest.approx(1.0)
    assert normalized_surface_dice(pred, ref, (1.0, 1.0), 1.0) == pytest.approx(
        reference_nsd(pred, ref, (1.0, 1.0), 1.0), abs=1e-12)


def test_nsd_empty_conventions():
    empty = np.zeros((8, 8, 8), bool)
    one = empty.copy()
    one[3:5, 3:5, 3:5] = True
    assert normalized_surface_dice(empty, empty, (1, 1, 1), 2.0) == 1.0  # FLARE's convention
    with np.errstate(invalid="ignore"):
        assert math.isnan(reference_nsd(empty, empty, (1, 1, 1), 2.0))  # the reference leaves it undefined
    # One empty mask: no surfel lies within any distance of an empty surface, so 0. (The reference cannot be run
    # here: it uses np.Inf, which numpy 2 removed.)
    assert normalized_surface_dice(one, empty, (1, 1, 1), 2.0) == 0.0
    assert normalized_surface_dice(empty, one, (1, 1, 1), 2.0) == 0.0


# --- NSD against the reference -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_nsd_matches_reference_random_blobs_3d(seed):
    rng = np.random.default_rng(seed)
    shape = (28, 32, 20)
    spacing = tuple(float(v) for v in rng.choice([0.4, 0.7, 0.8, 1.0, 1.5, 2.5], 3))
    a = blobs(rng, shape)
    b = blobs(rng, shape) if seed % 2 else ndimage.binary_dilation(a, iterations=1) ^ (rng.random(shape) > 0.97)
    for tol in (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0):
        assert normalized_surface_dice(b, a, spacing, tol) == pytest.approx(reference_nsd(b, a, spacing, tol),
                                                                            abs=1e-6), (spacing, tol)


def test_nsd_matches_reference_random_blobs_2d():
    rng = np.random.default_rng(11)
    for spacing in [(1.0, 1.0), (0.7, 2.0)]:
        a, b = blobs(rng, (40, 36)), blobs(rng, (40, 36))
        for tol in (0.0, 1.0, 2.0, 4.0):
            assert normalized_surface_dice(b, a, spacing, tol) == pytest.approx(reference_nsd(b, a, spacing, tol),
                                                                                abs=1e-6)


def test_nsd_matches_reference_shapes_touching_the_border():
    shape = (16, 18, 12)
    spacing = (0.8, 0.8, 2.5)
    ref = np.zeros(shape, bool)
    ref[:, :9, :] = True  # half the volume: touches five faces
    pred = np.zeros(shape, bool)
    pred[:, :11, 3:] = True
    full = np.ones(shape, bool)  # the whole array: its surface is the array's boundary
    corner = np.zeros(shape, bool)
    corner[:4, :4, :4] = True
    for p, r in [(pred, ref), (full, ref), (corner, full), (full, full), (corner, ref)]:
        for tol in (1.0, 2.5, 5.0):
            assert normalized_surface_dice(p, r, spacing, tol) == pytest.approx(reference_nsd(p, r, spacing, tol),
                                                                                abs=1e-6)


def test_nsd_matches_reference_single_voxel_objects():
    shape = (10, 12, 9)
    spacing = (1.0, 0.7, 2.0)
    single = np.zeros(shape, bool)
    single[4, 5, 4] = True
    other = np.zeros(shape, bool)
    other[4, 7, 4] = True
    corner = np.zeros(shape, bool)
    corner[0, 0, 0] = True  # at the array's corner
    blob = np.zeros(shape, bool)
    blob[3:6, 4:8, 3:6] = True
    for p, r in [(single, other), (single, blob), (blob, single), (corner, single), (corner, corner)]:
        for tol in (0.0, 1.0, 1.4, 2.0, 3.0):
            assert normalized_surface_dice(p, r, spacing, tol) == pytest.approx(reference_nsd(p, r, spacing, tol),
                                                                                abs=1e-6)


def test_nsd_matches_reference_on_real_ct_per_organ():
    # Two TotalSegmentator models of the same real CT (FLARE numbering); 3 mm voxels make ties at 3 mm common.
    total = sitk.ReadImage(str(REAL_CT / "ct_sm_labels_total.nii.gz"))
    fast = sitk.ReadImage(str(REAL_CT / "ct_sm_labels_fast.nii.gz"))
    ref, pred = sitk.GetArrayFromImage(total), sitk.GetArrayFromImage(fast)
    spacing = tuple(reversed(total.GetSpacing()))
    compared = 0
    for k in range(1, 14):
        r, p = ref == k, pred == k
        if not r.any() and not p.any():
            assert normalized_surface_dice(p, r, spacing, 2.0) == 1.0  # esophagus: absent from both
            continue
        assert dice(p, r) == pytest.approx(float(sd.compute_dice_coefficient(r, p)), abs=1e-12)
        for tol in (2.0, 3.0, 5.0, 7.0):
            assert normalized_surface_dice(p, r, spacing, tol) == pytest.approx(reference_nsd(p, r, spacing, tol),
                                                                                abs=1e-6), (k, tol)
        compared += 1
    assert compared == 12


# --- bounding boxes and errors -------------------------------------------------------------------------------------


def test_label_bounding_boxes_match_argwhere():
    rng = np.random.default_rng(5)
    labels = np.zeros((20, 22, 18), np.uint8)
    for k in (1, 2, 4):
        labels[blobs(rng, labels.shape, 1.5, 0.62)] = k
    labels[0, 0, 0] = 0
    boxes = label_bounding_boxes(labels, 5)
    assert len(boxes) == 5
    for k in range(1, 6):
        idx = np.argwhere(labels == k)
        if idx.size == 0:
            assert boxes[k - 1] is None
            continue
        expected = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(idx.min(0), idx.max(0)))
        assert boxes[k - 1] == expected
    assert label_bounding_boxes(labels.astype(np.float32), 5) == boxes  # integral floats are accepted


def test_label_bounding_boxes_ignore_negative_and_reject_fractions():
    labels = np.zeros((5, 6), np.int16)
    labels[1:3, 2] = 2
    labels[4, 5] = -1
    assert label_bounding_boxes(labels) == [None, (slice(1, 3), slice(2, 3))]
    with pytest.raises(ValueError, match="non-integer"):
        label_bounding_boxes(np.full((3, 3), 0.5))


def test_bad_input_is_a_clear_error():
    m = np.zeros((4, 4, 4), bool)
    with pytest.raises(ValueError, match="boolean"):
        normalized_surface_dice(m.astype(np.uint8), m, (1, 1, 1), 1.0)
    with pytest.raises(ValueError, match="shapes"):
        dice(m, m[:3])
    with pytest.raises(ValueError, match="spacing_mm has 2 values"):
        normalized_surface_dice(m, m, (1, 1), 1.0)
    with pytest.raises(ValueError, match="tolerance"):
        normalized_surface_dice(m, m, (1, 1, 1), -1.0)
    with pytest.raises(ValueError, match="2 or 3 axes"):
        normalized_surface_dice(np.zeros(4, bool), np.zeros(4, bool), (1,), 1.0)


def test_ties_beyond_the_neighbour_look_up_follow_scipy_arithmetic():
    # Offsets (15, 0, 0) and (9, 12, 0) voxels of 0.2 mm are both 3 mm in exact arithmetic, but scipy's EDT (and so
    # the reference) computes 3.0 for the first and 3.0000000000000004 for the second. Both lie beyond the direct
    # neighbour look-up, so they exercise the k-d tree and its exact re-check of near-ties.
    from cps3d.evaluation.metrics import _within_tolerance

    spacing = np.array([0.2, 0.2, 0.2])
    own = np.zeros((17, 17, 3), bool)
    own[0, 0, 1] = True
    cases = [[(15, 0, 0)], [(9, 12, 0)], [(0, 15, 0)], [(12, 9, 0)], [(9, 12, 0), (15, 0, 0)], [(9, 12, 0), (12, 9, 0)]]
    decisions = []
    for offsets in cases:
        other = np.zeros_like(own)
        for o in offsets:
            other[o[0], o[1], o[2] + 1] = True
        edt = ndimage.distance_transform_edt(~other, sampling=spacing)[0, 0, 1]
        ours = bool(_within_tolerance(own, other, spacing, 3.0)[0])
        assert ours == bool(edt <= 3.0), offsets
        decisions.append(ours)
    assert decisions == [True, False, True, False, True, False]  # the cases do differ
