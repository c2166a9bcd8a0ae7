"""Benchmark: the largest-component post-processing on ``cc3d`` (connected-components-3d, installed with nnU-Net;
what cps3d uses since issue 13, item 7) against the ``scipy.ndimage`` version it replaced, kept here as the reference.

- cc3d: :func:`cps3d.inference.postprocessing.keep_largest_component`: one ``cc3d.connected_components`` pass over
  the whole multilabel map (26-connectivity; components never cross labels), sizes by ``bincount``, every component
  smaller than its label's largest set to 0 (ties kept, as nnU-Net does);
- scipy (the former cps3d code): per label, ``scipy.ndimage.label`` on the label's bounding box, sizes by
  ``bincount``.

Label maps: the test volumes (the random 20 x 24 x 22 map and the corner/tie cases of tests/test_predict_units.py,
the real CT's two TotalSegmentator label maps of tests/data/real_ct) for identity only, and two 512 x 512 x 150 maps
for identity and time: ``clean`` (13 ellipsoid organs with a few specks each, like a trained model's output) and
``noisy`` (the same organs with 0.5 % of the voxels turned into random labels, like an untrained model's). The runs
alternate (scipy, cc3d, scipy, ...) and the table reports medians and the ratio cc3d / scipy.

    taskset -c 1 python benchmarks/postprocess.py [--repeats 5] [--shape 150 512 512] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine_info, machine_line, median, publish, ratio  # noqa: E402
from cps3d.inference.postprocessing import keep_largest_component  # noqa: E402


def scipy_largest_component(segmentation: np.ndarray) -> np.ndarray:
    """The former cps3d rule on scipy: every label keeps its largest connected component(s) (full connectivity, ties
    kept), labelled inside the label's bounding box; the other voxels of each label become 0. Returns a copy."""
    from scipy import ndimage

    seg = np.array(segmentation, copy=True)
    for label, box in enumerate(ndimage.find_objects(seg), start=1):
        if box is None:
            continue
        crop = seg[box]  # a view: changes go to seg
        mask = crop == label
        components, n = ndimage.label(mask, ndimage.generate_binary_structure(mask.ndim, mask.ndim))
        if n <= 1:
            continue
        sizes = np.bincount(components.ravel(), minlength=n + 1)
        sizes[0] = 0
        drop = sizes < sizes.max()
        drop[0] = False
        crop[drop[components]] = 0
    return seg


def _ellipsoids(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    seg = np.zeros(shape, np.uint8)
    z, y, x = (np.arange(n, dtype=np.float32) for n in shape)
    for label in range(1, 14):
        centre = [rng.uniform(0.25, 0.75) * n for n in shape]
        radii = [rng.uniform(0.05, 0.15) * n for n in shape]
        lo = [max(0, int(c - r)) for c, r in zip(centre, radii)]
        hi = [min(n, int(c + r) + 1) for c, r, n in zip(centre, radii, shape)]
        d = (((z[lo[0]:hi[0], None, None] - centre[0]) / radii[0]) ** 2
             + ((y[None, lo[1]:hi[1], None] - centre[1]) / radii[1]) ** 2
             + ((x[None, None, lo[2]:hi[2]] - centre[2]) / radii[2]) ** 2)
        seg[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][d <= 1] = label
        for _ in range(5):  # a few false-positive specks per organ
            p = [int(rng.integers(0, n - 3)) for n in shape]
            seg[p[0]:p[0] + 2, p[1]:p[1] + 2, p[2]:p[2] + 2] = label
    return seg


def large_maps(shape: tuple[int, int, int], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    clean = _ellipsoids(shape, rng)
    noisy = clean.copy()
    n = int(0.005 * noisy.size)
    idx = rng.integers(0, noisy.size, n)
    noisy.ravel()[idx] = rng.integers(1, 14, n).astype(np.uint8)
    return {"clean": clean, "noisy": noisy}


def test_volumes() -> dict[str, np.ndarray]:
    """The label maps tests/test_predict_units.py checks post-processing on, and the real CT's label maps."""
    rng = np.random.default_rng(0)
    maps = {"random 20x24x22": (rng.random((20, 24, 22)) < 0.15).astype(np.uint8)
            * rng.integers(1, 4, (20, 24, 22)).astype(np.uint8)}
    corners = np.zeros((5, 6, 6), np.uint8)
    corners[0, 0, 0:3] = 1
    corners[2:4, 2:4, 2:4] = 1
    corners[4, 0, 5] = corners[3, 1, 4] = corners[0, 5, 5] = 2
    maps["corners"] = corners
    tie = np.zeros((3, 3, 7), np.uint8)
    tie[1, 1, 0:2] = tie[1, 1, 5:7] = tie[1, 1, 3] = 3
    maps["tie"] = tie
    folder = REPO / "tests" / "data" / "real_ct"
    for name in ("ct_sm_labels_fast", "ct_sm_labels_total"):
        path = folder / f"{name}.nii.gz"
        if path.is_file():
            import SimpleITK as sitk

            maps[f"real CT {name}"] = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.uint8)
    return maps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--shape", type=int, nargs=3, default=(150, 512, 512), metavar=("Z", "Y", "X"),
                   help="array shape of the large maps (default 150 512 512: 512 x 512 in-plane, 150 slices)")
    p.add_argument("--json", metavar="FILE", help="also write the raw results here")
    args = p.parse_args(argv)

    identical = {name: bool(np.array_equal(keep_largest_component(m), scipy_largest_component(m)))
                 for name, m in test_volumes().items()}
    timings: dict[str, dict[str, list[float]]] = {}
    for name, seg in large_maps(tuple(args.shape)).items():
        same = np.array_equal(scipy_largest_component(seg), keep_largest_component(seg))
        identical[f"{name} {'x'.join(map(str, args.shape))}"] = bool(same)
        runs: dict[str, list[float]] = {"scipy": [], "cc3d": []}
        for _ in range(args.repeats):
            for side, fn in (("scipy", scipy_largest_component), ("cc3d", keep_largest_component)):
                t0 = time.perf_counter()
                fn(seg)
                runs[side].append(time.perf_counter() - t0)
        timings[name] = runs

    lines = [f"Largest-component post-processing, scipy (former) vs cc3d (now) ({machine_line(machine_info())}; {args.repeats} alternating runs, "
             "medians)", "", "| label map | scipy (s) | cc3d (s) | cc3d / scipy |", "|---|---:|---:|---:|"]
    for name, runs in timings.items():
        a, b = median(runs["scipy"]), median(runs["cc3d"])
        lines.append(f"| {name} | {a:.2f} | {b:.2f} | {ratio(b, a):.2f} |")
    lines += ["", "Identical output: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in identical.items())]
    publish({"identical": identical, "timings": timings, "shape": list(args.shape)}, "\n".join(lines), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
