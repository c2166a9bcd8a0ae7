"""FLARE 2022 rules (hand-worked cases), folder evaluation, tables, and the ``cps3d evaluate`` command in-process."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import surface_distance as sd

from cps3d.cli import main
from cps3d.evaluation import (
    EvaluationConfig,
    Target,
    axial_axis,
    compare_summaries,
    evaluate_folders,
    evaluate_label_maps,
    flare_targets,
    format_table,
    load_tolerances,
    read_grid,
    read_label_map,
    targets_from_dataset_json,
)
from cps3d.evaluation.metrics import normalized_surface_dice

REAL_CT = Path(__file__).parent / "data" / "real_ct"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:surface_distance")

FLARE = {t.values[0]: t for t in flare_targets()}


def scores(pred, ref, spacing=(1.0, 1.0, 1.0), axial=0, slice_range="official", nsd_min_dice=0.2, labels=None):
    targets = [FLARE[k] for k in (labels or sorted(FLARE))]
    return evaluate_label_maps(pred, ref, spacing, targets, axial, slice_range, nsd_min_dice)


# --- per-case rules, by hand ---------------------------------------------------------------------------------------


def test_both_empty_and_one_empty():
    ref = np.zeros((6, 6, 6), np.uint8)
    pred = np.zeros_like(ref)
    ref[1:3, 1:3, 1:3] = 1  # liver only in the reference
    pred[3:5, 3:5, 3:5] = 3  # spleen only in the prediction
    ref[2:4, 2:4, 4] = 4  # pancreas in both, identical
    pred[2:4, 2:4, 4] = 4
    s = scores(pred, ref, labels=[1, 2, 3, 4])
    assert s["liver"] == (0.0, 0.0)
    assert s["right kidney"] == (1.0, 1.0)  # absent from both
    assert s["spleen"] == (0.0, 0.0)
    assert s["pancreas"] == (1.0, 1.0)


def _column(label: int, z_ref: tuple[int, int], z_pred: tuple[int, int], shape=(12, 5, 5)):
    """One-voxel-wide columns along axis 0 (the axial axis here), from z0 to z1 inclusive."""
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    ref[z_ref[0]:z_ref[1] + 1, 2, 2] = label
    pred[z_pred[0]:z_pred[1] + 1, 2, 2] = label
    return pred, ref


@pytest.mark.parametrize("label,name", [(5, "aorta"), (6, "inferior vena cava"), (10, "esophagus")])
def test_slice_range_rule_both_conventions(label, name):
    # reference on slices 2..5 (4 voxels); prediction on 0..4: it misses the top slice and overshoots below
    pred, ref = _column(label, (2, 5), (0, 4))
    # inclusive window 2..5: ref 4 voxels, pred 3 (2..4), all shared -> 2*3/7
    assert scores(pred, ref, slice_range="inclusive", labels=[label])[name][0] == pytest.approx(6 / 7)
    # official window 2..4 (Python's 2:5 stops before the top slice): 3 and 3 voxels, identical
    assert scores(pred, ref, slice_range="official", labels=[label])[name] == (1.0, 1.0)
    # the same arrays with the axial axis last (nibabel order) give the same result
    t = (1, 2, 0)
    assert scores(pred.transpose(t), ref.transpose(t), axial=2, slice_range="inclusive",
                  labels=[label])[name][0] == pytest.approx(6 / 7)


def test_slice_range_rule_not_applied_to_other_organs():
    pred, ref = _column(1, (2, 5), (0, 4))  # liver: whole volume: ref 4, pred 5, shared 3 -> 6/9
    assert scores(pred, ref, labels=[1])["liver"][0] == pytest.approx(6 / 9)
    # and with no axial axis (2D images), the rule is skipped for the aorta as well
    pred, ref = _column(5, (2, 5), (0, 4))
    assert scores(pred, ref, axial=None, labels=[5])["aorta"][0] == pytest.approx(6 / 9)


def test_slice_range_single_slice_organ_keeps_its_slice():
    pred, ref = _column(5, (3, 3), (3, 4))  # reference on one slice: the window is that slice in both conventions
    for convention in ("official", "inclusive"):
        assert scores(pred, ref, slice_range=convention, labels=[5])["aorta"] == (1.0, 1.0)


def test_dice_below_threshold_sets_nsd_to_zero():
    ref = np.zeros((4, 4, 24), np.uint8)
    pred = np.zeros_like(ref)
    ref[1:3, 1:3, 0:10] = 1  # 40 voxels
    pred[1:3, 1:3, 9:19] = 1  # 40 voxels, 4 shared: DSC = 8/80 = 0.1
    nsd_raw = normalized_surface_dice(pred == 1, ref == 1, (1.0, 1.0, 1.0), 5.0)
    assert nsd_raw > 0.2  # the surfaces do come within 5 mm of each other...
    assert scores(pred, ref, labels=[1])["liver"] == (pytest.approx(0.1), 0.0)  # ...but DSC < 0.2
    dsc, nsd = scores(pred, ref, labels=[1], nsd_min_dice=0.0)["liver"]
    assert nsd == pytest.approx(nsd_raw)


def test_each_organ_uses_its_own_tolerance():
    # the same block shifted by 3 voxels (1 mm) along axis 1: every surfel is within 3 mm of the other surface,
    # but the end faces are 3 mm apart, beyond 2 mm
    ref = np.zeros((10, 16, 10), np.uint8)
    pred = np.zeros_like(ref)
    ref[2:8, 2:10, 2:8] = 1
    pred[2:8, 5:13, 2:8] = 1
    nsd3 = normalized_surface_dice(pred == 1, ref == 1, (1.0, 1.0, 1.0), 3.0)
    nsd2 = normalized_surface_dice(pred == 1, ref == 1, (1.0, 1.0, 1.0), 2.0)
    assert nsd3 == pytest.approx(1.0) and nsd2 < 0.95
    right_kidney = scores(pred * 2, ref * 2, labels=[2])["right kidney"]  # FLARE tolerance 3 mm
    right_adrenal = scores(pred * 7, ref * 7, labels=[7])["right adrenal gland"]  # 2 mm
    assert right_kidney[1] == pytest.approx(nsd3)
    assert right_adrenal[1] == pytest.approx(nsd2)
    assert right_kidney[0] == right_adrenal[0] == pytest.approx(2 * 5 / 16)


def test_flare_tolerances_table():
    expected = {1: 5, 2: 3, 3: 3, 4: 5, 5: 2, 6: 2, 7: 2, 8: 2, 9: 2, 10: 3, 11: 5, 12: 7, 13: 3}
    assert {k: t.tolerance_mm for k, t in FLARE.items()} == expected
    assert {k for k, t in FLARE.items() if t.slice_range} == {5, 6, 10}


def test_axial_axis_from_direction_cosines():
    identity = (1, 0, 0, 0, 1, 0, 0, 0, 1)  # index k is head-foot: numpy axis 0 of a SimpleITK array
    assert axial_axis(identity) == 0
    # index axis j (column 1) points head-foot, e.g. a coronal acquisition: numpy axis 1
    coronal = (1, 0, 0, 0, 0, 1, 0, -1, 0)
    assert axial_axis(coronal) == 1
    # oblique but mostly along index axis i: numpy axis 2
    c, s = np.cos(0.3), np.sin(0.3)
    assert axial_axis((0, 0, 1, s, c, 0, c, -s, 0)) == 2


# --- targets and tolerances ----------------------------------------------------------------------------------------


def test_targets_from_dataset_json_names_numbers_regions():
    dj = {"labels": {"background": 0, "Liver": 1, "kidney_right": 2, "tumour": 14, "liver and tumour": [1, 14],
                     "aorta": 6}}
    targets = {t.name: t for t in targets_from_dataset_json(dj, default_tolerance_mm=4.0)}
    assert targets["Liver"].tolerance_mm == 5.0 and targets["Liver"].flare
    assert targets["kidney_right"].tolerance_mm == 3.0  # alias of FLARE's "right kidney", number 2
    assert targets["tumour"].tolerance_mm == 4.0 and not targets["tumour"].flare
    assert targets["liver and tumour"].values == (1, 14) and targets["liver and tumour"].tolerance_mm == 4.0
    # "aorta" numbered 6 is not FLARE's aorta (5): default tolerance, no slice rule
    assert targets["aorta"].tolerance_mm == 4.0 and not targets["aorta"].slice_range


def test_tolerance_overrides_by_name_and_number(tmp_path):
    path = tmp_path / "tol.json"
    path.write_text(json.dumps({"liver": 1.5, "13": 4}))
    tol = load_tolerances(path)
    targets = {t.values[0]: t for t in flare_targets(tol)}
    assert targets[1].tolerance_mm == 1.5 and targets[13].tolerance_mm == 4.0 and targets[2].tolerance_mm == 3.0
    with pytest.raises(ValueError, match="'livr'.*did you mean 'liver'"):
        flare_targets({"livr": 2})
    path.write_text(json.dumps({"liver": -1}))
    with pytest.raises(ValueError, match="tol.json"):
        load_tolerances(path)


def test_dataset_json_errors():
    with pytest.raises(ValueError, match="ignore"):
        targets_from_dataset_json({"labels": {"background": 0, "a": 1, "ignore": 2}})
    with pytest.raises(ValueError, match="slice_range"):
        EvaluationConfig(slice_range="inclusve")
    with pytest.raises(ValueError, match="tolerance"):
        Target("x", (1,), -2.0)


# --- folders -------------------------------------------------------------------------------------------------------


def write_label_map(path: Path, arr: np.ndarray, spacing=(1.5, 1.0, 2.0), origin=(0.0, 0.0, 0.0)) -> None:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))


def make_folders(tmp_path: Path, n: int = 3, seed: int = 0) -> tuple[Path, Path, list]:
    """n cases of 12x14x16 voxels with labels 1 (liver), 5 (aorta) and sometimes 9 (gallbladder)."""
    rng = np.random.default_rng(seed)
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    cases = []
    for i in range(n):
        ref = np.zeros((12, 14, 16), np.uint8)
        ref[2:9, 3:10, 2:12] = 1
        ref[1:11, 11, 13] = 5
        if i != 1:
            ref[9:11, 2:5, 3:6] = 9
        pred = ref.copy()
        pred[rng.integers(2, 9), 3:10, 2:12] = 0  # remove a liver slice
        pred[0:11, 11, 13] = 5  # aorta one slice too long
        write_label_map(ref_dir / f"case_{i:03d}.nii.gz", ref)
        write_label_map(pred_dir / f"case_{i:03d}.nii.gz", pred)
        cases.append((pred, ref))
    return pred_dir, ref_dir, cases


def test_evaluate_folders_matches_per_case_scores_and_summary(tmp_path):
    pred_dir, ref_dir, cases = make_folders(tmp_path)
    result = evaluate_folders(pred_dir, ref_dir, progress=False)
    names = [t.name for t in result.targets]
    assert names == ["liver", "aorta", "gallbladder"]  # discovered labels, FLARE names
    spacing = (2.0, 1.0, 1.5)  # numpy order of SimpleITK spacing (1.5, 1.0, 2.0)
    for case, (pred, ref) in zip(result.cases, cases):
        assert case.scores == evaluate_label_maps(pred, ref, spacing, result.targets, axial=0)
    assert result.cases[1].scores["gallbladder"] == (1.0, 1.0)  # absent from both files of case 1
    rows = result.rows()
    for name in names:
        values = [r[f"{name}_DSC"] for r in rows]
        assert result.summary["per_target"][name]["DSC_mean"] == pytest.approx(np.mean(values))
        assert result.summary["per_target"][name]["DSC_std"] == pytest.approx(np.std(values))
    organ_means = [result.summary["per_target"][n]["NSD_mean"] for n in names]
    assert result.summary["mean"]["NSD_mean"] == pytest.approx(np.mean(organ_means))


def test_evaluate_folders_with_dataset_json(tmp_path):
    pred_dir, ref_dir, _ = make_folders(tmp_path, n=2)
    dj = {"labels": {"background": 0, "liver": 1, "right kidney": 2, "aorta": 5, "gallbladder": 9},
          "file_ending": ".nii.gz"}
    result = evaluate_folders(pred_dir, ref_dir, dataset_json=dj, num_processes=1, progress=False)
    assert [t.name for t in result.targets] == ["liver", "right kidney", "aorta", "gallbladder"]
    assert all(c.scores["right kidney"] == (1.0, 1.0) for c in result.cases)


def test_missing_prediction_is_an_error_and_extra_a_warning(tmp_path, caplog):
    pred_dir, ref_dir, _ = make_folders(tmp_path)
    (pred_dir / "case_001.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 3 prediction\(s\) missing: case_001.nii.gz"):
        evaluate_folders(pred_dir, ref_dir, progress=False)
    shutil.copy(ref_dir / "case_001.nii.gz", pred_dir / "case_001.nii.gz")
    shutil.copy(ref_dir / "case_002.nii.gz", pred_dir / "extra_case.nii.gz")
    with caplog.at_level(logging.WARNING, logger="cps3d.evaluation.folders"):
        result = evaluate_folders(pred_dir, ref_dir, progress=False)
    assert "extra_case.nii.gz" in caplog.text
    assert [c.case for c in result.cases] == ["case_000", "case_001", "case_002"]


def test_grid_mismatch_names_the_file(tmp_path):
    pred_dir, ref_dir, cases = make_folders(tmp_path)
    write_label_map(pred_dir / "case_002.nii.gz", cases[2][0], spacing=(1.5, 1.0, 2.5))
    with pytest.raises(ValueError, match=r"case_002.nii.gz: not on the grid.*spacing"):
        evaluate_folders(pred_dir, ref_dir, progress=False)
    write_label_map(pred_dir / "case_002.nii.gz", cases[2][0][:, :, :-1])
    with pytest.raises(ValueError, match=r"case_002.nii.gz: not on the grid.*size"):
        evaluate_folders(pred_dir, ref_dir, progress=False)


def test_real_ct_folder_matches_official_script_logic(tmp_path):
    """The real CT's two label maps, read as FLARE's script reads them (nibabel, slice range on the last axis),
    scored with the reference package, against our folder evaluation."""
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    shutil.copy(REAL_CT / "ct_sm_labels_fast.nii.gz", pred_dir / "ct_sm.nii.gz")
    shutil.copy(REAL_CT / "ct_sm_labels_total.nii.gz", ref_dir / "ct_sm.nii.gz")
    ours = evaluate_folders(pred_dir, ref_dir, progress=False).cases[0].scores

    gt_nii = nib.load(ref_dir / "ct_sm.nii.gz")
    gt = np.uint8(gt_nii.get_fdata())
    seg = np.uint8(nib.load(pred_dir / "ct_sm.nii.gz").get_fdata())
    spacing = gt_nii.header.get_zooms()
    assert len(ours) == 12  # label 10 (esophagus) is absent from both files and not discovered
    for k, t in FLARE.items():
        if t.name not in ours:
            continue
        g, s = gt == k, seg == k
        if k in (5, 6, 10):
            z = np.where(g)[2]
            g, s = g[:, :, z.min():z.max()], s[:, :, z.min():z.max()]
        dsc = float(sd.compute_dice_coefficient(g, s))
        nsd = float(sd.compute_surface_dice_at_tolerance(sd.compute_surface_distances(g, s, spacing),
                                                         t.tolerance_mm))
        assert ours[t.name][0] == pytest.approx(dsc, abs=1e-9), t.name
        assert ours[t.name][1] == pytest.approx(nsd if dsc >= 0.2 else 0.0, abs=1e-6), t.name


# --- tables --------------------------------------------------------------------------------------------------------


def _summary(liver: float, aorta: float) -> dict:
    per = {"liver": {"labels": [1], "flare": True, "DSC_mean": liver, "DSC_std": 0.01, "NSD_mean": liver - 0.1,
                     "NSD_std": 0.02},
           "aorta": {"labels": [5], "flare": True, "DSC_mean": aorta, "DSC_std": 0.0, "NSD_mean": aorta,
                     "NSD_std": 0.0}}
    return {"num_cases": 2, "per_target": per,
            "mean": {"DSC_mean": (liver + aorta) / 2, "DSC_std": 0.0, "NSD_mean": (liver - 0.1 + aorta) / 2,
                     "NSD_std": 0.0}}


def test_format_table_rows_and_columns():
    lines = format_table(_summary(0.9717, 0.9584)).splitlines()
    assert lines[0].split()[-2:] == ["DSC", "NSD"]
    liver = next(line for line in lines if line.startswith("Liver"))  # FLARE's short name, as in the paper
    assert "0.9717 ± 0.0100" in liver and "0.8717 ± 0.0200" in liver
    assert lines[-1].startswith("mean") and "0.9650" in lines[-1]


def test_compare_summaries_differences():
    text = compare_summaries(_summary(0.9717, 0.9584), _summary(0.9745, 0.9617), "base", "cps")
    liver = next(line for line in text.splitlines() if line.startswith("Liver"))
    assert liver.split() == ["Liver", "0.9717", "0.9745", "+0.0028", "0.8717", "0.8745", "+0.0028"]
    b = _summary(0.9745, 0.9617)
    del b["per_target"]["aorta"]
    aorta = next(line for line in compare_summaries(_summary(0.97, 0.95), b).splitlines() if line.startswith("Aorta"))
    assert aorta.split()[1:4] == ["0.9500", "-", "-"]


# --- command line --------------------------------------------------------------------------------------------------


def test_cli_evaluate_writes_csv_json_and_prints_table(tmp_path, capsys):
    pred_dir, ref_dir, _ = make_folders(tmp_path)
    out = tmp_path / "out"
    rc = main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "-o", str(out), "-np", "1",
               "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Liver" in printed and "Aorta" in printed and "Gallbladder" in printed
    with open(out / "metrics_per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["case_000", "case_001", "case_002"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_cases"] == 3
    assert float(rows[0]["aorta_DSC"]) == pytest.approx(summary["per_target"]["aorta"]["DSC_mean"], abs=1e-6)
    # compare this summary with itself: all differences zero
    rc = main(["evaluate", "--compare", str(out / "summary.json"), str(out / "summary.json")])
    assert rc == 0
    assert "+0.0000" in capsys.readouterr().out


def test_cli_evaluate_missing_file(tmp_path, capsys):
    pred_dir, ref_dir, _ = make_folders(tmp_path)
    (pred_dir / "case_000.nii.gz").unlink()
    rc = main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "-np", "1", "--no-progress"])
    assert rc == 1  # a case failed, not the command line
    err = capsys.readouterr().err
    assert "missing" in err and "case_000.nii.gz" in err
    assert not (pred_dir / "summary.json").exists()


def test_cli_evaluate_grid_mismatch(tmp_path, capsys):
    pred_dir, ref_dir, cases = make_folders(tmp_path)
    write_label_map(pred_dir / "case_001.nii.gz", cases[1][0], origin=(5.0, 0.0, 0.0))
    rc = main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "-np", "1", "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "case_001.nii.gz" in err and "origin" in err


def test_cli_evaluate_refuses_a_truncated_prediction(tmp_path, capsys):
    pred_dir, ref_dir, cases = make_folders(tmp_path)
    noisy = np.random.default_rng(1).integers(0, 14, cases[2][0].shape).astype(np.uint8)  # compresses badly
    path = pred_dir / "case_002.nii.gz"
    write_label_map(path, noisy)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 3 // 5])  # the header survives, voxels do not
    assert read_grid(path).size == (16, 14, 12)  # ITK reads the header and would fill the rest with background
    rc = main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "-np", "1", "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "1 case(s) failed" in err and f"{path}: cannot be read, truncated or corrupt" in err
    assert not (pred_dir / "summary.json").exists() and not (pred_dir / "metrics_per_case.csv").exists()
    with pytest.raises(ValueError, match="case_002.nii.gz: cannot be read, truncated"):
        read_label_map(path)


def test_cli_evaluate_output_that_is_a_file_is_refused_before_scoring(tmp_path, capsys, monkeypatch):
    pred_dir, ref_dir, _ = make_folders(tmp_path, n=1)
    (tmp_path / "taken").write_text("a file")

    def must_not_score(*args, **kwargs):
        raise AssertionError("scored before the output folder was checked")

    monkeypatch.setattr("cps3d.evaluation.evaluate_folders", must_not_score)
    rc = main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "-o", str(tmp_path / "taken"), "-np",
               "1", "--no-progress"])
    assert rc == 2
    assert f"{tmp_path / 'taken'}: the output folder (-o) exists and is not a folder" in capsys.readouterr().err
