"""Tests of the synthetic abdominal CT phantoms (cps3d.phantoms) and of `cps3d phantoms`.

All volumes are `small` phantoms (about 40-64 voxels per side). References used: SimpleITK's own index-to-world
mapping for the geometry, scipy's connected-component labelling, the project's dataset checks
(cps3d.dataset.check_dataset), and the HU ranges documented in cps3d.phantoms.ORGAN_HU_RANGES.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from cps3d.cli import main
from cps3d.dataset import RawDataset, check_dataset
from cps3d.phantoms import (
    DEFAULT_DATASET_ID,
    DEFAULT_NAME,
    FLARE_LABELS,
    ORGAN_HU_RANGES,
    PARAMS_FOLDER,
    CaseParams,
    case_rng,
    load_case_params,
    render_case,
    sample_case,
    write_dataset,
)
from cps3d.phantoms.params import Blob

ORGANS = range(1, 14)


def _read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img


def _case_files(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("raw"), labeled=3, unlabeled=2, test=2, seed=0, size="small",
                         progress=False)


@pytest.fixture(scope="module")
def batch() -> list[tuple[CaseParams, np.ndarray, np.ndarray]]:
    """Ten small phantoms of one dataset seed, rendered in memory."""
    out = []
    for i in range(10):
        p = sample_case(case_rng(123, "labeled", i), "small")
        image, label, _ = render_case(p)
        out.append((p, image, label))
    return out


# ---------------------------------------------------------------------------------------------------- dataset files


def test_dataset_layout_and_dataset_json(dataset):
    assert dataset.name == f"Dataset{DEFAULT_DATASET_ID:03d}_{DEFAULT_NAME}"
    files = {str(p) for p in _case_files(dataset)}
    expected = {"dataset.json"}
    for c in ("labeled_000", "labeled_001", "labeled_002"):
        expected |= {f"imagesTr/{c}_0000.nii.gz", f"labelsTr/{c}.nii.gz", f"{PARAMS_FOLDER}/{c}.json"}
    for c in ("unlabeled_000", "unlabeled_001"):
        expected |= {f"imagesUnlabeled/{c}_0000.nii.gz", f"{PARAMS_FOLDER}/{c}.json"}
    for c in ("test_000", "test_001"):
        expected |= {f"imagesTs/{c}_0000.nii.gz", f"labelsTs/{c}.nii.gz", f"{PARAMS_FOLDER}/{c}.json"}
    assert files == expected  # no temporary files left behind either
    dj = json.loads((dataset / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "CT"}
    assert dj["file_ending"] == ".nii.gz"
    assert dj["numTraining"] == 3
    assert dj["labels"] == FLARE_LABELS
    # The FLARE 2022 numbering, written out independently of the module's table.
    flare = ["liver", "right_kidney", "spleen", "pancreas", "aorta", "inferior_vena_cava", "right_adrenal_gland",
             "left_adrenal_gland", "gallbladder", "esophagus", "stomach", "duodenum", "left_kidney"]
    assert {k: v for k, v in dj["labels"].items() if v} == {n: i + 1 for i, n in enumerate(flare)}


def test_dataset_passes_project_checks(dataset):
    assert check_dataset(RawDataset.load(dataset), progress=False) == []


def test_files_have_ct_types_and_agreeing_geometry(dataset):
    for image_path in sorted((dataset / "imagesTr").glob("*.nii.gz")) + sorted((dataset / "imagesTs").glob("*")):
        case = image_path.name[: -len("_0000.nii.gz")]
        label_dir = "labelsTr" if image_path.parent.name == "imagesTr" else "labelsTs"
        image, img = _read(image_path)
        label, lab = _read(dataset / label_dir / f"{case}.nii.gz")
        assert img.GetPixelID() == sitk.sitkInt16 and lab.GetPixelID() == sitk.sitkUInt8
        assert img.GetSize() == lab.GetSize()
        assert img.GetSpacing() == lab.GetSpacing()
        assert img.GetOrigin() == lab.GetOrigin()
        assert img.GetDirection() == lab.GetDirection()
        # The header is the sampled grid: shape, spacing, origin and a rotation about z by yaw_deg.
        p = CaseParams.from_dict(json.loads((dataset / PARAMS_FOLDER / f"{case}.json").read_text()))
        assert image.shape == tuple(p.grid.shape)
        np.testing.assert_allclose(img.GetSpacing(), p.grid.spacing, rtol=1e-5)
        np.testing.assert_allclose(img.GetOrigin(), p.grid.origin, atol=1e-3)
        yaw = math.radians(p.grid.yaw_deg)
        np.testing.assert_allclose(img.GetDirection(), [math.cos(yaw), -math.sin(yaw), 0, math.sin(yaw),
                                                        math.cos(yaw), 0, 0, 0, 1], atol=1e-5)
        assert set(np.unique(label)) <= set(FLARE_LABELS.values())


def test_params_json_rerenders_the_identical_volume(dataset):
    for case, image_dir, label_dir in (("labeled_001", "imagesTr", "labelsTr"), ("test_000", "imagesTs", "labelsTs"),
                                       ("unlabeled_001", "imagesUnlabeled", None)):
        data = json.loads((dataset / PARAMS_FOLDER / f"{case}.json").read_text())
        image, label, geometry = render_case(data)
        on_disk, img = _read(dataset / image_dir / f"{case}_0000.nii.gz")
        np.testing.assert_array_equal(image, on_disk)
        if label_dir:
            np.testing.assert_array_equal(label, _read(dataset / label_dir / f"{case}.nii.gz")[0])
        np.testing.assert_allclose(geometry.spacing, img.GetSpacing(), rtol=1e-6)
        np.testing.assert_allclose(geometry.origin, img.GetOrigin(), atol=1e-4)
        assert CaseParams.from_dict(data).to_dict() == data


def test_same_seed_same_dataset_other_seed_differs_and_streams_are_independent(dataset, tmp_path):
    # Same seed, but more unlabeled and no test cases: the shared cases must be identical.
    again = write_dataset(tmp_path / "again", labeled=3, unlabeled=3, test=0, seed=0, progress=False)
    for rel in ("imagesTr/labeled_000_0000.nii.gz", "labelsTr/labeled_002.nii.gz",
                "imagesUnlabeled/unlabeled_001_0000.nii.gz"):
        np.testing.assert_array_equal(_read(dataset / rel)[0], _read(again / rel)[0])
        assert _read(dataset / rel)[1].GetOrigin() == _read(again / rel)[1].GetOrigin()
    for case in ("labeled_000", "unlabeled_001"):
        assert (dataset / PARAMS_FOLDER / f"{case}.json").read_text() == (again / PARAMS_FOLDER / f"{case}.json").read_text()
    assert (again / "imagesUnlabeled/unlabeled_002_0000.nii.gz").is_file()
    other = write_dataset(tmp_path / "other", labeled=1, unlabeled=0, test=0, seed=1, progress=False)
    a, b = _read(dataset / "imagesTr/labeled_000_0000.nii.gz")[0], _read(other / "imagesTr/labeled_000_0000.nii.gz")[0]
    assert a.shape != b.shape or not np.array_equal(a, b)


# ---------------------------------------------------------------------------------------------------- anatomy


def test_every_organ_appears_in_most_cases(batch):
    counts = {k: sum(bool((label == k).any()) for _, _, label in batch) for k in ORGANS}
    assert all(n >= 6 for n in counts.values()), counts
    # An organ drawn as absent (resected / not visible) must not appear in the label map.
    for p, _, label in batch:
        for s in p.structures:
            if s.label and not s.present:
                assert not (label == s.label).any(), s.name


def _z_range(p: CaseParams) -> tuple[float, float]:
    nz, sz, zc = p.grid.shape[0], p.grid.spacing[2], p.grid.centre[2]
    return zc - (nz - 1) / 2 * sz, zc + (nz - 1) / 2 * sz


def _core_z_range(shape) -> tuple[float, float]:
    """A z range certainly inside the organ: the middle half of a blob, the centre line span of a tube."""
    if isinstance(shape, Blob):
        r = 0.5 * min(shape.radii)
        return shape.centre[2] - r, shape.centre[2] + r
    zs = [pt[2] for pt in shape.points]
    return min(zs), max(zs)


def test_organs_are_nonempty_when_in_view_and_connected(batch):
    for p, _, label in batch:
        lo, hi = _z_range(p)
        for s in p.structures:
            if not s.label or not s.present:
                continue
            mask = label == s.label
            core = [_core_z_range(sh) for sh in s.shapes]
            overlap = max(min(hi, b) - max(lo, a) for a, b in core)
            if overlap >= 20:  # well inside the scanned slab
                assert mask.any(), f"{s.name} present and in view but not rendered"
            if not mask.any() or mask[0].any() or mask[-1].any():
                continue  # organs cut by the scan's first/last slice may fall apart legitimately
            components, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
            sizes = np.bincount(components.ravel())[1:]
            assert sizes.max() >= 0.85 * sizes.sum(), (s.name, sorted(sizes.tolist()))


def test_median_hu_inside_each_organ_is_in_its_documented_range(batch):
    checked = 0
    for _, image, label in batch:
        for k in ORGANS:
            mask = label == k
            if mask.any():
                lo, hi = ORGAN_HU_RANGES[k]
                assert lo <= float(np.median(image[mask])) <= hi, (k, float(np.median(image[mask])))
                checked += 1
    assert checked >= 100


def test_background_bone_and_gas_intensities(batch):
    for _, image, _ in batch:
        corner = image[:, :3, :3]  # outside the body: air
        assert abs(float(np.median(corner)) + 1000) <= 15
        assert image.max() >= 600  # cortical bone (spine, ribs)
        assert image.min() <= -900  # air / bowel gas
        assert image.dtype == np.int16


@pytest.mark.parametrize("yaw_deg", [None, 25.0, -30.0])
def test_label_positions_match_header_geometry(batch, yaw_deg):
    """Where SimpleITK's index-to-world mapping puts the rendered aorta is where the parameters put its centre
    line (patient frame + patient_offset), whatever the grid's rotation (the sampled one, or a large one with the
    grid centred away from the aorta so that a wrong rotation would move it by centimetres)."""
    p = batch[0][0]
    if yaw_deg is not None:
        c = p.grid.centre
        p = dataclasses.replace(p, grid=dataclasses.replace(p.grid, yaw_deg=yaw_deg, centre=(c[0] - 40, c[1], c[2])))
    image, label, geometry = render_case(p)
    img = geometry.to_sitk(image)
    aorta = p.structure("aorta").shapes[0]
    pts = np.asarray(aorta.points)
    order = np.argsort(pts[:, 2])
    offset = np.asarray(p.grid.patient_offset)
    checked = 0
    for k in range(label.shape[0]):
        jj, ii = np.nonzero(label[k] == 5)
        if len(ii) < 3:
            continue
        world = np.array(img.TransformContinuousIndexToPhysicalPoint((float(ii.mean()), float(jj.mean()), float(k))))
        x, y, z = world - offset
        cx = np.interp(z, pts[order, 2], pts[order, 0])
        cy = np.interp(z, pts[order, 2], pts[order, 1])
        assert math.hypot(x - cx, y - cy) <= 0.6 * max(p.grid.spacing[:2]) + 4, (k, x, y, cx, cy)
        checked += 1
    assert checked >= 5


# ---------------------------------------------------------------------------------------------------- validation


def test_bad_input_gives_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'small'"):
        sample_case(0, "smal")
    with pytest.raises(TypeError, match="Generator or an int"):
        sample_case("0", "small")
    data = sample_case(0, "small").to_dict()
    data["grid"]["spacing"] = [1.0, -1.0, 1.0]
    with pytest.raises(ValueError, match="Grid.spacing must be positive"):
        render_case(data)
    data = sample_case(0, "small").to_dict()
    data["grid"]["shape_typo"] = data["grid"].pop("shape")
    with pytest.raises(ValueError, match=r"params\.grid: unknown key"):
        render_case(data)
    with pytest.raises(ValueError, match="labeled must be an integer >= 1"):
        write_dataset(tmp_path, labeled=0, unlabeled=0, test=0)
    with pytest.raises(ValueError, match="name must be"):
        write_dataset(tmp_path, labeled=1, unlabeled=0, test=0, name="bad name")
    assert not any(tmp_path.iterdir())  # nothing written on bad input
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"size": "small"}))
    with pytest.raises(ValueError, match="bad.json: not valid phantom parameters"):
        load_case_params(bad)


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_writes_refuses_overwrite_and_never_deletes(tmp_path, capsys):
    out = tmp_path / "raw"
    args = ["phantoms", str(out), "--labeled", "2", "--unlabeled", "1", "--test", "1", "--seed", "5",
            "--dataset-id", "42", "--name", "Tiny", "--no-progress"]
    assert main(args) == 0
    folder = out / "Dataset042_Tiny"
    assert check_dataset(RawDataset.load(folder), progress=False) == []
    first = _read(folder / "imagesTr/labeled_001_0000.nii.gz")[0]
    # The library with the same arguments gives the same data.
    lib = write_dataset(tmp_path / "lib", 2, 1, 1, seed=5, dataset_id=42, name="Tiny", progress=False)
    np.testing.assert_array_equal(first, _read(lib / "imagesTr/labeled_001_0000.nii.gz")[0])

    capsys.readouterr()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    note = folder / "my_notes.txt"
    note.write_text("keep me")
    assert main(args + ["--overwrite"]) == 0
    assert note.read_text() == "keep me"
    np.testing.assert_array_equal(first, _read(folder / "imagesTr/labeled_001_0000.nii.gz")[0])

    # Fewer cases than before would leave old cases in the dataset: refused, and nothing is deleted.
    fewer = ["phantoms", str(out), "--labeled", "1", "--unlabeled", "1", "--test", "1", "--seed", "5",
             "--dataset-id", "42", "--name", "Tiny", "--no-progress", "--overwrite"]
    capsys.readouterr()
    assert main(fewer) == 2
    assert "labeled_001_0000.nii.gz" in capsys.readouterr().err
    assert (folder / "imagesTr/labeled_001_0000.nii.gz").is_file()

    # Another dataset with the same id in the same folder would make '-d 42' ambiguous.
    assert main(["phantoms", str(out), "--labeled", "1", "--unlabeled", "0", "--test", "0", "--dataset-id", "42",
                 "--name", "Other", "--no-progress"]) == 2
    assert not (out / "Dataset042_Other").exists()
    assert main(["phantoms", str(out), "--labeled", "0", "--unlabeled", "0", "--test", "0", "--no-progress"]) == 2


def test_cli_parallel_output_equals_serial(dataset, tmp_path):
    out = tmp_path / "raw"
    assert main(["phantoms", str(out), "--labeled", "3", "--unlabeled", "2", "--test", "2", "-np", "2",
                 "--no-progress"]) == 0
    folder = out / dataset.name
    assert _case_files(folder) == _case_files(dataset)
    for rel in _case_files(dataset):
        if rel.suffix == ".gz":
            np.testing.assert_array_equal(_read(folder / rel)[0], _read(dataset / rel)[0])
        elif rel.parent.name == PARAMS_FOLDER:
            assert (folder / rel).read_text() == (dataset / rel).read_text()


def test_cli_defaults_match_the_library():
    from cps3d.cli import build_parser

    args = build_parser().parse_args(["phantoms", "out", "--labeled", "1", "--unlabeled", "0", "--test", "0"])
    assert (args.dataset_id, args.name) == (DEFAULT_DATASET_ID, DEFAULT_NAME)
