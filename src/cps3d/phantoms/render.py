"""Rendering phantom parameters into an int16 CT volume (HU) and a uint8 FLARE label map on the same grid.

Rendering is a pure function of :class:`~cps3d.phantoms.params.CaseParams`: every random pattern (texture, noise,
bowel loops) is drawn from generators seeded with ``params.seed``, in an order fixed by the grid alone.

How a volume is built (all in float32/uint8, vectorised numpy, one bounding box or slab at a time):

1. body layers, slab by slab: air, skin, subcutaneous fat, muscle wall, cavity; ribs inside the wall;
2. spine, discs, canal and paraspinal muscles inside the spine's bounding box;
3. every structure of ``params.structures`` in order, inside its own bounding box; a structure only claims voxels
   of the tissues it may replace, so the first structure to claim a voxel keeps it (exclusive labels);
4. small-bowel loops and lungs fill what is left of the cavity below/above the diaphragm; the rest is visceral fat;
5. intensities, slab by slab: a per-tissue mean and texture amplitude, an in-plane blur of about one voxel on
   sub-millimetre grids (the scanner's resolution), correlated noise scaled to the voxel size, a smooth bias field.

Tissues are tracked as small integer "material" codes; intensities are only computed in step 5.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from cps3d.phantoms.params import CaseParams, Grid, Structure, Vec3
from cps3d.phantoms.shapes import Frame, SmoothField, structure_box, structure_depth

log = logging.getLogger(__name__)

# Material codes. AIR..CAVITY are nested body layers: their code is the number of layers a voxel is inside of.
AIR, SKIN, FAT, MUSCLE, CAVITY = 0, 1, 2, 3, 4
CORTEX, MARROW, DISC, CSF, LUNG, BOWEL_WALL, BOWEL_CONTENT, GAS = 5, 6, 7, 8, 9, 10, 11, 12
_FIRST_STRUCTURE_CODE = 32  # structure i uses codes 32 + 2i (main) and 33 + 2i (wall)
_TARGET_CODES = {"cavity": CAVITY, "muscle": MUSCLE, "fat": FAT}

# Tissue names of CaseParams.tissue_hu for the fixed material codes.
_TISSUE_OF_CODE = {
    AIR: "air", SKIN: "skin", FAT: "fat", MUSCLE: "muscle", CAVITY: "visceral_fat", CORTEX: "cortical_bone",
    MARROW: "cancellous_bone", DISC: "disc", CSF: "csf", LUNG: "lung", BOWEL_WALL: "bowel_wall",
    BOWEL_CONTENT: "bowel_content", GAS: "gas",
}

# Voxels per processing slab (body layers, intensities): keeps temporaries small and cache-friendly.
_SLAB_VOXELS = 1 << 20
# Structures thinner than this fraction of the coarsest voxel spacing are thickened so they stay visible.
_MIN_RADIUS_FRACTION = 0.55
# Grids with in-plane spacing up to this (mm) get an in-plane blur of about one voxel (the scanner's resolution).
PSF_MAX_SPACING_MM = 1.0
# Voxel volume (mm^3) at which Acquisition.noise_sd holds: 0.8 x 0.8 x 2.5 mm, a typical FLARE reconstruction.
NOISE_REFERENCE_VOXEL_MM3 = 1.6
# Field seeds: independent random streams derived from params.seed.
_FIELD_TEXTURE, _FIELD_NOISE, _FIELD_BOWEL, _FIELD_BOWEL_GAS, _FIELD_MOTTLE = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class Geometry:
    """Image geometry in SimpleITK conventions: ``spacing`` (sx, sy, sz) mm, ``origin`` (world mm of voxel
    [0, 0, 0]), ``direction`` (row-major 3x3 direction cosines), ``shape`` (nz, ny, nx) of the arrays."""

    shape: tuple[int, int, int]
    spacing: Vec3
    origin: Vec3
    direction: tuple[float, ...]

    @classmethod
    def of_grid(cls, grid: Grid) -> Geometry:
        return cls(tuple(int(n) for n in grid.shape), tuple(float(s) for s in grid.spacing),  # type: ignore[arg-type]
                   tuple(float(o) for o in grid.origin), tuple(float(d) for d in grid.direction))  # type: ignore[arg-type]

    def to_sitk(self, array: np.ndarray):
        """Wrap a ``[z, y, x]`` array into a SimpleITK image carrying this geometry."""
        import SimpleITK as sitk

        if tuple(array.shape) != tuple(self.shape):
            raise ValueError(f"array shape {array.shape} does not match the geometry's shape {self.shape}")
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img


# --------------------------------------------------------------------------------------------------------------
# Anatomy helpers.


def _diaphragm_z(p: CaseParams, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height (mm) of the diaphragm above the patient-frame point (x, y): two domes (right higher), lower at the
    midline, laterally and towards the back."""
    d = p.diaphragm
    w = 0.5 * (1 + np.tanh(x / 40.0))
    top = d.z_right * (1 - w) + d.z_left * w
    top = top - d.midline_drop_mm * np.exp(-(x / 60.0) ** 2) - 40.0 * (np.abs(x) / 160.0) ** 4
    return (top - d.back_slope * np.maximum(y, 0)).astype(np.float32)


def _spine_y(p: CaseParams, z: np.ndarray) -> np.ndarray:
    s = p.spine
    return (s.y0 + s.lordosis_mm * ((z - s.z_lordosis) / 200.0) ** 2).astype(np.float32)


def _vertebra_phase(p: CaseParams, z: np.ndarray) -> np.ndarray:
    """Position within the vertebral period, in [0, 1): [0, disc_fraction) is the disc."""
    s = p.spine
    return np.mod((z - s.phase_mm) / s.period_mm, 1.0).astype(np.float32)


def _slabs(n_slices: int, slice_voxels: int, max_voxels: int = _SLAB_VOXELS) -> list[slice]:
    step = max(1, max_voxels // max(slice_voxels, 1))
    return [slice(k, min(k + step, n_slices)) for k in range(0, n_slices, step)]


def _col(v: np.ndarray) -> np.ndarray:
    """Per-slice values as a (n, 1, 1) float32 column that broadcasts over [z, y, x]."""
    return v.astype(np.float32)[:, None, None]


def _render_body(p: CaseParams, frame: Frame, material: np.ndarray) -> None:
    """Body layers and ribs, slab by slab."""
    b = p.body
    nz, ny, nx = frame.shape
    x, y = frame.xy(slice(0, ny), slice(0, nx))
    front = y < 0
    x2, y2 = x * x, y * y
    x3, y3 = np.abs(x) ** 3, np.abs(y) ** 3
    knots = np.asarray(b.z_knots, dtype=np.float64)
    fat, mus = np.asarray(b.fat_mm), np.asarray(b.muscle_mm)
    insets = [np.zeros(3), np.full(3, b.skin_mm), b.skin_mm + fat, b.skin_mm + fat + mus]  # (lateral, front, back)
    # Angle around the body from the posterior midline (0) to the anterior midline (pi), for ribs.
    phi = np.arctan2(np.abs(x), y).astype(np.float32)
    side = np.where(x >= 0, 1, -1).astype(np.int8)
    for ks in _slabs(nz, ny * nx):
        z = frame.z(ks).astype(np.float64)
        a = np.interp(z, knots, b.half_width)
        df = np.interp(z, knots, b.depth_front)
        db = np.interp(z, knots, b.depth_back)
        code = np.zeros((ks.stop - ks.start, ny, nx), dtype=np.uint8)
        level = {}
        for n, inset in enumerate(insets):
            aa = np.maximum(a - inset[0], 1.0)
            ff = np.maximum(df - inset[1], 1.0)
            bb = np.maximum(db - inset[2], 1.0)
            val = np.where(front, x2 * _col(1 / aa**2) + y2 * _col(1 / ff**2),
                           x3 * _col(1 / aa**3) + y3 * _col(1 / bb**3))
            code += val <= 1
            if n >= 2:
                level[n] = val
        # Ribs: inside the muscle wall, between the fat-inner (n=2) and cavity (n=3) outlines.
        wall = code == MUSCLE
        if p.ribs and wall.any():
            kk, jj, ii = np.nonzero(wall)
            v2, v3 = level[2][kk, jj, ii], level[3][kk, jj, ii]
            t = (1 - v2) / np.maximum((1 - v2) + (v3 - 1), 1e-6)  # 0 at the outer, 1 at the inner wall outline
            ph, sd, zz = phi[jj, ii], side[jj, ii], z.astype(np.float32)[kk]
            bone = np.zeros(len(kk), dtype=np.uint8)
            for rib in p.ribs:
                centre = np.float32(rib.z_back) - np.float32(rib.drop_mm) * (ph - np.float32(rib.phi_start))
                # Elliptical cross-section in (height, depth in the wall): cortex around a marrow core.
                e = ((zz - centre) / np.float32(rib.height_mm / 2)) ** 2 + ((t - 0.55) / 0.4) ** 2
                hit = (sd == rib.side) & (ph >= rib.phi_start) & (ph <= rib.phi_end) & (e < 1)
                core = hit & (e < 0.35)
                bone = np.where(hit, np.maximum(bone, np.where(core, MARROW, CORTEX)), bone).astype(np.uint8)
            sel = bone > 0
            code[kk[sel], jj[sel], ii[sel]] = bone[sel]
        material[ks] = code


def _render_spine(p: CaseParams, frame: Frame, material: np.ndarray) -> None:
    """Vertebral bodies, discs, canal, posterior elements and paraspinal muscles (in the spine's bounding box)."""
    s = p.spine
    nz = frame.shape[0]
    zall = frame.z(slice(0, nz))
    y_all = _spine_y(p, zall)
    grow_all = 1 + s.growth * np.clip(-zall / 100.0, -2, 3)
    rx_max, ry_max = s.radii[0] * grow_all.max(), s.radii[1] * grow_all.max()
    reach_x = rx_max + 30 + 2 * s.paraspinal_radii[0]
    lo = np.array([-reach_x, float(y_all.min()) - ry_max - 5, float(zall.min())])
    hi = np.array([reach_x, float(y_all.max()) + ry_max + 2 * s.canal_radius + 60, float(zall.max())])
    box = frame.box(lo, hi)
    if box is None:
        return
    x, y = frame.xy(box[1], box[2])
    x3 = x[None]
    for chunk in _chunks(box):
        z = frame.z(chunk[0])
        yv = _spine_y(p, z)[:, None, None]
        grow = (1 + s.growth * np.clip(-z / 100.0, -2, 3)).astype(np.float32)[:, None, None]
        rx, ry = s.radii[0] * grow, s.radii[1] * grow
        phase = _vertebra_phase(p, z)[:, None, None]
        is_disc = phase < s.disc_fraction
        dy = y[None] - yv
        ell = (x3 / rx) ** 2 + (dy / ry) ** 2
        shell = ell > (1 - s.cortex_mm / ry) ** 2
        yc = ry + s.canal_radius + 2  # canal centre, relative to the vertebral body centre
        rc2 = x3**2 + (dy - yc) ** 2
        canal = rc2 <= s.canal_radius**2
        arch = (rc2 <= (s.canal_radius + 5) ** 2) & (dy - yc > -0.4 * s.canal_radius) \
            & (phase > s.disc_fraction) & (phase < 0.85)
        spinous = ((x3 / 4.5) ** 2 + ((dy - yc - s.canal_radius - 16) / 16) ** 2 <= 1) & (phase > 0.2) & (phase < 0.8)
        transverse = (np.abs(dy - yc + 2) < 3.5) & (np.abs(x3) < rx + 18) & (phase > 0.35) & (phase < 0.55)
        para_x = s.canal_radius + 5 + s.paraspinal_radii[0]
        para = (((np.abs(x3) - para_x) / s.paraspinal_radii[0]) ** 2
                + ((dy - yc - 6 - s.paraspinal_radii[1]) / s.paraspinal_radii[1]) ** 2) <= 1
        m = material[chunk]
        inside_body = m >= FAT
        m[para & ((m == CAVITY) | (m == MUSCLE))] = MUSCLE
        vb = inside_body & (ell <= 1)
        m[vb & ~is_disc] = np.where(shell, CORTEX, MARROW)[vb & ~is_disc]
        m[vb & is_disc] = DISC
        m[inside_body & (arch | spinous | transverse) & (ell > 1)] = CORTEX
        m[inside_body & canal] = CSF


def _chunks(box: tuple[slice, slice, slice], max_voxels: int = 4 * _SLAB_VOXELS) -> list[tuple[slice, slice, slice]]:
    """Split a voxel box along z into chunks of at most about ``max_voxels`` (bounds temporary memory)."""
    plane = (box[1].stop - box[1].start) * (box[2].stop - box[2].start)
    return [(ks, box[1], box[2]) for ks in
            (slice(box[0].start + k.start, box[0].start + k.stop) for k in _slabs(box[0].stop - box[0].start, plane,
                                                                                    max_voxels))]


def _paint_structure(p: CaseParams, index: int, s: Structure, frame: Frame, material: np.ndarray,
                     label: np.ndarray, floor: float) -> int:
    """Paint one structure, chunk by chunk of its bounding box; returns the number of voxels it claimed."""
    box = structure_box(s, frame, floor)
    if box is None:
        return 0
    main, wall_code = _FIRST_STRUCTURE_CODE + 2 * index, _FIRST_STRUCTURE_CODE + 2 * index + 1
    total = 0
    for chunk in _chunks(box):
        m = material[chunk]
        allowed = np.zeros(m.shape, dtype=bool)
        for target in s.onto:
            allowed |= m == _TARGET_CODES[target]
        if not allowed.any():
            continue
        depth = structure_depth(s, frame, chunk, floor)
        paint = allowed & (depth > 0)
        if s.region != "any":
            x, y = frame.xy(chunk[1], chunk[2])
            z = frame.z(chunk[0])[:, None, None]
            below = z < _diaphragm_z(p, x, y)[None]
            paint &= below if s.region == "below" else ~below
        n = int(np.count_nonzero(paint))
        if n == 0:
            continue
        total += n
        codes = np.full(m.shape, main, dtype=np.uint8)
        lumen = paint
        if s.wall_mm > 0:
            wall = depth < s.wall_mm
            codes[wall] = wall_code
            lumen = paint & ~wall
        if s.gas == "level":
            _, y = frame.xy(chunk[1], chunk[2])
            codes[lumen & (y[None] < s.gas_y)] = GAS
        elif s.gas == "mottled" and s.gas_fraction > 0:
            field = SmoothField(p.seed, _FIELD_MOTTLE * 1000 + index, frame, 5.0).box(chunk)
            values = field[lumen]
            if values.size:
                threshold = np.quantile(values, 1 - s.gas_fraction)
                codes[lumen & (field > threshold)] = GAS
        m[paint] = codes[paint]
        if s.label:
            label[chunk][paint] = s.label
    return total


def _render_fill(p: CaseParams, frame: Frame, material: np.ndarray) -> None:
    """Small bowel below the diaphragm and lungs above it, in what is left of the cavity."""
    nz, ny, nx = frame.shape
    full_xy = (slice(0, ny), slice(0, nx))
    x, y = frame.xy(*full_xy)
    zd = _diaphragm_z(p, x, y)
    sb = p.small_bowel
    zall = frame.z(slice(0, nz))
    ks = np.nonzero(zall < sb.z_top)[0]
    if ks.size and sb.fraction > 0:
        bowel_field = SmoothField(p.seed, _FIELD_BOWEL, frame, sb.scale_mm)
        gas_field = SmoothField(p.seed, _FIELD_BOWEL_GAS, frame, 0.6 * sb.scale_mm)
        # Thresholds are quantiles within each chunk, so the bowel fraction holds locally too.
        for chunk in _chunks((slice(int(ks[0]), int(ks[-1]) + 1), *full_xy)):
            m = material[chunk]
            z = zall[chunk[0]][:, None, None]
            region = (m == CAVITY) & (z < zd[None])
            if not region.any():
                continue
            field = bowel_field.box(chunk)
            vals = field[region]
            bowel = region & (field > np.quantile(vals, 1 - sb.fraction))
            content = bowel & (field > np.quantile(vals, 1 - 0.7 * sb.fraction))
            m[bowel] = BOWEL_WALL
            m[content] = BOWEL_CONTENT
            if content.any() and sb.gas_fraction > 0:
                gas = gas_field.box(chunk)
                m[content & (gas > np.quantile(gas[content], 1 - sb.gas_fraction))] = GAS
    # Lungs: cavity above the diaphragm, except the mediastinum in front of the spine and behind the sternum.
    y_sp = _spine_y(p, zall)
    for sl in _slabs(nz, ny * nx):
        m = material[sl]
        z = zall[sl][:, None, None]
        above = z >= zd[None]
        if not above.any():
            continue
        # Mediastinum: an ellipse in front of the spine (aorta, oesophagus, azygos); the heart is a structure.
        dy = (y[None] - (y_sp[sl][:, None, None] - 30)) / 45.0
        mediastinum = (x[None] / 32.0) ** 2 + dy * dy <= 1
        m[(m == CAVITY) & above & ~mediastinum] = LUNG


def _material_tables(p: CaseParams) -> tuple[np.ndarray, np.ndarray]:
    mean = np.zeros(256, dtype=np.float32)
    amp = np.zeros(256, dtype=np.float32)
    for code, name in _TISSUE_OF_CODE.items():
        mean[code] = p.tissue_hu[name]
        amp[code] = p.tissue_texture_hu.get(name, 0.0)
    for i, s in enumerate(p.structures):
        main = _FIRST_STRUCTURE_CODE + 2 * i
        if main + 1 > 255:
            raise ValueError(f"too many structures ({len(p.structures)}); at most {(255 - _FIRST_STRUCTURE_CODE) // 2}")
        mean[main], amp[main] = s.hu, s.texture_hu
        mean[main + 1], amp[main + 1] = s.wall_hu, s.texture_hu
    return mean, amp


def _render_intensities(p: CaseParams, frame: Frame, material: np.ndarray) -> np.ndarray:
    """HU = (tissue mean + texture + correlated noise) * (1 + multiplicative bias) + additive bias, as int16."""
    nz, ny, nx = frame.shape
    mean_lut, amp_lut = _material_tables(p)
    acq = p.acquisition
    texture = SmoothField(p.seed, _FIELD_TEXTURE, frame, acq.texture_mm)
    noise_rng = np.random.default_rng([p.seed, _FIELD_NOISE])
    x, y = frame.xy(slice(0, ny), slice(0, nx))
    scale_xy = float(max(np.max(p.body.half_width), 1.0))
    u, v = x / scale_xy, y / scale_xy
    zall = frame.z(slice(0, nz))
    zc, zh = float(zall.mean()), max(float(np.ptp(zall)) / 2, 1.0)
    w = (zall - zc) / zh
    m1, m2, m3, m4 = acq.bias_mult
    a0, a1, a2, a3 = acq.bias_add
    mult_xy = (1 + m1 * u + m2 * v + m4 * (u * u + v * v)).astype(np.float32)
    add_xy = (a0 + a1 * u + a2 * v).astype(np.float32)
    noise_sd = np.float32(effective_noise_sd(acq.noise_sd, p.grid.spacing))
    # The scanner's point spread (about 1 mm) only shows on sub-millimetre grids: blur edges by about a voxel there.
    blur = max(p.grid.spacing[0], p.grid.spacing[1]) <= PSF_MAX_SPACING_MM
    out = np.empty(frame.shape, dtype=np.int16)
    for sl in _slabs(nz, ny * nx):
        m = material[sl]
        hu = mean_lut[m]
        hu += amp_lut[m] * texture.box((sl, slice(0, ny), slice(0, nx)))
        if blur:
            hu = _smooth_inplane(hu)
        if noise_sd > 0:
            hu += noise_sd * _correlated_noise(noise_rng, m.shape)
        ws = w[sl][:, None, None].astype(np.float32)
        hu *= mult_xy[None] + np.float32(m3) * ws
        hu += add_xy[None] + np.float32(a3) * ws
        np.clip(np.rint(hu, out=hu), -1024, 3071, out=hu)
        out[sl] = hu
    return out


def effective_noise_sd(noise_sd: float, spacing: Vec3) -> float:
    """Noise SD (HU) in voxels of ``spacing`` (mm) for a scanner whose noise is ``noise_sd`` in voxels of
    ``NOISE_REFERENCE_VOXEL_MM3``: quantum noise falls with the square root of the voxel volume (coarse grids average
    more photons); kept at >= 35 % so that coarse phantoms still look noisy."""
    volume = float(np.prod(spacing))
    return float(noise_sd * min(1.0, max(0.35, math.sqrt(NOISE_REFERENCE_VOXEL_MM3 / volume))))


def _smooth_inplane(a: np.ndarray) -> np.ndarray:
    """[1, 2, 1]/4 filter along y and x of a [z, y, x] float32 array; borders reuse the edge voxel."""
    out = a
    for axis in (1, 2):
        n = out.shape[axis]
        if n < 3:
            continue
        lo = np.take(out, np.r_[0, np.arange(n - 1)], axis=axis)
        hi = np.take(out, np.r_[np.arange(1, n), n - 1], axis=axis)
        out = 0.5 * out + 0.25 * (lo + hi)
    return out


def _correlated_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Unit-variance Gaussian noise smoothed in-plane by [1, 2, 1]/4 along x and y (CT noise is correlated over
    about a voxel in-plane). Per axis the filter keeps sqrt(1/4 + 2/16) = sqrt(3/8) of white noise's standard
    deviation, 3/8 over both axes; that factor is divided out."""
    return _smooth_inplane(rng.standard_normal(shape, dtype=np.float32)) * np.float32(1 / 0.375)


def render_case(params: CaseParams | dict) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Render a phantom.

    ``params``: a :class:`CaseParams` or its ``to_dict()`` form (e.g. a loaded ``phantom_params/CASE.json``).
    Returns ``(image, label, geometry)``: ``image`` int16 HU and ``label`` uint8 (FLARE numbering, 0 background),
    both of shape ``params.grid.shape`` = (nz, ny, nx), indexed ``[z, y, x]``; ``geometry`` gives spacing (mm),
    origin and direction for both. Deterministic: the same parameters always give identical arrays.
    """
    if isinstance(params, dict):
        params = CaseParams.from_dict(params)
    if not isinstance(params, CaseParams):
        raise TypeError(f"render_case needs CaseParams or a dict, got {type(params).__name__}")
    frame = Frame(params.grid)
    floor = _MIN_RADIUS_FRACTION * float(max(params.grid.spacing))
    material = np.zeros(frame.shape, dtype=np.uint8)
    label = np.zeros(frame.shape, dtype=np.uint8)
    _render_body(params, frame, material)
    _render_spine(params, frame, material)
    for i, s in enumerate(params.structures):
        if s.present:
            n = _paint_structure(params, i, s, frame, material, label, floor)
            log.debug("%s: %d voxels", s.name, n)
    _render_fill(params, frame, material)
    image = _render_intensities(params, frame, material)
    return image, label, Geometry.of_grid(params.grid)
