"""A tiny deterministic dataset for tests that need one before anything else exists: two ellipsoid 'organs' in a
body-like cylinder, CT-like HU values, anisotropic spacing. (Realistic data: cps3d.phantoms.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def _case(rng: np.random.Generator, n_slices: int) -> tuple[np.ndarray, np.ndarray]:
    shape = (n_slices, 40, 40)  # z, y, x
    zz, yy, xx = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    img = np.full(shape, -1000.0, np.float32)
    img[((yy - 20) / 17) ** 2 + ((xx - 20) / 18) ** 2 < 1] = 40
    lab = np.zeros(shape, np.uint8)
    cz = n_slices / 2
    a = ((zz - cz) / 6) ** 2 + ((yy - 15 - rng.integers(-2, 3)) / 6) ** 2 + ((xx - 14) / 7) ** 2 < 1
    b = ((zz - cz) / 5) ** 2 + ((yy - 23) / 4) ** 2 + ((xx - 27 - rng.integers(-2, 3)) / 4) ** 2 < 1
    lab[a] = 1
    lab[b & ~a] = 2
    img[lab == 1] = 120
    img[lab == 2] = 200
    img += rng.normal(0, 15, shape).astype(np.float32)
    return img.astype(np.int16), lab


def _write(arr: np.ndarray, path: Path, spacing=(1.5, 1.5, 3.0)) -> None:
    im = sitk.GetImageFromArray(arr)
    im.SetSpacing(spacing)
    im.SetOrigin((-30.0, -30.0, 10.0))
    sitk.WriteImage(im, str(path))


def write_toy_dataset(raw_root: Path, labeled: int = 6, unlabeled: int = 6, test: int = 2, seed: int = 0,
                      dataset_id: int = 901) -> Path:
    ds = Path(raw_root) / f"Dataset{dataset_id:03d}_Toy"
    for d in ("imagesTr", "labelsTr", "imagesUnlabeled", "imagesTs", "labelsTs"):
        (ds / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(labeled):
        img, lab = _case(rng, 24 + int(rng.integers(0, 8)))
        _write(img, ds / "imagesTr" / f"toy_{i:03d}_0000.nii.gz")
        _write(lab, ds / "labelsTr" / f"toy_{i:03d}.nii.gz")
    for i in range(unlabeled):
        img, _ = _case(rng, 24 + int(rng.integers(0, 8)))
        _write(img, ds / "imagesUnlabeled" / f"unl_{i:03d}_0000.nii.gz")
    for i in range(test):
        img, lab = _case(rng, 24 + int(rng.integers(0, 8)))
        _write(img, ds / "imagesTs" / f"ts_{i:03d}_0000.nii.gz")
        _write(lab, ds / "labelsTs" / f"ts_{i:03d}.nii.gz")
    (ds / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "organ_a": 1, "organ_b": 2},
        "numTraining": labeled, "file_ending": ".nii.gz"}))
    return ds
