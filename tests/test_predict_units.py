"""Parts of cps3d predict without a network: input listing, the low-memory export (against nnU-Net's export of all
classes at once), post-processing (hand-worked arrays and nnU-Net's full-volume function), configuration."""

from __future__ import annotations

import copy
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from cps3d.inference.inputs import Case, list_cases, read_dicom_series, select_part
from cps3d.inference.postprocessing import Postprocessing, keep_largest_component, keep_largest_component_of_union
from cps3d.inference.predictor import PROTOCOLS, PredictConfig
from inference_helpers import PLI, write_dicom_series, write_scan

ENDINGS = [".nii.gz", ".nrrd", ".mha"]


def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")


# ----------------------------------------------------------------------------------------------------- inputs


def test_folder_with_nnunet_names_plain_names_and_hidden_files(tmp_path):
    touch(tmp_path / "in", "a_0000.nii.gz", "b_0000.nii.gz", "scan.nii.gz", "ct_2023.nrrd", ".a_0000.tmp.nii.gz",
          "notes.txt")
    cases, problems = list_cases([tmp_path / "in"], ENDINGS, num_channels=1)
    assert [c.case_id for c in cases] == ["a", "b", "ct_2023", "scan"]
    assert cases[0].files == (str(tmp_path / "in" / "a_0000.nii.gz"),)
    assert not problems


def test_two_channel_cases_are_grouped_and_incomplete_ones_reported(tmp_path):
    touch(tmp_path / "in", "a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "c_0001.nii.gz", "c_0000.nii.gz",
          "plain.nii.gz")
    cases, problems = list_cases([tmp_path / "in"], ENDINGS, num_channels=2)
    assert [(c.case_id, [Path(f).name for f in c.files]) for c in cases] == [
        ("a", ["a_0000.nii.gz", "a_0001.nii.gz"]), ("c", ["c_0000.nii.gz", "c_0001.nii.gz"])]
    messages = {Path(p.path).name: p.message for p in problems}
    assert "missing channel(s) 0001" in messages["b_0000.nii.gz"]
    assert "CASE_XXXX" in messages["plain.nii.gz"]


def test_file_lists_duplicates_and_missing_inputs(tmp_path):
    touch(tmp_path / "x", "a_0000.nii.gz")
    touch(tmp_path / "y", "a_0000.nii.gz", "b.nii.gz")
    cases, problems = list_cases([tmp_path / "x", tmp_path / "y" / "a_0000.nii.gz", tmp_path / "y" / "b.nii.gz"],
                                 ENDINGS, 1)
    assert [c.case_id for c in cases] == ["b"]  # 'a' is given twice: neither is guessed
    assert len(problems) == 1 and problems[0].case_id == "a" and "more than once" in problems[0].message
    with pytest.raises(FileNotFoundError, match="no_such"):
        list_cases([tmp_path / "no_such"], ENDINGS, 1)
    touch(tmp_path / "empty")
    _, problems = list_cases([tmp_path / "empty"], ENDINGS, 1)
    assert "no scans found" in problems[0].message


def test_select_part_is_disjoint_and_complete():
    cases = [Case(f"c{i:02d}", (f"c{i:02d}.nii.gz",)) for i in (7, 3, 11, 0, 5, 9, 1)]
    ids = sorted(c.case_id for c in cases)
    for n in (1, 2, 3, 7, 10):
        shares = [[c.case_id for c in select_part(cases, k, n)] for k in range(n)]
        flat = [i for s in shares for i in s]
        assert sorted(flat) == ids and len(flat) == len(set(flat))
        assert shares[0] == ids[::n]
    with pytest.raises(ValueError, match="part_id"):
        select_part(cases, 3, 3)


def dicom_case(folder: Path) -> Case:
    cases, problems = list_cases([folder], ENDINGS, 1)
    assert not problems and len(cases) == 1
    return cases[0]


def test_dicom_series_with_an_unreadable_slice_fails_by_folder(tmp_path):
    series = write_dicom_series(tmp_path / "patient1", (12, 10, 8), (1.0, 1.0, 2.5), (0.0, 0.0, 0.0))
    first = series / "slice_000.dcm"  # the first slice: the positions of the others cannot show the loss
    first.write_bytes(first.read_bytes()[:300])
    (series / "slice_005.dcm").write_bytes(b"")
    (series / "notes.txt").write_text("not a slice, not a problem")
    cases, problems = list_cases([series], ENDINGS, 1)
    assert cases == []
    assert [(p.path, p.case_id) for p in problems] == [(str(series), "patient1")]
    assert problems[0].message.startswith("2 file(s) of the folder belong to no DICOM series (unreadable: "
                                          "truncated, corrupt or empty): slice_000.dcm, slice_005.dcm (empty)")


@pytest.mark.parametrize("z_offsets, expected", [
    ([0.0, 2.5, 5.0, 12.5, 15.0, 17.5],
     re.escape("slice(s) missing: 2 between slice_002.dcm and slice_003.dcm (7.5 mm apart) (the slice spacing is "
               "2.5 mm)")),
    ([0.0, 2.5, 5.0, 6.0, 8.5, 11.0],
     re.escape("slices are not evenly spaced: steps from 1 to 2.5 mm along the slice normal (median 2.5 mm), first "
               "at slice_002.dcm")),
    ([0.0, 2.5, 5.0, 5.0, 7.5, 10.0],  # the two files at 45 mm come in either order
     r"slice_00[23]\.dcm and slice_00[23]\.dcm are at the same position \(45 mm along the slice normal\)"),
], ids=["missing", "uneven", "duplicate"])
def test_dicom_series_with_missing_or_unevenly_spaced_slices(tmp_path, z_offsets, expected):
    series = write_dicom_series(tmp_path / "patient2", (12, 10, 6), (1.0, 1.0, 2.5), (0.0, 0.0, 40.0),
                                z_offsets=z_offsets)
    case = dicom_case(series)
    assert len(case.files) == 6  # every file is listed: only the positions show the problem
    with pytest.raises(ValueError) as e:
        read_dicom_series(case)
    assert re.match(re.escape(f"DICOM series {case.series_id} in {series}: ") + expected, str(e.value)), str(e.value)


def test_evenly_spaced_dicom_series_reads_on_its_grid(tmp_path):
    series = write_dicom_series(tmp_path / "p", (12, 10, 6), (0.8, 0.9, 2.5), (1.0, 2.0, 40.0))
    array, properties = read_dicom_series(dicom_case(series))
    assert array.shape == (1, 6, 10, 12)
    assert properties["spacing"] == pytest.approx([2.5, 0.9, 0.8])


# ----------------------------------------------------------------------------------------------------- export


def _prepared(tmp_path: Path, plans: dict, dataset_json: dict, configuration: str):
    """Properties of a real preprocessed case whose non-zero box is smaller than the image (so that the crop is
    undone on export) and whose spacing differs from the plan (so that the export resamples)."""
    import SimpleITK as sitk

    from cps3d.inference.predictor import prepare_case

    path = write_scan(tmp_path / "c_0000.nii.gz", (30, 28, 14), (1.1, 1.3, 4.5), direction=PLI)
    image = sitk.ReadImage(str(path))
    a = sitk.GetArrayFromImage(image)
    a[:, :3, :] = 0
    a[:2] = 0
    out = sitk.GetImageFromArray(a)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path))
    return prepare_case(Case("c", (str(path),)), plans, configuration, dataset_json, None)


@pytest.mark.parametrize("variant", ["labels", "transposed", "regions"])
def test_low_memory_export_equals_nnunet_export(tiny_project, tmp_path, variant):
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from cps3d.files import read_json
    from cps3d.inference.export import segmentation_low_memory

    plans = read_json(tiny_project.model_dir / "plans.json")
    dataset_json = read_json(tiny_project.model_dir / "dataset.json")
    if variant == "transposed":
        plans = copy.deepcopy(plans)
        plans["transpose_forward"], plans["transpose_backward"] = [2, 0, 1], [1, 2, 0]
    if variant == "regions":
        dataset_json = {**dataset_json, "labels": {"background": 0, "whole": [1, 2], "core": 2},
                        "regions_class_order": [1, 2]}
    prepared = _prepared(tmp_path, plans, dataset_json, "3d_fullres")
    props = prepared["properties"]
    box, full = props["bbox_used_for_cropping"], props["shape_before_cropping"]
    assert any(list(b) != [0, n] for b, n in zip(box, full))  # the crop is real
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    lm = pm.get_label_manager(dataset_json)
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (lm.num_segmentation_heads, *prepared["data"].shape[1:])).astype(np.float16)
    if not lm.has_regions:
        logits[2, :4] = logits[1, :4]  # exact ties: the first class must win, as with numpy's argmax
    before = logits.copy()
    ours = segmentation_low_memory(logits, pm, cm, lm, props)
    ref = convert_predicted_logits_to_segmentation_with_correct_shape(logits.copy(), pm, cm, lm, props)
    assert np.array_equal(logits, before)  # the caller's array is not modified
    assert ours.shape == ref.shape == tuple(props["shape_before_cropping"][i] for i in pm.transpose_backward)
    assert ours.dtype == ref.dtype == np.uint8
    assert np.array_equal(ours, ref)
    assert len(np.unique(ours)) == 3


# ----------------------------------------------------------------------------------------------------- post-processing


def test_largest_component_by_hand():
    seg = np.zeros((5, 6, 6), np.uint8)
    seg[0, 0, 0:3] = 1          # 3 voxels
    seg[2:4, 2:4, 2:4] = 1      # 8 voxels: kept
    seg[4, 0, 5] = 2            # label 2: 1 voxel, and ...
    seg[3, 1, 4] = 2            # ... 1 voxel touching it only at a corner (26-connectivity: one component)
    seg[0, 5, 5] = 2            # a separate single voxel: removed
    out = keep_largest_component(seg)
    expected = seg.copy()
    expected[0, 0, 0:3] = 0
    expected[0, 5, 5] = 0
    assert np.array_equal(out, expected)
    only_2 = seg.copy()
    only_2[0, 5, 5] = 0  # the per-label switch: label 1 keeps both its components
    assert np.array_equal(keep_largest_component(seg, [2]), only_2)
    assert seg[0, 0, 0] == 1  # input unchanged
    tie = np.zeros((3, 3, 7), np.uint8)
    tie[1, 1, 0:2] = tie[1, 1, 5:7] = 3  # two components of 2 voxels: both kept (nnU-Net keeps ties too)
    tie[1, 1, 3] = 3
    assert np.array_equal(keep_largest_component(tie), np.where(np.arange(7) == 3, 0, tie))


def test_largest_component_in_1d_and_2d_uses_full_connectivity():
    # 2-D: the two 1s touch at a corner (one component of 2 voxels) and beat the lone 1 elsewhere
    seg = np.array([[1, 0, 0, 0],
                    [0, 1, 0, 1],
                    [2, 2, 0, 0]], np.uint8)
    expected = seg.copy()
    expected[1, 3] = 0
    assert np.array_equal(keep_largest_component(seg), expected)
    line = np.array([3, 3, 0, 3, 0, 2], np.int16)
    assert np.array_equal(keep_largest_component(line), np.array([3, 3, 0, 0, 0, 2], np.int16))
    with pytest.raises(ValueError, match="at most 3 axes"):
        keep_largest_component(np.ones((2, 2, 2, 2), np.uint8))


def test_largest_component_matches_nnunet_on_whole_volumes():
    from nnunetv2.postprocessing.remove_connected_components import remove_all_but_largest_component_from_segmentation

    rng = np.random.default_rng(0)
    seg = (rng.random((20, 24, 22)) < 0.15).astype(np.uint8) * rng.integers(1, 4, (20, 24, 22)).astype(np.uint8)
    ref = seg
    for label in (1, 2, 3):  # nnU-Net's function on the whole volume, one label at a time
        ref = remove_all_but_largest_component_from_segmentation(ref, [label])
    assert np.array_equal(keep_largest_component(seg), ref)
    assert not np.array_equal(ref, seg)
    # the union form stored in nnU-Net's postprocessing.pkl: a label, a region (tuple), a list of them
    for arg in (2, (1, 3), [1, (2, 3)]):
        assert np.array_equal(keep_largest_component_of_union(seg, arg),
                              remove_all_but_largest_component_from_segmentation(seg, arg)), arg


def test_nnunet_postprocessing_file_is_used_when_present(tmp_path):
    from nnunetv2.postprocessing.remove_connected_components import remove_all_but_largest_component_from_segmentation

    with open(tmp_path / "postprocessing.pkl", "wb") as f:
        pickle.dump(([remove_all_but_largest_component_from_segmentation], [{"labels_or_regions": 2}]), f)
    pp = Postprocessing.for_model(tmp_path)
    assert pp.mode == "nnunet"
    seg = np.zeros((4, 4, 4), np.uint8)
    seg[0, 0, 0] = seg[3, 3, 3] = 1
    seg[0, 3, 0] = 2
    seg[2:4, 0:2, 2:4] = 2
    out = pp.apply(seg)
    assert out[0, 0, 0] == 1 and out[3, 3, 3] == 1  # label 1 untouched: nnU-Net decided so
    assert out[0, 3, 0] == 0 and out[3, 0, 3] == 2
    assert Postprocessing.for_model(tmp_path, labels=[1]).mode == "largest_component"
    assert Postprocessing.for_model(tmp_path, enabled=False).apply(seg) is seg
    (tmp_path / "postprocessing.pkl").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="postprocessing.pkl"):
        Postprocessing.for_model(tmp_path).apply(seg)


# ----------------------------------------------------------------------------------------------------- configuration


def test_config_defaults_follow_the_paper_and_protocols():
    c = PredictConfig()
    assert (c.step_size, c.use_mirroring, c.forced_spacing, c.branch, c.postprocess) == (0.7, False, None, "1", True)
    assert c.resampling == "torch-export"  # issue 14's rule: it meets the agreement bar and is faster than exact
    paper = PredictConfig.for_protocol("paper")
    assert (paper.step_size, paper.use_mirroring) == (0.7, False)
    assert paper.forced_spacing is PROTOCOLS["paper"]["forced_spacing"]
    assert PredictConfig.for_protocol("paper", step_size=0.5).step_size == 0.5
    nn = PredictConfig.for_protocol("nnunet")
    assert (nn.step_size, nn.use_mirroring, nn.forced_spacing, nn.resampling) == (0.5, True, None, "exact")
    assert PredictConfig.for_protocol("nnunet", resampling="torch").resampling == "torch"  # explicit options win


@pytest.mark.parametrize("kwargs, match", [
    (dict(branch="3"), "branch"), (dict(step_size=0), "step_size"), (dict(step_size=1.5), "step_size"),
    (dict(part_id=2, num_parts=2), "part_id"), (dict(num_processes=0), "num_processes"),
    (dict(device="gpu"), "device"), (dict(ensemble_average="median"), "ensemble_average"),
    (dict(postprocess_labels=(0,)), "labels"), (dict(export_mode="fast"), "export_mode"),
    (dict(checkpoint="a/b.pth"), "checkpoint"), (dict(resampling="fast"), "resampling"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PredictConfig(**kwargs)


def test_fold_parsing_and_device_choice(monkeypatch):
    import torch

    from cps3d.devices import resolve_device
    from cps3d.options import parse_fold

    assert [parse_fold(f) for f in ("3", 2, " All ", "all")] == [3, 2, "all", "all"]
    with pytest.raises(ValueError, match="fold 'x': give a fold number or 'all'"):
        parse_fold("x")
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(ValueError, match="device 'cuda:1' was requested but no CUDA device is available"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == torch.device("cuda")


def test_number_formatting():
    from cps3d.evaluation.tables import format_number
    from cps3d.images import format_values

    assert format_values([0.75, 0.7500001, 1.5], 4, " x ") == "0.75 x 0.75 x 1.5"
    assert format_values((1, 2.5)) == "1, 2.5"
    assert [format_number(v, 2) for v in (0.123, None, float("nan"), 3)] == ["0.12", "-", "-", "3.00"]
    assert format_number(0.05, 3, sign=True) == "+0.050" and format_number(-0.05, 1, sign=True) == "-0.1"
