"""The forced-spacing rule (DESIGN section 5) and the detection of a scan's through-plane axis.

Expected values are worked out by hand from the rule: S < 150 keeps the scan's slice spacing, 150 <= S <= 600 gets
sz, S > 600 gets sz * max(0.8, 600 / S).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from cps3d.inference.forced_spacing import (
    PRESETS,
    ForcedSpacing,
    assumed_spacing,
    force_spacing_on_properties,
    in_plane_axes,
    parse_forced_spacing,
    through_plane_axis,
)

ORIGINAL_Z = 2.5  # mm, the scans' own slice spacing in the table below

# (slices, expected through-plane spacing) per preset, by hand
TABLE = {
    "paper": [  # sz = 0.5
        (1, 2.5), (149, 2.5), (150, 0.5), (600, 0.5), (601, 0.5 * 600 / 601), (750, 0.4), (1000, 0.4), (3000, 0.4),
    ],
    "authors": [  # sz = 1.5
        (1, 2.5), (149, 2.5), (150, 1.5), (600, 1.5), (601, 1.5 * 600 / 601), (750, 1.2), (1000, 1.2), (3000, 1.2),
    ],
}
IN_PLANE = {"paper": 0.75, "authors": 1.0}

IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)  # LPS
RAS = (-1, 0, 0, 0, -1, 0, 0, 0, 1)
# index axis i -> posterior (+y), j -> left (+x), k -> inferior (-z); columns of the row-major matrix
PLI = (0, 1, 0,
       1, 0, 0,
       0, 0, -1)
# sagittal: i -> posterior, j -> inferior, k -> left: slices are stacked along k, head-foot runs along j
SAGITTAL = (0, 0, 1,
            1, 0, 0,
            0, -1, 0)
# head-foot along index axis i: i -> superior, j -> left, k -> anterior (-y)
Z_FIRST = (0, 1, 0,
           0, 0, -1,
           1, 0, 0)


def rotation_about_x(deg: float) -> tuple[float, ...]:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return (1, 0, 0, 0, c, -s, 0, s, c)


@pytest.mark.parametrize("preset", ["paper", "authors"])
@pytest.mark.parametrize("row", range(8))
def test_rule_over_slice_counts(preset, row):
    n_slices, expected_z = TABLE[preset][row]
    rule = PRESETS[preset]
    sx, sy, sz = assumed_spacing((0.6, 0.7, ORIGINAL_Z), (512, 480, n_slices), IDENTITY, rule)
    assert sx == pytest.approx(IN_PLANE[preset]) and sy == pytest.approx(IN_PLANE[preset])
    assert sz == pytest.approx(expected_z, rel=1e-12)


def test_presets_are_the_papers_and_the_authors():
    assert (PRESETS["paper"].sx, PRESETS["paper"].sy, PRESETS["paper"].sz) == (0.75, 0.75, 0.5)
    assert (PRESETS["authors"].sx, PRESETS["authors"].sy, PRESETS["authors"].sz) == (1.0, 1.0, 1.5)
    assert PRESETS["paper"].min_slices == 150 and PRESETS["paper"].max_slices == 600
    assert PRESETS["paper"].min_factor == 0.8


def test_thresholds_and_floor_are_configurable():
    rule = ForcedSpacing(1.0, 1.0, 2.0, min_slices=10, max_slices=20, min_factor=0.5)
    # by hand: 9 < 10 keeps 3.0; 10..20 -> 2.0; 30 -> 2 * max(0.5, 20/30); 50 -> 2 * max(0.5, 0.4) = 1.0
    expected = {9: 3.0, 10: 2.0, 20: 2.0, 30: 2.0 * 20 / 30, 50: 1.0}
    for n, z in expected.items():
        assert rule.through_plane_spacing(n, 3.0) == pytest.approx(z), n


@pytest.mark.parametrize("direction, axis", [
    (IDENTITY, 2), (RAS, 2), (PLI, 2), (SAGITTAL, 1), (Z_FIRST, 0),
    (rotation_about_x(20), 2),   # mildly oblique: k still closest to head-foot (cos 20 > sin 20)
    (rotation_about_x(60), 1),   # strongly tilted: j is now closer (sin 60 > cos 60)
    (rotation_about_x(-60), 1),  # the sign of the tilt does not matter
])
def test_through_plane_axis_for_permuted_and_flipped_directions(direction, axis):
    assert through_plane_axis(direction) == axis


def test_slice_count_is_taken_along_the_detected_axis_and_in_plane_spacings_follow_left_right():
    rule = ForcedSpacing(0.6, 0.7, 0.5)
    # sagittal scan: 300 slices along index axis j (head-foot); axis k points left -> sx, axis i posterior -> sy
    assert in_plane_axes(SAGITTAL) == (2, 0)
    assert assumed_spacing((0.9, 1.0, 1.1), (256, 300, 40), SAGITTAL, rule) == pytest.approx((0.7, 0.5, 0.6))
    # the same scan with only 100 head-foot slices keeps its own 1.0 mm along j, although k has 40 "slices"
    assert assumed_spacing((0.9, 1.0, 1.1), (256, 100, 40), SAGITTAL, rule) == pytest.approx((0.7, 1.0, 0.6))
    # head-foot along i: 700 slices there -> 0.5 * max(0.8, 600/700)
    got = assumed_spacing((2.0, 0.8, 0.8), (700, 512, 512), Z_FIRST, rule)
    assert got == pytest.approx((0.5 * 600 / 700, 0.6, 0.7))
    # P-L-I: j points left -> sx on j, i posterior -> sy on i; k inferior is through-plane
    assert assumed_spacing((0.8, 0.9, 3.0), (200, 220, 160), PLI, rule) == pytest.approx((0.7, 0.6, 0.5))


def test_properties_are_rewritten_in_array_order_and_geometry_is_kept():
    # nnU-Net's SimpleITK reader: array (k, j, i), properties['spacing'] reversed; sitk_stuff in index order
    props = {"spacing": [1.1, 1.0, 0.9], "sitk_stuff": {"spacing": (0.9, 1.0, 1.1), "origin": (1.0, 2.0, 3.0),
                                                       "direction": SAGITTAL}}
    before = dict(props["sitk_stuff"])
    info = force_spacing_on_properties(props, (40, 300, 256), ForcedSpacing(0.6, 0.7, 0.5))
    assert props["spacing"] == pytest.approx([0.6, 0.5, 0.7])  # (k, j, i) of (0.7, 0.5, 0.6)
    assert props["sitk_stuff"] == before
    assert info["through_plane_axis"] == 1 and info["n_slices"] == 300
    assert info["original_spacing"] == [1.1, 1.0, 0.9]


def test_nibabel_properties_give_the_same_axes():
    # NibabelIO: RAS affine (columns = voxel axes scaled by spacing), array transposed to (k, j, i)
    affine = np.eye(4)
    affine[:3, :3] = np.array(SAGITTAL, float).reshape(3, 3) * np.array([[-1], [-1], [1]]) * [0.9, 1.0, 1.1]
    props = {"spacing": [1.1, 1.0, 0.9], "nibabel_stuff": {"original_affine": affine}}
    force_spacing_on_properties(props, (40, 300, 256), ForcedSpacing(0.6, 0.7, 0.5))
    assert props["spacing"] == pytest.approx([0.6, 0.5, 0.7])


def test_reader_without_geometry_is_a_clear_error():
    with pytest.raises(ValueError, match="direction cosines"):
        force_spacing_on_properties({"spacing": [1.0, 1.0, 1.0]}, (10, 10, 10), PRESETS["paper"])


def test_parse_forced_spacing():
    assert parse_forced_spacing(None) is None
    assert parse_forced_spacing("off") is None
    assert parse_forced_spacing("paper") is PRESETS["paper"]
    assert parse_forced_spacing("Authors") is PRESETS["authors"]
    custom = parse_forced_spacing("0.8, 0.9,1.25")
    assert (custom.sx, custom.sy, custom.sz) == (0.8, 0.9, 1.25)
    with pytest.raises(ValueError, match="did you mean 'paper'"):
        parse_forced_spacing("papr")
    with pytest.raises(ValueError, match="SX,SY,SZ"):
        parse_forced_spacing("1,2")
    with pytest.raises(ValueError, match="positive"):
        parse_forced_spacing("1,-2,1")


@pytest.mark.parametrize("kwargs, match", [
    (dict(sx=0, sy=1, sz=1), "sx"),
    (dict(sx=1, sy=float("nan"), sz=1), "sy"),
    (dict(sx=1, sy=1, sz=1, min_slices=700, max_slices=600), "must not exceed"),
    (dict(sx=1, sy=1, sz=1, min_factor=0), "min_factor"),
    (dict(sx=1, sy=1, sz=1, min_factor=1.5), "min_factor"),
    (dict(sx=1, sy=1, sz=1, max_slices=0), "max_slices"),
])
def test_invalid_rules_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ForcedSpacing(**kwargs)


def test_rule_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["paper"].sz = 1.0  # type: ignore[misc]


def test_degenerate_direction_is_rejected():
    with pytest.raises(ValueError, match="9 values"):
        through_plane_axis((1, 0, 0, 1))
    with pytest.raises(ValueError, match="invalid axis"):
        through_plane_axis((1, 0, 0, 0, 0, 0, 0, 0, 1))
