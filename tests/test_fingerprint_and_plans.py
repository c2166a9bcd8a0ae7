"""Fingerprint modes against direct computations and nnU-Net's extractor; plans against nnU-Net's own planner."""

import json
import shutil
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from cps3d.dataset import RawDataset
from cps3d.fingerprint import FingerprintConfig, compute_fingerprint, ensure_fingerprint
from cps3d.nnunet_env import nnunet_folders, planner_thread_count
from cps3d.planning import PlanConfig, plan_experiment
from toy_data import write_toy_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    raw = tmp_path_factory.mktemp("fp") / "raw"
    return RawDataset.load(write_toy_dataset(raw, labeled=4, unlabeled=3, test=0))


def all_voxels(ds, unlabeled=True):
    files = [v["images"][0] for v in ds.labeled_cases().values()]
    if unlabeled:
        files += [v[0] for v in ds.unlabeled_cases().values()]
    return [sitk.GetArrayFromImage(sitk.ReadImage(f)).astype(np.float64).ravel() for f in files]


def test_global_statistics_match_numpy_over_all_labeled_and_unlabeled_voxels(dataset):
    fp = compute_fingerprint(dataset, FingerprintConfig("global", samples_total=30_000), progress=False)
    stats = fp["foreground_intensity_properties_per_channel"]["0"]
    voxels = np.concatenate(all_voxels(dataset))
    # exact extremes, sampled moments and percentiles (3e4 of ~2.8e5 voxels): within sampling error
    assert stats["min"] == voxels.min() and stats["max"] == voxels.max()
    assert stats["mean"] == pytest.approx(voxels.mean(), abs=0.03 * voxels.std())
    assert stats["std"] == pytest.approx(voxels.std(), rel=0.03)
    assert stats["median"] == pytest.approx(np.median(voxels), abs=15)
    assert stats["percentile_00_5"] == pytest.approx(np.percentile(voxels, 0.5), abs=15)
    assert stats["percentile_99_5"] == pytest.approx(np.percentile(voxels, 99.5), abs=15)
    assert fp["cps3d"]["num_unlabeled"] == 3 and fp["cps3d"]["intensity_stats"] == "global"


def test_small_cases_contribute_all_their_voxels(dataset):
    fp = compute_fingerprint(dataset, FingerprintConfig("global", samples_total=10_000_000), progress=False)
    stats = fp["foreground_intensity_properties_per_channel"]["0"]
    voxels = np.concatenate(all_voxels(dataset))
    assert stats["mean"] == pytest.approx(voxels.mean(), rel=1e-6)
    assert stats["percentile_99_5"] == pytest.approx(np.percentile(voxels, 99.5))


def test_body_statistics_exclude_air(dataset):
    fp = compute_fingerprint(dataset, FingerprintConfig("body", body_threshold_hu=-500), progress=False)
    stats = fp["foreground_intensity_properties_per_channel"]["0"]
    voxels = np.concatenate(all_voxels(dataset))
    body = voxels[voxels > -500]
    assert stats["min"] > -500
    assert stats["mean"] == pytest.approx(body.mean(), rel=1e-6)


def test_foreground_mode_reproduces_nnunet_and_differs_from_global(dataset, tmp_path, monkeypatch):
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

    import cps3d.fingerprint

    # nnU-Net samples 1e8 voxels in total; a smaller budget on both sides keeps the test fast and still exact
    monkeypatch.setattr(cps3d.fingerprint, "NNUNET_FOREGROUND_SAMPLES", 4e5)
    ours = compute_fingerprint(dataset, FingerprintConfig("foreground"), progress=False)
    with nnunet_folders(raw=dataset.folder.parent, preprocessed=tmp_path):
        extractor = DatasetFingerprintExtractor(dataset.name, num_processes=1)
        extractor.num_foreground_voxels_for_intensitystats = 4e5
        theirs = extractor.run()
    assert ours["foreground_intensity_properties_per_channel"]["0"] == \
        pytest.approx(theirs["foreground_intensity_properties_per_channel"][0])
    assert [list(s) for s in ours["shapes_after_crop"]] == [list(s) for s in theirs["shapes_after_crop"]]
    assert ours["spacings"] == [list(s) for s in theirs["spacings"]]
    glob = compute_fingerprint(dataset, FingerprintConfig("global"), progress=False)
    assert glob["spacings"] == ours["spacings"]  # geometry comes from the labeled cases in every mode
    g, f = (x["foreground_intensity_properties_per_channel"]["0"] for x in (glob, ours))
    assert g["percentile_00_5"] < -900 < f["percentile_00_5"]  # global includes air, foreground does not


def test_fingerprint_is_reused_when_inputs_and_settings_are_unchanged(dataset, tmp_path):
    ds_copy = RawDataset.load(shutil.copytree(dataset.folder, tmp_path / "raw" / dataset.name))
    pre = tmp_path / "pre"
    first = ensure_fingerprint(ds_copy, pre, progress=False)
    path = pre / ds_copy.name / "dataset_fingerprint.json"
    stamp = path.stat().st_mtime_ns
    assert ensure_fingerprint(ds_copy, pre, progress=False) == first
    assert path.stat().st_mtime_ns == stamp
    changed = ensure_fingerprint(ds_copy, pre, FingerprintConfig("body"), progress=False)
    assert changed["cps3d"]["intensity_stats"] == "body" and path.stat().st_mtime_ns != stamp
    for f in (ds_copy.folder / "imagesUnlabeled").iterdir():
        f.unlink()
    again = ensure_fingerprint(ds_copy, pre, FingerprintConfig("body"), progress=False)
    assert again["cps3d"]["num_unlabeled"] == 0


def test_truncated_file_is_refused_by_name(dataset, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(dataset.folder, raw / dataset.name)
    ds = RawDataset.load(raw / dataset.name)
    path = ds.unlabeled_cases()[sorted(ds.unlabeled_cases())[0]][0]
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"{path}: cannot be read, truncated"):
        compute_fingerprint(ds, progress=False)


def test_fingerprint_config_is_validated():
    with pytest.raises(ValueError, match="intensity_stats='fg'"):
        FingerprintConfig("fg")


def _plan_both(dataset, tmp_path, **overrides):
    """Our plans and nnU-Net's own planner's plans for the same fingerprint and memory target."""
    from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
        nnUNetPlannerResEncM,
    )

    pre = tmp_path / "pre"
    fp = ensure_fingerprint(dataset, pre, progress=False)
    config = PlanConfig(**overrides)
    ours = plan_experiment(dataset.folder.parent, pre, dataset.name, config, fp["cps3d"])
    with nnunet_folders(raw=dataset.folder.parent, preprocessed=pre), planner_thread_count(), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nnU-Net warns about a non-standard memory target for ResEnc M
        planner = nnUNetPlannerResEncM(dataset.name, gpu_memory_target_in_gb=8 / config.resolved_memory_factor(),
                                       plans_name="reference")
        planner.plan_experiment()
    theirs = json.loads((pre / dataset.name / "reference.json").read_text())
    return ours, theirs


def _normalise(plan: dict) -> dict:
    return json.loads(json.dumps(plan))


def test_plans_equal_nnunet_planner_apart_from_cps_fields(dataset, tmp_path):
    ours, theirs = _plan_both(dataset, tmp_path)
    assert ours["cps3d"]["memory_factor"] == 4.0 and ours["cps3d"]["network_memory_target_gb"] == 2.0
    for name in ("2d", "3d_fullres"):
        mine = dict(ours["configurations"][name])
        ref = dict(theirs["configurations"][name])
        assert mine.pop("unlabeled_batch_size") == mine["batch_size"]
        assert mine.pop("data_identifier") == f"cps3dPlans_{name}"  # our fingerprint -> our own data folders
        ref.pop("data_identifier")
        assert _normalise(mine) == _normalise(ref), name
    for key in ("transpose_forward", "transpose_backward", "foreground_intensity_properties_per_channel",
                "original_median_spacing_after_transp", "experiment_planner_used", "image_reader_writer"):
        assert _normalise(ours[key]) == _normalise(theirs[key]), key


def test_memory_factor_shrinks_what_fits(dataset, tmp_path):
    """On CT-sized scans, a quarter of the memory target gives a smaller patch x batch than nnU-Net's own target."""
    from cps3d.files import write_json

    pre = tmp_path / "pre"
    fp = ensure_fingerprint(dataset, pre, progress=False)
    n = len(fp["spacings"])
    fp["spacings"] = [[2.5, 1.0, 1.0]] * n  # pretend CT-sized scans: the planner reads only the fingerprint
    fp["shapes_after_crop"] = [[64, 160, 160]] * n
    write_json(pre / dataset.name / "dataset_fingerprint.json", fp)
    volume = {}
    for factor in (None, 1.0):
        plans = plan_experiment(dataset.folder.parent, pre, dataset.name,
                                PlanConfig(configurations=("3d_fullres",), memory_factor=factor), fp["cps3d"])
        c = plans["configurations"]["3d_fullres"]
        volume[factor] = np.prod(c["patch_size"]) * c["batch_size"]
    assert volume[None] < volume[1.0]


def test_overrides_rebuild_the_topology_and_keep_other_configurations(dataset, tmp_path):
    pre = tmp_path / "pre"
    fp = ensure_fingerprint(dataset, pre, progress=False)
    plan_experiment(dataset.folder.parent, pre, dataset.name,
                    PlanConfig(configurations=("2d",), patch_size=(32, 32), n_stages=3, base_features=4,
                               max_features=8, batch_size=3, unlabeled_batch_size=5), fp["cps3d"])
    plans = plan_experiment(dataset.folder.parent, pre, dataset.name,
                            PlanConfig(configurations=("3d_fullres",), patch_size=(16, 32, 32), n_stages=3,
                                       base_features=4, max_features=16, batch_size=2), fp["cps3d"])
    c2, c3 = plans["configurations"]["2d"], plans["configurations"]["3d_fullres"]
    assert list(c2["patch_size"]) == [32, 32] and c2["batch_size"] == 3 and c2["unlabeled_batch_size"] == 5
    a2 = c2["architecture"]["arch_kwargs"]
    assert a2["n_stages"] == 3 and list(a2["features_per_stage"]) == [4, 8, 8]
    a3 = c3["architecture"]["arch_kwargs"]
    assert list(c3["patch_size"]) == [16, 32, 32] and a3["n_stages"] == 3
    assert list(a3["features_per_stage"]) == [4, 8, 16] and len(a3["strides"]) == 3
    assert len(a3["n_blocks_per_stage"]) == 3 and len(a3["n_conv_per_stage_decoder"]) == 2
    # nnU-Net reads the file as its own and builds the network it describes
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cm = PlansManager(plans).get_configuration("3d_fullres")
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, 1, 3, deep_supervision=True)
    import torch

    out = net(torch.zeros(1, 1, 16, 32, 32))
    assert [tuple(o.shape) for o in out][0] == (1, 3, 16, 32, 32)


def test_plan_config_validation():
    with pytest.raises(ValueError, match="plan 2d and 3d_fullres separately"):
        PlanConfig(patch_size=(32, 32, 32))
    with pytest.raises(ValueError, match="planner="):
        PlanConfig(planner="nnUNetPlannerHuge")
    with pytest.raises(ValueError, match="n_stages=1"):
        PlanConfig(n_stages=1)


def test_too_many_stages_for_the_patch_is_an_error(dataset, tmp_path):
    pre = tmp_path / "pre"
    fp = ensure_fingerprint(dataset, pre, progress=False)
    with pytest.raises(ValueError, match="allows at most"):
        plan_experiment(dataset.folder.parent, pre, dataset.name,
                        PlanConfig(configurations=("3d_fullres",), patch_size=(8, 8, 8), n_stages=5), fp["cps3d"])
