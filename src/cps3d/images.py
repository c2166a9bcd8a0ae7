"""Reading image files with integrity checks: the one path every command's input files go through.

nnU-Net reads images with SimpleITK (or nibabel). ITK's NIfTI reader does not notice a truncated ``.nii``/``.nii.gz``
(it fills the missing voxels with zeros) and turns NaN and infinite voxels into 0, so no check of the array it returns
can see either problem. :func:`read_image_checked` therefore reads every voxel once as stored: NIfTI with nibabel
(which raises on a short file and keeps NaN), other formats with SimpleITK (whose MetaImage, NRRD, ... readers raise
on a short file and keep NaN). ``cps3d check`` (and through it ``plan`` and ``preprocess``), ``predict`` and
``evaluate`` call it before, or instead of, handing a file to nnU-Net's reader.

Errors are :class:`ImageFileError` (a ValueError) naming the file and the problem, or FileNotFoundError.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ImageFileError", "ImageInfo", "Grid", "direction_matrix", "through_plane_axis", "error_text",
           "read_image_info", "read_voxels", "count_nonfinite", "read_image_checked", "verify_image"]

NIFTI_ENDINGS = (".nii", ".nii.gz")

# how far two headers may differ and still describe the same grid (headers are often stored in float32)
SPACING_TOLERANCE_MM = 1e-3
ORIGIN_TOLERANCE_MM = 1e-2
DIRECTION_TOLERANCE = 1e-4


class ImageFileError(ValueError):
    """An image file that cannot be used; ``path`` names it, ``problem`` says what is wrong with it."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # keep both fields across worker processes
        return type(self), (self.path, self.problem)


@dataclass(frozen=True)
class ImageInfo:
    """Header of an image file as SimpleITK reports it: index order (x, y, z), millimetres."""

    path: str
    dimension: int
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    components: int

    @property
    def grid(self) -> Grid:
        return Grid(self.size, self.spacing, self.origin, self.direction)


@dataclass(frozen=True)
class Grid:
    """Geometry of an image as SimpleITK reports it: size (voxels), spacing (mm), origin (mm) in index order
    (x, y, z), and the row-major direction matrix."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    def differences(self, other: Grid) -> list[str]:
        """How ``other`` differs from this grid (the reference), one phrase per property; empty when it is the same
        grid within the header tolerances. A different size makes the other comparisons meaningless: then only
        the size is reported."""
        if self.size != other.size:
            return [f"shape: size {other.size} vs reference {self.size}"]
        out = []
        if not np.allclose(self.spacing, other.spacing, rtol=1e-5, atol=SPACING_TOLERANCE_MM):
            out.append(f"spacing {_fmt(other.spacing)} vs reference {_fmt(self.spacing)} mm")
        if not np.allclose(self.origin, other.origin, rtol=0, atol=ORIGIN_TOLERANCE_MM):
            out.append(f"origin {_fmt(other.origin)} vs reference {_fmt(self.origin)} mm")
        if not np.allclose(self.direction, other.direction, rtol=0, atol=DIRECTION_TOLERANCE):
            out.append(f"direction {_fmt(other.direction)} vs reference {_fmt(self.direction)}")
        return out


def format_values(values: Sequence[float], digits: int = 6, sep: str = ", ") -> str:
    """Numbers (spacings, shapes, an origin) for a message: ``digits`` significant digits each, joined by ``sep``."""
    return sep.join(f"{v:.{digits}g}" for v in values)


def _fmt(v: tuple[float, ...]) -> str:
    return f"({format_values(v)})"


def direction_matrix(direction: Sequence[float] | np.ndarray) -> np.ndarray:
    """A 3D direction matrix (SimpleITK's 9 row-major values, column c = index axis c in world space) as a 3x3
    array with unit columns. Raises ValueError for another number of values or an empty or non-finite axis."""
    d = np.asarray(direction, np.float64)
    if d.size != 9:
        raise ValueError(f"a 3D direction matrix has 9 values, got {d.size}")
    d = d.reshape(3, 3)
    if not np.all(np.isfinite(d)) or np.any(np.linalg.norm(d, axis=0) < 1e-6):
        raise ValueError(f"direction matrix {d.ravel().tolist()} has an empty or invalid axis")
    return d / np.linalg.norm(d, axis=0, keepdims=True)


def through_plane_axis(direction: Sequence[float] | np.ndarray) -> int:
    """Index axis (0, 1 or 2 in ITK i, j, k order) most aligned with the patient's head-foot direction (world axis
    2 in both LPS and RAS). ``direction``: as :func:`direction_matrix` takes it. In SimpleITK's (reversed) array
    order this is axis ``2 - through_plane_axis(direction)``."""
    return int(np.argmax(np.abs(direction_matrix(direction)[2])))


def error_text(e: BaseException) -> str:
    """The informative part of an exception's message, on one line.

    SimpleITK's messages start with a line naming its C++ source ("Exception thrown in SimpleITK ...") and give the
    reason on the lines after it, prefixed with ``sitk::ERROR:`` or ``ITK ERROR: Class(0x...):``; those lines are
    kept, without the prefixes. Any other message: its first non-empty line.
    """
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    if lines[0].startswith("Exception thrown in SimpleITK") and len(lines) > 1:
        reasons = []
        for ln in lines[1:]:
            if "ERROR:" in ln:
                ln = ln.split("ERROR:", 1)[1].strip()
                if "):" in ln and ln.split("):", 1)[0].count("(0x") == 1:  # "MetaImageIO(0x55...): text"
                    ln = ln.split("):", 1)[1].strip()
            reasons.append(ln)
        return "; ".join(r for r in reasons if r)
    return lines[0]


def _check_file(path: str | os.PathLike) -> None:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{path}: file not found" if not p.exists() else f"{path}: not a file")
    if p.stat().st_size == 0:
        raise ImageFileError(path, "empty file (0 bytes)")


def read_image_info(path: str | os.PathLike) -> ImageInfo:
    """The header of an image file (no voxels are read). Raises FileNotFoundError, or ImageFileError for an empty
    or unreadable file."""
    import SimpleITK as sitk

    _check_file(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:  # SimpleITK's only exception type
        raise ImageFileError(path, f"cannot be read ({error_text(e)})") from e
    return ImageInfo(str(path), int(reader.GetDimension()), tuple(int(s) for s in reader.GetSize()),
                     tuple(reader.GetSpacing()), tuple(reader.GetOrigin()), tuple(reader.GetDirection()),
                     int(reader.GetNumberOfComponents()))


def _is_nifti(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_ENDINGS)


def read_voxels(path: str | os.PathLike) -> np.ndarray:
    """Every voxel of an image file, in SimpleITK's array order (z, y, x: reversed index order), with the file's
    scaling applied. NIfTI is read with nibabel (module docstring), everything else with SimpleITK. Raises
    FileNotFoundError, or ImageFileError for an empty, truncated or corrupt file."""
    _check_file(path)
    if _is_nifti(path):
        import nibabel as nib

        try:
            # nibabel's array is in index order (x, y, z); its transpose is SimpleITK's, without a copy
            return np.asarray(nib.load(str(path)).dataobj).T
        except Exception as e:  # nibabel raises EOFError, zlib.error, OSError, ValueError, its own ImageFileError...
            raise ImageFileError(path, f"cannot be read, truncated or corrupt ({error_text(e)})") from e
    import SimpleITK as sitk

    try:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as e:
        raise ImageFileError(path, f"cannot be read, truncated or corrupt ({error_text(e)})") from e


def count_nonfinite(array: np.ndarray) -> int:
    """Number of NaN and infinite values (0 for integer arrays). A float64 sum decides first, so that a clean array
    needs no full-size mask."""
    if not np.issubdtype(array.dtype, np.inexact):
        return 0
    if math.isfinite(float(np.sum(array, dtype=np.float64))):
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def read_image_checked(path: str | os.PathLike, dimension: int | None = None) -> tuple[ImageInfo, np.ndarray]:
    """Header and voxels of an image file that passed every check: the file exists, is not empty, is readable to
    its last voxel, has one component per voxel, ``dimension`` dimensions (when given) and no NaN or infinite voxel.

    Returns ``(info, voxels)`` with voxels as :func:`read_voxels` returns them. Raises FileNotFoundError, or
    ImageFileError naming the file and the problem.
    """
    info = read_image_info(path)
    if info.components != 1:
        raise ImageFileError(path, f"has {info.components} components per voxel; cps3d reads one value per voxel "
                                   "(store each channel as its own CASE_XXXX file)")
    if dimension is not None and info.dimension != dimension:
        raise ImageFileError(path, f"is a {info.dimension}-D image (size {info.size}); {dimension}-D images are "
                                   "expected here")
    voxels = read_voxels(path)
    shape = info.size[::-1]
    if voxels.shape != shape:
        # ITK drops trailing axes of length 1 (a NIfTI of shape x, y, z, 1 is 3-D to it), nibabel keeps them
        if [n for n in voxels.shape if n != 1] != [n for n in shape if n != 1]:
            raise ImageFileError(path, f"holds voxels of shape {voxels.shape[::-1]} but its header says "
                                       f"{info.size}")  # the two readers disagree: do not guess which is right
        voxels = voxels.reshape(shape)
    bad = count_nonfinite(voxels)
    if bad:
        raise ImageFileError(path, f"contains {bad} NaN or infinite voxel(s) of {voxels.size}")
    return info, voxels


def verify_image(path: str | os.PathLike, dimension: int | None = None) -> ImageInfo:
    """:func:`read_image_checked` without keeping the voxels: for files that nnU-Net's reader reads afterwards."""
    return read_image_checked(path, dimension)[0]
