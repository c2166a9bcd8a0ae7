"""Preprocessing: nnU-Net's output for labeled cases, unlabeled cases stored apart, resumable and safe to kill."""

import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from cps3d.dataset import RawDataset
from cps3d.planning import load_plans
from cps3d.preprocessing import STAMP_SUFFIX, preprocess, unlabeled_folder


@pytest.fixture()
def project(tiny_project, tmp_path):
    """A private copy of the tiny project's raw data, with the same plans, and an empty preprocessed folder."""
    raw = tmp_path / "raw"
    shutil.copytree(tiny_project.raw_root, raw)
    pre = tmp_path / "pre" / tiny_project.dataset_name
    pre.mkdir(parents=True)
    for name in ("cps3dPlans.json", "dataset.json", "dataset_fingerprint.json"):
        shutil.copy(tiny_project.preprocessed_root / tiny_project.dataset_name / name, pre / name)
    ds = RawDataset.load(raw / tiny_project.dataset_name)
    return ds, tmp_path / "pre", load_plans(tmp_path / "pre", ds.name)


def load(folder, case):
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    data, seg, _, props = nnUNetDatasetBlosc2(str(folder), [case]).load_case(case)
    return np.asarray(data[:]), np.asarray(seg[:]), props


def test_labeled_cases_equal_nnunets_preprocessor_and_unlabeled_are_apart(project):
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    ds, pre, plans = project
    summary = preprocess(ds, pre, plans, "3d_fullres", progress=False)
    assert summary.done == len(ds.labeled_cases()) + len(ds.unlabeled_cases()) and summary.skipped == 0
    lab, unl = summary.labeled_folder, summary.unlabeled_folder
    assert unl == unlabeled_folder(lab) and unl.name == lab.name + "_unlabeled"
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    cls = infer_dataset_class(str(lab))
    assert sorted(cls.get_identifiers(str(lab))) == sorted(ds.labeled_cases())
    assert sorted(cls.get_identifiers(str(unl))) == sorted(ds.unlabeled_cases())

    pm = PlansManager(plans)
    case, files = next(iter(ds.labeled_cases().items()))
    ref_data, ref_seg, _ = DefaultPreprocessor(verbose=False).run_case(
        files["images"], files["label"], pm, pm.get_configuration("3d_fullres"), ds.dataset_json)
    data, seg, props = load(lab, case)
    np.testing.assert_array_equal(data, ref_data.astype(np.float32))
    np.testing.assert_array_equal(seg, ref_seg)
    assert props["class_locations"]  # labeled: foreground locations for oversampling

    ucase = next(iter(ds.unlabeled_cases()))
    udata, useg, uprops = load(unl, ucase)
    assert udata.shape[0] == 1 and udata.dtype == np.float32
    assert set(np.unique(useg)) <= {-1, 0}  # no labels: only nnU-Net's outside-nonzero marker
    assert uprops["class_locations"] == {}
    # the trainer's gt copy and dataset.json for nnU-Net's final validation
    assert sorted(p.name for p in (pre / ds.name / "gt_segmentations").iterdir()) == \
        sorted(f"{c}.nii.gz" for c in ds.labeled_cases())


def test_rerun_skips_finished_cases_and_repairs_a_killed_run(project):
    ds, pre, plans = project
    s = preprocess(ds, pre, plans, "3d_fullres", progress=False)
    lab, unl = s.labeled_folder, s.unlabeled_folder
    victim = sorted(ds.unlabeled_cases())[0]
    # a run killed while moving this case into place: seg and pkl arrived, the data file did not; plus a leftover
    # temporary folder
    (unl / f"{victim}.b2nd").unlink()
    (unl / ".partial_x_123").mkdir()
    (unl / ".partial_x_123" / "junk.b2nd").write_bytes(b"half")
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    assert victim not in nnUNetDatasetBlosc2.get_identifiers(str(unl))  # never listed as a case while incomplete
    before = {f.name: f.stat().st_mtime_ns for f in lab.iterdir()}
    s2 = preprocess(ds, pre, plans, "3d_fullres", progress=False)
    assert s2.done == 1 and s2.skipped == len(ds.labeled_cases()) + len(ds.unlabeled_cases()) - 1
    assert (unl / f"{victim}.b2nd").is_file() and not (unl / ".partial_x_123").exists()
    assert {f.name: f.stat().st_mtime_ns for f in lab.iterdir()} == before  # finished cases untouched


def test_changed_plans_redo_the_folder(project):
    ds, pre, plans = project
    preprocess(ds, pre, plans, "3d_fullres", progress=False, unlabeled=False)
    plans["foreground_intensity_properties_per_channel"]["0"]["mean"] += 1.0
    s = preprocess(ds, pre, plans, "3d_fullres", progress=False, unlabeled=False)
    assert s.done == len(ds.labeled_cases()) and s.skipped == 0
    assert (s.labeled_folder.parent / f"{s.labeled_folder.name}{STAMP_SUFFIX}").is_file()


def test_a_failing_case_is_named_and_the_others_are_kept(project):
    ds, pre, plans = project
    bad = sorted(ds.unlabeled_cases())[1]
    path = ds.unlabeled_cases()[bad][0]
    os.remove(path)
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkInt16), path)  # readable but 4x4x4 of zeros: fine
    with open(ds.unlabeled_cases()[sorted(ds.unlabeled_cases())[2]][0], "wb") as f:
        f.write(b"corrupt")
    with pytest.raises(RuntimeError, match=sorted(ds.unlabeled_cases())[2]):
        preprocess(ds, pre, plans, "3d_fullres", progress=False)
    lab = pre / ds.name / plans["configurations"]["3d_fullres"]["data_identifier"]
    assert len(list(lab.glob("*_seg.b2nd"))) == len(ds.labeled_cases())


def test_truncated_and_nan_files_are_refused_without_a_prior_check(project):
    ds, pre, plans = project
    cut, poisoned = (ds.unlabeled_cases()[c][0] for c in sorted(ds.unlabeled_cases())[:2])
    with open(cut, "rb") as f:
        data = f.read()
    with open(cut, "wb") as f:
        f.write(data[: len(data) // 2])
    image = sitk.ReadImage(poisoned)
    voxels = sitk.GetArrayFromImage(image).astype(np.float32)
    voxels[2, 3, 4] = np.nan
    out = sitk.GetImageFromArray(voxels)
    out.CopyInformation(image)
    sitk.WriteImage(out, poisoned)
    with pytest.raises(RuntimeError, match="preprocessing failed for 2 case") as e:
        preprocess(ds, pre, plans, "3d_fullres", progress=False)
    failed = sorted(ds.unlabeled_cases())[:2]
    assert all(c in str(e.value) for c in failed)
    unl = unlabeled_folder(pre / ds.name / plans["configurations"]["3d_fullres"]["data_identifier"])
    assert not any((unl / f"{c}.b2nd").exists() for c in failed)  # nnU-Net would have stored them with zeros


def test_cli_with_skip_check_names_a_truncated_file_and_exits_with_1(project, capsys):
    from cps3d.cli import main

    ds, pre, plans = project
    case = sorted(ds.unlabeled_cases())[0]
    path = ds.unlabeled_cases()[case][0]
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    code = main(["preprocess", "-d", ds.name, "--raw-root", str(ds.folder.parent), "--preprocessed-root", str(pre),
                 "--skip-check", "-np", "1", "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"preprocessing failed for 1 case(s): {case}" in err and f"{path}: cannot be read, truncated" in err


def test_unknown_configuration(project):
    ds, pre, plans = project
    with pytest.raises(ValueError, match="configuration '2d' is not in the plans"):
        preprocess(ds, pre, plans, "2d", progress=False)
