"""Sampling the parameters of one phantom: anatomy, acquisition and grid (no rendering here).

The anatomy model (patient frame, mm: x to the patient's left, y to the back, z to the head; z = 0 near the renal
hila). Positions are anchored to the spine (vertebral body centre ``yv`` at z = 0), to the front of the abdominal
cavity and to the diaphragm domes, then jittered; sizes scale with a per-case body size and per-organ factors.

* Body: outline with a rounder front and a flatter back that varies along z (waist, pelvis, lower chest); skin,
  subcutaneous fat (thicker for a higher "habitus" draw), muscle wall; ribs 5-12 in the wall, descending forwards.
* Spine along the back of the cavity, psoas and quadratus lumborum muscles beside it, iliac wings low down.
* Vessels: aorta left-anterior of the spine down to its bifurcation; IVC right of the aorta, moving forwards into
  the liver; portal/splenic/superior mesenteric veins (unlabelled) behind the pancreas; iliac vessels.
* Organs: liver (right lobe + tapered left lobe, under the right dome), spleen (left, posterior, cup-shaped),
  kidneys (either side of the spine, right lower, hilum facing forwards-medially), adrenals (thin plates above and
  medial to the upper poles), pancreas (tube from the head inside the duodenal C-loop across the aorta to the tail
  at the splenic hilum), duodenum (C-loop from the pylorus around the head, crossing in front of the aorta),
  stomach (J-shaped tube under the left dome, wall, contents, gas cap in front), gallbladder (under the liver),
  oesophagus (in front of the spine above, joining the stomach at the cardia).
* Unlabelled fill: heart and lungs above the diaphragm, colon (mottled gas and stool) framing the abdomen, small
  bowel loops, bladder, visceral fat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cps3d.options import check_choice
from cps3d.phantoms.params import (
    SIZES,
    Acquisition,
    Blob,
    Body,
    CaseParams,
    Diaphragm,
    Grid,
    Rib,
    SmallBowel,
    Spine,
    Structure,
    Tube,
    Wave,
)


@dataclass(frozen=True)
class SizeSpec:
    """Grid size ranges of one ``size``: in-plane matrix (voxels), slice spacing (mm) and slice count."""

    matrix: tuple[int, int]
    z_spacing: tuple[float, float]
    slices: tuple[int, int]
    square: bool
    z_spacing_choices: tuple[float, ...] = ()


SIZE_SPECS: dict[str, SizeSpec] = {
    # Tests: coarse voxels (about 6-9 mm in-plane), the whole abdomen in about 30-64 voxels per side.
    "small": SizeSpec(matrix=(48, 64), z_spacing=(5.0, 8.0), slices=(28, 64), square=False),
    # Demo: 96-160 in-plane (2.5-5 mm), 48-96 slices of 2.5-5 mm.
    "medium": SizeSpec(matrix=(96, 160), z_spacing=(2.5, 5.0), slices=(48, 96), square=False),
    # Benchmarks: like FLARE, 512 x 512 at sub-millimetre in-plane spacing, 1-5 mm slices, up to hundreds of slices.
    "full": SizeSpec(matrix=(512, 512), z_spacing=(1.0, 5.0), slices=(40, 600), square=True,
                     z_spacing_choices=(1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)),
}

#: Probability that a small organ is absent from a case (resected, atrophic or not visible), as in real scans.
P_ABSENT = {"gallbladder": 0.15, "right_adrenal_gland": 0.12, "left_adrenal_gland": 0.12}
#: Probability that a scan stops short of the liver dome (top) or of the kidneys' lower poles (bottom).
P_PARTIAL_TOP = 0.2
P_PARTIAL_BOTTOM = 0.2


def as_generator(rng: np.random.Generator | int) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")


def check_size(size: str) -> str:
    """Return ``size`` if it is one of SIZES, else raise ValueError suggesting the closest."""
    return check_choice("size", size, SIZES)


class _Draw:
    """Shorthands over one Generator (every draw goes through it, in a fixed order)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def u(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def p(self, prob: float) -> bool:
        return bool(self.rng.random() < prob)

    def waves(self, n: int, amp: float, k: float) -> tuple[Wave, ...]:
        out = []
        for _ in range(n):
            direction = self.rng.normal(size=3)
            direction /= np.linalg.norm(direction) + 1e-12
            kv = direction * self.u(0.6, 1.0) * k
            out.append(Wave(k=(float(kv[0]), float(kv[1]), float(kv[2])), phase=self.u(0, 2 * math.pi),
                            amp=self.u(0.4, 1.0) * amp))
        return tuple(out)


def _v(*xs: float) -> tuple[float, float, float]:
    return (float(xs[0]), float(xs[1]), float(xs[2]))


def sample_case(rng: np.random.Generator | int, size: str = "small") -> CaseParams:
    """Draw the parameters of one phantom.

    ``rng``: a numpy Generator (advanced by this call) or an int seed. ``size``: ``small`` (tests; 48-64 voxels
    across, about 30-64 front to back, 28-64 slices), ``medium`` (demo; 96-160 in-plane, 48-96 slices) or ``full`` (benchmarks;
    512 x 512, 1-5 mm slices, up to a few hundred slices). Returns a :class:`CaseParams` that
    :func:`~cps3d.phantoms.render.render_case` turns into a volume.
    """
    check_size(size)
    d = _Draw(as_generator(rng))
    u = d.u

    # Habitus and body outline.
    obesity = float(d.rng.beta(2.0, 3.0))
    s = u(0.9, 1.1)
    a0 = s * (140 + 35 * obesity + u(-8, 8))
    df0 = s * (95 + 55 * obesity + u(-8, 8))
    db0 = s * (100 + 10 * obesity + u(-6, 6))
    z_knots = (-450.0, -300.0, -200.0, -100.0, 0.0, 100.0, 200.0, 300.0, 450.0)
    jitter = lambda: 1 + u(-0.025, 0.025)  # noqa: E731
    hw_f = (1.10, 1.08, 1.02, 0.97, 1.0, 1.03, 1.04, 1.0, 0.97)
    df_f = (0.95, 1.0, 1.02 + 0.08 * obesity, 1.02 + 0.05 * obesity, 1.0, 0.95, 0.85, 0.85, 0.85)
    db_f = (1.0, 1.0, 0.98, 0.97, 1.0, 1.02, 1.03, 1.02, 1.0)
    skin = u(1.5, 2.5)
    fat_base = 6 + 34 * obesity
    fat = _v(max(4.0, fat_base * u(0.8, 1.2)), max(4.0, fat_base * u(0.9, 1.4)), max(4.0, fat_base * u(0.7, 1.1)))
    muscle = _v(u(10, 15), u(8, 13), u(12, 18))
    body = Body(z_knots=z_knots, half_width=tuple(a0 * f * jitter() for f in hw_f),
                depth_front=tuple(df0 * f * jitter() for f in df_f),
                depth_back=tuple(db0 * f * jitter() for f in db_f), skin_mm=skin, fat_mm=fat, muscle_mm=muscle)
    a_cav = a0 - skin - fat[0] - muscle[0]
    front_cav = -(df0 - skin - fat[1] - muscle[1])  # y of the front of the cavity at z = 0

    # Spine and the diaphragm.
    back_inner = db0 - skin - fat[2]
    spine = Spine(y0=back_inner - u(62, 72), lordosis_mm=u(8, 20), z_lordosis=u(-100, -40),
                  radii=(u(20, 25) * s, u(15, 18) * s), growth=u(0.03, 0.06), period_mm=u(30, 36) * s,
                  phase_mm=u(0, 36), disc_fraction=u(0.18, 0.25), cortex_mm=u(1.5, 2.5),
                  canal_radius=u(8, 10.5), paraspinal_radii=(u(22, 30) * s, u(18, 24) * s))
    yv = spine.y0 + spine.lordosis_mm * (spine.z_lordosis / 200.0) ** 2  # vertebral body centre y at z = 0
    rx_vb = spine.radii[0]
    zr = u(135, 175)
    zl = zr - u(5, 25)
    diaphragm = Diaphragm(z_right=zr, z_left=zl, midline_drop_mm=u(15, 30), back_slope=u(0.2, 0.4))

    # Ribs 5-12 on both sides.
    ribs = []
    z_t12 = u(35, 60)
    rib_period = u(24, 30) * s
    phi_end = {12: (0.40, 0.50), 11: (0.55, 0.65), 10: (0.75, 0.82), 9: (0.80, 0.85), 8: (0.85, 0.88),
               7: (0.88, 0.92), 6: (0.90, 0.95), 5: (0.90, 0.95)}
    for side in (-1, 1):
        for n in range(5, 13):
            ribs.append(Rib(side=side, z_back=z_t12 + (12 - n) * rib_period + u(-4, 4),
                            phi_start=u(0.17, 0.22) * math.pi, phi_end=u(*phi_end[n]) * math.pi,
                            drop_mm=u(45, 65), height_mm=u(8, 11)))

    # HU of tissues (portal-venous phase) and their texture amplitudes.
    tissue_hu = {"air": -1000.0, "skin": u(20, 50), "fat": u(-110, -90), "muscle": u(45, 55),
                 "visceral_fat": u(-110, -85), "cortical_bone": u(700, 950), "cancellous_bone": u(230, 330),
                 "disc": u(70, 100), "csf": u(5, 25), "lung": u(-880, -820), "bowel_wall": u(60, 90),
                 "bowel_content": u(10, 35), "gas": u(-990, -950)}
    tissue_tex = {"air": 0.0, "skin": 5.0, "fat": 8.0, "muscle": 6.0, "visceral_fat": 10.0, "cortical_bone": 60.0,
                  "cancellous_bone": 40.0, "disc": 8.0, "csf": 3.0, "lung": 35.0, "bowel_wall": 8.0,
                  "bowel_content": 8.0, "gas": 15.0}

    structures: list[Structure] = []
    add = structures.append
    muscle_hu = tissue_hu["muscle"]

    # Retroperitoneal muscles first: organs are moulded around them.
    for side in (-1, 1):
        add(Structure(
            name=f"psoas_{'left' if side > 0 else 'right'}", label=0, hu=muscle_hu, texture_hu=6.0, region="any",
            shapes=(Tube(points=(_v(side * (rx_vb + u(6, 10)), yv + u(-4, 4), u(15, 40)),
                                 _v(side * (rx_vb + u(14, 20)), yv + u(-4, 6), -40),
                                 _v(side * u(45, 60), yv - u(0, 10), -170),
                                 _v(side * u(65, 80), yv - u(25, 45), -300)),
                         radii=(4.0, u(14, 18) * s, u(20, 26) * s, u(18, 24) * s)),)))
        add(Structure(
            name=f"quadratus_{'left' if side > 0 else 'right'}", label=0, hu=muscle_hu, texture_hu=6.0, region="any",
            shapes=(Tube(points=(_v(side * u(55, 65), yv + u(32, 42), u(40, 60)),
                                 _v(side * u(70, 85), yv + u(30, 40), -60),
                                 _v(side * u(85, 100), yv + u(25, 35), -130)),
                         radii=(6.0, u(10, 14) * s, 8.0)),)))

    # Great vessels and the oesophagus (they cross the diaphragm).
    zb = u(-110, -75)  # aortic bifurcation
    aorta_pts = (_v(u(26, 33), yv - u(4, 10), 500), _v(u(18, 24), yv - u(16, 22), zl + 10),
                 _v(u(12, 18), yv - u(30, 35), 20), _v(u(4, 10), yv - u(30, 36), zb))
    add(Structure(name="aorta", label=5, hu=u(157, 193), texture_hu=4.0, region="any",
                  shapes=(Tube(points=aorta_pts, radii=(u(11, 14), u(10.5, 13), u(9.5, 12), u(8, 10.5))),)))
    ivc_pts = (_v(-u(12, 18), yv - u(20, 26), zb - 20), _v(-u(22, 28), yv - u(26, 32), 0),
               _v(-u(24, 30), yv - u(36, 44), 80), _v(-u(20, 28), yv - u(44, 54), zr - 15),
               _v(-u(14, 20), yv - u(48, 58), zr + 15))
    add(Structure(name="inferior_vena_cava", label=6, hu=u(127, 153), texture_hu=5.0, region="any",
                  shapes=(Tube(points=ivc_pts, radii=(u(9, 11), u(10, 13), u(11, 13), u(11, 13), u(11, 13)),
                               squash=(1.0, 1.3, 1.0)),)))
    cardia = _v(u(26, 36), yv - u(42, 50), zl - u(22, 32))
    add(Structure(name="esophagus", label=10, hu=u(46, 54), texture_hu=3.0, region="any",
                  shapes=(Tube(points=(_v(u(0, 8), yv - u(26, 32), 500), _v(u(6, 14), yv - u(36, 42), zl + 15),
                                       cardia),
                               radii=(u(7, 9), u(7, 9), u(8, 10)), squash=(1.0, 1.35, 1.0)),)))
    iliac = []
    for side in (-1, 1):
        iliac.append(Tube(points=(aorta_pts[-1], _v(side * u(30, 45), yv - u(18, 26), zb - 60),
                                  _v(side * u(60, 80), yv - u(35, 50), zb - 170)), radii=(u(6, 7.5), 6.0, 5.0)))
    add(Structure(name="iliac_arteries", label=0, hu=u(157, 193), texture_hu=4.0, region="any", shapes=tuple(iliac)))
    iliac_v = []
    for side in (-1, 1):
        iliac_v.append(Tube(points=(ivc_pts[0], _v(side * u(28, 40), yv - u(8, 16), zb - 70),
                                    _v(side * u(60, 78), yv - u(25, 40), zb - 175)), radii=(u(8, 9), 7.5, 6.5)))
    add(Structure(name="iliac_veins", label=0, hu=u(120, 150), texture_hu=5.0, region="any", shapes=tuple(iliac_v)))

    # Pancreas geometry first: the portal system and duodenum are placed around it.
    zp = u(25, 45)
    head = _v(-u(30, 40) * s, yv - u(48, 56), zp)
    uncinate = _v(head[0] + u(12, 18), yv - u(38, 45), zp - u(15, 22))
    neck = _v(u(-8, 4), yv - u(58, 66), zp + u(4, 12))
    pbody = _v(u(25, 35) * s, yv - u(52, 60), neck[2] + u(5, 15))
    tail = _v(u(60, 75) * s, yv - u(18, 32), pbody[2] + u(8, 22))
    pancreas = Tube(points=(uncinate, head, neck, pbody, tail),
                    radii=(u(8, 10), u(16, 20), u(11, 13), u(11, 13), u(9, 12)), squash=(1.0, 1.4, 1.0),
                    waves=d.waves(3, 0.08, 2.0))
    confluence = _v(neck[0] + u(-4, 4), yv - u(48, 53), neck[2] - 5)
    portal = (Tube(points=(confluence, _v(-u(35, 45), yv - u(45, 55), confluence[2] + u(35, 50)),
                           _v(-u(60, 80), yv - u(45, 60), confluence[2] + u(50, 65))), radii=(u(6, 8), u(6.5, 8), 5.0)),
              Tube(points=(confluence, _v(pbody[0], yv - u(42, 47), pbody[2]), _v(tail[0] + u(5, 12), yv - u(8, 18),
                                                                                  tail[2] + 5)),
                   radii=(5.0, u(4, 5.5), u(4, 5))),
              Tube(points=(confluence, _v(u(0, 10), max(yv - u(60, 75), front_cav + 25), u(-60, -30))),
                   radii=(5.5, u(4.5, 6))))
    add(Structure(name="portal_venous_system", label=0, hu=u(150, 180), texture_hu=4.0, region="any", shapes=portal))

    # Kidneys and adrenals.
    kidney_hu = u(160, 190)
    zr_k = u(-20, 5)
    zl_k = zr_k + u(5, 25)
    kidneys = {}
    for side, name, label, zc in ((-1, "right_kidney", 2, zr_k), (1, "left_kidney", 13, zl_k)):
        sk = u(0.9, 1.1) * s
        radii = _v(u(24, 30) * sk, u(22, 28) * sk, u(48, 60) * sk)
        centre = _v(side * u(62, 76) * s, yv + u(-5, 6), zc)
        kidneys[name] = (centre, radii)
        add(Structure(name=name, label=label, hu=kidney_hu + u(-3, 3), texture_hu=6.0,
                      shapes=(Blob(centre=centre, radii=radii,
                                   angles_deg=_v(u(-15, -5), side * u(8, 20), -side * u(20, 35)),
                                   bend=side * u(0.12, 0.25), waves=d.waves(3, 0.05, 2.5)),)))
    (rkc, rkr), (lkc, lkr) = kidneys["right_kidney"], kidneys["left_kidney"]
    adrenal_hu = u(40, 50)
    add(Structure(name="right_adrenal_gland", label=7, hu=adrenal_hu + u(-2, 2), texture_hu=3.0,
                  present=not d.p(P_ABSENT["right_adrenal_gland"]),
                  shapes=(Blob(centre=_v(-u(30, 40), yv - u(6, 16), rkc[2] + 0.95 * rkr[2] + u(12, 24)),
                               radii=_v(u(3.5, 5), u(10, 14), u(12, 18)), angles_deg=_v(0, 0, u(15, 40)),
                               bend=u(0.2, 0.4), waves=d.waves(2, 0.05, 2.0)),)))
    add(Structure(name="left_adrenal_gland", label=8, hu=adrenal_hu + u(-2, 2), texture_hu=3.0,
                  present=not d.p(P_ABSENT["left_adrenal_gland"]),
                  shapes=(Blob(centre=_v(u(30, 40), yv - u(8, 18), lkc[2] + 0.85 * lkr[2] + u(5, 15)),
                               radii=_v(u(3.5, 5), u(10, 15), u(12, 18)), angles_deg=_v(0, 0, -u(15, 40)),
                               bend=-u(0.2, 0.4), waves=d.waves(2, 0.05, 2.0)),)))

    add(Structure(name="pancreas", label=4, hu=u(97, 103), texture_hu=6.0, shapes=(pancreas,)))

    # Duodenum: C-loop from the pylorus around the pancreatic head, across the aorta, up to the flexure.
    pylorus = _v(u(-12, 0), max(yv - u(85, 100), front_cav + 28), zp + u(20, 35))
    bulb = _v(-u(35, 45) * s, max(yv - u(68, 80), front_cav + 22), pylorus[2] + u(0, 8))
    duo_pts = (pylorus, bulb,
               _v(head[0] - u(20, 28), yv - u(42, 52), zp + u(5, 15)),
               _v(head[0] - u(18, 26), yv - u(40, 50), zp - u(30, 40)),
               _v(-u(15, 25), yv - u(47, 55), zp - u(40, 50)), _v(u(5, 15), yv - u(52, 58), zp - u(38, 48)),
               _v(u(30, 40), yv - u(45, 55), zp - u(15, 25)))
    add(Structure(name="duodenum", label=12, hu=u(47, 73), texture_hu=6.0,
                  shapes=(Tube(points=duo_pts, radii=(u(9, 12), u(11, 14), u(11, 14), u(11, 14), u(10, 13),
                                                      u(10, 12), u(10, 12)), waves=d.waves(2, 0.06, 2.0)),)))

    # Gallbladder under the liver.
    add(Structure(name="gallbladder", label=9, hu=u(7, 13), texture_hu=1.5, present=not d.p(P_ABSENT["gallbladder"]),
                  shapes=(Blob(centre=_v(bulb[0] - u(18, 28), bulb[1] - u(5, 15), bulb[2] + u(15, 30)),
                               radii=_v(u(12, 17), u(13, 19), u(28, 42)),
                               angles_deg=_v(u(25, 50), u(-15, 15), u(-20, 20)), bend=u(0.1, 0.3),
                               waves=d.waves(2, 0.04, 2.0)),)))

    # Spleen: left, posterior, under the left dome; cup-shaped with the hollow facing medially.
    sp = u(0.85, 1.15) * s
    add(Structure(name="spleen", label=3, hu=u(117, 123), texture_hu=3.0,
                  shapes=(Blob(centre=_v(a_cav - u(25, 35), yv + u(0, 20), zl - u(55, 75)),
                               radii=_v(u(18, 25) * sp, u(45, 60) * sp, u(38, 52) * sp),
                               angles_deg=_v(u(10, 25), u(-10, 10), -u(25, 45)), bend=u(0.15, 0.3),
                               waves=d.waves(3, 0.05, 2.5)),)))

    # Liver: right lobe under the right dome and a tapered left lobe in front; cut by the diaphragm on top.
    sl = u(0.88, 1.12) * s
    add(Structure(name="liver", label=1, hu=u(108, 122), texture_hu=5.0,
                  shapes=(Blob(centre=_v(-a_cav * u(0.4, 0.5), u(-15, 5), zr - u(65, 80)),
                               radii=_v(u(62, 76) * sl, u(70, 85) * sl, u(72, 90) * sl),
                               angles_deg=_v(u(-10, 10), u(-10, 10), u(-15, 15)), waves=d.waves(3, 0.05, 2.0)),
                          Blob(centre=_v(u(0, 20), front_cav + u(30, 45), zr - u(30, 50)),
                               radii=_v(u(50, 68) * sl, u(24, 36) * sl, u(32, 45) * sl),
                               angles_deg=_v(u(-15, 15), u(-20, 0), u(-20, 10)), taper=u(0.2, 0.4),
                               waves=d.waves(2, 0.05, 2.0)))))

    # Stomach: fundus under the left dome, body down the left front, antrum across to the pylorus.
    dist = u(0.75, 1.2)
    st_pts = (cardia, _v(u(40, 55) * s, yv - u(10, 30), zl - u(10, 20)),
              _v(u(55, 72) * s, yv - u(50, 70), zl - u(45, 60)),
              _v(u(45, 62) * s, max(yv - u(80, 95), front_cav + 30), zl - u(85, 105)),
              _v(u(10, 25), max(yv - u(90, 105), front_cav + 25), pylorus[2] - u(0, 10)), pylorus)
    st_r = (u(12, 16), u(25, 38) * dist, u(28, 38) * dist, u(24, 32) * dist, u(16, 24) * dist, u(9, 12))
    front_most = min(p[1] - r for p, r in zip(st_pts, st_r))
    gas_depth = 0.0 if d.p(0.2) else u(3, 20)
    add(Structure(name="stomach", label=11, hu=u(5, 35), texture_hu=4.0, wall_mm=u(3, 6), wall_hu=u(45, 55),
                  gas="level", gas_y=front_most + gas_depth,
                  shapes=(Tube(points=st_pts, radii=st_r, waves=d.waves(2, 0.05, 2.0)),)))

    # Unlabelled: heart above the diaphragm, iliac wings, colon, bladder.
    add(Structure(name="heart", label=0, hu=u(110, 140), texture_hu=10.0, region="above",
                  shapes=(Blob(centre=_v(u(10, 30), -u(15, 35), zr + u(55, 75)), radii=_v(u(60, 75), u(48, 60), u(55, 70)),
                               angles_deg=_v(0, 0, -u(20, 40))),)))
    for side in (-1, 1):
        add(Structure(name=f"iliac_wing_{'left' if side > 0 else 'right'}", label=0, hu=tissue_hu["cancellous_bone"],
                      texture_hu=30.0, region="any", onto=("cavity", "muscle"), wall_mm=2.0,
                      wall_hu=tissue_hu["cortical_bone"],
                      shapes=(Blob(centre=_v(side * u(95, 115) * s, yv + u(0, 20), u(-200, -170)),
                                   radii=_v(u(6, 9), u(50, 65) * s, u(45, 60)), angles_deg=_v(0, 0, side * u(20, 35)),
                                   bend=side * u(0.2, 0.35)),)))
    colon_pts = (_v(-u(80, 95) * s, yv - u(40, 70), u(-170, -130)), _v(-u(85, 100) * s, yv - u(20, 45), u(-40, -10)),
                 _v(-u(70, 85) * s, yv - u(70, 90), u(10, 40)), _v(u(-10, 10), front_cav + u(20, 35), u(-40, 20)),
                 _v(u(75, 90) * s, yv - u(30, 50), u(50, 90)), _v(u(85, 100) * s, yv - u(15, 35), u(-40, 0)),
                 _v(u(75, 95) * s, yv - u(20, 40), u(-150, -120)), _v(u(20, 50), -u(20, 50), u(-230, -200)),
                 _v(0, yv + u(0, 15), -320))
    add(Structure(name="colon", label=0, hu=u(0, 40), texture_hu=20.0, wall_mm=2.5, wall_hu=u(35, 50), gas="mottled",
                  gas_fraction=u(0.3, 0.7),
                  shapes=(Tube(points=colon_pts, radii=(u(24, 30), u(20, 26), u(20, 25), u(20, 25), u(20, 24),
                                                        u(17, 22), u(17, 22), u(15, 20), u(15, 20)),
                               waves=d.waves(3, 0.1, 3.0)),)))
    add(Structure(name="bladder", label=0, hu=u(0, 15), texture_hu=2.0,
                  shapes=(Blob(centre=_v(u(-5, 5), -u(10, 40), u(-290, -260)), radii=_v(u(35, 50), u(30, 45), u(30, 40)),
                               waves=d.waves(2, 0.04, 2.0)),)))

    small_bowel = SmallBowel(z_top=u(20, 60), fraction=u(0.45, 0.7), scale_mm=u(11, 16),
                             wall_hu=tissue_hu["bowel_wall"], content_hu=tissue_hu["bowel_content"],
                             gas_fraction=u(0.0, 0.08))
    acquisition = Acquisition(noise_sd=u(6, 18), bias_mult=_v4(d, 0.002), bias_add=(u(-1.5, 1.5), *_v4(d, 0.5)[:3]),
                              texture_mm=u(4, 7))

    grid, notes = _sample_grid(d, size, body, zr, obesity)
    seed = int(d.rng.integers(0, 2**31 - 1))
    return CaseParams(size=size, seed=seed, grid=grid, body=body, spine=spine, ribs=tuple(ribs), diaphragm=diaphragm,
                      structures=tuple(structures), small_bowel=small_bowel, acquisition=acquisition,
                      tissue_hu=tissue_hu, tissue_texture_hu=tissue_tex, notes=notes)


def _v4(d: _Draw, amp: float) -> tuple[float, float, float, float]:
    return (d.u(-amp, amp), d.u(-amp, amp), d.u(-amp, amp), d.u(-amp, amp))


def _sample_grid(d: _Draw, size: str, body: Body, z_dome: float, obesity: float) -> tuple[Grid, dict]:
    """Field of view, matrix, spacing, slice count and placement of the scan."""
    spec = SIZE_SPECS[size]
    u = d.u
    partial_top = d.p(P_PARTIAL_TOP)
    partial_bottom = d.p(P_PARTIAL_BOTTOM)
    z_top = z_dome + (u(-45, -5) if partial_top else u(15, 110))
    z_bottom = u(-45, 15) if partial_bottom else u(-320, -90)
    if spec.z_spacing_choices:
        sz = float(spec.z_spacing_choices[int(d.rng.integers(len(spec.z_spacing_choices)))])
    else:
        sz = u(*spec.z_spacing)
    nz = int(round((z_top - z_bottom) / sz)) + 1
    nz = int(min(max(nz, spec.slices[0]), spec.slices[1]))
    z_centre = z_top - (nz - 1) * sz / 2
    z_lo = z_top - (nz - 1) * sz
    knots = np.asarray(body.z_knots)
    zs = np.linspace(z_lo, z_top, 16)
    half_width = float(np.interp(zs, knots, body.half_width).max())
    depth = float((np.interp(zs, knots, body.depth_front) + np.interp(zs, knots, body.depth_back)).max())
    off_x, off_y = u(-15, 15), u(-12, 12)
    truncated = d.p(0.1)
    fov_x = 2 * (half_width + abs(off_x)) * (u(0.92, 1.0) if truncated else u(1.03, 1.25))
    nx = int(d.rng.integers(spec.matrix[0], spec.matrix[1] + 1))
    sxy = fov_x / nx
    if spec.square:
        ny = nx
    else:
        ny = int(round((depth + 2 * abs(off_y)) * u(1.08, 1.3) / sxy))
        ny = int(min(max(ny, math.ceil(0.6 * nx)), nx))
    y_centre = (float(np.interp(0.0, knots, body.depth_back)) - float(np.interp(0.0, knots, body.depth_front))) / 2
    grid = Grid(shape=(nz, ny, nx), spacing=(sxy, sxy, sz), centre=(off_x, y_centre + off_y, z_centre),
                yaw_deg=u(-5, 5), patient_offset=(u(-20, 20), u(-40, 40), u(-1200, 200)))
    notes = {"partial_top": partial_top, "partial_bottom": partial_bottom, "truncated_fov": truncated,
             "habitus": obesity, "scan_z_range_mm": [z_lo, z_top]}
    return grid, notes
