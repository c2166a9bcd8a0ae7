"""cps3d predict end to end with the tiny CPS model of the session fixture (CPU, tiny scans).

References: stock nnU-Net (``nnUNetPredictor.predict_from_files`` with the same weights) for the label maps, manual
averaging of the two branches' probabilities for the ensemble, the scans' own headers for the output geometry, and
network input shapes worked out by hand from nnU-Net's rule round(size * spacing / plan spacing).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import REAL_CT
from cps3d.cli import main
from cps3d.inference.forced_spacing import PRESETS
from cps3d.inference.model import load_model
from cps3d.inference.predictor import PredictConfig, make_predictor, predict, prepare_case
from inference_helpers import LPS, PLI, RAS, geometry, supervised_copy, write_dicom_series, write_scan

QUIET = dict(progress=False, device="cpu", num_processes=1)


@pytest.fixture(scope="module")
def model_dir(tiny_project) -> Path:
    return tiny_project.model_dir


@pytest.fixture(scope="module")
def supervised_dir(tiny_project, tmp_path_factory) -> Path:
    return supervised_copy(tiny_project.model_dir, tmp_path_factory.mktemp("sup") / "SupervisedTrainer__x__3d_fullres")


# name: (size x, y, z; spacing; origin; direction; voxel type)
SCANS = {
    "ras_int16": ((40, 36, 20), (1.5, 1.5, 3.0), (10.0, -20.0, 5.0), RAS, np.int16),
    "lps_int32": ((36, 30, 20), (0.9, 1.1, 2.0), (-30.0, 12.5, -7.0), LPS, np.int32),
    "pli_float32": ((30, 34, 18), (1.2, 1.4, 2.5), (55.5, -3.25, 80.0), PLI, np.float32),
    "aniso_5mm": ((40, 40, 8), (1.0, 1.0, 5.0), (0.0, 0.0, 0.0), LPS, np.int16),
    "thin_3_slices": ((40, 40, 3), (1.5, 1.5, 3.0), (0.0, 0.0, 0.0), RAS, np.int16),
    "small_in_plane": ((20, 18, 12), (1.5, 1.5, 3.0), (1.0, 2.0, 3.0), LPS, np.int16),
}


@pytest.fixture(scope="module")
def scan_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scans")
    for i, (name, (size, spacing, origin, direction, dtype)) in enumerate(SCANS.items()):
        write_scan(folder / f"{name}_0000.nii.gz", size, spacing, origin, direction, dtype, seed=i)
    return folder


def assert_same_grid(out: Path, ref: Path) -> None:
    size, spacing, origin, direction = geometry(out)
    rsize, rspacing, rorigin, rdirection = geometry(ref)
    assert size == rsize, out.name
    np.testing.assert_allclose(spacing, rspacing, rtol=1e-6, err_msg=out.name)
    np.testing.assert_allclose(origin, rorigin, atol=1e-5, err_msg=out.name)
    np.testing.assert_allclose(direction, rdirection, atol=1e-6, err_msg=out.name)
    np.testing.assert_allclose(nib.load(out).affine, nib.load(ref).affine, atol=1e-5, err_msg=out.name)


def assert_labels_on_input_grids(report, out_dir, scan_folder):
    """Every scan predicted, each label map a uint8 image of labels 0-2 on exactly its scan's grid."""
    assert not report.failed and sorted(r.case_id for r in report.predicted) == sorted(SCANS)
    for name in SCANS:
        out = out_dir / f"{name}.nii.gz"
        assert_same_grid(out, scan_folder / f"{name}_0000.nii.gz")
        seg = sitk.ReadImage(str(out))
        assert seg.GetPixelID() == sitk.sitkUInt8
        assert set(np.unique(sitk.GetArrayViewFromImage(seg))) <= {0, 1, 2}


@pytest.mark.parametrize("forced", [None, "paper"])
def test_outputs_are_on_the_input_grid(model_dir, scan_folder, tmp_path, forced):
    config = PredictConfig(forced_spacing=PRESETS[forced] if forced else None, **QUIET)
    report = predict([scan_folder], tmp_path, model_dir, config)
    assert_labels_on_input_grids(report, tmp_path, scan_folder)
    # network input shapes by hand, plan spacing (z, y, x) = (3, 1.5, 1.5): round(size * spacing / plan spacing)
    lps = next(r for r in report.predicted if r.case_id == "lps_int32")
    if forced is None:
        assert lps.assumed_spacing is None
        assert lps.network_shape == [13, 22, 22]  # z 20*2/3=13.3, y 30*1.1/1.5=22, x 36*0.9/1.5=21.6
    else:  # 20 slices < 150: (0.75, 0.75, own 2.0)
        assert lps.assumed_spacing == pytest.approx([0.75, 0.75, 2.0])
        assert lps.network_shape == [13, 15, 18]  # y 30*0.75/1.5=15, x 36*0.75/1.5=18
        pli = next(r for r in report.predicted if r.case_id == "pli_float32")
        assert pli.assumed_spacing == pytest.approx([0.75, 0.75, 2.5])  # through-plane k (inferior) kept
        assert pli.network_voxels == 15 * 17 * 15  # z 18*2.5/3=15, y 34*0.75/1.5=17, x 30*0.75/1.5=15


def test_real_ct_comes_back_on_its_grid(model_dir, tmp_path):
    ct = REAL_CT / "ct_sm_0000.nii.gz"
    for protocol, out in (("default", tmp_path / "a"), ("paper", tmp_path / "b")):
        config = PredictConfig.for_protocol("paper", **QUIET) if protocol == "paper" else PredictConfig(**QUIET)
        report = predict([ct], out, model_dir, config)
        assert not report.failed
        assert_same_grid(out / "ct_sm.nii.gz", ct)
        assert geometry(out / "ct_sm.nii.gz")[0] == (122, 101, 30)
    assert report.predicted[0].network_shape == [30, 50, 61]  # paper: in-plane 0.75 assumed; 101*0.75/1.5=50.5


def test_dicom_series_gives_a_nifti_with_the_series_geometry(model_dir, tmp_path):
    series = write_dicom_series(tmp_path / "patient7", (36, 30, 12), (0.8, 0.9, 2.5), (-50.0, -60.0, 100.0))
    report = predict([series], tmp_path / "out", model_dir, PredictConfig(**QUIET))
    assert not report.failed
    out = tmp_path / "out" / "patient7.nii.gz"
    size, spacing, origin, direction = geometry(out)
    assert size == (36, 30, 12)
    np.testing.assert_allclose(spacing, (0.8, 0.9, 2.5), rtol=1e-5)
    np.testing.assert_allclose(origin, (-50.0, -60.0, 100.0), atol=1e-4)
    np.testing.assert_allclose(direction, LPS, atol=1e-6)


def test_broken_dicom_series_fail_by_folder_and_the_others_go_on(model_dir, tmp_path, capsys):
    scan = write_scan(tmp_path / "scans" / "good_0000.nii.gz", (24, 24, 8))
    unreadable = write_dicom_series(tmp_path / "unreadable", (20, 20, 10), (1.0, 1.0, 2.5), (0.0, 0.0, 0.0))
    (unreadable / "slice_004.dcm").write_bytes(b"garbage")  # GDCM leaves it out of the series
    gap = write_dicom_series(tmp_path / "gap", (20, 20, 10), (1.0, 1.0, 2.5), (0.0, 0.0, 0.0))
    (gap / "slice_006.dcm").unlink()  # SimpleITK would stack 9 slices 2.78 mm apart
    out = tmp_path / "out"
    code = main(["predict", "-i", str(scan.parent), str(unreadable), str(gap), "-o", str(out), "-m", str(model_dir),
                 "--device", "cpu", "-np", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "2 case(s) failed" in err
    assert f"unreadable ({unreadable}): 1 file(s) of the folder belong to no DICOM series" in err
    assert "slice_004.dcm" in err
    assert f"in {gap}): DICOM series 1.2.826.0.1.3680043.2.1125.1.42 in {gap}: slice(s) missing: 1 between " \
           "slice_005.dcm and slice_007.dcm (5 mm apart)" in err
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["good.nii.gz"]


def stock_predict(model_dir: Path, scans: Path, out: Path, step_size: float, use_mirroring: bool) -> None:
    """Stock nnU-Net's prediction of every scan in ``scans`` into ``out``: ``nnUNetPredictor`` with network 1's
    weights of the model in ``model_dir``, on the CPU, one process each for preprocessing and export."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    model = load_model(model_dir)
    pm = model.plans_manager
    stock = nnUNetPredictor(tile_step_size=step_size, use_mirroring=use_mirroring, perform_everything_on_device=False,
                            device=torch.device("cpu"), allow_tqdm=False)
    stock.manual_initialization(model.build_network(), pm, pm.get_configuration(model.configuration),
                                [model.parameters[0]], model.dataset_json, model.trainer_name, model.mirror_axes)
    stock.predict_from_files(str(scans), str(out), overwrite=True, num_processes_preprocessing=1,
                             num_processes_segmentation_export=1)


def test_branch_1_equals_stock_nnunet(model_dir, tmp_path):
    """Forced spacing off, branch 1, step 0.5, mirroring on: the label maps equal nnU-Net's own predictor's."""
    scans = tmp_path / "scans"
    write_scan(scans / "aniso_0000.nii.gz", (34, 36, 16), (1.2, 1.3, 5.0), seed=1)  # ratio > 3: separate-z path
    write_scan(scans / "iso_0000.nii.gz", (40, 40, 31), (1.1, 1.7, 2.5), dtype=np.float32, seed=2)
    ours = tmp_path / "ours"
    predict([scans], ours, model_dir,
            PredictConfig(step_size=0.5, use_mirroring=True, postprocess=False, resampling="exact", **QUIET))
    stock_predict(model_dir, scans, tmp_path / "stock", step_size=0.5, use_mirroring=True)
    for name in ("aniso", "iso"):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(ours / f"{name}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "stock" / f"{name}.nii.gz")))
        assert a.shape == b.shape
        assert np.array_equal(a, b), f"{name}: {(a != b).sum()} voxels differ"
        assert len(np.unique(a)) > 1  # a non-trivial map, so that equality means something


def test_ensemble_averages_the_branches_probabilities(model_dir, tmp_path):
    # (1) network level, one preprocessed case: softmax(ensemble) == mean of the branches' softmax
    scan = write_scan(tmp_path / "s" / "c_0000.nii.gz", (40, 40, 24), (1.5, 1.5, 3.0))
    from cps3d.inference.inputs import Case

    model = load_model(model_dir)
    data = torch.from_numpy(prepare_case(Case("c", (str(scan),)), model.plans, model.configuration,
                                         model.dataset_json, None)["data"])
    logits = {}
    for branch, average in (("1", "probabilities"), ("2", "probabilities"), ("ensemble", "probabilities"),
                            ("ensemble", "logits")):
        m = load_model(model_dir, branch=branch)
        cfg = PredictConfig(branch=branch, ensemble_average=average, **QUIET)
        logits[branch, average] = make_predictor(m, cfg).predict_logits_from_preprocessed_data(data).float()
    p1, p2 = (torch.softmax(logits[b, "probabilities"], 0) for b in ("1", "2"))
    assert (p1 - p2).abs().max() > 1e-3  # the branches differ
    manual = (p1 + p2) / 2
    torch.testing.assert_close(torch.softmax(logits["ensemble", "probabilities"], 0), manual, atol=1e-6, rtol=0)
    # nnU-Net's own averaging (logits) is kept as an option
    l1, l2 = logits["1", "probabilities"], logits["2", "probabilities"]
    torch.testing.assert_close(logits["ensemble", "logits"], (l1 + l2) / 2, atol=1e-3, rtol=0)

    # (2) through the CLI with saved probabilities (scan on the plan spacing: no resampling on the way back)
    npz = {}
    for branch in ("1", "2", "ensemble"):
        out = tmp_path / f"out_{branch}"
        code = main(["predict", "-i", str(scan), "-o", str(out), "-m", str(model_dir), "--branch", branch,
                     "--save-probabilities", "--device", "cpu", "-np", "1", "--no-progress"])
        assert code == 0
        npz[branch] = np.load(out / "c.npz")["probabilities"]
        assert (out / "c.pkl").is_file()
    np.testing.assert_allclose(npz["ensemble"], (npz["1"] + npz["2"]) / 2, atol=1e-5)


def test_error_cases_of_the_model(model_dir, supervised_dir, tmp_path, capsys):
    scan = write_scan(tmp_path / "s" / "c_0000.nii.gz", (20, 20, 6))
    base = ["predict", "-i", str(scan), "-o", str(tmp_path / "o"), "--device", "cpu", "-np", "1", "--no-progress"]
    assert main(base + ["-m", str(supervised_dir), "--branch", "2"]) == 2
    assert "one network" in capsys.readouterr().err
    assert main(base + ["-m", str(supervised_dir), "--branch", "1"]) == 0  # branch 1 of a supervised model is fine
    missing = tmp_path / "no_such_model"
    assert main(base + ["-m", str(missing)]) == 2
    assert f"{missing}: model folder not found" in capsys.readouterr().err
    assert main(base + ["-m", str(model_dir), "--checkpoint", "checkpoint_nope.pth"]) == 2
    assert "no fold_N folder holds checkpoint_nope.pth" in capsys.readouterr().err
    assert main(base + ["-m", str(model_dir), "-f", "0", "--checkpoint", "checkpoint_nope.pth"]) == 2
    assert str(model_dir / "fold_0" / "checkpoint_nope.pth") + ": checkpoint not found" in capsys.readouterr().err
    assert main(base + ["-m", str(model_dir), "-f", "3"]) == 2
    assert "fold_3" in capsys.readouterr().err


def test_unreadable_input_is_reported_and_the_others_go_on(model_dir, tmp_path, capsys):
    scans = tmp_path / "scans"
    write_scan(scans / "good_0000.nii.gz", (24, 24, 8))
    write_scan(scans / "fine_0000.nii.gz", (24, 24, 8), seed=3)
    (scans / "broken_0000.nii.gz").write_bytes(b"this is not a NIfTI file")
    out = tmp_path / "out"
    # -np 2: reading and export in worker processes, so failures must cross process boundaries too
    code = main(["predict", "-i", str(scans), "-o", str(out), "-m", str(model_dir), "--device", "cpu", "-np", "2",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "1 case(s) failed" in err and str(scans / "broken_0000.nii.gz") in err
    assert (out / "good.nii.gz").is_file() and (out / "fine.nii.gz").is_file()
    assert not (out / "broken.nii.gz").exists()
    summary = json.loads((out / "cps3d_predict.json").read_text())
    assert [f["case_id"] for f in summary["failed"]] == ["broken"]
    assert sorted(summary["predicted"]) == ["fine", "good"]
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temporary files left behind


def test_truncated_nan_and_2d_scans_fail_by_name_and_the_others_go_on(model_dir, tmp_path, capsys):
    scans = tmp_path / "scans"
    write_scan(scans / "good_0000.nii.gz", (24, 24, 8))
    cut = write_scan(scans / "cut_0000.nii.gz", (24, 24, 8), seed=1)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # nnU-Net's reader fills the lost half with 0
    nan = write_scan(scans / "nan_0000.nii.gz", (24, 24, 8), dtype=np.float32, seed=2)
    image = sitk.ReadImage(str(nan))
    voxels = sitk.GetArrayFromImage(image)
    voxels[3, 4, :5] = np.nan
    voxels[0, 0, 0] = np.inf
    poisoned = sitk.GetImageFromArray(voxels)
    poisoned.CopyInformation(image)
    sitk.WriteImage(poisoned, str(nan))  # nnU-Net's reader turns NaN and inf into 0
    sitk.WriteImage(sitk.GetImageFromArray(np.full((24, 24), 40, np.int16)), str(scans / "flat_0000.nii.gz"))
    (scans / "empty_0000.nii.gz").write_bytes(b"")
    out = tmp_path / "out"
    code = main(["predict", "-i", str(scans), "-o", str(out), "-m", str(model_dir), "--device", "cpu", "-np", "1",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "4 case(s) failed" in err
    assert f"{cut}: cannot be read, truncated or corrupt" in err
    assert f"{nan}: contains 6 NaN or infinite voxel(s)" in err
    assert f"{scans / 'flat_0000.nii.gz'}: is a 2-D image (size (24, 24)); 3-D images are expected" in err
    assert f"{scans / 'empty_0000.nii.gz'}: empty file (0 bytes)" in err
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["good.nii.gz"]
    summary = json.loads((out / "cps3d_predict.json").read_text())
    assert sorted(f["case_id"] for f in summary["failed"]) == ["cut", "empty", "flat", "nan"]


def test_output_that_is_a_file_is_refused_before_any_work(model_dir, tmp_path, capsys):
    scan = write_scan(tmp_path / "s" / "c_0000.nii.gz", (20, 20, 6))
    (tmp_path / "taken").write_text("a file, not a folder")
    base = ["predict", "-i", str(scan), "-m", str(model_dir), "--device", "cpu", "-np", "1", "--no-progress"]
    assert main(base + ["-o", str(tmp_path / "taken")]) == 2
    assert f"{tmp_path / 'taken'}: the output folder exists and is not a folder" in capsys.readouterr().err
    assert main(base + ["-o", str(tmp_path / "out"), "--profile", str(tmp_path / "taken" / "prof")]) == 2
    assert "profile folder (--profile) cannot be created" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_empty_input_folder_writes_nothing(model_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    code = main(["predict", "-i", str(tmp_path / "empty"), "-o", str(out), "-m", str(model_dir), "--device", "cpu",
                 "-np", "1", "--no-progress"])
    assert code == 1
    captured = capsys.readouterr()
    assert f"({tmp_path / 'empty'}): no scans found" in captured.err
    assert "0 case(s) predicted, 0 skipped (output exists), 1 failed; nothing written" in captured.out
    assert not out.exists()  # no dataset.json, plans.json or cps3d_predict.json of a run that did nothing


def test_existing_outputs_are_skipped_unless_overwrite(model_dir, tmp_path):
    scans = tmp_path / "scans"
    for i in range(3):
        write_scan(scans / f"c{i}_0000.nii.gz", (20, 20, 6), seed=i)
    out = tmp_path / "out"
    first = predict([scans], out, model_dir, PredictConfig(**QUIET))
    assert len(first.predicted) == 3
    (out / "c1.nii.gz").unlink()
    stamp = (out / "c0.nii.gz").stat().st_mtime_ns
    second = predict([scans], out, model_dir, PredictConfig(**QUIET))
    assert [r.case_id for r in second.predicted] == ["c1"] and sorted(second.skipped) == ["c0", "c2"]
    assert (out / "c0.nii.gz").stat().st_mtime_ns == stamp
    summary = json.loads((out / "cps3d_predict.json").read_text())
    assert sorted(summary["predicted"]) == ["c0", "c1", "c2"]  # the skipped cases' entries are kept
    assert sorted(summary["skipped"]) == ["c0", "c2"]
    third = predict([scans], out, model_dir, PredictConfig(overwrite=True, **QUIET))
    assert len(third.predicted) == 3 and not third.skipped
    with pytest.raises(ValueError, match="also an input folder"):
        predict([scans], scans, model_dir, PredictConfig(**QUIET))


def test_parts_are_disjoint_and_complete(model_dir, tmp_path):
    scans = tmp_path / "scans"
    names = [f"case{i}" for i in range(5)]
    for i, n in enumerate(names):
        write_scan(scans / f"{n}_0000.nii.gz", (16, 16, 4), seed=i)
    shares = []
    for part in range(3):
        report = predict([scans], tmp_path / "out", model_dir, PredictConfig(part_id=part, num_parts=3, **QUIET))
        shares.append({r.case_id for r in report.predicted})
        assert (tmp_path / "out" / f"cps3d_predict_part{part}of3.json").is_file()
    assert shares == [{"case0", "case3"}, {"case1", "case4"}, {"case2"}]  # every 3rd of the sorted list
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        [f"{n}.nii.gz" for n in names] + ["dataset.json", "plans.json"] +
        [f"cps3d_predict_part{p}of3.json" for p in range(3)])


def test_profile_and_protocol_flags(model_dir, tmp_path):
    scan = write_scan(tmp_path / "s" / "c_0000.nii.gz", (20, 20, 6))
    prof = tmp_path / "prof"
    code = main(["predict", "-i", str(scan), "-o", str(tmp_path / "o"), "-m", str(model_dir), "--device", "cpu",
                 "-np", "1", "--no-progress", "--profile", str(prof), "--protocol", "paper", "--tta"])
    assert code == 0
    data = json.loads((prof / "profile.json").read_text())
    assert data["command"] == "cps3d predict"
    assert data["gpu_allowance_mb"] == 2048  # FLARE's, as in 'cps3d profile' and the demo
    assert (prof / "cases.csv").read_text().splitlines()[1].startswith("c,")  # one row, for case c
    # --protocol paper sets step 0.7 and forced spacing paper; the explicit --tta wins over its "no TTA"
    config = json.loads((tmp_path / "o" / "cps3d_predict.json").read_text())["config"]
    assert config["step_size"] == 0.7 and config["use_mirroring"] is True
    assert config["forced_spacing"]["sz"] == 0.5


def test_saved_properties_give_the_scans_own_spacing_under_forced_spacing(model_dir, tmp_path):
    import pickle

    scan = write_scan(tmp_path / "s" / "c_0000.nii.gz", (40, 36, 12), (1.2, 1.4, 3.0))
    report = predict([scan], tmp_path / "out", model_dir,
                     PredictConfig(forced_spacing=PRESETS["paper"], save_probabilities=True, **QUIET))
    assert not report.failed and report.predicted[0].assumed_spacing == pytest.approx([0.75, 0.75, 3.0])
    with open(tmp_path / "out" / "c.pkl", "rb") as f:
        properties = pickle.load(f)
    # array order (z, y, x): the grid the probabilities and the label map are on, not the spacing assumed
    assert properties["spacing"] == pytest.approx([3.0, 1.4, 1.2])
    assert properties["cps3d_assumed_spacing"] == pytest.approx([3.0, 0.75, 0.75])
    assert np.load(tmp_path / "out" / "c.npz")["probabilities"].shape[1:] == (12, 36, 40)


def test_postprocessing_keeps_one_component_per_label(model_dir, tmp_path):
    from scipy import ndimage

    scan = write_scan(tmp_path / "s" / "c_0000.nii.gz", (40, 40, 24))
    raw = predict([scan], tmp_path / "raw", model_dir, PredictConfig(postprocess=False, **QUIET))
    post = predict([scan], tmp_path / "post", model_dir, PredictConfig(**QUIET))
    assert not raw.failed and not post.failed
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "raw" / "c.nii.gz")))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "post" / "c.nii.gz")))
    for label in (1, 2):
        n = ndimage.label(b == label, structure=np.ones((3, 3, 3)))[1]
        assert n <= 1
    assert np.all((a == b) | (b == 0))  # post-processing only removes voxels


# ------------------------------------------------------------------------- the torch paths (torch-export, torch)


def _labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, dict[int, float]]:
    """Fraction of voxels with equal labels and the DSC of every foreground label present in either map."""
    labels = sorted((set(np.unique(a)) | set(np.unique(b))) - {0})
    return float(np.mean(a == b)), {int(k): float(2 * np.sum((a == k) & (b == k)) / (np.sum(a == k) + np.sum(b == k)))
                                    for k in labels}


@pytest.mark.parametrize("resampling", ["torch-export", "torch"])
@pytest.mark.parametrize("forced", [None, "paper"])
def test_torch_paths_output_on_the_input_grid(model_dir, scan_folder, tmp_path, forced, resampling):
    config = PredictConfig(resampling=resampling, forced_spacing=PRESETS[forced] if forced else None, **QUIET)
    report = predict([scan_folder], tmp_path, model_dir, config)
    assert_labels_on_input_grids(report, tmp_path, scan_folder)
    lps = next(r for r in report.predicted if r.case_id == "lps_int32")  # the same network input as the exact path
    assert lps.network_shape == ([13, 22, 22] if forced is None else [13, 15, 18])
    assert json.loads((tmp_path / "cps3d_predict.json").read_text())["config"]["resampling"] == resampling


def test_fast_path_without_resampling_equals_the_exact_path(model_dir, scan_folder, tmp_path):
    """A scan on the plan spacing is resampled by neither path: the fast path's crop, normalisation, transposes and
    export then give exactly the exact path's label map (which equals stock nnU-Net's)."""
    scan = scan_folder / "ras_int16_0000.nii.gz"  # 1.5 x 1.5 x 3 mm, the plan spacing
    predict([scan], tmp_path / "exact", model_dir, PredictConfig(resampling="exact", **QUIET))
    assert main(["predict", "-i", str(scan), "-o", str(tmp_path / "torch"), "-m", str(model_dir), "--resampling",
                 "torch", "--device", "cpu", "-np", "1", "--no-progress"]) == 0
    a, b = _labels(tmp_path / "exact" / "ras_int16.nii.gz"), _labels(tmp_path / "torch" / "ras_int16.nii.gz")
    assert len(np.unique(a)) > 1 and np.array_equal(a, b)


def test_fast_export_agrees_with_nnunets_export(model_dir, scan_folder):
    """The export alone (the same logits): nnU-Net's resampling one class at a time (the exact path, equal to stock)
    against nnU-Net's torch resampling: the thresholds of issue 14 (99.9 % of voxels, every label's DSC >= 0.995)."""
    from cps3d.inference.export import segmentation_low_memory
    from cps3d.inference.fast import segmentation_torch
    from cps3d.inference.inputs import Case

    model = load_model(model_dir)
    pm = model.plans_manager
    cm, lm = pm.get_configuration(model.configuration), pm.get_label_manager(model.dataset_json)
    predictor = make_predictor(model, PredictConfig(**QUIET))
    for name in SCANS:
        case = Case(name, (str(scan_folder / f"{name}_0000.nii.gz"),))
        prepared = prepare_case(case, model.plans, model.configuration, model.dataset_json, None)
        logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(prepared["data"]))
        before = logits.clone()
        stock = segmentation_low_memory(logits, pm, cm, lm, prepared["properties"])
        fast = segmentation_torch(logits, pm, cm, lm, prepared["properties"])
        assert torch.equal(logits, before)  # the logits are left as they were
        assert fast.shape == stock.shape and fast.dtype == stock.dtype
        agreement, dsc = _agreement(stock, fast)
        assert agreement >= 0.999, name
        assert dsc and min(dsc.values()) >= 0.995, (name, dsc)


@pytest.fixture(scope="module")
def stock_maps(model_dir, scan_folder, tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """The test scans (every orientation and voxel type above, and the shipped real CT) in one folder, and stock
    nnU-Net's label maps of them: ``nnUNetPredictor`` with network 1's weights, step 0.7, no mirroring (cps3d
    predict's defaults)."""
    scans = tmp_path_factory.mktemp("agreement_scans")
    for name in SCANS:
        (scans / f"{name}_0000.nii.gz").symlink_to(scan_folder / f"{name}_0000.nii.gz")
    (scans / "ct_sm_0000.nii.gz").symlink_to(REAL_CT / "ct_sm_0000.nii.gz")
    out = tmp_path_factory.mktemp("agreement_stock")
    stock_predict(model_dir, scans, out, step_size=0.7, use_mirroring=False)
    return scans, {name: _labels(out / f"{name}.nii.gz") for name in (*SCANS, "ct_sm")}


@pytest.mark.parametrize("resampling", ["exact", "torch-export", "torch"])
def test_agreement_with_stock_nnunet(model_dir, stock_maps, tmp_path, resampling, capsys):
    """Each path against stock nnU-Net (same weights, step 0.7, no TTA) on every test scan: voxels with equal labels
    and every organ's DSC between the two maps. exact: identical. torch-export: issue 14's bar for a default (99.9 %
    of the voxels, every organ's DSC >= 0.995). torch: the scan's resampling (linear in torch, cubic spline in the
    plans) costs more than this barely trained network tolerates (0.957-0.987 of the voxels measured), so only a
    bound that catches a broken path (a wrong axis or grid gives far less) is asserted; the figures are printed."""
    scans, stock = stock_maps
    predict([scans], tmp_path, model_dir, PredictConfig(resampling=resampling, postprocess=False, **QUIET))
    figures = {name: _agreement(reference, _labels(tmp_path / f"{name}.nii.gz")) for name, reference in stock.items()}
    with capsys.disabled():  # the measured figures, for the README (pytest -s is not needed)
        print(f"\n{resampling} vs stock nnU-Net: " + "; ".join(
            f"{name} {agreement:.5f} (DSC " + ", ".join(f"{k}: {v:.4f}" for k, v in dsc.items()) + ")"
            for name, (agreement, dsc) in figures.items()))
    for name, (agreement, dsc) in figures.items():
        assert dsc, f"{name}: stock nnU-Net predicts no organ here, the comparison would mean nothing"
        if resampling == "exact":
            assert agreement == 1.0, (name, agreement)
        elif resampling == "torch-export":
            assert agreement >= 0.999, (name, agreement)
            assert min(dsc.values()) >= 0.995, (name, dsc)
        else:
            assert agreement >= 0.9, (name, agreement)
