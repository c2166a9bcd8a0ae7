"""Geometry of the phantoms' grids and shapes: the voxel-to-patient frame, smooth random fields, and the signed depth
below the surface of blobs and tubes (the building blocks that :mod:`cps3d.phantoms.render` paints with)."""

from __future__ import annotations

import math

import numpy as np

from cps3d.phantoms.params import Blob, Grid, Structure, Tube, Vec3

# --------------------------------------------------------------------------------------------------------------
# Grid frame: patient coordinates of voxels, and voxel boxes of patient-space boxes.


class Frame:
    """Maps voxel indices to patient coordinates: ``p = centre + R_yaw @ ((index - (n - 1) / 2) * spacing)``."""

    def __init__(self, grid: Grid):
        self.shape = tuple(int(n) for n in grid.shape)
        self.spacing = np.asarray(grid.spacing, dtype=np.float64)
        self.centre = np.asarray(grid.centre, dtype=np.float64)
        yaw = math.radians(grid.yaw_deg)
        self.cos, self.sin = math.cos(yaw), math.sin(yaw)
        nz, ny, nx = self.shape
        self.half = np.array([(nx - 1) / 2, (ny - 1) / 2, (nz - 1) / 2])

    def xy(self, jsl: slice, isl: slice) -> tuple[np.ndarray, np.ndarray]:
        """Patient x and y (mm, float32) of the in-plane box ``[jsl, isl]``, each of shape (nj, ni)."""
        lx = (np.arange(isl.start, isl.stop) - self.half[0]) * self.spacing[0]
        ly = (np.arange(jsl.start, jsl.stop) - self.half[1]) * self.spacing[1]
        x = self.centre[0] + self.cos * lx[None, :] - self.sin * ly[:, None]
        y = self.centre[1] + self.sin * lx[None, :] + self.cos * ly[:, None]
        return x.astype(np.float32), y.astype(np.float32)

    def z(self, ksl: slice) -> np.ndarray:
        """Patient z (mm, float32) of slices ``ksl``."""
        return (self.centre[2] + (np.arange(ksl.start, ksl.stop) - self.half[2]) * self.spacing[2]).astype(np.float32)

    def box(self, lo: np.ndarray, hi: np.ndarray, margin_vox: int = 1) -> tuple[slice, slice, slice] | None:
        """Voxel box ``(kz, jy, ix)`` slices covering the patient-space box [lo, hi] (mm), clipped to the grid;
        None if they do not intersect."""
        corners = np.array([[lo[0], lo[1]], [lo[0], hi[1]], [hi[0], lo[1]], [hi[0], hi[1]]]) - self.centre[:2]
        lx = self.cos * corners[:, 0] + self.sin * corners[:, 1]
        ly = -self.sin * corners[:, 0] + self.cos * corners[:, 1]
        fi = lx / self.spacing[0] + self.half[0]
        fj = ly / self.spacing[1] + self.half[1]
        fk = (np.array([lo[2], hi[2]]) - self.centre[2]) / self.spacing[2] + self.half[2]
        out = []
        for f, n in ((fk, self.shape[0]), (fj, self.shape[1]), (fi, self.shape[2])):
            a = max(int(math.floor(f.min())) - margin_vox, 0)
            b = min(int(math.ceil(f.max())) + margin_vox, n - 1)
            if b < a:
                return None
            out.append(slice(a, b + 1))
        return out[0], out[1], out[2]


# --------------------------------------------------------------------------------------------------------------
# Smooth random fields ("value noise" on a lattice aligned with the voxel grid).


class SmoothField:
    """A smooth zero-mean random field over the whole grid with correlation length ``scale_mm``.

    Standard normal values on a lattice every ``scale_mm`` (at least one voxel) along each axis, interpolated with
    smoothstep weights. Any voxel box can be evaluated on its own, with the same values as the whole grid.
    """

    def __init__(self, seed: int, stream: int, frame: Frame, scale_mm: float):
        spacing_zyx = frame.spacing[::-1]
        self.step = np.maximum(scale_mm / spacing_zyx, 1.0)
        lattice = tuple(int(math.ceil((n - 1) / s)) + 2 for n, s in zip(frame.shape, self.step))
        self.lattice = np.random.default_rng([seed, stream]).standard_normal(lattice, dtype=np.float32)

    def box(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        positions = [np.arange(sl.start, sl.stop) / s for sl, s in zip(box, self.step)]
        lows = [np.floor(p).astype(np.int64) for p in positions]
        crop = tuple(slice(int(lo.min()), int(lo.max()) + 2) for lo in lows)
        out = self.lattice[crop]
        for axis in (2, 1, 0):
            i0 = lows[axis] - crop[axis].start
            w = (positions[axis] - lows[axis]).astype(np.float32)
            w = w * w * (3 - 2 * w)
            shape = [1, 1, 1]
            shape[axis] = len(w)
            w = w.reshape(shape)
            a = np.take(out, i0, axis=axis)
            b = np.take(out, i0 + 1, axis=axis)
            out = a + (b - a) * w
        return out


# --------------------------------------------------------------------------------------------------------------
# Shapes: signed depth below the surface (mm; > 0 inside) on a voxel box.


def _rotation(angles_deg: Vec3) -> np.ndarray:
    ax, ay, az = (math.radians(a) for a in angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _blob_extent(b: Blob, floor: float) -> tuple[np.ndarray, np.ndarray]:
    radii = np.maximum(np.asarray(b.radii, dtype=np.float64), floor)
    grow = 1 + sum(abs(w.amp) for w in b.waves)
    ext = radii * grow * np.array([1 + 2 * abs(b.bend), 1 + abs(b.taper), 1.0])
    half = np.abs(_rotation(b.angles_deg)) @ ext
    c = np.asarray(b.centre, dtype=np.float64)
    return c - half, c + half


def _tube_extent(t: Tube, floor: float) -> tuple[np.ndarray, np.ndarray]:
    pts = np.asarray(t.points, dtype=np.float64)
    r = max(max(t.radii), floor) * (1 + sum(abs(w.amp) for w in t.waves)) / np.min(t.squash)
    return pts.min(axis=0) - r, pts.max(axis=0) + r


def _shape_extent(s: Blob | Tube, floor: float) -> tuple[np.ndarray, np.ndarray]:
    return _blob_extent(s, floor) if isinstance(s, Blob) else _tube_extent(s, floor)


def _waves(waves, u0, u1, u2) -> np.ndarray | float:
    total: np.ndarray | float = 0.0
    for w in waves:
        total = total + w.amp * np.cos(w.k[0] * u0 + w.k[1] * u1 + w.k[2] * u2 + w.phase)
    return total


def _blob_depth(b: Blob, x: np.ndarray, y: np.ndarray, z: np.ndarray, floor: float) -> np.ndarray:
    """Approximate depth (mm) below the blob surface: (1 + waves - |u|) times the smallest radius."""
    radii = np.maximum(np.asarray(b.radii, dtype=np.float64), floor)
    rot = _rotation(b.angles_deg)
    dx, dy, dz = x - np.float32(b.centre[0]), y - np.float32(b.centre[1]), z - np.float32(b.centre[2])
    u = []
    for a in range(3):
        inplane = (rot[0, a] / radii[a]) * dx + (rot[1, a] / radii[a]) * dy
        u.append(inplane[None, :, :] + ((rot[2, a] / radii[a]) * dz)[:, None, None])
    u0, u1, u2 = u
    if b.bend:
        u0 = u0 + np.float32(b.bend) * (u1 * u1 + u2 * u2)
    if b.taper:
        u1 = u1 / np.maximum(1 + np.float32(b.taper) * u0, 0.2)
    rho = np.sqrt(u0 * u0 + u1 * u1 + u2 * u2)
    depth = 1 - rho
    if b.waves:
        # The waves move the surface by at most sum(|amp|): evaluate them only in that band around it (cheaper).
        reach = np.float32(sum(abs(w.amp) for w in b.waves))
        band = np.abs(depth) <= reach
        depth[band] += _waves(b.waves, u0[band], u1[band], u2[band])
    return (depth * np.float32(radii.min())).astype(np.float32, copy=False)


def _tube_depth(t: Tube, frame: Frame, box: tuple[slice, slice, slice], floor: float) -> np.ndarray:
    """Depth (mm) below the surface of a tube: max over segments of (local radius - distance to the segment),
    distances measured after scaling the axes by ``squash``. Each segment is evaluated in its own sub-box."""
    shape = tuple(sl.stop - sl.start for sl in box)
    depth = np.full(shape, -np.inf, dtype=np.float32)
    sq = np.asarray(t.squash, dtype=np.float64)
    pts = np.asarray(t.points, dtype=np.float64)
    radii = np.maximum(np.asarray(t.radii, dtype=np.float64), floor)
    grow = 1 + sum(abs(w.amp) for w in t.waves)
    for a, b, ra, rb in zip(pts[:-1], pts[1:], radii[:-1], radii[1:]):
        reach = max(ra, rb) * grow / sq.min()
        reached = frame.box(np.minimum(a, b) - reach, np.maximum(a, b) + reach)
        if reached is None:
            continue
        sub = tuple(slice(max(s.start, bx.start), min(s.stop, bx.stop)) for s, bx in zip(reached, box))
        if any(s.stop <= s.start for s in sub):
            continue
        x, y = frame.xy(sub[1], sub[2])
        z = frame.z(sub[0])
        a_s, d_s = a * sq, (b - a) * sq
        length2 = float(d_s @ d_s) or 1e-12
        px, py, pz = x * np.float32(sq[0]) - np.float32(a_s[0]), y * np.float32(sq[1]) - np.float32(a_s[1]), \
            z * np.float32(sq[2]) - np.float32(a_s[2])
        inplane = (np.float32(d_s[0] / length2) * px + np.float32(d_s[1] / length2) * py)[None]
        tpar = np.clip(inplane + (np.float32(d_s[2] / length2) * pz)[:, None, None], 0, 1)
        ex = px[None] - np.float32(d_s[0]) * tpar
        ey = py[None] - np.float32(d_s[1]) * tpar
        ez = pz[:, None, None] - np.float32(d_s[2]) * tpar
        dist = np.sqrt(ex * ex + ey * ey + ez * ez)
        seg = np.float32(ra) + np.float32(rb - ra) * tpar - dist
        local = tuple(slice(s.start - bx.start, s.stop - bx.start) for s, bx in zip(sub, box))
        np.maximum(depth[local], seg, out=depth[local])
    if t.waves:
        x, y = frame.xy(box[1], box[2])
        z = frame.z(box[0])
        u = (x[None] / 50, y[None] / 50, (z / 50)[:, None, None])
        depth += np.float32(np.mean(radii)) * _waves(t.waves, *u)
    return depth


def structure_box(s: Structure, frame: Frame, floor: float) -> tuple[slice, slice, slice] | None:
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    for shape in s.shapes:
        a, b = _shape_extent(shape, floor)
        lo, hi = np.minimum(lo, a), np.maximum(hi, b)
    return frame.box(lo, hi)


def structure_depth(s: Structure, frame: Frame, box: tuple[slice, slice, slice], floor: float) -> np.ndarray:
    depth: np.ndarray | None = None
    xyz: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # patient coordinates of the box, when first needed
    for shape in s.shapes:
        if isinstance(shape, Blob):
            if xyz is None:
                x, y = frame.xy(box[1], box[2])
                xyz = (x, y, frame.z(box[0]))
            d = _blob_depth(shape, *xyz, floor)
        else:
            d = _tube_depth(shape, frame, box, floor)
        depth = d if depth is None else np.maximum(depth, d)
    if depth is None:
        raise ValueError(f"structure {s.name!r} has no shapes")
    return depth
