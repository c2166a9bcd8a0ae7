"""Small synthetic scans, DICOM series and model-folder variants for the inference tests."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

LPS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
RAS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
# index axes i -> posterior, j -> left, k -> inferior (columns of SimpleITK's row-major matrix)
PLI = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def body_array(size_xyz: Sequence[int], seed: int = 0) -> np.ndarray:
    """A CT-like (z, y, x) array: air, a body ellipse, two brighter blobs; never 0, so that nnU-Net's crop to
    non-zero keeps the whole image and network shapes can be worked out from spacing alone."""
    nx, ny, nz = size_xyz
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) if n > 1 else np.zeros(1) for n in (nz, ny, nx)), indexing="ij")
    a = np.full((nz, ny, nx), -1000.0)
    a[(y / 0.9) ** 2 + (x / 0.9) ** 2 < 1] = 40
    a[((x + 0.3) / 0.35) ** 2 + (y / 0.3) ** 2 + (z / 0.8) ** 2 < 1] = 120
    a[((x - 0.4) / 0.2) ** 2 + ((y - 0.2) / 0.2) ** 2 + (z / 0.6) ** 2 < 1] = 200
    a += rng.integers(-10, 11, a.shape) * 0.5 + 0.25  # +0.25: no voxel is exactly 0
    return a


def write_scan(path: Path, size_xyz: Sequence[int], spacing: Sequence[float] = (1.5, 1.5, 3.0),
               origin: Sequence[float] = (-30.0, -30.0, 10.0), direction: Sequence[float] = LPS,
               dtype=np.int16, seed: int = 0) -> Path:
    """Write a synthetic scan with the given geometry (index order) and voxel type; returns the path."""
    arr = body_array(size_xyz, seed)
    image = sitk.GetImageFromArray(np.round(arr).astype(dtype) if np.issubdtype(dtype, np.integer)
                                   else arr.astype(dtype))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(float(d) for d in direction))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def write_dicom_series(folder: Path, size_xyz: Sequence[int], spacing: Sequence[float],
                       origin: Sequence[float], seed: int = 0, z_offsets: Sequence[float] | None = None) -> Path:
    """Write an axial int16 DICOM series (one file per slice, identity orientation) with the given geometry.
    ``z_offsets``: each slice's position above ``origin`` (mm; default k * spacing[2])."""
    arr = np.round(body_array(size_xyz, seed)).astype(np.int16)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = "1.2.826.0.1.3680043.2.1125.1.42"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(arr.shape[0]):
        s = sitk.GetImageFromArray(arr[k])
        s.SetSpacing((float(spacing[0]), float(spacing[1])))
        position = (origin[0], origin[1], origin[2] + (k * spacing[2] if z_offsets is None else z_offsets[k]))
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1.41",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.4f}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": f"{spacing[2]:.4f}",
            "0028|0030": f"{spacing[1]:.4f}\\{spacing[0]:.4f}",  # row spacing (y) \ column spacing (x)
        }
        for key, value in tags.items():
            s.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(s)
    return folder


def supervised_copy(model_dir: Path, dest: Path) -> Path:
    """A copy of a CPS model folder turned into a supervised one: network 2 removed, mode 'supervised'."""
    import torch

    shutil.copytree(model_dir, dest)
    for ckpt_path in dest.glob("fold_*/checkpoint_*.pth"):
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        ckpt.pop("network_weights_2", None)
        ckpt["cps3d"] = {**ckpt["cps3d"], "mode": "supervised", "n_networks": 1}
        ckpt["trainer_name"] = "SupervisedTrainer"
        torch.save(ckpt, ckpt_path)
    return dest


def geometry(path: Path) -> tuple:
    """(size, spacing, origin, direction) of an image file, index order."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()
